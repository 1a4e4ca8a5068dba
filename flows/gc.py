"""`python -m flows gc`: committed outputs that no experiment reaches, and deleting them.

Reachable means: produced by some step of the plan of some module under `experiments/`, with
its flow's default parameters. A sweep run with other `--param` values is not reachable from
the defaults, so `gc` lists it: read the list before `--delete`.

`--delete` never deletes an output that a run is using: one whose own lease is live (a run is
writing or re-committing it), or one that a live lease of another step lists as an input
(that step is running, or about to, and reads it). Each output kept says why, in one line.

It also lists the attempt folders under `{prefix}/.lmflows/staging` (local prefixes: a gs://
attempt writes its output folder directly). A killed run leaves its attempt there, and a
resumable step keeps its checkpoints there for the next attempt: checkpoint-sized folders that
nothing else reports. `--delete` removes those whose lease is dead (no run holds the step), under
the step's own lease, so a run that starts meanwhile waits instead of writing into a folder
being deleted. A rerun of such a step then starts from nothing instead of resuming.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from tasks.core import lease, records, storage, stores
from tasks.core.inventory import CommittedStep, committed_steps, tree_bytes
from tasks.core.outputs import delete_output, discard_local, refuse_symlinked_output

_STEP_FOLDER = re.compile(r"-[0-9a-f]{10}$")  # {name}-{hash}: one step's staging root


@dataclasses.dataclass(frozen=True)
class StagingFolder:
    """One step's attempt folders under the staging root."""

    name_with_hash: str
    path: str
    size_bytes: int
    age_seconds: float
    running: bool  # its step's lease is live


def staging_folders(prefix: str) -> list[StagingFolder]:
    """The steps with attempt folders under `{prefix}/.lmflows/staging` (local prefixes)."""
    if not stores.store_for(prefix).staged:
        return []  # attempts there write their output folder directly
    root = os.path.join(prefix, storage.META_DIR, "staging")
    found = []
    for folder, dirs, _files in os.walk(root):  # never follows directory links
        name_with_hash = os.path.relpath(folder, root)
        if folder == root or not _STEP_FOLDER.search(folder):
            continue
        dirs[:] = []
        if not os.listdir(folder):
            continue
        current = lease.read(storage.lease_path(name_with_hash, prefix))
        found.append(
            StagingFolder(
                name_with_hash,
                folder,
                tree_bytes(folder),
                time.time() - os.lstat(folder).st_mtime,
                lease.is_live(current),
            )
        )
    return sorted(found, key=lambda f: f.name_with_hash)


def delete_staging(name_with_hash: str, prefix: str) -> bool:
    """Remove a step's attempt folders under its own lease; False (nothing changed) when a
    run holds the lease."""
    lease_path = storage.lease_path(name_with_hash, prefix)
    holder = f"gc-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not lease.try_acquire(lease_path, holder):
        return False
    try:
        root = storage.staging_root(name_with_hash, prefix)
        storage.refuse_links_below(root, prefix)  # a planted link must not steer the delete
        with lease.fenced(lease_path):
            discard_local(root)
    finally:
        lease.release(lease_path, holder)
    return True


@dataclasses.dataclass
class Reach:
    """What the experiments reach, and which of them could not be planned."""

    reachable: set[str]
    failures: dict[str, str]


