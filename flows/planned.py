"""Planning an experiment: the one way `run`, `plan`, `explain`, `verify`, `gc` and the
evaluate-latest flow turn an experiment and its parameters into a plan (nothing executes);
`plan_command` adds what the command line needs (`--param` text, `--force` globs)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import Flow

from flows.params import bind
from tasks.core import planning


class PlanningFailed(Exception):
    """The flow body raised while it was planned; `__cause__` is what it raised."""


def plan_experiment(
    flow: Flow, raw_params: Mapping[str, str] | None = None, quiet: bool = False
) -> tuple[dict[str, Any], planning.Plan]:
    """Bind command-line text to the flow's parameters (a bad value raises `ParameterError`),
    then run its body with steps returning refs. Every step's argument checks run here, so a
    bad argument of the last step stops a run before the first step executes. `quiet`: what
    the body prints while planned is dropped (a run prints it once, from the run itself)."""
    params = bind(flow, dict(raw_params or {}))
    printed = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    try:
        with planning.planning() as plan, printed:
            flow.fn(**params)
    except Exception as exc:
        raise PlanningFailed(str(exc)) from exc
    return params, plan


class ArgumentError(ValueError):
    """A step argument that cannot work, found by planning before anything ran."""


def plan_command(
    experiment: str,
    param_pairs: Sequence[str],
    force: Sequence[str] = (),
    quiet: bool = False,
    only: Sequence[str] = (),
) -> tuple[Flow, dict[str, Any], planning.Plan]:
    """What a command plans: load the experiment, bind `--param` pairs, set `--force`, plan
    (identities only: milliseconds) and check the `--force` globs. `only`: the plan keeps the
    steps matching a glob and what they need, and a run then runs just those. A bad argument
    is one `ArgumentError` line."""
    from flows.loader import load_flow
    from flows.params import parse
    from tasks.core import set_force
    from tasks.core.decorator import set_only

    flow = load_flow(experiment)
    raw = parse(param_pairs)
    set_force(force)
    set_only(None)
    try:
        params, plan = plan_experiment(flow, raw, quiet)
    except PlanningFailed as failed:
        exc = failed.__cause__
        if isinstance(exc, (ValueError, TypeError)):
            raise ArgumentError(" ".join(str(exc).split())) from exc
        raise ArgumentError(
            f"experiment {experiment} failed while planning: {type(exc).__name__}: "
            + " ".join(str(exc).split())[:500]
        ) from exc
    _check_force_globs(force, plan)
    if only:
        selected = select_only(plan, only)
        plan.steps = {key: item for key, item in plan.steps.items() if key in selected}
        _check_force_globs(force, plan, "--only leaves out every step it matches")
        set_only(selected)
    return flow, params, plan


def select_only(plan: planning.Plan, globs: Sequence[str]) -> set[str]:
    """NAME-HASH of the steps whose name or NAME-HASH (their output's path under the prefix)
    matches a glob, plus every step they need, transitively. A glob that matches nothing is
    an `ArgumentError`: a typo must not run nothing and report success."""
    import fnmatch

    names = sorted({item.ref.name for item in plan.steps.values()})
    matched = {
        glob: [
            key
            for key, item in plan.steps.items()
            if fnmatch.fnmatchcase(item.ref.name, glob) or fnmatch.fnmatchcase(key, glob)
        ]
        for glob in globs
    }
    idle = [glob for glob, keys in matched.items() if not keys]
    if idle:
        raise ArgumentError(
            f"--only {' '.join(idle)} matches no step of the plan; its steps are: "
            + ", ".join(names)
        )
    selected: set[str] = set()
    todo = [key for keys in matched.values() for key in keys]
    while todo:
        key = todo.pop()
        if key in selected:
            continue
        selected.add(key)
        item = plan.steps.get(key)
        todo.extend(item.deps if item is not None else ())
    return selected


def _check_force_globs(force: Sequence[str], plan, why: str = "") -> None:
    """Every `--force` glob matches a step of `plan` (after `--only`: of the selection, so a
    forced step the selection leaves out is an error, not silently not re-executed)."""
    import fnmatch

    names = sorted({item.ref.name for item in plan.steps.values()})
    keys = [*names, *plan.steps]
    idle = [g for g in force if not any(fnmatch.fnmatchcase(n, g) for n in keys)]
    if idle:
        raise ArgumentError(
            f"--force {' '.join(idle)} matches no step of the plan"
            + (f" ({why})" if why else "")
            + "; its steps are: "
            + ", ".join(names)
        )
