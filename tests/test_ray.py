"""prefect-ray: steps run their whole task engine on real local Ray workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def run_cli(args: list[str]) -> tuple[int, int, str]:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, proc.pid, output


def test_run_on_a_local_ray_cluster_then_cached(tmp_path):
    prefix = tmp_path / "out"
    args = ["run", "tests/data/file_experiment.py", "--runner", "ray", "--prefix", str(prefix)]
    code, cli_pid, output = run_cli(args)
    assert code == 0, output[-4000:]
    assert "Using Ray cluster" in output
    derived = next(prefix.glob("t/derive-*"))
    assert json.loads((derived / "data.json").read_text()) == [v * 7 for v in range(6)]
    for provenance_file in prefix.glob("t/*/.lmflows/provenance.json"):
        provenance = json.loads(provenance_file.read_text())
        assert provenance["pid"] != cli_pid, "the step must run in a Ray worker process"
        assert provenance["task_run_id"]
    commit = derived / ".lmflows/commit.json"
    commit_mtime = commit.stat().st_mtime_ns
    code, _, output = run_cli(args)
    assert code == 0, output[-4000:]
    assert output.count("Cached(type=COMPLETED)") == 2
    assert commit.stat().st_mtime_ns == commit_mtime
