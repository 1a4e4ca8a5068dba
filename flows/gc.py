"""`python -m flows gc`: committed outputs that no experiment reaches, and deleting them.

Reachable means: produced by some step of the plan of some module under `experiments/`, with
its flow's default parameters. A sweep run with other `--param` values is not reachable from
the defaults, so `gc` lists it: read the list before `--delete`.
"""

from __future__ import annotations

import dataclasses
import os
import uuid

from tasks.core import lease, records, storage
from tasks.core.inventory import CommittedStep, committed_steps
from tasks.core.outputs import delete_output


@dataclasses.dataclass
class Reach:
    """What the experiments reach, and which of them could not be planned."""

    reachable: set[str]
    failures: dict[str, str]


def reachable_outputs() -> Reach:
    """Plan every experiment (offline, writes nothing) and collect the identities they use."""
    from flows.loader import available_experiments, load_flow
    from flows.params import bind
    from tasks.core import planning

    reachable: set[str] = set()
    failures: dict[str, str] = {}
    for name in available_experiments():
        try:
            flow = load_flow(name)
            with planning.planning() as plan:
                flow.fn(**bind(flow, {}))
        except Exception as exc:  # reported per experiment; gc refuses to delete then
            failures[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            continue
        reachable.update(plan.steps)
    return Reach(reachable, failures)


def unreachable(reach: Reach, prefix: str) -> list[CommittedStep]:
    return [s for s in committed_steps(prefix) if s.name_with_hash not in reach.reachable]


def delete(name_with_hash: str, prefix: str) -> bool:
    """Delete a committed output under its own lease; False (nothing touched) when another
    process holds a live lease on it, i.e. a run is writing or re-committing it right now."""
    lease_path = storage.lease_path(name_with_hash, prefix)
    holder = f"gc-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not lease.try_acquire(lease_path, holder):
        return False
    try:
        records.forget(storage.meta_path(name_with_hash, storage.COMMIT_FILE, prefix))
        with lease.fenced(lease_path):
            delete_output(name_with_hash, prefix)
    finally:
        lease.release(lease_path, holder)
    return True
