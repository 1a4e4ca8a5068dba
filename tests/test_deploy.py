"""deploy/prefect.yaml against the real Prefect server: deploy, run through a process worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]


def prefect(*args: str, env: dict | None = None, timeout: float = 180):
    result = subprocess.run(
        [*PREFECT, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_deployments_deploy_schedule_and_run_on_a_worker(tmp_path):
    from prefect.client.orchestration import get_client

    prefect("work-pool", "create", "lmflows-local", "--type", "process", "--overwrite")
    prefect("deploy", "--all", "--prefect-file", "deploy/prefect.yaml", env={"PWD": str(REPO)})
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("demo/demo-nightly")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]
        toy = client.read_deployment_by_name("toy/toy")
    run = prefect("deployment", "run", "toy/toy")
    assert "Created flow run" in run.stdout
    prefix = tmp_path / "out"
    worker = prefect(
        "worker",
        "start",
        "--pool",
        "lmflows-local",
        "--run-once",
        env={"LMFLOWS_PREFIX": str(prefix), "PREFECT_LOGGING_LEVEL": "INFO"},
    )
    assert "Finished in state Completed" in worker.stdout + worker.stderr
    assert len(list(Path(prefix).rglob(".lmflows/commit.json"))) == 5
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        mine = [r for r in runs if r.deployment_id == toy.id]
        assert mine and mine[0].state.is_completed()
