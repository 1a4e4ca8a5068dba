"""Why a step misses the cache: a field-level diff of its hash attributes against the nearest
committed output of the same name (DESIGN §9), read from provenance records."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from tasks.core import records, storage

_HASH_SUFFIX = re.compile(r"^(?P<base>.+)-(?P<hash>[0-9a-f]{10})$")


@dataclasses.dataclass
class Difference:
    field: str
    committed: Any
    planned: Any


@dataclasses.dataclass
class Explanation:
    name_with_hash: str
    nearest: str | None
    differences: list[Difference]


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Leaf paths of a JSON value: {"a.b[0]": 1, ...}."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{path}.{key}" if path else str(key)))
        return flat or {path: {}}
    if isinstance(value, list):
        flat = {}
        for i, item in enumerate(value):
            flat.update(flatten(item, f"{path}[{i}]"))
        return flat or {path: []}
    return {path: value}


def diff(committed: dict[str, Any], planned: dict[str, Any]) -> list[Difference]:
    old, new = flatten(committed), flatten(planned)
    missing = object()
    return [
        Difference(field, old.get(field, missing), new.get(field, missing))
        for field in sorted(set(old) | set(new))
        if old.get(field, missing) != new.get(field, missing)
    ]


def committed_siblings(name: str, prefix: str) -> list[str]:
    """`name-HASH` of every committed output of the step named `name` under `prefix`."""
    parent, _, base = name.rpartition("/")
    folder = storage.join(prefix, parent) if parent else prefix
    fs, path = storage.filesystem(folder)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        leaf = entry.rstrip("/").rsplit("/", 1)[-1]
        match = _HASH_SUFFIX.match(leaf)
        if match and match["base"] == base:
            name_with_hash = f"{parent}/{leaf}" if parent else leaf
            if records.read_commit(name_with_hash, prefix) is not None:
                found.append(name_with_hash)
    return sorted(found)


def read_attrs(name_with_hash: str, prefix: str) -> dict[str, Any] | None:
    path = storage.meta_path(name_with_hash, storage.PROVENANCE_FILE, prefix)
    try:
        return json.loads(storage.read_bytes(path)).get("attrs")
    except (FileNotFoundError, ValueError):
        return None


def explain(name: str, hash_: str, attrs: dict[str, Any], prefix: str) -> Explanation:
    """Compare a planned identity with the committed outputs of the same name."""
    best: tuple[str, list[Difference]] | None = None
    for candidate in committed_siblings(name, prefix):
        if candidate == f"{name}-{hash_}":
            return Explanation(candidate, candidate, [])
        committed = read_attrs(candidate, prefix)
        if committed is None:
            continue
        differences = diff(committed, attrs)
        if best is None or len(differences) < len(best[1]):
            best = (candidate, differences)
    if best is None:
        return Explanation(f"{name}-{hash_}", None, [])
    return Explanation(f"{name}-{hash_}", best[0], best[1])


def show(value: Any) -> str:
    return (
        "(absent)"
        if not isinstance(value, (dict, list, str, int, float, bool, type(None)))
        else json.dumps(value)
    )
