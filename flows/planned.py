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
) -> tuple[Flow, dict[str, Any], planning.Plan]:
    """What a command plans: load the experiment, bind `--param` pairs, set `--force`, plan
    (identities only: milliseconds) and check the `--force` globs. A bad argument is one
    `ArgumentError` line."""
    from flows.loader import load_flow
    from flows.params import parse
    from tasks.core import set_force

    flow = load_flow(experiment)
    raw = parse(param_pairs)
    set_force(force)
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
    return flow, params, plan


def _check_force_globs(force: Sequence[str], plan) -> None:
    import fnmatch

    names = sorted({item.ref.name for item in plan.steps.values()})
    keys = [*names, *plan.steps]
    idle = [g for g in force if not any(fnmatch.fnmatchcase(n, g) for n in keys)]
    if idle:
        raise ArgumentError(
            f"--force {' '.join(idle)} matches no step of the plan; its steps are: "
            + ", ".join(names)
        )
