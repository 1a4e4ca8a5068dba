"""Starting the worker processes of the concurrency and crash tests, and waiting on them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

WORKER = [sys.executable, "-m", "tests.helpers.worker"]


def start(args: list[str], env: dict) -> subprocess.Popen:
    """`tests/helpers/worker.py ARGS` with the test environment plus `env`."""
    return subprocess.Popen(
        [*WORKER, *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, timeout: float = 120) -> None:
    """Until a local file appears (a worker's "ready" mark)."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)
