"""A prefix of its own holding copies of the shared tiny model's committed outputs, for tests
that train on from them (tests/test_extend.py, tests/test_continue.py): their trainings must
start in a prefix where no run of theirs is committed yet, and copying is cheap (identities do
not depend on the prefix, so the copies are served as they are)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tasks.core import storage


def copy_outputs(refs: list, shared: str, fresh: str) -> None:
    for ref in refs:
        shutil.copytree(storage.output_dir(ref.name_with_hash, shared),
                        storage.output_dir(ref.name_with_hash, fresh), symlinks=True)  # fmt: skip


def train_losses(output: str) -> dict[int, float]:
    """step -> training loss of what a training output's own run trained (its metrics)."""
    rows = [json.loads(line) for line in Path(output, "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if row.get("train/loss") is not None}


def provenance(output: str) -> dict:
    return json.loads(Path(output, ".lmflows", "provenance.json").read_text())
