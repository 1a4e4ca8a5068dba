"""A consumer step for the gc tests (tests/test_gc_inputs.py): it takes its time between
starting and reading its input, the window in which `gc --delete` used to delete the input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tasks.core import step


def _log(label: str) -> None:
    log = os.environ.get("LMFLOWS_TEST_LOG")
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{label} {os.getpid()}\n".encode())
        os.close(fd)


@step(hash_attrs=["src"], name="t/slow-read")
def slow_read(src: str, *, output_path: str) -> dict:
    """Say it started (LMFLOWS_TEST_READY names a file to write), wait until the file
    LMFLOWS_TEST_RELEASE exists (at most 120 s) or LMFLOWS_TEST_SLEEP seconds, then read
    every file of the input folder `src` (a toy/numbers output) and summarise it."""
    _log("slow-read-start")
    ready = os.environ.get("LMFLOWS_TEST_READY")
    if ready:
        Path(ready).write_text(str(os.getpid()))
    release = os.environ.get("LMFLOWS_TEST_RELEASE")
    deadline = time.time() + 120
    while release and not os.path.exists(release) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(float(os.environ.get("LMFLOWS_TEST_SLEEP", "0")))
    files = sorted(p.name for p in Path(src).iterdir())
    numbers = json.loads(Path(src, "numbers.json").read_text())
    Path(output_path, "summary.json").write_text(json.dumps({"files": files, "n": len(numbers)}))
    _log("slow-read-done")
    return {"files": files, "n": len(numbers)}
