"""`@step`: a plain-argument function becomes a `prefect.Task` keyed by its identity.

(The module is not called `step.py`: a module and a function of one name in a package shadow
each other for `from tasks.core import step`.)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable, Iterable
from typing import Any

from prefect import Task
from prefect.exceptions import ParameterBindError
from prefect.futures import PrefectFuture
from prefect.utilities.callables import get_call_parameters
from pydantic.fields import FieldInfo

from tasks.core import (
    failures,
    planning,
    records,
    schedule,
    walk,
)
from tasks.core.attempt import make_runner, refs_to_paths
from tasks.core.definition import OUTPUT_PATH, StepDefinition, StepDefinitionError, define
from tasks.core.identity import Identity
from tasks.core.policy import IdentityRunName, LeaseLockManager, StepCachePolicy
from tasks.core.ref import StepRef
from tasks.core.served import serve_committed

walk.register_special(PrefectFuture)
failures.install()

__all__ = [
    "Step",
    "StepDefinitionError",
    "refs_to_paths",
    "set_force",
    "set_only",
    "step",
]


# --- --force: steps whose name matches are re-executed once per process -----------------

_FORCE_GLOBS: tuple[str, ...] = ()
_FORCED_DONE: set[str] = set()


def set_force(globs: Iterable[str]) -> None:
    """Re-execute steps whose name matches any glob (fnmatch), once each in this process."""
    global _FORCE_GLOBS
    _FORCE_GLOBS = tuple(globs)
    _FORCED_DONE.clear()


def is_forced(name: str, name_with_hash: str | None = None) -> bool:
    """Whether a --force glob matches the step's name (or its NAME-HASH, to pick one call)."""
    return any(
        fnmatch.fnmatchcase(name, glob)
        or (name_with_hash is not None and fnmatch.fnmatchcase(name_with_hash, glob))
        for glob in _FORCE_GLOBS
    )


# --- --only: steps outside the selection return their reference without running -----------

_ONLY: frozenset[str] | None = None


def set_only(selected: Iterable[str] | None) -> None:
    """Run only the steps whose NAME-HASH is in `selected` (the command line's `--only` globs
    plus everything they need, `flows/planned.py`); any other call returns its StepRef (with
    its committed metadata, if committed) and runs nothing. None: every step runs."""
    global _ONLY
    _ONLY = None if selected is None else frozenset(selected)


def _skipped(task: Step, params: dict[str, Any]) -> StepRef | None:
    """The reference a call outside the `--only` selection returns instead of running."""
    if _ONLY is None or _in_task_run():  # a step's own body runs what it calls (unplanned)
        return None
    params = planning.resolve_planned(params)  # skipped `.submit()` calls upstream
    if _has_future(params):  # a selected upstream's future: its identity is needed
        params = walk.replace(params, PrefectFuture, _result_of)
    identity = task.identify(params)
    if identity.name_with_hash in _ONLY:
        return None
    committed = records.read_commit(identity.name_with_hash)
    return committed if committed is not None else _ref_of(identity)


def _result_of(future: PrefectFuture) -> Any:
    return future.result()


def _has_future(value: Any) -> bool:
    return bool(walk.collect(value, PrefectFuture))


# --- the Task subclass --------------------------------------------------------------------


