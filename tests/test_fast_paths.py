"""The shortcuts taken for speed (benches/plan_scale.py, benches/cached_chain.py) give what the
general code gives: the same bound arguments, the same identity, the same error."""

from __future__ import annotations

import dataclasses
import enum
import inspect
from pathlib import Path, PurePosixPath

import pytest
from prefect import flow

from tasks.core import identity, set_force, walk
from tasks.core.definition import define
from tasks.core.ref import StepRef
from tests.conftest import calls
from tests.helpers import steps
from tests.helpers.api import final_task_runs


def _reference_identify(name_template, hash_attrs, arguments, prefix):
    """identify() as it was before the shortcuts: three walks per hash attribute."""
    name = identity.fill_name(name_template, arguments)
    attrs, deps = {}, set()
    for param, value in arguments.items():
        if param not in hash_attrs:
            if identity.find_refs(value):
                raise identity.StepArgumentError(
                    f"step {name!r}: parameter {param!r} receives a step output but is not a "
                    "hash attribute; declare it in hash_attrs (an input defines the output)"
                )
            continue
        deps.update(ref.name_with_hash for ref in identity.find_refs(value))
        attrs[param] = plain = identity.to_plain(value, f"hash attribute {param!r}")
        identity._refuse_prefix_paths(name, param, plain, prefix)
    dep_list = sorted(deps)
    return identity.Identity(name, attrs, dep_list, identity.compute_hash(name, attrs, dep_list))


class Color(enum.Enum):
    RED = "red"
    PATHS = ("/p/inside", "x")


class Size(enum.IntEnum):
    BIG = 3


@dataclasses.dataclass
class Shape:
    sides: int
    ref: object = None


A = StepRef("t/a", "0123456789")
B = StepRef("t/b", "abcdef0123", sub_path="x/y.json")

VALUES = [
    1, 2.5, True, None, "text", "/elsewhere/file", "/p/inside/file", "gs://b/x",
    float("nan"), float("inf"), Size.BIG, Color.RED, Color.PATHS, PurePosixPath("/p/inside"),
    [A, B, A], (A, 1), {"k": [A, {"n": B}]}, {"k": "/p/inside"}, Shape(3, A),
    Shape(3, "/p/inside/z"), [{1, 2}], [{A}], {A: 1}, {1: 2}, [object()], [b"bytes"],
    [Color.RED, Size.BIG, 1.0, -0.0],
]  # fmt: skip


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - the error is what is compared
        return ("error", type(exc), str(exc))


@pytest.mark.parametrize("value", VALUES, ids=[f"value{i}" for i in range(len(VALUES))])
@pytest.mark.parametrize("hashed", [True, False])
def test_identify_gives_what_the_three_walks_give(value, hashed):
    arguments = {"x": value, "n": 1}
    attrs = ("x", "n") if hashed else ("n",)
    ours = _outcome(lambda: identity.identify("t/s", attrs, arguments, prefix="/p"))
    theirs = _outcome(lambda: _reference_identify("t/s", attrs, arguments, "/p"))
    assert ours == theirs


def _signature_bind(definition, args, kwargs):
    try:
        bound = definition.signature.bind(*args, **kwargs)
    except TypeError:
        return "error"
    bound.apply_defaults()
    return dict(bound.arguments)


def _fn(a, b=2, /, c=3, *, d, e=5, output_path: str):
    return None


CALLS = [
    ((1,), {"d": 4}), ((1, 2, 3), {"d": 4}), ((1,), {"c": 9, "d": 4, "e": 1}), ((), {"d": 4}),
    ((1,), {}), ((1,), {"a": 1, "d": 4}), ((1, 2, 3, 4), {"d": 4}), ((1, 2), {"c": 1, "d": 1}),
    ((1, 2, 3), {"c": 3, "d": 4}), ((1,), {"d": 4, "zz": 0}), ((1,), {"d": 4, "output_path": 1}),
]  # fmt: skip


@pytest.mark.parametrize("args, kwargs", CALLS, ids=[f"call{i}" for i in range(len(CALLS))])
def test_bind_gives_what_inspect_gives(args, kwargs):
    definition = define(
        _fn, hash_attrs=["a", "b", "c", "d", "e"], operational=[], name="t/f",
        resources=None, validate=None,
    )  # fmt: skip
    fast = definition.bind(args, kwargs)
    expected = _signature_bind(definition, args, kwargs)
    if fast is None:  # not a plain fit: the caller binds with inspect (and its error)
        return
    assert expected != "error" and list(fast.items()) == list(expected.items())


def test_bind_falls_back_only_where_inspect_is_needed():
    definition = define(
        _fn, hash_attrs=["a", "b", "c", "d", "e"], operational=[], name="t/f",
        resources=None, validate=None,
    )  # fmt: skip
    for args, kwargs in CALLS:
        if _signature_bind(definition, args, kwargs) == "error":
            assert definition.bind(args, kwargs) is None, (args, kwargs)


