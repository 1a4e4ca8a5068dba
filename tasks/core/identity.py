"""Step identity: the one place that turns (name, hash attributes, dependencies) into a hash.

The format is frozen (DESIGN §3): changing anything here invalidates every cache in every
bucket, so every rule below is deliberate and tested.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
import string
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from tasks.core.ref import StepRef

HASH_LENGTH = 10
_SEGMENT = re.compile(r"^[a-z0-9_.\-]+$")


class StepNameError(ValueError):
    """A step name that cannot be a path segment sequence under the prefix."""


def validate_name(name: str) -> str:
    """Return `name` if it is a valid step name, else raise `StepNameError` naming the problem."""
    if not isinstance(name, str) or not name:
        raise StepNameError(f"step name must be a non-empty string, got {name!r}")
    if name.startswith("/") or name.endswith("/"):
        raise StepNameError(f"step name {name!r} must not start or end with '/'")
    for segment in name.split("/"):
        if not segment:
            raise StepNameError(f"step name {name!r} has an empty path segment")
        if segment in (".", ".."):
            raise StepNameError(f"step name {name!r} has a {segment!r} path segment")
        if not _SEGMENT.match(segment):
            bad = sorted({c for c in segment if not re.match(r"[a-z0-9_.\-]", c)})
            raise StepNameError(
                f"step name {name!r} has characters {''.join(bad)!r}; "
                "allowed: lowercase letters, digits, '_', '.', '-', '/'"
            )
    return name


def template_fields(template: str) -> list[str]:
    """The parameter names a name template such as ``"tokenized/{dataset}"`` refers to."""
    fields = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise StepNameError(
                f"name template {template!r}: only plain '{{parameter}}' fields are allowed"
            )
        fields.append(field)
    return fields


def fill_name(template: str, arguments: Mapping[str, Any]) -> str:
    """Fill a name template from bound call arguments and validate the result."""
    values = {}
    for field in template_fields(template):
        value = arguments[field]
        values[field] = value.name_with_hash if isinstance(value, StepRef) else str(value)
    return validate_name(template.format(**values))


def to_plain(value: Any, where: str) -> Any:
    """Convert a hash-attribute value to plain JSON, or raise TypeError naming `where`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite float {value!r} is not JSON")
        return float(value)
    if isinstance(value, StepRef):
        return value.identity
    if isinstance(value, enum.Enum):
        return to_plain(value.value, where)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where}: dict key {key!r} has type "
                    f"{type(key).__name__}; only str keys are JSON"
                )
            plain[key] = to_plain(item, f"{where}[{key!r}]")
        return plain
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_plain(getattr(value, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(value)
        }
    raise TypeError(
        f"{where}: value of type {type(value).__module__}."
        f"{type(value).__qualname__} is not plain JSON (allowed: dict, list, tuple, str, "
        "int, float, bool, None, dataclass, enum, Path, StepRef)"
    )


def find_refs(value: Any, found: list[StepRef] | None = None) -> list[StepRef]:
    """Every StepRef nested anywhere in `value` (lists, tuples, dicts, dataclasses)."""
    if found is None:
        found = []
    if isinstance(value, StepRef):
        found.append(value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            find_refs(item, found)
    elif isinstance(value, Mapping):
        for item in value.values():
            find_refs(item, found)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            find_refs(getattr(value, f.name), found)
    return found


def compute_hash(name: str, attrs: dict[str, Any], deps: list[str]) -> str:
    """The frozen hash format of DESIGN §3."""
    payload = {"name": name, "attrs": attrs, "deps": deps}
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()[:HASH_LENGTH]


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a call of a step is: its name, hash attributes, dependencies and hash."""

    name: str
    attrs: dict[str, Any]
    deps: list[str]
    hash: str

    @property
    def name_with_hash(self) -> str:
        return f"{self.name}-{self.hash}"


def identify(
    name_template: str, hash_attrs: tuple[str, ...], arguments: Mapping[str, Any]
) -> Identity:
    """Compute the identity of a call from its bound arguments (defaults applied)."""
    name = fill_name(name_template, arguments)
    attrs: dict[str, Any] = {}
    deps: set[str] = set()
    for param, value in arguments.items():
        refs = find_refs(value)
        if refs:
            deps.update(ref.name_with_hash for ref in refs)
        if refs or param in hash_attrs:
            attrs[param] = to_plain(value, f"hash attribute {param!r}")
    dep_list = sorted(deps)
    return Identity(name, attrs, dep_list, compute_hash(name, attrs, dep_list))
