"""What is committed under a prefix: one entry per output directory with a commit record."""

from __future__ import annotations

import dataclasses
import json
import time

from tasks.core import records, storage, stores


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
    found = [
        CommittedStep(name_with_hash, path, size, committed_at)
        for name_with_hash, path, size, committed_at in stores.store_for(prefix).committed_folders(
            prefix
        )
        if not check or records.read_commit(name_with_hash, prefix) is not None
    ]
    return sorted(found, key=lambda s: s.name_with_hash)


def tree_bytes(root: str) -> int:
    """Bytes under `root`, counting links as links (a dangling one is no error)."""
    return stores.store_for(root).tree_bytes(root)


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
    return stores.store_for(out).list_files(out)
