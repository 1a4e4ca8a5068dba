"""deploy/prefect.yaml against the real Prefect server: deploy, run through a process worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def deployed() -> None:
    """The work pool and every deployment of deploy/prefect.yaml, once for the module (each
    `prefect` command is seconds of imports)."""
    prefect("work-pool", "create", "lmflows-local", "--type", "process", "--overwrite")
    prefect("work-pool", "create", "lmflows-eval", "--type", "process", "--overwrite")
    prefect("deploy", "--all", "--prefect-file", "deploy/prefect.yaml", env={"PWD": str(REPO)})


def test_deployments_deploy_schedule_and_run_on_a_worker(tmp_path, deployed):
    from prefect.client.orchestration import get_client

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


SMALL = {
    "name": "deployed",
    "urls": '["data/kjv/kjv-00.jsonl.gz"]',
    "vocab_size": "512",
    "hidden_dim": "32",
    "num_layers": "1",
    "num_heads": "2",
    "intermediate_dim": "64",
    "seq_len": "32",
    "batch_size": "8",
    "num_train_steps": "6",
}


def _run_deployment(name: str, params: dict, prefix: Path) -> str:
    """`prefect deployment run NAME --param K=V ...`, then one worker pass; the run's id."""
    import re

    args = [arg for key, value in params.items() for arg in ("--param", f"{key}={value}")]
    created = prefect("deployment", "run", name, *args)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout).group(1)
    worker = prefect(
        "worker", "start", "--pool", "lmflows-local", "--run-once",
        env={"LMFLOWS_PREFIX": str(prefix), "PREFECT_LOGGING_LEVEL": "INFO"},
        timeout=600,
    )  # fmt: skip
    assert "Finished in state Completed" in worker.stdout + worker.stderr, worker.stderr[-3000:]
    return flow_run_id


def test_parameterised_pretrain_and_evaluate_latest_deployments(tmp_path, deployed):
    """Defaults per deployment, overridden at trigger time; a second run is all Cached; the
    steps table and the keyed artifacts exist; evaluate-latest finds the newest checkpoint
    (and its evaluation is the same step as the pretrain run's: Cached)."""
    import json
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tests.helpers.api import final_task_states

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("pretrain/pretrain")
        assert deployment.parameters["num_train_steps"] == 50  # the deployment's default
        latest = client.read_deployment_by_name("evaluate-latest/evaluate-latest")
        assert [s.schedule.cron for s in latest.schedules] == ["0 4 * * *"]
    prefix = tmp_path / "out"
    first = _run_deployment("pretrain/pretrain", SMALL, prefix)
    assert final_task_states(uuid.UUID(first), 6) == ["Completed"] * 6
    second = _run_deployment("pretrain/pretrain", SMALL, prefix)
    assert final_task_states(uuid.UUID(second), 6) == ["Cached"] * 6
    with get_client(sync_client=True) as client:
        keyed = {
            a.key: a
            for a in client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(first)]))
            )
            if a.key
        }
        run = client.read_flow_run(uuid.UUID(second))
        assert run.parameters["num_train_steps"] == 6  # the override, not the default
        steps = [
            a
            for a in client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(second)]))
            )
            if a.key == "steps-pretrain"
        ]
    assert {"loss-curve-deployed", "metrics-deployed", "eval-deployed", "steps-pretrain"} <= set(
        keyed
    )
    assert [row["state"] for row in json.loads(steps[0].data)] == ["Cached"] * 6

    parameters = json.dumps({k: json.loads(v) if k != "name" else v for k, v in SMALL.items()})
    latest_run = _run_deployment(
        "evaluate-latest/evaluate-latest",
        {"experiment": "flows.pretrain", "parameters": parameters},
        prefix,
    )
    assert final_task_states(uuid.UUID(latest_run), 1) == ["Cached"]