class Step(Task):
    """A `prefect.Task` whose cache key is the step identity and whose result is a StepRef."""

    definition: StepDefinition

    # Result storage is always the prefix in force when the task runs; Prefect rejects
    # unsaved storage blocks as a constructor argument, so it is a property here.
    @property
    def result_storage(self) -> records.StepStorage:  # type: ignore[override]
        return records.StepStorage()

    @result_storage.setter
    def result_storage(self, value: Any) -> None:
        pass

    # -- identity -------------------------------------------------------------------------

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if OUTPUT_PATH in kwargs:
            raise TypeError(
                f"step {self.definition.name_template!r}: output_path is filled by lmflows; "
                "do not pass it"
            )
        # Prefect's get_call_parameters, with the signature looked up once (the definition's).
        params = self.definition.bind(args, kwargs)
        if params is None:
            try:
                bound = self.definition.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise ParameterBindError.from_bind_failure(self.fn, exc, args, kwargs) from exc
            bound.apply_defaults()
            params = dict(bound.arguments)
        for key, value in params.items():
            if isinstance(value, FieldInfo):  # `param: T = Field(default=...)`
                params[key] = value.default
        return params

    def identify(self, params: dict[str, Any]) -> Identity:
        return self.definition.identify(params)

    def ref_for(self, *args: Any, **kwargs: Any) -> StepRef:
        """The StepRef a call would return, computed without running anything."""
        return _ref_of(self.identify(self.bind(args, kwargs)))

    def check_arguments(self, params: dict[str, Any]) -> None:
        """The step's own argument checks (``@step(validate=...)``), before any work."""
        self.definition.check(params)

    def _prepare(self, params: dict[str, Any]) -> Step:
        """Validate a call before Prefect's engine starts; return the task to run it with.

        `--force`: the first call of a matching identity in this process runs with
        `refresh_cache=True` (Prefect overwrites the record; the lock manager sees the flag
        and takes the lease instead of serving the old commit), later calls are cached. The
        old output stays committed until the new one replaces it in one step."""
        if _has_future(params):
            return self  # identity known once upstream futures resolve (checked again there)
        self.check_arguments(params)
        identity = self.identify(params)
        if self.refresh_cache or not is_forced(identity.name, identity.name_with_hash):
            return self
        if identity.name_with_hash in _FORCED_DONE:
            return self
        _FORCED_DONE.add(identity.name_with_hash)
        return self.with_options(refresh_cache=True)

    def _plan(self, params: dict[str, Any]) -> StepRef:
        plan = planning.active_plan()
        assert plan is not None
        params = {  # a scalar holds no planned future: no walk for it
            k: v if type(v) in _SCALARS else planning.resolve_planned(v) for k, v in params.items()
        }
        self.check_arguments(params)
        identity = self.identify(params)
        forced = bool(self.refresh_cache) or is_forced(identity.name, identity.name_with_hash)
        return plan.add(
            _ref_of(identity),
            self.name,
            forced,
            identity.attrs,
            identity.deps,
            self.definition.isolate,
            self.definition.starts_from,
        )

    # -- Prefect entry points -------------------------------------------------------------

    def __call__(
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        params = self.bind(args, kwargs)
        if planning.active_plan() is not None:
            return self._plan(params)
        skipped = _skipped(self, params)
        if skipped is not None:
            return _skipped_state(skipped) if return_state else skipped
        scheduler = schedule.active()
        if scheduler is not None and _in_task_run():
            scheduler = None  # a step called from a step's body runs there, to its end
        if scheduler is not None and scheduler.concurrent and not return_state:
            return self._start(scheduler, params, wait_for)
        if scheduler is not None or _flow_runs_on_ray():
            # Waited for at once: `return_state=True`, or a plain call in a Ray-backed flow
            # (it goes to Ray too: steps are where the work is).
            future = self._submit(self._prepare(params), params, wait_for)
            if scheduler is not None:
                scheduler.record(_ref_of(self.identify(params)), future)
            future.wait()
            return future.state if return_state else future.result()
        task = self._prepare(params)
        if task is self and wait_for is None and not _in_task_run() and not _has_future(params):
            served = serve_committed(self, params, return_state)
            if served is not None:
                return served
        return Task.__call__(task, *args, return_state=return_state, wait_for=wait_for, **kwargs)

    def _start(self, scheduler: schedule.Scheduler, params: dict[str, Any], wait_for: Any) -> Any:
        """Submit the call and return its (pending) StepRef at once (`lmflows.flow`)."""
        task = self._prepare(params)
        ref = _ref_of(self.identify(params))
        return scheduler.start(ref, functools.partial(self._submit, task, params, wait_for))

    def _submit(self, task: Step, params: dict[str, Any], wait_for: Any) -> PrefectFuture:
        """Task.submit with pending refs made plain and, on Ray, the call's resources."""
        plain = schedule.plain_arguments(params)
        upstream = schedule.futures_of(wait_for) + schedule.upstream_futures(params)
        wait = upstream or None
        if _flow_runs_on_ray():
            from prefect_ray.context import remote_options

            from tasks.core import placement

            options = self.definition.resources_for(plain) or {}
            placement.check_cluster()
            with remote_options(**options):
                future = Task.submit(task, wait_for=wait, **plain)
            placement.watch(self.definition.name_template, options, future)
            return future
        return Task.submit(task, wait_for=wait, **plain)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        call_kwargs = {k: v for k, v in kwargs.items() if k not in ("return_state", "wait_for")}
        params = self.bind(args, call_kwargs)
        if planning.active_plan() is not None:
            return planning.PlannedFuture(self._plan(params))
        skipped = _skipped(self, params)
        if skipped is not None:
            return planning.PlannedFuture(skipped)
        return self._submit(self._prepare(params), params, kwargs.get("wait_for"))

    def with_resources(self, resources: dict[str, Any] | Callable[..., Any] | None) -> Step:
        """A copy of this step asking Ray for other resources (a dict of remote options or a
        function of the call's arguments); the identity is unchanged."""
        from tasks.core.definition import check_resources

        new = self.with_options()
        new.definition = dataclasses.replace(
            self.definition, resources=check_resources(self.definition.where, resources)
        )
        return new

    def map(self, *args: Any, **kwargs: Any) -> Any:
        from prefect.utilities.callables import expand_mapping_parameters

        options = {
            k: kwargs.pop(k) for k in ("return_state", "wait_for", "deferred") if k in kwargs
        }
        params = get_call_parameters(self.fn, args, kwargs)
        iterable = {k: v for k, v in params.items() if _is_mappable(v)}
        if not iterable:
            raise TypeError(
                f"step {self.definition.name_template!r}.map(): no iterable argument to map over"
            )
        static = {k: _unwrap(v) for k, v in params.items() if k not in iterable}
        lengths = {len(v) for v in iterable.values()}
        if len(lengths) != 1:
            raise ValueError(
                f"step {self.definition.name_template!r}.map(): iterables have different "
                f"lengths {sorted(lengths)}"
            )
        calls = expand_mapping_parameters(
            self.fn, {**static, **{k: list(v) for k, v in iterable.items()}}
        )
        if planning.active_plan() is not None:
            return planning.PlannedFutureList(planning.PlannedFuture(self._plan(c)) for c in calls)
        if _ONLY is not None:  # each call on its own: run it or hand back its reference
            from prefect.futures import PrefectFutureList

            wait_for = options.get("wait_for")
            return PrefectFutureList(self.submit(**call, wait_for=wait_for) for call in calls)
        variants = [self._prepare(call) for call in calls]
        if _flow_runs_on_ray():  # each call with its own Ray resources, placement checks
            from prefect.futures import PrefectFutureList

            wait_for = options.get("wait_for")
            return PrefectFutureList(
                self._submit(variant, call, wait_for) for variant, call in zip(variants, calls)
            )
        task = next((t for t in variants if t is not self), self)  # any forced: all refresh
        return Task.map(task, *args, **options, **kwargs)

    def with_options(self, **options: Any) -> Step:
        if "cache_policy" in options or "cache_key_fn" in options:
            raise ValueError(
                f"step {self.definition.name_template!r}: its cache policy is its identity "
                "and cannot be replaced"
            )
        if options.get("persist_result", True) is not True:
            raise ValueError(
                f"step {self.definition.name_template!r}: persist_result=False would turn off "
                "its commit record (Prefect drops the cache policy, so no lease is taken and "
                "the step cannot commit); a step's result is always persisted"
            )
        options.pop("result_storage", None)
        options.pop("result_serializer", None)
        new = super().with_options(result_storage=None, **options)
        new.__class__ = Step
        new.definition = self.definition
        new.result_serializer = records.StepRefSerializer()
        return new


def _skipped_state(ref: StepRef) -> Any:
    """`return_state=True` of a call outside `--only`: a completed state named Skipped."""
    from prefect.states import Completed

    return Completed(data=ref, name="Skipped", message="not selected by --only")


def _in_task_run() -> bool:
    from prefect.context import TaskRunContext

    return TaskRunContext.get() is not None


def _flow_runs_on_ray() -> bool:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    return type(runner).__name__ in ("RayTaskRunner", "StepRayTaskRunner")


def _is_mappable(value: Any) -> bool:
    from prefect.utilities.annotations import quote, unmapped

    if isinstance(value, (unmapped, quote, str, bytes, dict, StepRef)):
        return False
    return isinstance(value, (list, tuple)) or (
        hasattr(value, "__iter__") and not isinstance(value, PrefectFuture)
    )


def _unwrap(value: Any) -> Any:
    from prefect.utilities.annotations import BaseAnnotation

    return value.unwrap() if isinstance(value, BaseAnnotation) else value


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _ref_of(identity: Identity) -> StepRef:
    return StepRef(identity.name, identity.hash)


# --- the decorator ------------------------------------------------------------------------


def step(
    fn: Callable[..., Any] | None = None,
    *,
    hash_attrs: Iterable[str] = (),
    operational: Iterable[str] = (),
    name: str | None = None,
    resources: dict[str, Any] | Callable[..., Any] | None = None,
    validate: Callable[..., None] | None = None,
    resumable: bool = False,
    isolate: bool = False,
    omit_at_default: Iterable[str] = (),
    starts_from: Callable[[str, dict, str], str | None] | None = None,
    **task_options: Any,
) -> Any:
    """Declare a step: ``@step(hash_attrs=["n"], operational=["workers"], name="toy/square")``.

    Every parameter except `output_path` and the name template's fields is in exactly one of
    `hash_attrs` (it defines the output; every parameter that receives a StepRef belongs
    here) and `operational` (it does not); anything else is a `StepDefinitionError` now.
    `name` is a literal or a template filled from the call's arguments
    (``"tokenized/{dataset}"``); default: the function's name. `resources` are Ray remote
    options (``{"num_cpus": 8, "resources": {"TPU": 4}}``), or a function of the call's
    arguments returning them, applied when the flow runs on `RayTaskRunner`
    (`step.with_resources(...)` gives a copy with others). `resumable=True`: attempts of one
    identity share their output folder, so a new attempt after a crash or preemption finds
    what earlier ones wrote (training checkpoints); other steps start from an empty folder.
    `isolate=True`: the body runs in a worker process of its own (any step whose body uses a
    library with process-wide state: levanter, transformers, lm-eval, jax config, matplotlib,
    logging handlers, `os.environ`, the working directory; docs/design.md "Isolation").
    `validate` is called with the call's arguments (defaults applied,
    StepRefs as they are) before anything runs, also in `plan`; it raises ValueError/TypeError
    naming the bad argument. `omit_at_default` lists hash attributes added after the step had
    committed outputs: at their (scalar) default they stay out of the identity, so existing
    outputs keep theirs. `starts_from(name, attrs, prefix)` says in one line where a run of an
    identity would start instead of nothing (another committed output's work), for
    `explain`. Any other keyword (retries, tags, timeout_seconds, ...) goes to
    `prefect.Task`.
    """
    if fn is None:
        return functools.partial(
            step,
            hash_attrs=hash_attrs,
            operational=operational,
            name=name,
            resources=resources,
            validate=validate,
            resumable=resumable,
            isolate=isolate,
            omit_at_default=omit_at_default,
            starts_from=starts_from,
            **task_options,
        )
    definition = define(
        fn,
        hash_attrs=hash_attrs,
        operational=operational,
        name=name,
        resources=resources,
        validate=validate,
        resumable=resumable,
        isolate=isolate,
        omit_at_default=omit_at_default,
        starts_from=starts_from,
    )
    policy = StepCachePolicy(definition=definition).configure(
        lock_manager=LeaseLockManager(), isolation_level="SERIALIZABLE"
    )
    task_options.setdefault(
        "name", definition.name_template if not definition.template_fields else fn.__name__
    )
    task_options.setdefault("task_run_name", IdentityRunName(definition))
    task = Step(
        fn=make_runner(definition),
        cache_policy=policy,
        persist_result=True,
        result_serializer=records.StepRefSerializer(),
        **task_options,
    )
    task.definition = definition
    return task


__all__ = ["Step", "StepDefinitionError", "set_force", "set_only", "step"]
