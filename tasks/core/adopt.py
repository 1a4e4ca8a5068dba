"""`adopt`: an existing folder becomes a committed step output, without copying it.

A Marin tokenized cache or checkpoint already sits in a bucket; recomputing it to give it an
lmflows identity would cost hours. `adopt(path, name=...)` lists the folder's files (size and a
content digest: sha256 on local disk, the crc32c and md5 GCS reports on gs://, nothing
downloaded), and the step `adopted/{name}` gets its identity from that content, never from the
location: `{"name": "adopted/NAME", "attrs": {"fingerprint": F}, "deps": []}` where F is the
sha256 of the file list. The same files at another path or in another bucket therefore give
the same identity, and the same downstream identities.

Under the prefix it is an ordinary committed output (`adopted/NAME-HASH/`: `adopted.json` with
the file list, provenance naming where it was first adopted from, the commit record), so
`plan`, `explain`, `status`, `show`, `gc` and a consumer's input check see it as any other. A
consumer receives the adopted folder's own path (`AdoptedRef.path`), never a copy.

What is computed once: the first adoption of a location under a prefix reads every local file
(sha256) and records the result in `{prefix}/.lmflows/adopted/KEY.json` (KEY: a digest of the
location) with each file's change hints (local: ctime and inode; gs://: generation). A later
run lists the folder again and re-reads only the files whose size or hints changed (gs://:
none: its digests come with the listing), so an unchanged folder costs one listing. A folder
whose content differs from what was recorded is refused in one line naming the first changed
file. `--force 'adopted/NAME'` re-reads every file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
import uuid
from typing import Any

from tasks.core import (
    lease,
    manifest,
    outputs,
    planning,
    provenance,
    records,
    storage,
    stores,
)
from tasks.core.identity import Identity, fill_name, identify
from tasks.core.identity import _under as under_prefix
from tasks.core.ref import StepRef

logger = logging.getLogger("lmflows.adopt")

NAME_TEMPLATE = "adopted/{name}"
ADOPTED_FILE = "adopted.json"
INDEX_DIR = f"{storage.META_DIR}/adopted"
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_MEMO_SIZE = 64


class AdoptError(ValueError):
    """A folder that cannot be adopted (missing, empty, a link, changed): one line, before
    any step runs."""


@dataclasses.dataclass(frozen=True, eq=False)
class AdoptedRef(StepRef):
    """A StepRef whose files live where they were adopted from.

    Identity, equality and hashing are a plain StepRef's (`NAME-HASH`); only `.path` differs:
    the adopted folder (plus the `.cd()` sub-path), so a consumer reads it in place."""

    location: str = ""

    @property
    def path(self) -> str:
        return storage.join(self.location, self.sub_path) if self.sub_path else self.location

    def __repr__(self) -> str:
        return f"AdoptedRef({self.identity!r}, location={self.location!r})"


def adopt(path: str, name: str, fingerprint: str | None = None) -> AdoptedRef:
    """The folder at `path` (local or gs://) as the committed output `adopted/{name}-HASH`.

    `fingerprint`: the content fingerprint you expect (64 hex digits, shown by `show` and in
    the returned ref's metadata); another content is refused. Under `plan` nothing is written;
    in a run the record is committed (once) before this returns."""
    location = _location(path)
    if fingerprint is not None and not (
        isinstance(fingerprint, str) and _FINGERPRINT.fullmatch(fingerprint)
    ):
        raise AdoptError(f"adopt {location}: fingerprint {fingerprint!r} is not 64 hex digits")
    prefix = storage.current_prefix()
    if under_prefix(location, prefix):
        raise AdoptError(
            f"adopt {location}: the folder is under the output prefix {prefix}; pass the "
            "step's StepRef instead (adopting is for folders lmflows did not make)"
        )
    if under_prefix(prefix, location):
        raise AdoptError(
            f"adopt {location}: the output prefix {prefix} is inside this folder, so every "
            "run would change its content; adopt a folder beside the prefix"
        )
    if not isinstance(name, str):
        raise AdoptError(f"adopt {location}: name must be a string, got {name!r}")
    full_name = fill_name(NAME_TEMPLATE, {"name": name})  # a bad name: one StepNameError line
    store = stores.store_for(location)
    snapshot = store.snapshot(location)
    _refuse_bad_files(location, snapshot, store)
    index_path = storage.join(prefix, INDEX_DIR, _index_key(location) + ".json")
    recorded = _read_index(index_path, location)
    from tasks.core.decorator import is_forced

    baselines = [] if is_forced(full_name) else [b for b in (recorded, _MEMO.get(location)) if b]
    files = _content(store, location, snapshot, baselines)
    found = fingerprint_of(files)
    if recorded is not None and recorded["fingerprint"] != found and fingerprint != found:
        raise AdoptError(
            f"adopt {location}: the folder changed since it was adopted as "
            f"{recorded['name_with_hash']}: {_first_change(recorded['files'], files)}; put it "
            f"back, or adopt the new content with fingerprint={found!r}"
        )
    if fingerprint is not None and fingerprint != found:
        raise AdoptError(
            f"adopt {location}: its content has fingerprint {found}, not the expected {fingerprint}"
        )
    plan = planning.active_plan()
    planned = _PLANNED.get(location)
    if plan is None and planned is not None and fingerprint_of(planned) != found:
        raise AdoptError(
            f"adopt {location}: the folder changed since it was planned: "
            f"{_first_change(planned, files)}; the plan's identities no longer hold, so "
            "nothing ran: plan and run again"
        )
    identity = identify(NAME_TEMPLATE, ("fingerprint",), {"name": name, "fingerprint": found})
    metadata = {
        "fingerprint": found,
        "files": len(files),
        "bytes": sum(entry["bytes"] for entry in files.values()),
    }
    ref = AdoptedRef(identity.name, identity.hash, metadata=metadata, location=location)
    _remember(location, files, snapshot)
    if plan is not None:  # plan: nothing written
        _remember_planned(location, files)
        plan.add(ref, "adopt", is_forced(identity.name, identity.name_with_hash), identity.attrs)
        return ref
    _commit(identity, location, files, metadata, prefix)
    entry = _index_entry(location, identity, found, files, snapshot)
    if entry != recorded:
        storage.write_json(index_path, entry)
    _PLANNED.pop(location, None)  # the run adopted what was planned
    return ref


def fingerprint_of(files: dict[str, dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of {relative path: {"bytes", digests}}: the content,
    nothing of the location (no generations, times or absolute paths)."""
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- the folder and its files ------------------------------------------------------------


def _location(path: Any) -> str:
    """The folder's URL, checked: it exists, is a folder and not a link."""
    if not isinstance(path, str) or not path.strip():
        raise AdoptError(f"adopt: path must be a non-empty string, got {path!r}")
    path = path.strip()
    if "://" in path and stores.protocol_of(path) != "file":
        location = path.rstrip("/")
    else:
        location = os.path.abspath(os.path.expanduser(stores.local_path_of(path)))
    kind = stores.store_for(location).path_kind(location)
    if kind == "missing":
        raise AdoptError(f"adopt {location}: no such folder")
    if kind == "link":
        raise AdoptError(
            f"adopt {location}: the folder is a symbolic link; adopt the folder it points to "
            f"({os.path.realpath(location)}), whose files are what is recorded"
        )
    if kind != "folder":
        raise AdoptError(f"adopt {location}: it is a file, not a folder")
    return location


def _refuse_bad_files(location: str, snapshot: dict[str, dict[str, Any]], store: Any) -> None:
    if not snapshot:
        raise AdoptError(f"adopt {location}: the folder holds no files")
    for rel, entry in sorted(snapshot.items()):
        if "symlink" in entry:
            raise AdoptError(
                f"adopt {location}: {rel} is a symbolic link (to {entry['symlink']}); a link's "
                "target can change behind the record, so adopted folders hold files only"
            )
        if "bytes" not in entry:
            raise AdoptError(f"adopt {location}: {rel} is not a regular file")


def _hints(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "bytes" and k not in stores.CONTENT_KEYS}


def _content(
    store: Any,
    location: str,
    snapshot: dict[str, dict[str, Any]],
    baselines: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", digests}}: the digests the store reported, else those of a
    baseline whose size and hints for the file are unchanged, else computed (read)."""
    files: dict[str, dict[str, Any]] = {}
    for rel, entry in sorted(snapshot.items()):
        digests = {k: entry[k] for k in stores.CONTENT_KEYS if k in entry}
        if not digests:
            digests = _reused(rel, entry, baselines) or store.digest(storage.join(location, rel))
        files[rel] = {"bytes": entry["bytes"], **digests}
    return files


def _reused(rel: str, entry: dict[str, Any], baselines: list[dict[str, Any]]) -> dict | None:
    hints = _hints(entry)
    if not hints:  # a store that reports nothing but sizes: always read
        return None
    for baseline in baselines:
        known = baseline["files"].get(rel)
        if known and known["bytes"] == entry["bytes"] and baseline["hints"].get(rel) == hints:
            return {k: known[k] for k in stores.CONTENT_KEYS if k in known}
    return None


def _first_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    for rel in sorted(set(old) | set(new)):
        if rel not in new:
            return f"file {rel} is missing"
        if rel not in old:
            return f"file {rel} is new"
        if old[rel]["bytes"] != new[rel]["bytes"]:
            return f"file {rel} has {new[rel]['bytes']} bytes, {old[rel]['bytes']} when adopted"
        if old[rel] != new[rel]:
            return f"file {rel} has other content (same size)"
    return "its file list differs"


# --- what is recorded under the prefix ---------------------------------------------------

# Content computed in this process (plan, then run): a second baseline for reuse only.
_MEMO: dict[str, dict[str, Any]] = {}


def _remember(location: str, files: dict[str, Any], snapshot: dict[str, Any]) -> None:
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.clear()
    _MEMO[location] = {"files": files, "hints": {r: _hints(e) for r, e in snapshot.items()}}


# What a plan in this process saw, per location, until a run adopts it: the run that follows
# a plan (`python -m flows run`) must adopt that content, or the plan's identities (and the
# `--only` selection made of them) no longer name what runs.
_PLANNED: dict[str, dict[str, Any]] = {}


def _remember_planned(location: str, files: dict[str, Any]) -> None:
    if len(_PLANNED) >= _MEMO_SIZE:
        _PLANNED.clear()
    _PLANNED[location] = files


def _index_key(location: str) -> str:
    return hashlib.sha256(location.encode()).hexdigest()[:32]


def _index_entry(
    location: str,
    identity: Identity,
    found: str,
    files: dict[str, Any],
    snapshot: dict[str, Any],
) -> dict[str, Any]:
    return {
        "location": location,
        "name_with_hash": identity.name_with_hash,
        "fingerprint": found,
        "files": files,
        "hints": {rel: _hints(entry) for rel, entry in snapshot.items()},
    }


def _read_index(path: str, location: str) -> dict[str, Any] | None:
    """The record of an earlier adoption of `location` under this prefix; None if there is
    none or it is not one we wrote (warned: the folder is then read whole again)."""
    try:
        entry = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("adopt %s: ignoring its record %s (%s)", location, path, exc)
        return None
    shaped = (
        isinstance(entry, dict)
        and entry.get("location") == location
        and isinstance(entry.get("fingerprint"), str)
        and isinstance(entry.get("name_with_hash"), str)
        and isinstance(entry.get("files"), dict)
        and isinstance(entry.get("hints"), dict)
        and all(
            isinstance(e, dict) and isinstance(e.get("bytes"), int) for e in entry["files"].values()
        )
        and fingerprint_of(entry["files"]) == entry["fingerprint"]
    )
    if not shaped:
        logger.warning("adopt %s: ignoring its record %s (not an adoption record)", location, path)
        return None
    return entry


def _commit(
    identity: Identity,
    location: str,
    files: dict[str, Any],
    metadata: dict[str, Any],
    prefix: str,
) -> None:
    """Commit `adopted/NAME-HASH` (the file list, provenance, the record) unless it is
    committed: under its lease like any step, so two runs adopting at once commit once."""
    name_with_hash = identity.name_with_hash
    if records.read_commit(name_with_hash, prefix) is not None:
        return
    lease_path = storage.lease_path(name_with_hash, prefix)
    holder = f"adopt-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + 2 * lease.lease_seconds()
    while not lease.try_acquire(lease_path, holder):
        if records.read_commit(name_with_hash, prefix) is not None:
            return
        if time.monotonic() > deadline:
            raise AdoptError(f"adopt {location}: {name_with_hash} is held by another run")
        time.sleep(0.2)
    attempt = None
    try:
        if records.read_commit(name_with_hash, prefix) is not None:
            return
        started = time.time()
        attempt = outputs.begin(name_with_hash, prefix)
        storage.write_json(
            storage.join(attempt.write_path, ADOPTED_FILE),
            {"fingerprint": metadata["fingerprint"], "files": files},
        )
        record = provenance.build(
            identity, adopt, started, time.time(), prefix, {"adopted_from": location}
        )
        storage.write_json(storage.join(attempt.write_path, storage.PROVENANCE_FILE), record)
        attempt.manifest = manifest.build(attempt.write_path)
        records.commit(attempt, StepRef(identity.name, identity.hash, metadata=metadata))
    except BaseException:
        if attempt is not None:
            outputs.abandon(attempt)
        raise
    finally:
        lease.release(lease_path, holder)


# --- from an identity or a path back to the adopted folder -------------------------------


def read_in_place(ref: StepRef, prefix: str | None = None) -> StepRef:
    """`ref` as a consumer must read it. An `adopted/` output named only by its identity (an
    event, a plan's attributes, a provenance record) is read where it was adopted: its record
    names the folder, which is checked again as `adopt` checks it (a changed folder is
    refused in one line). Any other ref is returned as it is."""
    if isinstance(ref, AdoptedRef) or not ref.name.startswith("adopted/"):
        return ref
    prefix = prefix or storage.current_prefix()
    record = storage.join(prefix, ref.name_with_hash, storage.PROVENANCE_FILE)
    try:
        location = json.loads(storage.read_bytes(record))["notes"]["adopted_from"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdoptError(
            f"{ref.name_with_hash}: its record {record} names no adopted folder ({exc})"
        ) from None
    if not isinstance(location, str):
        raise AdoptError(f"{ref.name_with_hash}: its record {record} names no adopted folder")
    again = adopt(location, name=ref.name[len("adopted/") :])
    if again.name_with_hash != ref.name_with_hash:
        raise AdoptError(
            f"{ref.name_with_hash}: the folder {location} now holds other content "
            f"({again.name_with_hash})"
        )
    return again.cd(ref.sub_path) if ref.sub_path else again
