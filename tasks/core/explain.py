"""Why a step misses the cache: a field-level diff of its hash attributes against the nearest
committed output of the same name, read from provenance records; over a whole plan, the root
causes (steps with a change of their own) and the steps each one re-runs."""

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
    """Leaf fields whose JSON differs (so 2 vs 2.0 and 1 vs true count, as in the hash)."""
    old, new = flatten(committed), flatten(planned)
    missing = object()
    return [
        Difference(field, old.get(field, missing), new.get(field, missing))
        for field in sorted(set(old) | set(new))
        if _json(old.get(field, missing)) != _json(new.get(field, missing))
    ]


def _json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return repr(value)


def sibling_outputs(name: str, prefix: str) -> list[str]:
    """`name-HASH` of every folder of an output of the step named `name` under `prefix`,
    committed or not (one listing of the parent folder)."""
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
            found.append(f"{parent}/{leaf}" if parent else leaf)
    return sorted(found)


def committed_siblings(name: str, prefix: str) -> list[str]:
    """`name-HASH` of every committed output of the step named `name` under `prefix`."""
    return [
        name_with_hash
        for name_with_hash in sibling_outputs(name, prefix)
        if records.read_commit(name_with_hash, prefix) is not None
    ]


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


# --- the whole plan: root causes and blast radius ------------------------------------------

_DEP_VALUE = re.compile(r"^(?P<base>.+)-(?P<hash>[0-9a-f]{10})(?P<sub>/.*)?$")


@dataclasses.dataclass
class Reason:
    """Why one planned step would run."""

    name_with_hash: str
    status: str
    forced: bool
    nearest: str | None
    own_changes: list[Difference]  # hash attributes that changed (not re-keyed inputs)
    rekeyed: list[Difference]  # inputs whose upstream identity changed
    upstream: list[str]  # dependencies that re-run in the same plan
    roots: list[str] = dataclasses.field(default_factory=list)
    # where its run would start instead of nothing ("extends X from step k"), if anywhere
    starts_from: str | None = None

    @property
    def is_root(self) -> bool:
        return self.name_with_hash in self.roots


def _rekey_of(difference: Difference, deps: list[str]) -> bool:
    """A difference that is only an input's upstream identity changing (same step name)."""
    old, new = difference.committed, difference.planned
    if not (isinstance(old, str) and isinstance(new, str)):
        return False
    a, b = _DEP_VALUE.match(old), _DEP_VALUE.match(new)
    return bool(
        a
        and b
        and a["base"] == b["base"]
        and a["sub"] == b["sub"]
        and f"{b['base']}-{b['hash']}" in deps
    )


def explain_plan(plan: Any, prefix: str) -> dict[str, Reason]:
    """For each step of `plan` that would run (missing, failed, running or forced), its own
    change and the roots it re-runs because of, in plan order. `plan.check_status()` first."""
    runs = {
        key: item for key, item in plan.steps.items() if item.status != "committed" or item.forced
    }
    reasons: dict[str, Reason] = {}
    for key, item in runs.items():
        found = explain(item.ref.name, item.ref.hash, item.attrs, prefix)
        rekeyed = [d for d in found.differences if _rekey_of(d, item.deps)]
        own = [d for d in found.differences if d not in rekeyed]
        upstream = [dep for dep in item.deps if dep in runs]
        reasons[key] = Reason(key, item.status, item.forced, found.nearest, own, rekeyed, upstream)
        starts_from = getattr(item, "starts_from", None)
        if starts_from is not None and not item.forced:
            reasons[key].starts_from = starts_from(item.ref.name, item.attrs, prefix)
    for key in reasons:  # plan order is call order: upstream steps come first
        reason = reasons[key]
        # A root has a cause of its own: forced, a changed attribute, or nothing upstream
        # re-runs (new, failed, deleted, or an input re-keyed to an existing output).
        own_cause = reason.forced or bool(reason.own_changes) or not reason.upstream
        roots = [key] if own_cause else []
        for dep in reason.upstream:
            roots += [r for r in reasons[dep].roots if r not in roots]
        reason.roots = roots
    return reasons


def blast_radius(reasons: dict[str, Reason]) -> dict[str, list[str]]:
    """Root step -> every step of the plan that re-runs because of it (itself included)."""
    radius: dict[str, list[str]] = {}
    for key, reason in reasons.items():
        for root in reason.roots:
            radius.setdefault(root, []).append(key)
    return radius
