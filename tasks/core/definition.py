"""What a `@step` declaration is: one frozen value, checked when the decorator runs.

The rule that makes a silently dropped input impossible to write: every parameter of the step
function, except `output_path` and the fields of the name template, is classified exactly once,
either as a hash attribute (it defines the output) or as operational (it does not: worker
counts, batch sizes that do not change results, logging). A parameter nobody classified is a
`StepDefinitionError` at import time, not a wrong cache hit months later.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from typing import Any

from tasks.core.identity import (
    Identity,
    identify,
    template_fields,
    to_plain,
    validate_name,
)

OUTPUT_PATH = "output_path"


class StepDefinitionError(TypeError):
    """A `@step` declaration that cannot work; raised when the decorator runs."""


@dataclasses.dataclass(frozen=True)
class StepDefinition:
    """Everything lmflows knows about a step besides Prefect's own task options."""

    fn: Callable[..., Any]
    name_template: str
    hash_attrs: tuple[str, ...]
    operational: tuple[str, ...]
    template_fields: tuple[str, ...]
    signature: inspect.Signature  # the function's, without output_path (what Prefect sees)
    # Ray remote options: a dict, or a function of the call's arguments returning one.
    resources: dict[str, Any] | Callable[..., dict[str, Any] | None] | None = None
    validate: Callable[..., None] | None = None
    # Attempts of one identity share their output folder (checkpoints survive preemption).
    resumable: bool = False
    # The body runs in a worker process of its own (tasks.core.isolation).
    isolate: bool = False
    # Hash attributes added after the step had committed outputs, with their scalar defaults:
    # left out of the identity while at the default (tasks.core.identity.identify).
    omit_at_default: tuple[tuple[str, Any], ...] = ()
    # Where a run of an identity would start from instead of nothing, for `explain`:
    # fn(name, attrs, prefix) -> a one-line description, or None (train_lm: "extends X
    # from step k").
    starts_from: Callable[[str, dict, str], str | None] | None = None

    @property
    def where(self) -> str:
        return f"@step on {self.fn.__module__}.{self.fn.__qualname__}"

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The call's arguments by name in signature order, defaults applied, as
        `signature.bind` + `apply_defaults` give them; None when the call is not a plain fit
        (missing or unknown arguments, a positional-only name given by keyword): the caller
        then binds with `inspect` and its error."""
        positional, layout, keywords = self._layout
        if len(args) > len(positional) or not keywords.issuperset(kwargs):
            return None
        params = dict(zip(positional, args))
        if kwargs and not params.keys().isdisjoint(kwargs):
            return None  # a name given twice
        for name, default in layout[len(args) :]:
            if name in kwargs:
                params[name] = kwargs[name]
            elif default is not inspect.Parameter.empty:
                params[name] = default
            else:
                return None
        return params

    @functools.cached_property
    def _layout(self) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...], frozenset[str]]:
        """(names that take positional arguments, (name, default) in order, keyword names)."""
        params = list(self.signature.parameters.values())
        positional = tuple(
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
        layout = tuple((p.name, p.default) for p in params)
        keywords = frozenset(p.name for p in params if p.kind != p.POSITIONAL_ONLY)
        return positional, layout, keywords

    def check(self, params: dict[str, Any]) -> None:
        """The step's own argument checks (``@step(validate=...)``), before any work."""
        if self.validate is not None:
            self.validate(**params)

    def resources_for(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The Ray remote options of one call (never part of the identity)."""
        resources = self.resources
        if callable(resources):
            resources = resources(**params)
        if resources is None:
            return None
        if not isinstance(resources, dict):
            raise TypeError(
                f"{self.where}: resources must be a dict of Ray remote options, got "
                f"{type(resources).__name__}"
            )
        return dict(resources)

    def identify(self, params: dict[str, Any]) -> Identity:
        return identify(
            self.name_template, self.hash_attrs, params, omit_at_default=self._omitted or None
        )

    @functools.cached_property
    def _omitted(self) -> dict[str, Any]:
        return dict(self.omit_at_default)

    def identify_in_run(self, params: dict[str, Any]) -> Identity:
        """The identity inside Prefect's task engine, computed once per task run and shared
        by the run name, the cache key and the step body."""
        run_id = _task_run_id()
        if run_id is None:
            return self.identify(params)
        with _MEMO_LOCK:
            known = _MEMO.get(run_id)
        if known is not None:
            return known
        identity = self.identify(params)
        with _MEMO_LOCK:
            _MEMO[run_id] = identity
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
        return identity


# Task run id -> identity. Bounded: a cached run never reaches the step body that could
# drop its entry, so the oldest entries go instead.
_MEMO: collections.OrderedDict[Any, Identity] = collections.OrderedDict()
_MEMO_SIZE = 4096
_MEMO_LOCK = threading.Lock()


def _task_run_id() -> Any:
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return ctx.task_run.id if ctx is not None else None


def define(
    fn: Callable[..., Any],
    *,
    hash_attrs: Iterable[str],
    operational: Iterable[str],
    name: str | None,
    resources: dict[str, Any] | Callable[..., Any] | None,
    validate: Callable[..., None] | None,
    resumable: bool = False,
    isolate: bool = False,
    omit_at_default: Iterable[str] = (),
    starts_from: Callable[[str, dict, str], str | None] | None = None,
) -> StepDefinition:
    """Check a declaration and return its definition, or raise `StepDefinitionError`."""
    where = f"@step on {fn.__module__}.{fn.__qualname__}"
    for label, names in (("hash_attrs", hash_attrs), ("operational", operational)):
        if isinstance(names, str):
            raise StepDefinitionError(
                f"{where}: {label} must be a list of parameter names, got {names!r}"
            )
    hash_attrs, operational = tuple(hash_attrs), tuple(operational)
    if inspect.iscoroutinefunction(fn):
        raise StepDefinitionError(f"{fn.__qualname__}: async step functions are not supported")
    signature = inspect.signature(fn)
    params = signature.parameters
    _check_output_path(where, params)
    for param in params.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise StepDefinitionError(
                f"{where}: *{param.name} is not allowed; steps take "
                "named parameters so that identities are explicit"
            )
    names = [p for p in params if p != OUTPUT_PATH]
    name_template = name if name is not None else fn.__name__
    fields = _check_template(where, name_template, names)
    _check_classes(where, names, hash_attrs, operational, fields)
    for param, value in params.items():  # defaults of hash attributes must be JSON too
        if param in hash_attrs and value.default is not inspect.Parameter.empty:
            to_plain(value.default, f"default of hash attribute {param!r} in {where}")
    omitted = _check_omitted(where, params, hash_attrs, omit_at_default)
    return StepDefinition(
        fn=fn,
        name_template=name_template,
        hash_attrs=hash_attrs,
        operational=operational,
        template_fields=tuple(fields),
        signature=signature.replace(parameters=[params[p] for p in names]),
        resources=check_resources(where, resources),
        validate=validate,
        resumable=bool(resumable),
        isolate=bool(isolate),
        omit_at_default=omitted,
        starts_from=starts_from,
    )


def _check_omitted(
    where: str, params: Any, hash_attrs: tuple[str, ...], names: Iterable[str]
) -> tuple[tuple[str, Any], ...]:
    """`omit_at_default` names hash attributes with a scalar default (None, a bool, a number,
    a string): the value that leaves an identity as it was before the attribute existed."""
    if isinstance(names, str):
        raise StepDefinitionError(f"{where}: omit_at_default must be a list of parameter names")
    omitted = []
    for name in names:
        if name not in hash_attrs:
            raise StepDefinitionError(
                f"{where}: omit_at_default {name!r} is not a hash attribute of the step"
            )
        default = params[name].default
        if default is inspect.Parameter.empty or type(default) not in (
            type(None),
            bool,
            int,
            float,
            str,
        ):
            raise StepDefinitionError(
                f"{where}: omit_at_default {name!r} needs a default that is None, a bool, a "
                f"number or a string (got {default!r})"
            )
        omitted.append((name, default))
    return tuple(omitted)


def check_resources(where: str, resources: Any) -> Any:
    if resources is None or callable(resources):
        return resources
    if not isinstance(resources, dict):
        raise StepDefinitionError(
            f"{where}: resources must be a dict of Ray remote options or a function of the "
            f"call's arguments returning one, got {type(resources).__name__}"
        )
    return dict(resources) or None


def _check_output_path(where: str, params: Any) -> None:
    if OUTPUT_PATH not in params:
        raise StepDefinitionError(
            f"{where}: the function needs a keyword parameter 'output_path: str' (lmflows fills it)"
        )
    if params[OUTPUT_PATH].kind not in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise StepDefinitionError(f"{where}: 'output_path' must be a keyword parameter")


def _check_template(where: str, name_template: str, names: list[str]) -> list[str]:
    try:
        fields = template_fields(name_template)
        missing = [f for f in fields if f not in names]
        if missing:
            raise StepDefinitionError(
                f"{where}: name template {name_template!r} refers to "
                f"{missing}, which are not parameters"
            )
        validate_name(name_template.format(**{f: "x" for f in fields}))
    except ValueError as exc:
        raise StepDefinitionError(f"{where}: invalid step name {name_template!r}: {exc}") from exc
    return fields


def _check_classes(
    where: str,
    names: list[str],
    hash_attrs: tuple[str, ...],
    operational: tuple[str, ...],
    fields: list[str],
) -> None:
    """Every parameter in exactly one class; template fields need none (never operational)."""
    for label, listed in (("hash_attrs", hash_attrs), ("operational", operational)):
        unknown = [a for a in listed if a not in names]
        if unknown:
            raise StepDefinitionError(
                f"{where}: {label} {unknown} are not parameters of the function "
                f"(parameters: {names})"
            )
        repeated = sorted({a for a in listed if listed.count(a) > 1})
        if repeated:
            raise StepDefinitionError(f"{where}: {label} lists {repeated} more than once")
    both = [p for p in names if p in hash_attrs and p in operational]
    if both:
        raise StepDefinitionError(
            f"{where}: parameters {both} are in both hash_attrs and operational; "
            "a parameter either defines the output or it does not"
        )
    operational_fields = [f for f in fields if f in operational]
    if operational_fields:
        raise StepDefinitionError(
            f"{where}: parameters {operational_fields} fill the name template and so are "
            "part of the identity; they cannot be operational"
        )
    ambiguous = [f for f in fields if f not in hash_attrs] if len(set(fields)) > 1 else []
    if ambiguous:
        raise StepDefinitionError(
            f"{where}: the name template has several fields, so the name alone cannot tell "
            f"calls apart ('a-b' + 'c' vs 'a' + 'b-c'); list {ambiguous} in hash_attrs"
        )
    unclassified = [p for p in names if p not in hash_attrs and p not in operational]
    unclassified = [p for p in unclassified if p not in fields]
    if unclassified:
        raise StepDefinitionError(
            f"{where}: parameters {unclassified} are not classified: list each in hash_attrs "
            "(it changes the output, e.g. an input path, a tokenizer, a learning rate) or in "
            "operational (it does not, e.g. a worker count)"
        )
