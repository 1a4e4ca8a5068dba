"""A consumer step for the gc tests (tests/test_gc_inputs.py): it takes its time between
starting and reading its input, the window in which `gc --delete` used to delete the input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tasks.core import step
from tests.helpers.steps import _log, ready_then_wait_for_release


@step(hash_attrs=["src"], name="t/slow-read")
def slow_read(src: str, *, output_path: str) -> dict:
    """Say it started (LMFLOWS_TEST_READY names a file to write), wait until the file
    LMFLOWS_TEST_RELEASE exists (at most 120 s) or LMFLOWS_TEST_SLEEP seconds, then read
    every file of the input folder `src` (a toy/numbers output) and summarise it."""
    _log("slow-read-start")
    ready_then_wait_for_release(120, poll=0.05)
    time.sleep(float(os.environ.get("LMFLOWS_TEST_SLEEP", "0")))
    files = sorted(p.name for p in Path(src).iterdir())
    numbers = json.loads(Path(src, "numbers.json").read_text())
    Path(output_path, "summary.json").write_text(json.dumps({"files": files, "n": len(numbers)}))
    _log("slow-read-done")
    return {"files": files, "n": len(numbers)}
