"""Step identity: the one place that turns (name, hash attributes, dependencies) into a hash.

The format is frozen (docs/design.md, "Identity"): changing anything here invalidates every
cache in every bucket, so every rule below is deliberate and tested.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import math
import os
import re
import string
from collections.abc import Collection, Mapping
from pathlib import PurePath
from typing import Any

from tasks.core import walk
from tasks.core.ref import StepRef

HASH_LENGTH = 10
_SEGMENT = re.compile(r"[a-z0-9_.\-]+")
_OUTPUT_SEGMENT = re.compile(r".+-[0-9a-f]{10}")
# Path limits: a segment well under the 255 bytes filesystems allow, leaving room for
# "-HASH" and the framework's suffixes; the whole name well under PATH_MAX with a prefix.
MAX_SEGMENT_LENGTH = 120
MAX_NAME_LENGTH = 500


class StepNameError(ValueError):
    """A step name that cannot be a path segment sequence under the prefix."""


def validate_name(name: str) -> str:
    """Return `name` if it is a valid step name, else raise `StepNameError` naming the problem."""
    if not isinstance(name, str) or not name:
        raise StepNameError(f"step name must be a non-empty string, got {name!r}")
    if name.startswith("/") or name.endswith("/"):
        raise StepNameError(f"step name {name!r} must not start or end with '/'")
    if len(name) > MAX_NAME_LENGTH:
        raise StepNameError(
            f"step name {name[:60]!r}... is {len(name)} characters; at most {MAX_NAME_LENGTH}"
        )
    segments = name.split("/")
    for position, segment in enumerate(segments):
        if not segment:
            raise StepNameError(f"step name {name!r} has an empty path segment")
        if segment in (".", ".."):
            raise StepNameError(f"step name {name!r} has a {segment!r} path segment")
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise StepNameError(
                f"step name {name!r}: segment {segment[:40]!r}... is {len(segment)} "
                f"characters; at most {MAX_SEGMENT_LENGTH}"
            )
        if segment.startswith("."):
            raise StepNameError(
                f"step name {name!r}: segment {segment!r} starts with '.' (reserved for "
                "lmflows' own folders)"
            )
        if position < len(segments) - 1 and _OUTPUT_SEGMENT.fullmatch(segment):
            raise StepNameError(
                f"step name {name!r} would put an output inside the output {segment!r} of "
                "another step (a StepRef used in a name template?)"
            )
        if not _SEGMENT.fullmatch(segment):
            bad = sorted({c for c in segment if not re.match(r"[a-z0-9_.\-]", c)})
            raise StepNameError(
                f"step name {name!r} has characters {''.join(bad)!r}; "
                "allowed: lowercase letters, digits, '_', '.', '-', '/'"
            )
    return name


def split_name_with_hash(name_with_hash: str) -> tuple[str, str]:
    """`"tok/kjv-0123456789"` -> `("tok/kjv", "0123456789")`, or StepNameError."""
    name, sep, hash_ = name_with_hash.rpartition("-")
    if not sep or not re.fullmatch(r"[0-9a-f]{10}", hash_):
        raise StepNameError(f"{name_with_hash!r} is not NAME-HASH (a hash is 10 hex digits)")
    return validate_name(name), hash_


def template_fields(template: str) -> list[str]:
    """The parameter names a name template such as ``"tokenized/{dataset}"`` refers to."""
    return list(_template_fields(template))


@functools.lru_cache(maxsize=1024)
def _template_fields(template: str) -> tuple[str, ...]:
    fields = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise StepNameError(
                f"name template {template!r}: only plain '{{parameter}}' fields are allowed"
            )
        fields.append(field)
    return tuple(fields)


def fill_name(template: str, arguments: Mapping[str, Any]) -> str:
    """Fill a name template from bound call arguments and validate the result."""
    fields = _template_fields(template)
    if not fields:
        return _valid_name(template)
    values = {}
    for field in fields:
        value = arguments[field]
        values[field] = value.name_with_hash if isinstance(value, StepRef) else str(value)
    return _valid_name(template.format(**values))


# Names repeat (a literal name is the same for every call): validated once each.
_valid_name = functools.lru_cache(maxsize=4096)(validate_name)


def _plain_leaf(value: Any, where: str) -> Any:
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
    raise TypeError(
        f"{where}: value of type {type(value).__module__}."
        f"{type(value).__qualname__} is not plain JSON (allowed: dict, list, tuple, str, "
        "int, float, bool, None, dataclass, enum, Path, StepRef)"
    )


def to_plain(value: Any, where: str) -> Any:
    """Convert a hash-attribute value to plain JSON, or raise TypeError naming `where`."""
    return walk.walk(value, _plain_leaf, where, as_json=True)


def find_refs(value: Any) -> list[StepRef]:
    """Every StepRef nested anywhere in `value` (the containers `tasks.core.walk` knows)."""
    return walk.collect(value, StepRef)


def compute_hash(name: str, attrs: dict[str, Any], deps: list[str]) -> str:
    """The frozen hash format (docs/design.md §3)."""
    payload = {"name": name, "attrs": attrs, "deps": deps}
    encoded = _ENCODER.encode(payload)  # json.dumps(payload, sort_keys=True, separators=...)
    return hashlib.sha256(encoded.encode()).hexdigest()[:HASH_LENGTH]


# What json.dumps(..., sort_keys=True, separators=(",", ":")) builds on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


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


class StepArgumentError(ValueError):
    """A call argument that would give a wrong or unstable identity; raised before any work."""


def identify(
    name_template: str,
    hash_attrs: Collection[str],
    arguments: Mapping[str, Any],
    prefix: str | None = None,
    omit_at_default: Mapping[str, Any] | None = None,
) -> Identity:
    """Compute the identity of a call from its bound arguments (defaults applied).

    Only `hash_attrs` enter ATTRS, except a parameter of `omit_at_default` (name -> its
    scalar default) whose value is that default, of the same type: a hash attribute added to
    a step after it had committed outputs leaves their identities as they were while it is at
    the default, which is what the step did before the attribute existed. A StepRef in any
    other parameter is a `StepArgumentError` (it would be a dependency that does not key the
    output), and so is a hash-attribute string that is a path under `prefix` (default: the
    current prefix), which would make the identity depend on where outputs live.
    """
    name = fill_name(name_template, arguments)
    for field in _template_fields(name_template):
        if field not in hash_attrs and not isinstance(arguments[field], str):
            raise StepArgumentError(
                f"step {name!r}: name field {field!r} is {arguments[field]!r} "
                f"({type(arguments[field]).__name__}); a field that is not a hash attribute "
                "must be a string, or 1 and '1' would share an output"
            )
    prefix = prefix if prefix is not None else _current_prefix()
    attrs: dict[str, Any] = {}
    deps: set[str] = set()
    for param, value in arguments.items():
        if type(value) in _SCALARS:  # what the walks below do for a plain scalar, at once
            if omit_at_default and _is_default(param, value, omit_at_default):
                continue
            if param in hash_attrs:
                if type(value) is float and not math.isfinite(value):
                    _plain_leaf(value, f"hash attribute {param!r}")  # raises, naming it
                if type(value) is str and _under(value, prefix):
                    _refuse_prefix_paths(name, param, value, prefix)  # raises, naming it
                attrs[param] = value
            continue
        if param not in hash_attrs:
            if find_refs(value):
                raise StepArgumentError(
                    f"step {name!r}: parameter {param!r} receives a step output but is not a "
                    "hash attribute; declare it in hash_attrs (an input defines the output)"
                )
            continue
        attrs[param] = _hash_attribute(name, param, value, prefix, deps)
    dep_list = sorted(deps)
    return Identity(name, attrs, dep_list, compute_hash(name, attrs, dep_list))


def _hash_attribute(name: str, param: str, value: Any, prefix: str, deps: set[str]) -> Any:
    """A container hash attribute's plain JSON, its StepRefs added to `deps`: the three
    checks below (references, plain JSON, paths under the prefix) in one walk.

    The one walk succeeds exactly when the three would: it refuses sets and non-string keys
    and sees the same references (no sets or pydantic models get past it). When it fails,
    the three run in their order so that the error is theirs, word for word."""
    refs: list[StepRef] = []
    suspect = False

    def leaf(item: Any, where: str) -> Any:
        nonlocal suspect
        if isinstance(item, StepRef):
            refs.append(item)
        plain = _plain_leaf(item, where)
        if isinstance(plain, str):
            suspect = suspect or _under(plain, prefix)
        elif plain is not None and not isinstance(plain, (bool, int, float)):
            suspect = True  # an enum's container value: the full check decides
        return plain

    where = f"hash attribute {param!r}"
    try:
        plain = walk.walk(value, leaf, where, as_json=True)
    except (TypeError, ValueError):
        deps.update(ref.name_with_hash for ref in find_refs(value))
        plain = to_plain(value, where)
        _refuse_prefix_paths(name, param, plain, prefix)
        raise
    if suspect:
        _refuse_prefix_paths(name, param, plain, prefix)
    deps.update(ref.name_with_hash for ref in refs)
    return plain


def _is_default(param: str, value: Any, omit_at_default: Mapping[str, Any]) -> bool:
    """Whether `value` is `param`'s omitted default: equal and of the same type (so 1 is not
    1.0 and True is not 1, as in the hash)."""
    if param not in omit_at_default:
        return False
    default = omit_at_default[param]
    return type(value) is type(default) and value == default


# Exact types only: a subclass (an IntEnum, a str enum) takes the general path.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _current_prefix() -> str:
    from tasks.core import storage

    return storage.current_prefix()


def _refuse_prefix_paths(name: str, param: str, plain: Any, prefix: str) -> None:
    """A string under the prefix is `ref.path` passed where the ref belongs: its identity
    would change with the prefix (another bucket, region or laptop)."""

    def check(item: Any, where: str) -> Any:
        if isinstance(item, str) and _under(item, prefix):
            raise StepArgumentError(
                f"step {name!r}: hash attribute {where} is {item!r}, a path under the output "
                f"prefix {prefix}; pass the step's StepRef (or ref.cd('sub/path')) instead of "
                "its .path, so that the identity does not depend on where outputs live"
            )
        return item

    walk.walk(plain, check, repr(param))


def _under(text: str, prefix: str) -> bool:
    """Whether `text` names a location at or below `prefix`, however it is spelled (`gcs://`
    for `gs://`, doubled slashes, `file:`, `~`, links in local paths). Relative paths are
    never paths under the prefix: they name the user's own files."""
    if "://" in prefix:
        protocol, _, rest = prefix.partition("://")
        if "://" not in text:
            return False
        other, _, text_rest = text.partition("://")
        if _PROTOCOL_ALIASES.get(other, other) != _PROTOCOL_ALIASES.get(protocol, protocol):
            return False
        return _below(_squeeze(text_rest), _squeeze(rest))
    if text.startswith("file:"):
        text = text[len("file:") :]
    if not text.startswith(("/", "~")):
        return False
    local = os.path.realpath(os.path.expanduser(text))
    return _below(local, _real(prefix)) or _below(_squeeze(text), _squeeze(prefix))


_PROTOCOL_ALIASES = {"gcs": "gs"}


def _squeeze(path: str) -> str:
    return "/".join(part for part in path.split("/") if part)


def _below(path: str, base: str) -> bool:
    path, base = path.rstrip("/"), base.rstrip("/")
    return path == base or path.startswith(base + "/")


@functools.lru_cache(maxsize=16)
def _real(prefix: str) -> str:
    return os.path.realpath(prefix)
