"""Where outputs live: the prefix (any fsspec URL), path joining and the per-step layout.

```
{prefix}/{name}-{hash}/                  a committed output: immutable once committed
    ...                                  the step's files
    .lmflows/commit.json                 the commit record (written last; carries the manifest)
    .lmflows/provenance.json
{prefix}/.lmflows/state/{name}-{hash}/   lease.json (+ lease.guard locally), failed.json
{prefix}/.lmflows/staging/{name}-{hash}/{attempt}/   local disk: where an attempt writes
{prefix}/.lmflows/trash/                 replaced outputs and dead attempts, being deleted
```
The commit record sits inside the output, so copying an output directory copies its commit;
the lease and failure records sit outside it, so an output can be swapped into place whole.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from tasks.core import stores

PREFIX_ENV = "LMFLOWS_PREFIX"
DEFAULT_PREFIX = "~/.lmflows/outputs"

META_DIR = stores.META_DIR
COMMIT_FILE = stores.COMMIT_FILE
PROVENANCE_FILE = f"{META_DIR}/provenance.json"
LEASE_NAME = "lease.json"
FAILED_NAME = "failed.json"


class PrefixError(ValueError):
    """A prefix URL that no filesystem can serve."""


def normalize_prefix(url: str) -> str:
    """Absolute, slash-free-ended form of a prefix; local paths become absolute paths."""
    url = url.strip()
    if not url:
        raise PrefixError("prefix is empty")
    if "://" in url:
        protocol = url.split("://", 1)[0]
        if protocol == "file":
            return normalize_prefix(url.split("://", 1)[1])
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            raise PrefixError(
                f"prefix {url!r}: unknown or unavailable filesystem {protocol!r}: {exc}"
            ) from exc
        if not url.split("://", 1)[1].strip("/"):
            raise PrefixError(f"prefix {url!r} names no bucket or folder")
        return url.rstrip("/")
    local = str(Path(url).expanduser().resolve())
    if local == "/":
        raise PrefixError(f"prefix {url!r} is the filesystem root; choose a folder")
    if os.path.exists(local) and not os.path.isdir(local):
        raise PrefixError(f"prefix {url!r} is a file, not a folder")
    return local


def current_prefix() -> str:
    """The prefix in force now: ``LMFLOWS_PREFIX`` or the default local folder. Set but
    empty is an error (a typo must not silently mean the default)."""
    value = os.environ.get(PREFIX_ENV)
    if value is not None and not value.strip():
        raise PrefixError(f"{PREFIX_ENV} is set but empty; unset it for {DEFAULT_PREFIX}")
    return _normalized(value or DEFAULT_PREFIX)


@lru_cache(maxsize=64)
def _normalized(url: str) -> str:
    return normalize_prefix(url)


def join(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts if p)])


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


# The largest framework file lmflows reads (a commit record carries the manifest: ~100 bytes a
# file). Anything bigger is not ours: a planted sparse file or a link to /dev/zero must not
# exhaust memory.
MAX_RECORD_BYTES = 256 << 20

UnreadableRecord = stores.UnreadableRecord
LinkedPathError = stores.LinkedPathError


def read_bytes(url: str, limit: int = MAX_RECORD_BYTES) -> bytes:
    """Whole-file read of a framework file: FileNotFoundError if absent, UnreadableRecord if
    it is not a regular file (a directory, FIFO, device) or is larger than `limit`."""
    return stores.store_for(url).read_bytes(url, limit)


def write_atomic(path: str, content: bytes) -> None:
    """Write a whole file so that readers see the old content or the new, never a part."""
    stores.store_for(path).write_atomic(path, content)


def write_json(path: str, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def remove_file(path: str) -> None:
    """Delete one file; absent is fine."""
    stores.store_for(path).remove_file(path)


def refuse_links_below(path: str, prefix: str | None = None) -> None:
    """Raise LinkedPathError if any component of `path` below `prefix` is a link (only local
    disk has links)."""
    stores.store_for(path).refuse_links_below(path, prefix or current_prefix())


def output_dir(name_with_hash: str, prefix: str | None = None) -> str:
    return join(prefix or current_prefix(), name_with_hash)


def meta_path(name_with_hash: str, which: str, prefix: str | None = None) -> str:
    """A framework file inside the output (`COMMIT_FILE`, `PROVENANCE_FILE`)."""
    return join(prefix or current_prefix(), name_with_hash, which)


def state_path(name_with_hash: str, which: str, prefix: str | None = None) -> str:
    """A file about the output kept outside it (`LEASE_NAME`, `FAILED_NAME`)."""
    return join(prefix or current_prefix(), META_DIR, "state", name_with_hash, which)


def lease_path(name_with_hash: str, prefix: str | None = None) -> str:
    return state_path(name_with_hash, LEASE_NAME, prefix)


def failed_path(name_with_hash: str, prefix: str | None = None) -> str:
    return state_path(name_with_hash, FAILED_NAME, prefix)


def staging_root(name_with_hash: str, prefix: str | None = None) -> str:
    return join(prefix or current_prefix(), META_DIR, "staging", name_with_hash)


def trash_dir(prefix: str | None = None) -> str:
    return join(prefix or current_prefix(), META_DIR, "trash")


def commit_key(name_with_hash: str) -> str:
    """The cache key (relative to the prefix) Prefect writes the commit record at."""
    return f"{name_with_hash}/{COMMIT_FILE}"


def name_with_hash_of_key(key: str) -> str | None:
    """Invert `commit_key`; None for keys that are not commit records."""
    suffix = "/" + COMMIT_FILE
    return key[: -len(suffix)] if key.endswith(suffix) else None
