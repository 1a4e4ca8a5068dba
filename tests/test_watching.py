"""What a user watches: artifact keys, the steps table, the choice evaluate-latest makes, and
levanter kept off the terminal (the end-to-end views are in test_pipeline, test_deploy and
test_browser)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.core import flow, storage
from tasks.core.artifacts import MAX_KEY, key
from tests.helpers import steps


def test_artifact_keys_are_valid_readable_and_never_shared_by_two_names():
    assert key("loss-curve", "demo-kjv") == "loss-curve-demo-kjv"
    names = ["sweep-lr0.01", "sweep-lr0-01", "Sweep_LR0.01", "a/b", "a-b", "é", "x" * 400]
    keys = [key("metrics", n) for n in names]
    assert len(set(keys)) == len(names), keys
    for k in keys:
        assert re.fullmatch(r"[a-z0-9-]+", k) and len(k) <= MAX_KEY, k


@flow
def watched_flow():
    first = steps.nap("w-a", 0.1)
    again = steps.nap("w-a", 0.1)  # the same identity: one row
    state = steps.nap("w-state", 0.1, return_state=True)
    bad = steps.fail_after("w-bad", 0.0)
    steps.consume([bad])
    return first, again, state


def _steps_table(flow_run_id) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    [table] = [a for a in artifacts if a.key == "steps-watched-flow"]
    return json.loads(table.data)


def test_the_steps_table_has_one_row_per_step_with_its_state(prefix, call_log):
    state = watched_flow(return_state=True)
    assert state.is_failed()
    rows = {
        row["step"].rsplit("-", 1)[0]: row for row in _steps_table(state.state_details.flow_run_id)
    }
    assert sorted(rows) == ["t/consume", "t/fail-w-bad", "t/nap-w-a", "t/nap-w-state"]
    assert rows["t/nap-w-a"]["state"] == "Completed" and rows["t/nap-w-a"]["bytes"] > 0
    assert rows["t/nap-w-state"]["state"] == "Completed"
    assert rows["t/fail-w-bad"]["state"] == "Failed" and rows["t/fail-w-bad"]["bytes"] is None
    assert rows["t/consume"]["state"] == "NotReady"
    out = Path(storage.output_dir(rows["t/nap-w-a"]["step"]))
    assert rows["t/nap-w-a"]["output"] == f"file://{out}"
    assert rows["t/nap-w-a"]["seconds"] >= 0.1

    again = watched_flow(return_state=True)
    rows = {r["step"].rsplit("-", 1)[0]: r for r in _steps_table(again.state_details.flow_run_id)}
    assert rows["t/nap-w-a"]["state"] == "Cached" and rows["t/nap-w-a"]["seconds"] == 0.0


def test_evaluate_latest_picks_the_newest_readable_commit(monkeypatch):
    import flows.evaluate_latest as latest

    items = [SimpleNamespace(ref=SimpleNamespace(name_with_hash=n)) for n in ("old", "new", "bad")]
    when = {"old": 1.0, "new": 2.0, "bad": None}
    monkeypatch.setattr(latest, "committed_at", when.get)
    assert latest.newest_committed("x", items).ref.name_with_hash == "new"
    with pytest.raises(latest.NothingToEvaluate, match="no readable provenance"):
        latest.newest_committed("x", items[2:])


@pytest.mark.parametrize("experiment", ["/tmp/evil.py", "evil.py", "../x", "os.path", "sys"])
def test_evaluate_latest_never_imports_a_file_or_foreign_module(experiment):
    import flows.evaluate_latest as latest
    from flows.loader import ExperimentError

    with pytest.raises((latest.NothingToEvaluate, ExperimentError)):
        latest.load_experiment(experiment)


def test_levanter_logs_stay_in_its_file_and_logging_is_restored(tmp_path):
    import levanter.utils.logging as levanter_logging

    from tasks.lm.root_logging import restored_root_logging

    root, levanter_logger = logging.getLogger(), logging.getLogger("levanter")
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    catch = Catch()
    root.addHandler(catch)
    before = (root.handlers[:], root.level, levanter_logger.propagate, levanter_logger.level)
    try:
        with restored_root_logging():
            levanter_logging.init_logging(tmp_path, "run")
            levanter_logger.warning("Unknown leaf type <planted>")
        assert not [m for m in seen if "planted" in m], "levanter reached the root handlers"
        assert "planted" in (tmp_path / "run.log").read_text()
        after = (root.handlers[:], root.level, levanter_logger.propagate, levanter_logger.level)
        assert after == before
        assert levanter_logging.init_logging.__name__ == "init_logging"  # unpatched again
    finally:
        root.removeHandler(catch)
