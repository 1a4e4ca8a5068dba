"""download_hf against whatever HF_ENDPOINT points at (a local fake hub in the tests)."""

from prefect import flow

from tasks.download import download_hf


@flow
def hf_experiment():
    return download_hf("tiny/corpus", revision="main", name="tiny", allow_patterns=["*.jsonl"])
