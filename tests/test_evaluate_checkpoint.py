"""Evaluate while training: a training announces each checkpoint it saves
(`lmflows.checkpoint.saved`), the `evaluate-checkpoint` deployment of deploy/prefect.yaml is
triggered by it on the real server and run by a real process worker, and each checkpoint is
evaluated once. Bad event content is refused in one line before anything is read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tasks.core import lease, storage
from tests.conftest import REPO
from tests.test_deploy import deployed  # noqa: F401 - the module fixture: pools and deployments

DEPLOYMENT = "evaluate-checkpoint/evaluate-checkpoint"


def _runs_for(training: str, count: int, timeout: float) -> list:
    """The evaluate-checkpoint flow runs of `training` (an identity) once `count` of them are
    final (or at `timeout`). Runs for other trainings (other tests' trainings on this server,
    under other prefixes: refused there) are not counted."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=[DEPLOYMENT.split("/")[1]])
                )
            )
            runs = [r for r in runs if r.parameters.get("training") == f"lmflows.step.{training}"]
            final = [r for r in runs if r.state and r.state.is_final()]
            if len(final) >= count or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


@pytest.fixture
def eval_worker(on_shared, tmp_path):
    """A process worker on the evaluation pool, polling every second, for the test's length;
    it writes under the shared prefix, where the training runs."""
    log = open(tmp_path / "worker.log", "wb")
    env = {
        **os.environ,
        "LMFLOWS_PREFIX": on_shared,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "lmflows-eval"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield tmp_path / "worker.log"
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
    log.close()


@pytest.mark.usefixtures("deployed")
def test_each_checkpoint_of_a_training_is_evaluated_once(tiny_lm, on_shared, eval_worker):
    """A fresh training (the point is its checkpoints being saved: the shared tiny model has
    one) of 7 steps saving every 2: checkpoints 2, 4 and 6, three evaluations, each once; the
    first two announced from the running training's resume folder; an event delivered again
    runs the flow again and its evaluation is Cached."""
    from prefect.events import emit_event

    from tasks.core import flow
    from tasks.lm.checkpoint_events import EVENT, checkpoint_resource
    from tasks.lm.train import train_lm
    from tests.helpers.api import final_task_states
    from tests.helpers.tiny import TINY

    started = time.monotonic()
    shape = {k: v for k, v in TINY.items() if k != "num_train_steps"}

    @flow(name="watched-training")
    def watched():
        return train_lm(
            {"kjv": tiny_lm["tokenized"]},
            tiny_lm["tokenizer"],
            "watched",
            **shape,
            num_train_steps=7,
            checkpoint_every=2,
        )

    model = watched()
    trained = time.monotonic() - started
    runs = _runs_for(model.name_with_hash, 3, timeout=180)
    log = eval_worker.read_text(errors="replace")[-3000:]
    assert len(runs) == 3, ([r.parameters for r in runs], log)
    assert [r.state.name for r in runs] == ["Completed"] * 3, ([r.state.message for r in runs], log)
    by_step = {int(r.parameters["checkpoint_step"]): r for r in runs}
    assert sorted(by_step) == [2, 4, 6]
    staging = f".lmflows/staging/{model.name_with_hash}/resume/checkpoints/step-"
    for step in (2, 4):  # announced while the training ran, from where it wrote them
        assert by_step[step].parameters["checkpoint"] == f"{staging}{step}"
    for run in runs:
        assert final_task_states(run.id, 1) == ["Completed"]
    committed = sorted(Path(on_shared, "eval", "watched").glob("*/.lmflows/commit.json"))
    assert len(committed) == 3, committed
    assert {p.parent.parent.name.rsplit("-", 1)[0] for p in committed} == {
        "step-2",
        "step-4",
        "step-6",
    }
    evaluated = time.monotonic() - started

    # The same checkpoint announced again: a fourth flow run, its evaluation Cached.
    resource = checkpoint_resource(model.name_with_hash, 4, f"{staging}4")
    payload = {
        "data": {"kjv": tiny_lm["tokenized"].name_with_hash},
        "tokenizer": tiny_lm["tokenizer"].name_with_hash,
    }
    assert emit_event(event=EVENT, resource=resource, payload=payload) is not None
    from flows.runners import send_queued_events

    send_queued_events()
    runs = _runs_for(model.name_with_hash, 4, timeout=120)
    assert len(runs) == 4 and all(r.state.is_completed() for r in runs), [r.state for r in runs]
    again = [r for r in runs if r.id not in {x.id for x in by_step.values()}]
    assert final_task_states(again[0].id, 1) == ["Cached"]
    assert len(list(Path(on_shared, "eval", "watched").glob("*/.lmflows/commit.json"))) == 3
    print(
        f"training {trained:.1f} s, three evaluations done {evaluated:.1f} s, "
        f"all {time.monotonic() - started:.1f} s after the start"
    )


def test_a_checkpoint_is_announced_once_it_is_complete_and_temporary_ones_never(tmp_path):
    """levanter's own Checkpointer saving a small tree: the announcer is called once per
    permanent checkpoint, after levanter wrote `metadata.json` (the checkpoint is whole), with
    the step and the folder; a temporary (time-based) checkpoint is not announced."""
    import types

    import jax.numpy as jnp
    from levanter.checkpoint import Checkpointer, CheckpointInterval

    from tasks.lm.checkpoint_events import watch

    seen = []

    def announcer(step: int, path: str) -> None:
        seen.append((step, path, os.path.exists(os.path.join(path, "metadata.json"))))

    base = str(tmp_path / "checkpoints")
    checkpointer = Checkpointer(base, None, [CheckpointInterval(every=1)])
    watch(checkpointer, announcer)

    def info(step: int):
        state = types.SimpleNamespace(saveable_state={"w": jnp.arange(4.0) * step})
        return types.SimpleNamespace(step=step, state=state)

    checkpointer.save_checkpoint(info(3), "step-3")
    checkpointer.save_checkpoint(info(4), "step-4", is_temporary=True)
    checkpointer.wait_until_finished()
    assert seen == [(3, f"{base}/step-3", True)]
    assert os.path.exists(f"{base}/step-4/metadata.json")  # saved, only not announced


def _events_named(resource_id: str, timeout: float) -> list:
    """The server's stored events of `resource_id` (its events API), waiting up to `timeout`
    for one (the server persists events in batches)."""
    import httpx

    from tests.conftest import API_URL

    body = {"filter": {"resource": {"id": [resource_id]}}, "limit": 10}
    deadline = time.monotonic() + timeout
    while True:
        found = httpx.post(f"{API_URL}/events/filter", json=body, timeout=10).json()["events"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_an_isolated_body_sends_its_queued_events_before_its_process_exits(prefix):
    """An event emitted as the body's last act still reaches the server: the worker process
    drains Prefect's event queue before it ends (it exits with os._exit)."""
    from tasks.core import flow
    from tests.helpers.steps import announcing

    label = uuid.uuid4().hex[:12]

    @flow(name="announcing")
    def announce():
        return announcing(label)

    announce()
    assert len(_events_named(f"lmflows.test.{label}", timeout=30)) == 1


# --- bad event content: one line, nothing read or run ---------------------------------------

IDENTITY = "checkpoints/x-0123456789"


def test_bad_event_content_is_refused_in_one_line(prefix):
    """Every parameter an event sets is checked before anything is read or run."""
    from flows.evaluate_checkpoint import (
        BadCheckpointEvent,
        check_place,
        checked_inputs,
        step_number,
        training_identity,
        training_inputs,
    )

    refused = {
        "not an identity": lambda: training_identity("lmflows.step.checkpoints/x"),
        "not a training": lambda: training_identity("tokenized/kjv-0123456789"),
        "not a number": lambda: step_number("4; rm -rf /"),
        "negative": lambda: step_number(-1),
        "escapes": lambda: check_place("../../etc/passwd", IDENTITY, 2, prefix),
        "escapes inside": lambda: check_place(f"{IDENTITY}/../../x", IDENTITY, 2, prefix),
        "absolute": lambda: check_place("/etc/passwd", IDENTITY, 2, prefix),
        "a url": lambda: check_place("gs://other/x/checkpoints/step-2", IDENTITY, 2, prefix),
        "another step": lambda: check_place(f"{IDENTITY}/checkpoints/step-4", IDENTITY, 2, prefix),
        "unknown training": lambda: training_inputs(IDENTITY, prefix),
        "foreign data": lambda: checked_inputs(
            IDENTITY, {"kjv": "tokenized/other-0123456789"}, "tokenizer/t-0123456789",
            {"deps": ["tokenized/kjv-0123456789", "tokenizer/t-0123456789"]},
        ),
        "data leaving its output": lambda: checked_inputs(
            IDENTITY, {"kjv": "tokenized/kjv-0123456789/../../../etc"}, "tokenizer/t-0123456789",
            {"deps": ["tokenized/kjv-0123456789", "tokenizer/t-0123456789"]},
        ),
        "no data": lambda: checked_inputs(IDENTITY, {}, "tokenizer/t-0123456789", {"deps": []}),
    }  # fmt: skip
    messages = {}
    for label, call in refused.items():
        with pytest.raises(BadCheckpointEvent) as caught:
            call()
        messages[label] = str(caught.value)
        assert "\n" not in messages[label], label
    assert "escapes the prefix" in messages["escapes"]
    assert "escapes the prefix" in messages["escapes inside"]
    assert "escapes the prefix" in messages["a url"]
    assert "is not where" in messages["another step"]
    assert "inside the prefix" in messages["data leaving its output"]
    assert "neither committed nor running" in messages["unknown training"]
    # the places a checkpoint may be: the output, and the resume folder of a running training
    check_place(f"{IDENTITY}/checkpoints/step-2", IDENTITY, 2, prefix)
    check_place(f".lmflows/staging/{IDENTITY}/resume/checkpoints/step-2", IDENTITY, 2, prefix)


def test_a_running_training_is_known_by_its_live_lease(prefix):
    """While a training runs (a live lease) its inputs are its lease's; an event naming
    others is refused; once the lease is gone the training is unknown."""
    from flows.evaluate_checkpoint import BadCheckpointEvent, checked_inputs, training_inputs

    deps = ["tokenized/kjv-0123456789", "tokenizer/t-0123456789"]
    where = storage.lease_path(IDENTITY, storage.current_prefix())
    assert lease.try_acquire(where, uuid.uuid4().hex, deps=deps)
    try:
        assert training_inputs(IDENTITY, storage.current_prefix()) == {"deps": deps}
        with pytest.raises(BadCheckpointEvent, match="are not inputs of the running"):
            checked_inputs(IDENTITY, {"kjv": deps[1]}, "tokenizer/u-0123456789", {"deps": deps})
        with pytest.raises(BadCheckpointEvent, match="is not committed"):
            checked_inputs(IDENTITY, {"kjv": deps[0]}, deps[1], {"deps": deps})
    finally:
        lease.release(where)
    with pytest.raises(BadCheckpointEvent, match="neither committed nor running"):
        training_inputs(IDENTITY, storage.current_prefix())


def test_the_flow_refuses_a_forged_event_before_any_step(prefix):
    """The deployment's flow itself: a path escaping the prefix fails the run with one line,
    and no step runs."""
    from flows.evaluate_checkpoint import evaluate_checkpoint_flow

    state = evaluate_checkpoint_flow(
        training=f"lmflows.step.{IDENTITY}",
        checkpoint_step="2",
        checkpoint="../../../home",
        data={"kjv": "tokenized/kjv-0123456789"},
        tokenizer="tokenizer/t-0123456789",
        return_state=True,
    )
    assert state.is_failed()
    assert "escapes the prefix" in state.message and "\n" not in state.message.strip()
    assert not Path(prefix, "eval").exists()
