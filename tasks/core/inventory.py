"""What is committed under a prefix: one entry per output directory with a commit record."""

from __future__ import annotations

import dataclasses
import json
import os
import time

from tasks.core import records, storage


@dataclasses.dataclass
class CommittedStep:
    name_with_hash: str
    path: str
    size_bytes: int
    committed_at: float

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.committed_at)


def committed_steps(prefix: str | None = None, check: bool = True) -> list[CommittedStep]:
    """Outputs with a valid commit record (`check=False`: any commit record at all, for
    `verify`, which wants the damaged ones too)."""
    prefix = prefix or storage.current_prefix()
    found = _local(prefix, check) if storage.is_local(prefix) else _remote(prefix, check)
    return sorted(found, key=lambda s: s.name_with_hash)


def _local(prefix: str, check: bool) -> list[CommittedStep]:
    found = []
    for root, dirs, _files in os.walk(prefix):  # never follows directory links
        commit = os.path.join(root, storage.COMMIT_FILE)
        if storage.META_DIR in dirs and os.path.isfile(commit):
            dirs[:] = []  # an output directory: never descend into its files
            name_with_hash = os.path.relpath(root, prefix)
            if check and records.read_commit(name_with_hash, prefix) is None:
                continue
            found.append(
                CommittedStep(name_with_hash, root, tree_bytes(root), os.path.getmtime(commit))
            )
        else:
            dirs[:] = [d for d in dirs if d != storage.META_DIR]
    return found


def tree_bytes(root: str) -> int:
    """Bytes under `root`, counting links as links (a dangling one is no error)."""
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def _remote(prefix: str, check: bool) -> list[CommittedStep]:
    fs, base = storage.filesystem(prefix)
    protocol = prefix.split("://", 1)[0]
    try:
        listing = fs.find(base, detail=True)
    except FileNotFoundError:
        return []
    suffix = "/" + storage.COMMIT_FILE
    own = f"{base.rstrip('/')}/{storage.META_DIR}/"  # leases, staging: not outputs
    outputs = {
        p[: -len(suffix)]: info
        for p, info in listing.items()
        if p.endswith(suffix) and not p.startswith(own)
    }
    found = []
    for out, info in outputs.items():
        name_with_hash = out[len(base.rstrip("/")) + 1 :]
        if check and records.read_commit(name_with_hash, prefix) is None:
            continue
        size = sum(i.get("size", 0) or 0 for p, i in listing.items() if p.startswith(out + "/"))
        updated = info.get("updated") or info.get("mtime") or info.get("LastModified")
        found.append(
            CommittedStep(name_with_hash, f"{protocol}://{out}", size, _timestamp(updated))
        )
    return found


def _timestamp(value: object) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "timestamp"):
        return value.timestamp()  # type: ignore[union-attr]
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


class NotCommittedError(LookupError):
    """`describe` of an output that has no valid commit record."""


def describe(name_with_hash: str, prefix: str | None = None) -> dict:
    """Everything known about one committed output, without the code that made it:
    ``{"name", "hash", "path", "metadata", "provenance", "files": [{"path", "bytes"}]}``.

    Raises NotCommittedError when `name_with_hash` is not committed under the prefix.
    """
    prefix = prefix or storage.current_prefix()
    ref = records.read_commit(name_with_hash, prefix)
    if ref is None:
        raise NotCommittedError(f"{name_with_hash} is not committed under {prefix}")
    out = storage.output_dir(name_with_hash, prefix)
    try:
        provenance = json.loads(
            storage.read_bytes(storage.meta_path(name_with_hash, storage.PROVENANCE_FILE, prefix))
        )
    except (FileNotFoundError, ValueError):
        provenance = None
    return {
        "name": ref.name,
        "hash": ref.hash,
        "path": out,
        "metadata": ref.metadata,
        "provenance": provenance,
        "files": list_files(out),
    }


def list_files(out: str) -> list[dict]:
    """The output's own files (not `.lmflows/`), relative paths with sizes; links are listed
    as links (to files or folders, dangling or not), never followed."""
    if storage.is_local(out):
        from tasks.core.manifest import relative_files_local

        files = []
        for rel in relative_files_local(out):
            try:
                info = os.lstat(os.path.join(out, rel))
            except OSError:
                continue
            entry = {"path": rel, "bytes": info.st_size}
            if os.path.islink(os.path.join(out, rel)):
                entry["link"] = os.readlink(os.path.join(out, rel))
            files.append(entry)
        return files
    fs, base = storage.filesystem(out)
    meta = f"{base.rstrip('/')}/{storage.META_DIR}/"
    for path, info in sorted(fs.find(base, detail=True).items()):
        if not path.startswith(meta):
            files.append({"path": path[len(base.rstrip("/")) + 1 :], "bytes": info.get("size")})
    return files
