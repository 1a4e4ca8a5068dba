"""The truth of the cache is in storage: a run whose Prefect server dies says so once, goes on,
and exits promptly instead of retrying undeliverable events for minutes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from tests.conftest import REPO, free_port, start_prefect_server


def test_a_run_whose_server_dies_finishes_from_storage_and_exits_promptly(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": tempfile.mkdtemp(prefix="lmflows-test-lost-"),
        "PREFECT_API_URL": api,
        "PREFECT_LOGGING_LEVEL": "INFO",
        "LMFLOWS_PREFIX": str(tmp_path / "out"),
    }
    server = start_prefect_server(port, subprocess.DEVNULL, env, "--no-services")
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "flows", "run", "tests/data/lost_server.py"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out = tmp_path / "out" / "lost"
        deadline = time.monotonic() + 120
        while len(list(out.glob("node-*"))) < 5:  # a few steps committed through the server
            assert time.monotonic() < deadline and run.poll() is None, run.stderr
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = run.communicate(timeout=300)
        took = time.monotonic() - killed
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert run.returncode == 0, stderr[-3000:]
    assert took < 45, f"exited {took:.0f} s after the server died"
    assert stderr.count("stopped answering") == 1, stderr[-3000:]
    assert "40 of 40 steps are committed" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "EventsWorker" not in stderr
    assert len([p for p in out.glob("node-*") if (p / ".lmflows/commit.json").exists()]) == 40
    del stdout
