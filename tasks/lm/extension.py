"""Extending a training without starting over: a `train_lm` call that differs from a committed
one only in `num_train_steps`, on a schedule whose first updates do not depend on the total
(tasks.lm.schedules.EXTENDABLE), starts from that run's newest checkpoint at or before the
step where their learning rates part, instead of step 0.

Finding the committed run: the name is part of the identity, so every candidate is an output
folder `checkpoints/{name}-HASH` beside this run's: one listing of that folder, then each
same-name output's provenance (`attrs`, a small JSON read) compared with this run's attributes
without `num_train_steps` (equal attributes mean equal inputs too: inputs enter as their
identities). Only a match has its commit record checked and its checkpoints listed. No index
is kept: the provenance already holds the attributes, and an index would be one more thing for
`gc`, a copied bucket or a deleted output to keep right (docs/design.md §8b).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from tasks.lm.checkpoints import checkpoint_at_or_before
from tasks.lm.schedules import EXTENDABLE, shared_updates

TOTAL = "num_train_steps"


@dataclasses.dataclass(frozen=True)
class Extension:
    """Where a run starts: `source`'s (NAME-HASH) checkpoint of `step`, at `checkpoint`."""

    source: str
    step: int
    checkpoint: str


def _lineage(attrs: Mapping[str, Any]) -> str:
    """A run's attributes without its total, as canonical JSON (so 2 and 2.0 differ)."""
    return json.dumps({k: v for k, v in attrs.items() if k != TOTAL}, sort_keys=True)


def find(name: str, attrs: Mapping[str, Any], prefix: str) -> Extension | None:
    """The committed run of `name` this run (its identity's `attrs`) extends, at the newest
    checkpoint whose state the two share and after which this run still has steps to train;
    None when there is none (any schedule but an EXTENDABLE one, among others)."""
    from tasks.core import records, storage
    from tasks.core.explain import sibling_outputs

    if attrs.get("lr_schedule") not in EXTENDABLE or not isinstance(attrs.get(TOTAL), int):
        return None
    total, lineage = attrs[TOTAL], _lineage(attrs)
    best: Extension | None = None
    for sibling in sibling_outputs(name, prefix):
        other = _own_attrs(sibling, prefix)
        if not other or not isinstance(other.get(TOTAL), int) or other[TOTAL] == total:
            continue
        if _lineage(other) != lineage or records.read_commit(sibling, prefix) is None:
            continue
        shared = shared_updates(attrs, other[TOTAL], total)
        # step-s holds the state after updates 0..s; at least one update must remain
        last = min(shared - 1, total - 2)
        checkpoints = storage.join(storage.output_dir(sibling, prefix), "checkpoints")
        found = checkpoint_at_or_before(checkpoints, last)
        if found is not None and (best is None or found[1] > best.step):
            best = Extension(sibling, found[1], found[0])
    return best


def _own_attrs(name_with_hash: str, prefix: str) -> dict[str, Any] | None:
    """The `attrs` of an output's provenance, if they (with its `deps`) hash to the output's
    own name: `.lmflows/` is outside the manifest, so a provenance copied from another output
    or edited by hand would otherwise make another training's checkpoint a source."""
    from tasks.core import storage
    from tasks.core.identity import compute_hash, split_name_with_hash

    try:
        recorded = json.loads(storage.read_bytes(storage.meta_path(
            name_with_hash, storage.PROVENANCE_FILE, prefix)))  # fmt: skip
        name, hash_ = split_name_with_hash(name_with_hash)
        attrs = recorded["attrs"]
        deps = sorted(dep["identity"] for dep in recorded["deps"])
        if compute_hash(name, attrs, deps) != hash_:
            return None
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def describe(name: str, attrs: dict, prefix: str) -> str | None:
    """`explain`'s line for a run that would extend a committed one (train_lm's
    `starts_from`)."""
    found = find(name, attrs, prefix)
    if found is None:
        return None
    return f"extends {found.source} from step {found.step} (its checkpoint; trains the rest)"