def reachable_outputs() -> Reach:
    """Plan every experiment (offline, writes nothing) and collect the identities they use."""
    from flows.loader import available_experiments, load_flow
    from flows.planned import PlanningFailed, plan_experiment

    reachable: set[str] = set()
    failures: dict[str, str] = {}
    for name in available_experiments():
        try:
            _, plan = plan_experiment(load_flow(name))
        except Exception as exc:  # reported per experiment; gc refuses to delete then
            if isinstance(exc, PlanningFailed) and exc.__cause__ is not None:
                exc = exc.__cause__
            failures[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            continue
        reachable.update(plan.steps)
    return Reach(reachable, failures)


def unreachable(reach: Reach, prefix: str) -> list[CommittedStep]:
    return [s for s in committed_steps(prefix) if s.name_with_hash not in reach.reachable]


@dataclasses.dataclass
class Consumer:
    """A step holding a live lease that lists an output as its input."""

    step: str  # NAME-HASH of the consuming step
    holder: str
    host: str
    pid: Any

    def __str__(self) -> str:
        return f"{self.step} (lease holder {self.holder} on host {self.host}, pid {self.pid})"


@dataclasses.dataclass
class Deletion:
    """What `delete` did with one output."""

    name_with_hash: str
    deleted: bool
    # kept because another process holds the output's own lease (it writes or re-commits it)
    leased: bool = False
    # kept because these running steps read it
    consumers: list[Consumer] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return self.deleted

    @property
    def line(self) -> str:
        """One line for the user: deleted, or kept and why."""
        name = self.name_with_hash
        if self.deleted:
            return f"deleted {name}"
        if self.consumers:
            steps = "; ".join(str(c) for c in self.consumers)
            return f"kept {name}: running step {steps} reads it as an input"
        return f"kept {name}: a run holds its lease right now"


def delete(name_with_hash: str, prefix: str) -> Deletion:
    """Delete a committed output under its own lease, unless a run uses it.

    Kept (nothing changed) when another process holds a live lease on the output itself (a
    run writes or re-commits it right now), or when a live lease of a step lists it among its
    inputs (`deps`). The order closes the race with a consumer that starts just now: gc
    removes the commit record first, *then* scans the live leases; a consumer writes its
    lease first, *then* checks that its inputs are committed (tasks/core/policy.py,
    `_check_inputs`). So either this scan sees the consumer's lease (and the record is put
    back, same bytes), or the consumer sees the record gone and fails with MissingInputError
    instead of reading a folder being deleted. A consumer that finds the record gone while
    gc still holds this lease waits for it and looks again, so a record put back is found."""
    lease_path = storage.lease_path(name_with_hash, prefix)
    holder = f"gc-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not lease.try_acquire(lease_path, holder):
        return Deletion(name_with_hash, deleted=False, leased=True)
    commit = storage.meta_path(name_with_hash, storage.COMMIT_FILE, prefix)
    try:
        refuse_symlinked_output(name_with_hash, prefix)
        try:
            content: bytes | None = storage.read_bytes(commit)
        except FileNotFoundError:
            content = None
        records.forget(commit)
        with lease.fenced(lease_path):
            storage.remove_file(commit)  # first: from here on a starting consumer sees it gone
        consumers = consumers_of(name_with_hash, prefix)  # then: who already said they read it
        if consumers:
            if content is not None:
                with lease.fenced(lease_path):
                    storage.write_atomic(commit, content)
            return Deletion(name_with_hash, deleted=False, consumers=consumers)
        with lease.fenced(lease_path):
            delete_output(name_with_hash, prefix)
    finally:
        lease.release(lease_path, holder)
    return Deletion(name_with_hash, deleted=True)


def consumers_of(name_with_hash: str, prefix: str) -> list[Consumer]:
    """The steps whose live lease under `prefix` lists `name_with_hash` as an input."""
    found = []
    for step, path in _lease_files(prefix):
        current = lease.read(path)
        if lease.is_live(current) and name_with_hash in lease.deps_of(current):
            assert current is not None
            found.append(
                Consumer(
                    step,
                    str(current.get("holder")),
                    str(current.get("host")),
                    current.get("pid"),
                )
            )
    return found


def _lease_files(prefix: str) -> Iterator[tuple[str, str]]:
    """(NAME-HASH, lease path) of every lease file under the prefix's state folder
    (`storage.lease_path`)."""
    root = storage.join(prefix, storage.META_DIR, "state")
    return stores.store_for(root).files_named(root, storage.LEASE_NAME)
