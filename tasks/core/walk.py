"""The one walker over nested step arguments.

Identity (plain JSON), dependency discovery, path substitution, planning and future detection
all need to look inside the same containers; when each had its own recursion they disagreed
(a StepRef inside a dataclass became a dependency but reached the function as a StepRef; sets
were walked by one helper and refused by another). Every one of them now goes through `walk`,
so the containers it understands are the same everywhere:

- lists, tuples (named tuples too) and mappings (rebuilt as dicts) are walked;
- dataclass instances are walked field by field (rebuilt with `dataclasses.replace` when a
  field changes, so the function receives the same dataclass with paths in it);
- sets and frozensets are left alone unless they hold something the walker must replace
  (a StepRef, a future): a set has no order, so it can never carry a dependency — that is a
  `TypeError` naming where the set is;
- everything else is a leaf, handed to the caller's `leaf` function.

Objects are only copied when something inside them changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

Leaf = Callable[[Any, str], Any]


def walk(value: Any, leaf: Leaf, where: str = "", *, as_json: bool = False) -> Any:
    """Rebuild `value` with `leaf(item, where)` applied to every leaf; `where` names the spot
    (``"data['kjv']"``) for error messages.

    `as_json=True` rebuilds containers as JSON ones instead (tuples as lists, dataclasses as
    dicts of their fields, mapping keys must be strings) and hands sets to `leaf`, which is
    how identities are computed.
    """
    if isinstance(value, (str, bytes, int, float, type(None))):
        return leaf(value, where)
    if isinstance(value, list) or (as_json and isinstance(value, tuple)):
        items = [walk(v, leaf, f"{where}[{i}]", as_json=as_json) for i, v in enumerate(value)]
        return value if not as_json and _same(items, value) else items
    if isinstance(value, tuple):
        items = [walk(v, leaf, f"{where}[{i}]") for i, v in enumerate(value)]
        if _same(items, value):
            return value
        if hasattr(value, "_fields"):  # a named tuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, Mapping):
        if as_json:
            for key in value:
                if not isinstance(key, str):
                    raise TypeError(
                        f"{where}: dict key {key!r} has type "
                        f"{type(key).__name__}; only str keys are JSON"
                    )
        walked = {k: walk(v, leaf, f"{where}[{k!r}]", as_json=as_json) for k, v in value.items()}
        if not as_json and type(value) is dict and _same(list(walked.values()), value.values()):
            return value
        return walked
    if isinstance(value, (set, frozenset)):
        for item in value:
            if _holds_special(item):
                raise TypeError(
                    f"{where or 'argument'}: a set cannot hold step references or futures "
                    "(a set has no order); use a list"
                )
        return leaf(value, where) if as_json else value
    if _is_special(value):
        return leaf(value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if as_json:
            return {
                f.name: walk(getattr(value, f.name), leaf, f"{where}.{f.name}", as_json=True)
                for f in dataclasses.fields(value)
            }
        changed = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            new = walk(item, leaf, f"{where}.{f.name}")
            if new is not item:
                if not f.init:
                    raise TypeError(
                        f"{where}.{f.name}: a dataclass field with init=False cannot hold a "
                        "step reference"
                    )
                changed[f.name] = new
        return dataclasses.replace(value, **changed) if changed else value
    return leaf(value, where)


def _same(new: list[Any], old: Any) -> bool:
    return all(a is b for a, b in zip(new, old))


# References the walker hands to `leaf` whole (StepRef is itself a dataclass) and that a set
# may never hold: StepRef, Prefect futures, planning futures.
_SPECIAL: tuple[type, ...] = ()


def register_special(cls: type) -> type:
    """Make instances of `cls` leaves that no set may contain (a class decorator)."""
    global _SPECIAL
    _SPECIAL = (*_SPECIAL, cls)
    return cls


def _is_special(value: Any) -> bool:
    return isinstance(value, _SPECIAL)


def _holds_special(value: Any) -> bool:
    if _is_special(value):
        return True
    if isinstance(value, (str, bytes, int, float, type(None))):
        return False
    return bool(collect(value, _SPECIAL)) if _SPECIAL else False


def collect(value: Any, wanted: type | tuple[type, ...]) -> list[Any]:
    """Every leaf of type `wanted` inside `value`, in walking order."""
    found: list[Any] = []

    def keep(item: Any, _where: str) -> Any:
        if isinstance(item, wanted):
            found.append(item)
        return item

    walk(value, keep)
    return found


def replace(value: Any, wanted: type | tuple[type, ...], fn: Callable[[Any], Any]) -> Any:
    """`value` with every leaf of type `wanted` replaced by `fn(leaf)`."""

    def swap(item: Any, _where: str) -> Any:
        return fn(item) if isinstance(item, wanted) else item

    return walk(value, swap)
