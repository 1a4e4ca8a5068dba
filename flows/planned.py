"""Planning an experiment: the one way `run`, `plan`, `explain`, `verify`, `gc` and the
evaluate-latest flow turn an experiment and its parameters into a plan (nothing executes)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
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
