"""Concurrent steps in `lmflows.flow` bodies: independent steps overlap, consumers wait for
their producers' commits, the flow waits for every step and fails naming the first failure,
`max_concurrent` bounds it, and plain `prefect.flow` bodies keep Prefect's semantics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow as prefect_flow

from tasks.core import PendingStepRef, StepFailedError, StepRef, flow
from tests.conftest import calls
from tests.helpers import steps


def _intervals(refs: list[StepRef]) -> list[tuple[float, float]]:
    return [(r.metadata["started"], r.metadata["ended"]) for r in refs]


def _overlap(intervals: list[tuple[float, float]]) -> bool:
    """Whether all intervals share a common instant."""
    return max(start for start, _ in intervals) < min(end for _, end in intervals)


@flow
def three_naps_and_consume(seconds: float = 2.0):
    naps = [steps.nap(label, seconds) for label in ("a", "b", "c")]
    assert all(isinstance(ref, PendingStepRef) for ref in naps)  # returned before they ran
    return {"naps": naps, "consume": steps.consume(naps)}


def test_independent_steps_overlap_and_the_consumer_waits_for_commits(prefix, call_log):
    result = three_naps_and_consume(2.0)
    intervals = _intervals(result["naps"])
    assert _overlap(intervals), intervals
    gathered = result["consume"].metadata
    assert gathered["producers_committed"] == [True, True, True]
    assert gathered["started"] >= max(end for _, end in intervals)
    # What the flow returns is plain: no futures escape it.
    assert all(type(ref) is StepRef for ref in [*result["naps"], result["consume"]])
    assert sorted(calls(call_log)) == ["consume", "nap-a", "nap-b", "nap-c"]


def test_max_concurrent_one_runs_them_one_after_another(prefix, call_log, monkeypatch):
    monkeypatch.setenv("LMFLOWS_MAX_CONCURRENT", "1")
    result = three_naps_and_consume(0.5)
    ordered = sorted(_intervals(result["naps"]))
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        assert start >= end, ordered


def test_bad_max_concurrent_is_refused(prefix, monkeypatch):
    from tasks.core.schedule import ConcurrencySettingError

    monkeypatch.setenv("LMFLOWS_MAX_CONCURRENT", "two")
    with pytest.raises(ConcurrencySettingError, match="LMFLOWS_MAX_CONCURRENT='two'"):
        three_naps_and_consume(0.1)


@flow
def one_fails():
    bad = steps.fail_after("x")
    fine = steps.nap("independent", 1.0)
    consumer = steps.consume([bad, fine])
    return [bad, fine, consumer]


def test_the_flow_fails_naming_the_first_failed_step_and_skips_its_consumers(prefix, call_log):
    state = one_fails(return_state=True)
    assert state.is_failed()
    bad = steps.fail_after.ref_for("x")
    assert f"step {bad.name_with_hash} failed" in state.message
    assert "planned failure x" in state.message
    with pytest.raises(StepFailedError) as info:
        state.result()
    assert isinstance(info.value.__cause__, RuntimeError)
    # The independent step still ran to its commit; the consumer never ran.
    assert sorted(calls(call_log)) == ["fail-x", "nap-independent"]
    assert Path(steps.nap.ref_for("independent", 1.0).path, ".lmflows/commit.json").exists()


@flow
def reads_metadata_in_the_body():
    first = steps.nap("m", 0.5)
    seconds = first.metadata["ended"] - first.metadata["started"]  # waits for the step
    return steps.nap("after", round(seconds, 1)), first


def test_metadata_waits_and_return_state_still_returns_a_state(prefix, call_log):
    after, first = reads_metadata_in_the_body()
    assert after.metadata["started"] >= first.metadata["ended"]

    @flow
    def with_state():
        return steps.nap("state", 0.1, return_state=True)

    state = with_state()
    assert state.is_completed() and state.result() == steps.nap.ref_for("state", 0.1)


@prefect_flow
def plain_prefect_flow():
    a = steps.nap("p1", 0.5)
    assert type(a) is StepRef and a.metadata["ended"]  # ran to the end already
    return a, steps.nap("p2", 0.5)


def test_a_plain_prefect_flow_still_runs_calls_to_the_end(prefix, call_log):
    a, b = plain_prefect_flow()
    assert b.metadata["started"] >= a.metadata["ended"]


def test_a_second_run_is_all_cached_and_equal(prefix, call_log):
    first = three_naps_and_consume(0.2)
    second = three_naps_and_consume(0.2)
    assert second == first
    assert len(calls(call_log)) == 4  # nothing ran twice
    stamp = json.loads(Path(first["consume"].path, "stamp.json").read_text())
    assert stamp["label"] == "consume"
