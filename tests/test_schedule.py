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


# --- found by the attack review ---------------------------------------------------------------


def _finishes_within(seconds: float, fn, *args):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return."""
    import threading

    box = {}

    def run():
        box["value"] = fn(*args)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s"
    return box["value"]


@flow(max_concurrent=1)
def bounded_with_a_failure():
    bad = steps.fail_after("bounded", 0.1)
    steps.consume([bad])  # never runs: its producer failed (NotReady)
    return steps.nap("after-failure", 0.1)  # must still get room


def test_max_concurrent_counts_a_skipped_consumer_as_finished(prefix, call_log):
    state = _finishes_within(120, _state_of, bounded_with_a_failure)
    assert state.is_failed() and "t/fail-bounded" in state.message


def _state_of(flow_fn):
    return flow_fn(return_state=True)


@flow
def two_failures():
    slow = steps.fail_after("first-called", 1.0)
    fast = steps.fail_after("second-called", 0.0)
    return [slow, fast]


def test_the_first_failure_in_call_order_is_named_not_the_first_in_time(prefix, call_log):
    state = two_failures(return_state=True)
    assert "t/fail-first-called" in state.message and "second-called" not in state.message


@prefect_flow
def plain_subflow(label: str):
    ref = steps.nap(label, 0.3)
    assert type(ref) is StepRef, "a plain prefect.flow keeps Prefect's semantics"
    try:
        steps.fail_after("in-plain-subflow", 0.0)
    except Exception:
        return ref, "caught"
    return ref, "not raised"


@flow
def calls_a_plain_subflow():
    return plain_subflow("sub")


def test_a_plain_prefect_subflow_of_a_concurrent_flow_runs_its_calls_to_the_end(prefix):
    ref, outcome = calls_a_plain_subflow()
    assert outcome == "caught" and ref.metadata["ended"]


@flow
def same_step_twice():
    first = steps.nap("twice", 0.3)
    second = steps.nap("twice", 0.3)
    return first, second


def test_the_same_identity_twice_in_one_body_is_one_task_run_even_when_forced(prefix, call_log):
    from tasks.core import set_force

    same_step_twice()
    set_force(["t/nap-twice"])
    try:
        first, second = same_step_twice()
    finally:
        set_force([])
    assert calls(call_log) == ["nap-twice", "nap-twice"]  # once per run, the forced one too
    assert first.metadata == second.metadata  # both calls see the new output


@flow
def explicit_wait_for():
    first = steps.nap("wait-1", 1.0)
    second = steps.nap("wait-2", 0.1, wait_for=[first])
    return first, second


def test_an_explicit_wait_for_a_pending_ref_is_honoured(prefix):
    first, second = explicit_wait_for()
    assert second.metadata["started"] >= first.metadata["ended"]


@flow
def returns_refs_as_keys():
    refs = [steps.nap(label, 0.1) for label in ("k1", "k2")]
    return {ref: ref.name for ref in refs}


def test_refs_as_dict_keys_in_the_return_value_are_fine(prefix):
    result = returns_refs_as_keys()
    assert sorted(result.values()) == ["t/nap-k1", "t/nap-k2"]
