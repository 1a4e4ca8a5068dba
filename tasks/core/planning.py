"""Planning mode: step calls return their references without running or writing anything.

Identities depend only on arguments and upstream identities, never on results, so executing
an experiment's flow function with steps short-circuited yields the whole plan.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tasks.core import lease, records, storage, stores, walk
from tasks.core.ref import StepRef

_ACTIVE: contextvars.ContextVar[Plan | None] = contextvars.ContextVar("lmflows_plan", default=None)


@dataclasses.dataclass
class PlannedStep:
    ref: StepRef
    task_name: str
    forced: bool = False
    status: str = "unknown"
    attrs: dict = dataclasses.field(default_factory=dict)
    deps: list[str] = dataclasses.field(default_factory=list)
    isolate: bool = False  # its body runs in a worker process of its own
    # fn(name, attrs, prefix): where a run would start instead of nothing (StepDefinition)
    starts_from: Any = None


@dataclasses.dataclass
class Plan:
    """The steps an experiment would run, in call order, one row per identity."""

    steps: dict[str, PlannedStep] = dataclasses.field(default_factory=dict)

    def add(
        self,
        ref: StepRef,
        task_name: str,
        forced: bool,
        attrs: dict | None = None,
        deps: list[str] | None = None,
        isolate: bool = False,
        starts_from: Any = None,
    ) -> StepRef:
        known = self.steps.get(ref.name_with_hash)
        if known is None:
            self.steps[ref.name_with_hash] = PlannedStep(
                ref,
                task_name,
                forced,
                "unknown",
                attrs or {},
                list(deps or ()),
                isolate,
                starts_from,
            )
        else:
            known.forced = known.forced or forced
        return ref

    def runs_isolated_bodies(self) -> bool:
        """Whether a step that will execute (not committed, or forced) is `isolate=True`;
        call after `check_status`."""
        return any(s.isolate and (s.forced or s.status != "committed") for s in self.steps.values())

    def check_status(self, workers: int = 32) -> None:
        """Fill each step's status; remote prefixes are checked in parallel (Marin PR #500)."""
        prefix = storage.current_prefix()
        planned = list(self.steps.values())
        if not stores.store_for(prefix).round_trips:
            for item in planned:
                item.status = step_status(item.ref.name_with_hash, prefix)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            names = [item.ref.name_with_hash for item in planned]
            for item, status in zip(planned, pool.map(step_status, names, [prefix] * len(names))):
                item.status = status


def step_status(name_with_hash: str, prefix: str | None = None) -> str:
    """committed / running / failed / missing: the commit record, then the lease and the
    failure record kept beside the output."""
    prefix = prefix or storage.current_prefix()
    if records.read_commit(name_with_hash, prefix) is not None:
        return "committed"
    if lease.is_live(lease.read(storage.lease_path(name_with_hash, prefix))):
        return "running"
    failed = storage.failed_path(name_with_hash, prefix)
    if stores.store_for(failed).exists(failed):
        return "failed"
    return "missing"


def active_plan() -> Plan | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def planning() -> Iterator[Plan]:
    """Run the body in planning mode; calling a Prefect flow inside runs its function only."""
    import prefect

    plan = Plan()
    token = _ACTIVE.set(plan)
    original_call = prefect.Flow.__call__

    def call_flow_function(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Subflows in planning mode: no flow run, no server; steps inside still plan.
        kwargs.pop("return_state", None)
        kwargs.pop("wait_for", None)
        return self.fn(*args, **kwargs)

    prefect.Flow.__call__ = call_flow_function
    try:
        yield plan
    finally:
        prefect.Flow.__call__ = original_call
        _ACTIVE.reset(token)


@walk.register_special
class PlannedFuture:
    """What `.submit()` returns in planning mode: a finished future holding the StepRef."""

    def __init__(self, ref: StepRef) -> None:
        self.ref = ref
        self.task_run_id = None

    def result(self, *args: Any, **kwargs: Any) -> StepRef:
        return self.ref

    def wait(self, *args: Any, **kwargs: Any) -> None:
        return None

    @property
    def state(self) -> Any:
        from prefect.states import Completed

        return Completed(data=self.ref)


class PlannedFutureList(list):
    def result(self, *args: Any, **kwargs: Any) -> list[StepRef]:
        return [future.result() for future in self]

    def wait(self, *args: Any, **kwargs: Any) -> None:
        return None


def resolve_planned(value: Any) -> Any:
    """Replace PlannedFutures nested in arguments by their StepRefs."""
    return walk.replace(value, PlannedFuture, _ref_of_future)


def _ref_of_future(future: PlannedFuture) -> StepRef:
    return future.ref
