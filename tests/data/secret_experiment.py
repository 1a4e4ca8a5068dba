"""tests/test_security.py: a gated hub download with an explicit token, plus a toy step, and an
artifact built from the download's metadata. The token comes from the test's environment (a
fresh random value each run) and goes only into download_hf's operational `token=`."""

import os

from prefect.artifacts import create_table_artifact

from tasks.core import flow
from tasks.download import download_hf
from tasks.toy import make_numbers


@flow(name="secret-experiment")
def secret_experiment(n: int = 10) -> dict:
    numbers = make_numbers(n=n, seed=1)
    raw = download_hf(
        "tiny/corpus",
        revision="main",
        name="gated",
        allow_patterns=["*.jsonl"],
        token=os.environ["LMFLOWS_TEST_HF_TOKEN_ARGUMENT"],
    )
    files = raw.metadata.get("files")  # none while `plan` runs this body
    if files is not None:
        create_table_artifact(key="downloaded-files", table=files, description="download_hf got")
    return {"numbers": numbers.metadata, "raw": raw.metadata}
