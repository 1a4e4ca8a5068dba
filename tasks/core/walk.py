"""The one walker over nested step arguments.

Identity (plain JSON), dependency discovery, path substitution, planning and future detection
all need to look inside the same containers; when each had its own recursion they disagreed
(a StepRef inside a dataclass became a dependency but reached the function as a StepRef; sets
were walked by one helper and refused by another). Every one of them now goes through `walk`,
so the containers it understands are the same everywhere:

- lists, tuples (named tuples too), mappings, dataclass instances and pydantic models are
  walked; a changed one is a shallow copy of the same type with the changed items set (no
  `__init__`/`__post_init__` runs again, so the function sees exactly what was hashed);
- mapping keys and sets may not hold references (a key is not a value; a set has no order):
  a `TypeError` naming where;
- everything else is a leaf, handed to the caller's `leaf` function. An arbitrary object is
  opaque: a StepRef hidden in its attributes is not seen (pass it in a container above).

Objects are only copied when something inside them changed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, MutableMapping
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
        for key in value:
            if as_json and not isinstance(key, str):
                raise TypeError(
                    f"{where}: dict key {key!r} has type "
                    f"{type(key).__name__}; only str keys are JSON"
                )
            if _holds_special(key):
                raise TypeError(f"{where}: a dict key cannot be a step reference or a future")
        walked = {k: walk(v, leaf, f"{where}[{k!r}]", as_json=as_json) for k, v in value.items()}
        if as_json:
            return walked
        if _same(list(walked.values()), value.values()):
            return value
        if isinstance(value, MutableMapping):
            copied = copy.copy(value)
            copied.update(walked)
            return copied
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
    fields = _fields(value)
    if fields is None:
        return leaf(value, where)
    if as_json:
        if not dataclasses.is_dataclass(value):
            return leaf(value, where)  # pydantic models are not hash-attribute JSON
        return {
            name: walk(getattr(value, name), leaf, f"{where}.{name}", as_json=True)
            for name in fields
        }
    changed = {}
    for name in fields:
        item = getattr(value, name)
        new = walk(item, leaf, f"{where}.{name}")
        if new is not item:
            changed[name] = new
    if not changed:
        return value
    copied = copy.copy(value)
    for name, new in changed.items():
        object.__setattr__(copied, name, new)  # frozen or not; no __init__ runs again
    return copied


def _fields(value: Any) -> list[str] | None:
    """Field names of a dataclass instance or a pydantic model; None for anything else."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [f.name for f in dataclasses.fields(value)]
    model_fields = getattr(type(value), "model_fields", None)
    if isinstance(model_fields, dict) and hasattr(value, "model_copy"):
        return list(model_fields)
    return None


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
