"""A training killed after its last checkpoint finishes from it (issue #19, item 1).

Before: every later run resumed at the last step and levanter raised `RuntimeError: No
training steps were executed`; only `--force` got out, throwing the work away. What a SIGKILL
at each moment after the final checkpoint leaves is built here from the shared tiny model's
own files (tests/test_train_resume.py kills a real run mid-training): the resume folder with
complete checkpoints and metrics, no commit; then, killed while finishing, a partial HF
export, a cut metrics row and a cut loss plot. The next run exports from the checkpoint,
reports, commits once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.core import storage


def _copy_inputs(tiny_lm: dict, shared: str, fresh: str) -> None:
    """The training's committed inputs, copied to another prefix (identities do not depend on
    the prefix: a copied bucket is served as it is)."""
    for key in ("tokenized", "tokenizer"):
        ref = tiny_lm[key]
        shutil.copytree(storage.output_dir(ref.name_with_hash, shared),
                        storage.output_dir(ref.name_with_hash, fresh), symlinks=True)  # fmt: skip


@pytest.mark.parametrize("killed", ["after-checkpoint", "while-finishing"])
def test_a_training_killed_after_its_last_checkpoint_finishes_from_it(
    tiny_lm, shared_prefix, tmp_path, monkeypatch, killed
):
    from tasks.core import flow
    from tasks.core.inventory import describe
    from tasks.lm.train import train_lm
    from tests.helpers import tiny

    model = tiny_lm["model"]
    trained = Path(storage.output_dir(model.name_with_hash, shared_prefix))
    fresh = str(tmp_path / ".lmflows" / "outputs")
    _copy_inputs(tiny_lm, shared_prefix, fresh)
    resume = Path(storage.staging_root(model.name_with_hash, fresh), "resume")
    resume.mkdir(parents=True)
    last = tiny.TINY["num_train_steps"] - 1
    shutil.copytree(trained / "checkpoints", resume / "checkpoints")
    shutil.copytree(trained / "hf_reference", resume / "hf_reference")
    metrics = (trained / "metrics.jsonl").read_text()
    (resume / "metrics.jsonl").write_text(metrics)
    if killed == "while-finishing":  # during the HF export, the metrics and the loss plot
        shutil.copytree(trained / "hf", resume / "hf")
        weights = resume / "hf" / f"step-{last}" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        (resume / "metrics.jsonl").write_text(metrics + '{"step": 5, "train/lo')
        (resume / "loss.png").write_bytes(b"\x89PNG\r\n")

    monkeypatch.setenv("LMFLOWS_PREFIX", fresh)

    @flow(name="train-done")
    def again() -> object:
        return train_lm(
            data={"kjv": tiny_lm["tokenized"]},
            tokenizer=tiny_lm["tokenizer"],
            name=tiny.NAME,
            **tiny.TINY,
        )

    state = again(return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == model  # the same identity, now committed here
    out = Path(storage.output_dir(model.name_with_hash, fresh))
    provenance = describe(model.name_with_hash, fresh)["provenance"]
    assert provenance["notes"]["resumed_from_step"] == last
    # The export made from the checkpoint is the one levanter wrote while training.
    name = f"hf/step-{last}/model.safetensors"
    assert (out / name).read_bytes() == (trained / name).read_bytes()
    assert json.loads((out / "train_config.json").read_text()) == json.loads(
        (trained / "train_config.json").read_text()
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == last
    assert (out / "loss.png").stat().st_size > 1000
    commit = out / ".lmflows" / "commit.json"
    committed_at = commit.stat().st_mtime_ns
    assert again(return_state=True).result() == model
    assert commit.stat().st_mtime_ns == committed_at  # committed once: Cached now


BROKEN_DATA_EXPERIMENT = '''
"""The tiny model's training on its committed (copied) inputs, under another name."""
from tasks.core import StepRef, flow
from tasks.lm.train import train_lm
from tests.helpers.tiny import TINY


@flow(name="broken-data")
def broken_data():
    return train_lm(
        data={{"kjv": StepRef({tokenized!r}, {tokenized_hash!r})}},
        tokenizer=StepRef({tokenizer!r}, {tokenizer_hash!r}),
        name="broken-data",
        **TINY,
    )
'''


def test_a_training_that_fails_inside_levanter_exits_1_after_its_last_line(
    tiny_lm, shared_prefix, tmp_path
):
    """A damaged cache (same size, so the quick check passes it) makes tensorstore fail in
    the training's worker process: the run ends with the run's status, 1, after its own
    "finished failed" line; never 134 from a library's teardown (issue #20)."""
    from tests.conftest import run_python

    fresh = str(tmp_path / "out")
    _copy_inputs(tiny_lm, shared_prefix, fresh)
    tokenized, tokenizer = tiny_lm["tokenized"], tiny_lm["tokenizer"]
    chunk = Path(storage.output_dir(tokenized.name_with_hash, fresh), "train/input_ids/data/c/0")
    size = chunk.stat().st_size
    chunk.write_bytes(bytes((7 * i + 13) % 256 for i in range(size)))
    experiment = tmp_path / "broken_data.py"
    experiment.write_text(
        BROKEN_DATA_EXPERIMENT.format(
            tokenized=tokenized.name,
            tokenized_hash=tokenized.hash,
            tokenizer=tokenizer.name,
            tokenizer_hash=tokenizer.hash,
        )
    )
    ran = run_python(["-m", "flows", "run", str(experiment), "--prefix", fresh], timeout=300)
    output = ran.stdout + ran.stderr
    assert ran.returncode == 1, output[-3000:]
    assert "DATA_LOSS" in output and "terminate called" not in output
    assert ran.stdout.rstrip().splitlines()[-1].startswith("lmflows: broken-data finished failed")
