"""`--param KEY=VALUE`: flow parameters from the command line, checked before anything runs.

Values are coerced by Prefect's own parameter validation (the flow's type hints), the same
coercion a flow run applies, so `plan` and `run` see the same values and so compute the same
identities (`2` for a float parameter must hash as `2.0` in both).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import Any

from prefect import Flow


class ParameterError(ValueError):
    """A flow parameter on the command line that cannot work; one line for the user."""


def parse(pairs: Sequence[str]) -> dict[str, str]:
    """`["lr=0.01", "name=kjv"]` -> `{"lr": "0.01", "name": "kjv"}`; values are decoded
    against the flow's signature by `bind`."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ParameterError(f"--param {pair!r}: expected KEY=VALUE with KEY a parameter name")
        if key in values:
            raise ParameterError(f"--param {key} is given twice")
        values[key] = raw
    return values


def _decode(raw: str, annotation: Any) -> Any:
    """JSON if it parses, else the text; a parameter annotated `str` always gets the text
    (`--param text=123` means the string "123")."""
    if annotation in (str, "str"):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def bind(flow: Flow, raw_values: dict[str, str]) -> dict[str, Any]:
    """Every parameter to call `flow` with, defaults included, coerced by Prefect exactly as a
    flow run coerces them (a `float` parameter with default `2` is `2.0` in a run: planning
    must hash the same value). ParameterError names what is wrong."""
    signature = inspect.signature(flow.fn)
    values = {
        key: _decode(raw, signature.parameters[key].annotation)
        for key, raw in raw_values.items()
        if key in signature.parameters
    }
    values.update({k: v for k, v in raw_values.items() if k not in signature.parameters})
    known = list(signature.parameters)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ParameterError(
            f"flow {flow.name!r} has no parameter {', '.join(unknown)} "
            f"(parameters: {', '.join(known) or 'none'})"
        )
    missing = [
        name
        for name, param in signature.parameters.items()
        if param.default is inspect.Parameter.empty
        and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        and name not in values
    ]
    if missing:
        raise ParameterError(
            f"flow {flow.name!r} needs parameter {', '.join(missing)}: "
            f"add --param {missing[0]}=VALUE"
        )
    for name, param in signature.parameters.items():
        if name not in values and param.default is not inspect.Parameter.empty:
            values[name] = param.default
    if not values:
        return {}
    import logging

    from prefect.exceptions import ParameterTypeError

    flow_logger = logging.getLogger("prefect.flows")  # it logs the error we report ourselves
    level = flow_logger.level
    flow_logger.setLevel(logging.CRITICAL)
    try:
        return flow.validate_parameters(values)
    except ParameterTypeError as exc:
        detail = " ".join(str(exc).split())
        raise ParameterError(f"flow {flow.name!r}: {detail}") from None
    finally:
        flow_logger.setLevel(level)