def test_unjoined_heartbeats_pass_join_on_exit_false_and_restore():
    from prefect import flow_engine

    from flows.cli import _unjoined_heartbeats

    original = flow_engine._send_heartbeats
    assert "join_on_exit" in inspect.signature(original).parameters
    seen = []

    def recorder(engine, join_on_exit=True):
        seen.append(join_on_exit)
        return original(engine, join_on_exit=join_on_exit)

    flow_engine._send_heartbeats = recorder
    try:
        with _unjoined_heartbeats():
            with flow_engine._send_heartbeats(_NoHeartbeats()):
                pass
        assert flow_engine._send_heartbeats is recorder
    finally:
        flow_engine._send_heartbeats = original
    assert seen == [False]


class _NoHeartbeats:
    heartbeat_seconds = None


def test_walk_is_still_the_only_traversal():
    # the fused walk is walk.walk itself, with one leaf function doing the three jobs
    assert identity._hash_attribute.__code__.co_names.count("walk") >= 1
    assert walk.walk is identity.walk.walk


def test_a_committed_step_in_a_plain_flow_is_a_cached_task_run_on_the_server(prefix):
    """The shortcut for committed steps (no task engine) records what the engine would: a
    task run named after the identity, in state Cached, with its upstream link, the stored
    ref (metadata included), a `Cached` state for return_state, and the log line."""
    import logging

    from prefect import flow

    from tests.helpers import steps
    from tests.helpers.api import final_task_runs

    @flow
    def two():
        a = steps.source(4)
        b = steps.derive(a, k=3, return_state=True)
        return a, b

    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("prefect.task_runs")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        first_a, first_b = two()
        assert lines.count("Finished in state Completed()") == 2  # the engine's line
        state = two(return_state=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    a, b = state.result()
    assert a == first_a and a.metadata == first_a.metadata
    assert b.name == "Cached" and b.is_completed() and b.result() == first_b.result()
    assert b.result().metadata == first_b.result().metadata
    runs = final_task_runs(state.state_details.flow_run_id, 2)
    by_name = {run.name: run for run in runs}
    assert sorted(by_name) == sorted([a.name_with_hash, b.result().name_with_hash])
    assert {run.state.name for run in runs} == {"Cached"}
    upstream = by_name[b.result().name_with_hash].task_inputs["src"]
    assert [i.id for i in upstream] == [by_name[a.name_with_hash].id]
    assert b.state_details.task_run_id == by_name[b.result().name_with_hash].id
    assert lines.count("Finished in state Cached(type=COMPLETED)") == 2


# Options under which the served path must give what the engine gives (or step aside for it).
SERVED_OPTIONS = {
    "plain": {},
    "task_run_name": {"task_run_name": "custom-name"},
    "retries": {"retries": 1},
    "name": {"name": "renamed"},
}


def _second_call(options: dict) -> dict:
    """What the second call of a committed step in a plain flow looks like on the server."""

    @flow
    def twice():
        steps.source(4)  # commits
        return steps.source.with_options(**options)(4, return_state=True)

    state = twice(return_state=True)
    inner = state.result()
    (run,) = [
        r
        for r in final_task_runs(state.state_details.flow_run_id, 2)
        if r.id == inner.state_details.task_run_id
    ]
    return {"state": inner.name, "result": str(inner.result()), "run": run.name}


@pytest.mark.parametrize("options", list(SERVED_OPTIONS))
def test_a_served_step_looks_like_the_engines_under_task_options(options, tmp_path, monkeypatch):
    """Found by an attack: a user's `task_run_name` was replaced by the identity."""
    from tasks.core import decorator

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path / "served"))
    served = _second_call(SERVED_OPTIONS[options])
    monkeypatch.setattr(decorator, "serve_committed", lambda *args: None)
    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path / "engine"))
    assert served == _second_call(SERVED_OPTIONS[options])
    assert served["state"] == "Cached"


def test_persist_result_false_is_refused_naming_why():
    """It makes Prefect drop the cache policy: no lease, and a step that can never commit."""
    with pytest.raises(ValueError, match="persist_result=False would turn off its commit"):
        steps.source.with_options(persist_result=False)


def test_a_damaged_or_forced_step_is_recomputed_not_served(prefix, call_log):
    @flow
    def once():
        return steps.source(5)

    out = Path(once().path)
    (out / "data.json").write_text("[]")  # truncated
    once()
    commit = out / ".lmflows" / "commit.json"
    commit.unlink()
    commit.mkdir()  # a folder planted where the record was
    once()
    assert calls(call_log) == ["source-5"] * 3

    @flow
    def twice():
        steps.source(5)
        return steps.source(5, return_state=True)

    set_force(["t/source*"])
    try:
        state = twice()
    finally:
        set_force([])
    assert calls(call_log) == ["source-5"] * 4  # forced once per process, then served
    assert state.name == "Cached"
