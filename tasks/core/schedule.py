"""Concurrent steps: inside an `lmflows.flow` body a step call returns its StepRef at once.

A step's identity needs no result (only upstream identities), so a call can hand back its
reference while the step runs. The step is submitted to the flow's task runner with the steps it
consumes as `wait_for`; reading `.metadata` (or `.wait()`) waits for it; the flow body's end
waits for every step it started and fails with the first failure in call order, naming the
step. Independent steps (a sweep's trainings) therefore run at the same time, bounded by
`max_concurrent` (`--max-concurrent`, `LMFLOWS_MAX_CONCURRENT`): at most that many steps are
started and unfinished; the body blocks at the next call until one finishes (Marin's
`max_concurrent`). Plain `prefect.flow` bodies keep Prefect's semantics: a call runs to the end.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prefect.futures import PrefectFuture, as_completed

from tasks.core import walk
from tasks.core.ref import StepRef

MAX_CONCURRENT_ENV = "LMFLOWS_MAX_CONCURRENT"
logger = logging.getLogger("lmflows.schedule")


class StepFailedError(RuntimeError):
    """A step started by a flow body failed (the first in call order is reported)."""


class ConcurrencySettingError(ValueError):
    """A `--max-concurrent` / `LMFLOWS_MAX_CONCURRENT` that is not a positive whole number."""


class PendingStepRef(StepRef):
    """A StepRef whose step may still be running. `.metadata` waits for it; identity, path
    and equality are those of a plain StepRef (a pending ref never leaves its flow)."""

    _future: PrefectFuture | None = None

    @property  # type: ignore[override]
    def metadata(self) -> Any:
        if self._future is not None:
            done = _result_of(self._future, self)  # waits; raises the step's failure
            return {} if self.sub_path else done.metadata  # as StepRef.cd: no metadata
        return self.__dict__.get("_metadata", {})

    @metadata.setter
    def metadata(self, value: Any) -> None:
        object.__setattr__(self, "_metadata", value)

    def wait(self) -> StepRef:
        """Wait until the step committed (or raise its failure); returns the plain ref."""
        return resolved(self)

    def cd(self, sub_path: str) -> StepRef:
        plain = StepRef(self.name, self.hash, self.sub_path).cd(sub_path)
        return pending(plain, self._future)

    def __reduce__(self) -> Any:  # anything that pickles it gets the plain reference
        return (StepRef, (self.name, self.hash, self.sub_path, {}))


def pending(ref: StepRef, future: PrefectFuture | None) -> PendingStepRef:
    out = PendingStepRef(ref.name, ref.hash, ref.sub_path, {})
    object.__setattr__(out, "_future", future)
    return out


def resolved(ref: StepRef) -> StepRef:
    """The plain StepRef of a (possibly pending) ref, with its metadata, once committed."""
    if not isinstance(ref, PendingStepRef):
        return ref
    done = _result_of(ref._future, ref) if ref._future is not None else ref
    return StepRef(ref.name, ref.hash, ref.sub_path, done.metadata if not ref.sub_path else {})


def _result_of(future: PrefectFuture, ref: StepRef) -> StepRef:
    state = _wait(future)
    if not state.is_completed():
        raise StepFailedError(_failure_line(ref, state)) from _exception_of(state)
    return state.result()


def _wait(future: PrefectFuture) -> Any:
    future.wait()
    return future.state


def _exception_of(state: Any) -> BaseException | None:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - only to chain it
        return exc
    return None


def _failure_line(ref: StepRef, state: Any) -> str:
    message = (state.message or state.name or "").strip().splitlines()
    return f"step {ref.name_with_hash} {state.name.lower()}: {message[0] if message else ''}"


def plain_arguments(value: Any) -> Any:
    """What is handed to the task runner: pending refs become plain StepRefs (a future must
    not travel to a Ray worker, nor be serialised into the task run's parameters)."""
    return walk.replace(value, PendingStepRef, _plain)


def _plain(ref: PendingStepRef) -> StepRef:
    return StepRef(ref.name, ref.hash, ref.sub_path)


def upstream_futures(value: Any) -> list[PrefectFuture]:
    """The futures of the pending steps a call consumes (what it waits for)."""
    futures = []
    for ref in walk.collect(value, StepRef):
        future = getattr(ref, "_future", None)
        if future is not None and future not in futures:
            futures.append(future)
    return futures


def futures_of(wait_for: Any) -> list[Any]:
    """An explicit `wait_for=`: futures as they are, pending refs as their futures (a plain,
    committed StepRef needs no waiting)."""
    found = []
    for item in wait_for or ():
        if isinstance(item, StepRef):
            item = getattr(item, "_future", None)
        if item is not None and item not in found:
            found.append(item)
    return found


class Scheduler:
    """The steps one flow body started, in call order."""

    def __init__(
        self, max_concurrent: int | None, flow_run_id: Any = None, concurrent: bool = True
    ) -> None:
        self.concurrent = concurrent  # False: calls run to their end, only recorded
        self.max_concurrent = max_concurrent
        self.flow_run_id = flow_run_id  # the run whose body started the steps
        self.started: list[tuple[StepRef, PrefectFuture]] = []
        self._by_identity: dict[str, PrefectFuture] = {}
        self._lock = threading.Lock()

    def start(self, ref: StepRef, submit: Callable[[], PrefectFuture]) -> PendingStepRef:
        """Submit a call, or hand back the future of the same identity started earlier in
        this body: one task run per identity per flow run (a second `--force`d call must not
        be served the old output while the first rewrites it)."""
        with self._lock:
            known = self._by_identity.get(ref.name_with_hash)
        if known is not None:
            return pending(ref, known)
        if self.max_concurrent:
            self._wait_for_room()
        future = submit()
        with self._lock:
            self.started.append((ref, future))
            self._by_identity[ref.name_with_hash] = future
        return pending(ref, future)

    def record(self, ref: StepRef, future: PrefectFuture) -> None:
        """A call that was waited for at once (`return_state=True`): in the steps table."""
        with self._lock:
            self.started.append((ref, future))
            self._by_identity.setdefault(ref.name_with_hash, future)

    def publish_table(self) -> None:
        """The `steps-<flow>` table artifact: one row per step this body started."""
        from prefect.context import FlowRunContext

        from tasks.core import artifacts, storage

        ctx = FlowRunContext.get()
        if ctx is None or not self.started:
            return
        prefix = storage.current_prefix()
        seen, rows = set(), []
        for ref, future in self.started:
            if ref.name_with_hash in seen:
                continue
            seen.add(ref.name_with_hash)
            rows.append(artifacts.step_row(ref, future.state, prefix))
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        artifacts.publish_table(
            artifacts.key("steps", ctx.flow.name),
            rows,
            f"steps of flow run {ctx.flow_run.name}: {summary}",
        )

    def _wait_for_room(self) -> None:
        while True:
            unfinished = [f for _, f in self.started if not _finished(f.state)]
            if len(unfinished) < self.max_concurrent:
                return
            next(iter(as_completed(unfinished)))

    def wait_all(self) -> None:
        """Wait for every started step, publish the steps table, raise the first failure in
        call order."""
        for _ref, future in self.started:
            future.wait()
        self.publish_table()
        for ref, future in self.started:
            state = future.state
            if not state.is_completed() and not _waited_on_failure(state):
                raise StepFailedError(_failure_line(ref, state)) from _exception_of(state)
        for ref, future in self.started:  # only upstream failures left: name the step anyway
            state = future.state
            if not state.is_completed():
                raise StepFailedError(_failure_line(ref, state)) from _exception_of(state)


def _finished(state: Any) -> bool:
    """Final, or never to run: a consumer of a failed step ends in Pending("NotReady")."""
    return state.is_final() or state.name == "NotReady"


def _waited_on_failure(state: Any) -> bool:
    """A step that never ran because a step it consumes failed (reported there)."""
    return state.is_pending() or "upstream" in (state.message or "").lower()


_ACTIVE: contextvars.ContextVar[Scheduler | None] = contextvars.ContextVar(
    "lmflows_scheduler", default=None
)


def active() -> Scheduler | None:
    """The scheduler of the flow run whose body is running here, if it is an `lmflows.flow`.
    A plain `prefect.flow` called as a subflow inherits the context variable, but not the
    behaviour: its calls run to their end, as its author expects."""
    scheduler = _ACTIVE.get()
    if scheduler is None:
        return None
    return scheduler if _current_flow_run_id() == scheduler.flow_run_id else None


def _current_flow_run_id() -> Any:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None


def max_concurrent_setting() -> int | None:
    raw = os.environ.get(MAX_CONCURRENT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConcurrencySettingError(
            f"--max-concurrent / {MAX_CONCURRENT_ENV}={raw!r}: need a positive whole number"
        )
    return value


@contextlib.contextmanager
def concurrent_steps(
    max_concurrent: int | None = None, concurrent: bool = True
) -> Iterator[Scheduler]:
    scheduler = Scheduler(
        max_concurrent or max_concurrent_setting(), _current_flow_run_id(), concurrent
    )
    token = _ACTIVE.set(scheduler)
    try:
        yield scheduler
    finally:
        _ACTIVE.reset(token)


def flow(
    fn: Callable[..., Any] | None = None, *, max_concurrent: int | None = None, **flow_options: Any
) -> Any:
    """`prefect.flow` whose step calls run concurrently (see the module docstring).

    ``@flow(name="lr-sweep")``; every keyword but `max_concurrent` goes to `prefect.flow`.
    The body's return value comes back with every pending ref resolved (plain StepRefs with
    their metadata)."""
    import prefect

    if fn is None:
        return functools.partial(flow, max_concurrent=max_concurrent, **flow_options)

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        with concurrent_steps(max_concurrent) as scheduler:
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                _settle_quietly(scheduler)
                raise
            scheduler.wait_all()
        try:
            return walk.replace(result, PendingStepRef, resolved)
        except TypeError:  # refs as dict keys or set members: already done, equal to plain
            return result

    body._lmflows_flow = True  # type: ignore[attr-defined]
    return prefect.flow(body, **flow_options)


def recording(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A plain `prefect.flow` body as `python -m flows run` runs it: calls keep Prefect's
    run-to-the-end semantics, but are recorded, so the run still ends with its steps table."""
    if getattr(fn, "_lmflows_flow", False):
        return fn

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        with concurrent_steps(concurrent=False) as scheduler:
            try:
                return fn(*args, **kwargs)
            finally:
                with contextlib.suppress(Exception):
                    scheduler.publish_table()

    body._lmflows_flow = True  # type: ignore[attr-defined]
    return body


def _settle_quietly(scheduler: Scheduler) -> None:
    """The body failed: let started steps finish (no orphan writes after the flow ends)."""
    started = time.monotonic()
    for _ref, future in scheduler.started:
        with contextlib.suppress(Exception):
            future.wait()
    with contextlib.suppress(Exception):
        scheduler.publish_table()
    logger.debug("settled %d steps in %.1fs", len(scheduler.started), time.monotonic() - started)
