"""Output directories: per-attempt staging, publishing at commit, failure records.

Local disk: each attempt writes into its own staging directory under
`{prefix}/.lmflows/staging/`; the commit moves it into place with one rename (an atomic swap
with `renameat2(RENAME_EXCHANGE)` when an older version is being replaced). A holder that
lost its lease (paused, frozen VM, a `--force` race) can only ever write into its own staging
directory, and a reader sees the old output or the new one, never a mix.

gs:// has no rename: an attempt writes into the output directory itself after clearing it,
and what guards a committed output there is fencing plus the manifest's generations (see
docs/steps.md for exactly what that guarantees).

Resumable steps (`@step(resumable=True)`, e.g. training) keep what earlier attempts of the same
identity wrote: locally every attempt writes into one fixed staging folder
(`staging/{name-hash}/resume`), on gs:// into the output folder, and neither is cleared, so a
preempted run's checkpoints survive. Each attempt is logged in `state/{name-hash}/attempts.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import traceback
import uuid
from typing import Any

from tasks.core import storage, stores

# An output location lmflows refuses to write (a path through a symbolic link).
OutputPathError = storage.LinkedPathError


@dataclasses.dataclass
class Attempt:
    """Where one attempt of a step writes, and what it will commit."""

    name_with_hash: str
    prefix: str
    write_path: str  # what the step function receives as output_path
    staged: bool  # True: write_path is a staging directory moved into place at commit
    manifest: dict[str, Any] | None = None
    resumable: bool = False
    attempt_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])


def refuse_symlinked_output(name_with_hash: str, prefix: str) -> None:
    """An output directory that is (or passes through) a link could point anywhere."""
    storage.refuse_links_below(storage.output_dir(name_with_hash, prefix), prefix)


RESUME_DIR = "resume"
ATTEMPTS_NAME = "attempts.jsonl"


def begin(name_with_hash: str, prefix: str, resumable: bool = False) -> Attempt:
    """Prepare this attempt's place (the caller holds the step's lease): a fresh one, or for
    a resumable step the one earlier attempts wrote into."""
    refuse_symlinked_output(name_with_hash, prefix)
    if resumable and not _has_commit(name_with_hash, prefix):
        return _begin_resumable(name_with_hash, prefix)
    clear_attempts(name_with_hash, prefix)
    store = stores.store_for(prefix)
    if store.staged:
        root = storage.staging_root(name_with_hash, prefix)
        store.refuse_links_below(root, prefix)  # a planted link must not steer the rmtree
        store.clear_folder(root)  # what dead attempts left; nobody else holds the lease
        write_path = os.path.join(root, uuid.uuid4().hex[:12])
        os.makedirs(write_path)
        return Attempt(name_with_hash, prefix, write_path, staged=True)
    out = storage.output_dir(name_with_hash, prefix)
    store.clear_folder(out)
    return Attempt(name_with_hash, prefix, out, staged=False)


def _has_commit(name_with_hash: str, prefix: str) -> bool:
    """A committed (or once committed, now damaged) output is recomputed from scratch, never
    resumed: `--force` and a failed verification mean "do it again". (A staged attempt never
    writes into the output folder itself, so there it never finds one.)"""
    store = stores.store_for(prefix)
    commit = storage.meta_path(name_with_hash, storage.COMMIT_FILE, prefix)
    return not store.staged and store.exists(commit)


def _begin_resumable(name_with_hash: str, prefix: str) -> Attempt:
    if stores.store_for(prefix).staged:
        root = storage.staging_root(name_with_hash, prefix)
        write_path = os.path.join(root, RESUME_DIR)
        storage.refuse_links_below(write_path, prefix)
        meta = os.path.join(write_path, storage.META_DIR)
        if os.path.islink(meta) or (os.path.lexists(meta) and not os.path.isdir(meta)):
            discard_local(meta)  # lmflows' own name: a planted link there would steer writes
        if os.path.isdir(root):  # dead attempts of a non-resumable version of the step
            for entry in os.listdir(root):
                if entry != RESUME_DIR:
                    discard_local(os.path.join(root, entry))
        os.makedirs(write_path, exist_ok=True)
        attempt = Attempt(name_with_hash, prefix, write_path, staged=True, resumable=True)
    else:
        out = storage.output_dir(name_with_hash, prefix)
        attempt = Attempt(name_with_hash, prefix, out, staged=False, resumable=True)
    _record_unended(attempt)
    log_attempt(attempt, {"event": "started"})
    return attempt


def _record_unended(attempt: Attempt) -> None:
    """Earlier attempts that started and never said how they ended (SIGKILL, or their disk
    was full when they failed) are ended now that we hold the lease and can write: their
    failure is recorded late instead of never."""
    for earlier in attempts(attempt.name_with_hash, attempt.prefix):
        if "started_at" in earlier and "failed_at" not in earlier:
            log_attempt(
                attempt,
                {
                    "event": "failed",
                    "attempt": earlier["attempt"],
                    "error": "unrecorded",
                    "why": "it ended without a record of its own (killed, or out of space)",
                    "noticed_by": attempt.attempt_id,
                },
            )


def log_attempt(attempt: Attempt, facts: dict[str, Any]) -> None:
    """Append one line about a resumable attempt (start, note, failure) to its attempts log.

    Advisory: it never fails the step. A line over MAX_ATTEMPT_LINE drops its notes; a log
    that would pass MAX_ATTEMPTS_LOG (many failed attempts, or a planted file) keeps only its
    newest half."""
    import logging
    import socket

    path = storage.state_path(attempt.name_with_hash, ATTEMPTS_NAME, attempt.prefix)
    entry = {"attempt": attempt.attempt_id, "at": time.time(), **facts}  # facts may name another
    if facts.get("event") == "started":
        entry.update(host=socket.gethostname(), pid=os.getpid())
    line = json.dumps(entry, sort_keys=True, default=str).encode() + b"\n"
    if len(line) > MAX_ATTEMPT_LINE:
        entry["notes"] = {"dropped": f"notes of {len(line)} bytes"}
        line = json.dumps(entry, sort_keys=True, default=str).encode() + b"\n"
    try:
        try:
            previous = storage.read_bytes(path, limit=MAX_ATTEMPTS_LOG)
        except FileNotFoundError:
            previous = b""
        except storage.UnreadableRecord:
            previous = b""  # not ours to trust or keep
        if len(previous) + len(line) > MAX_ATTEMPTS_LOG:
            previous = previous[len(previous) // 2 :].split(b"\n", 1)[-1]
        storage.write_atomic(path, previous + line)  # under the lease: no concurrent writer
    except Exception as exc:
        logging.getLogger("lmflows.outputs").warning("attempts log not written: %s", exc)


MAX_ATTEMPTS_LOG = 4 << 20
MAX_ATTEMPT_LINE = 64 << 10


def attempts(name_with_hash: str, prefix: str) -> list[dict[str, Any]]:
    """The logged attempts of a resumable step, one entry per attempt (oldest first);
    malformed lines are skipped (the log is advisory, not a record anything trusts)."""
    path = storage.state_path(name_with_hash, ATTEMPTS_NAME, prefix)
    try:
        raw = storage.read_bytes(path, limit=MAX_ATTEMPTS_LOG)
    except (FileNotFoundError, storage.UnreadableRecord):
        return []
    merged: dict[str, dict[str, Any]] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("attempt"), str):
            event = entry.pop("event", None)
            at = entry.pop("at", None)
            into = merged.setdefault(entry["attempt"], {})
            if event == "started":
                into["started_at"] = at
            elif event == "failed":
                into["failed_at"] = at
            notes = entry.pop("notes", None)
            if isinstance(notes, dict):
                into.setdefault("notes", {}).update(notes)
            into.update(entry)
    return list(merged.values())


def clear_attempts(name_with_hash: str, prefix: str) -> None:
    storage.remove_file(storage.state_path(name_with_hash, ATTEMPTS_NAME, prefix))


def abandon(attempt: Attempt) -> None:
    """Remove a failed attempt's staging directory (a gs:// attempt leaves its files; a
    resumable attempt leaves everything for the next one)."""
    if attempt.resumable:
        return
    if attempt.staged and os.path.lexists(attempt.write_path):
        discard_local(attempt.write_path)


def publish(attempt: Attempt) -> str | None:
    """Move a staged attempt (its commit record already inside) into the output's place.
    Returns where the replaced older version now sits (for `discard`), if there was one."""
    if not attempt.staged:
        return None
    refuse_symlinked_output(attempt.name_with_hash, attempt.prefix)
    storage.refuse_links_below(attempt.write_path, attempt.prefix)
    trash = storage.trash_dir(attempt.prefix)
    storage.refuse_links_below(trash, attempt.prefix)
    final = storage.output_dir(attempt.name_with_hash, attempt.prefix)
    return stores.store_for(attempt.prefix).publish(attempt.write_path, final, trash)


def discard(path: str | None) -> None:
    """Delete a replaced version (outside the lease guard: it can be large)."""
    if path is not None:
        stores.discard_local(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))  # an emptied staging root


discard_local = stores.discard_local  # gc and tests name it here


def record_failure(attempt: Attempt, exc: BaseException, started: float) -> None:
    """Best-effort `failed.json` so that `plan` can say 'failed'. Never masks the error."""
    try:
        storage.write_json(
            storage.failed_path(attempt.name_with_hash, attempt.prefix),
            {
                "error": type(exc).__name__,
                "message": str(exc)[:2000],
                "traceback": traceback.format_exception_only(type(exc), exc)[-1][:2000],
                "started_at": started,
                "failed_at": time.time(),
            },
        )
    except Exception:
        pass


def clear_failure(name_with_hash: str, prefix: str) -> None:
    storage.remove_file(storage.failed_path(name_with_hash, prefix))


def delete_output(name_with_hash: str, prefix: str) -> None:
    """Remove a whole output (gc; the caller holds its lease): commit record first."""
    refuse_symlinked_output(name_with_hash, prefix)
    out = storage.output_dir(name_with_hash, prefix)
    # first the commit record: from here on nobody treats the output as done
    storage.remove_file(storage.meta_path(name_with_hash, storage.COMMIT_FILE, prefix))
    trash = storage.trash_dir(prefix)
    storage.refuse_links_below(trash, prefix)
    stores.store_for(prefix).delete_tree(out, trash)
