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

import contextlib
import json
import os
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

PREFIX_ENV = "LMFLOWS_PREFIX"
DEFAULT_PREFIX = "~/.lmflows/outputs"

META_DIR = ".lmflows"
COMMIT_FILE = f"{META_DIR}/commit.json"
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


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


# The largest framework file lmflows reads (a commit record carries the manifest: ~100 bytes a
# file). Anything bigger is not ours: a planted sparse file or a link to /dev/zero must not
# exhaust memory.
MAX_RECORD_BYTES = 256 << 20


class UnreadableRecord(OSError):
    """A framework file that is not a regular file of a sane size (planted, or damaged)."""


def read_bytes(url: str, limit: int = MAX_RECORD_BYTES) -> bytes:
    """Whole-file read of a framework file: FileNotFoundError if absent, UnreadableRecord if
    it is not a regular file (a directory, FIFO, device) or is larger than `limit`. Plain
    `open` on local disk (fsspec costs ~10x more per small file, and a cached re-run reads one
    small record per step)."""
    if "://" not in url:
        import stat

        try:
            fd = os.open(url, os.O_RDONLY | os.O_NONBLOCK)
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise UnreadableRecord(f"{url} is not a regular file ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UnreadableRecord(f"{url} is not a regular file")
            if info.st_size > limit:
                raise UnreadableRecord(f"{url} has {info.st_size} bytes (at most {limit})")
            data = handle.read(limit + 1)
            if len(data) > limit:
                raise UnreadableRecord(f"{url} grew past {limit} bytes while read")
            return data
    fs, path = filesystem(url)
    size = fs.size(path)
    if size is not None and size > limit:
        raise UnreadableRecord(f"{url} has {size} bytes (at most {limit})")
    return fs.cat_file(path)


def write_atomic(path: str, content: bytes) -> None:
    """Write a whole file so that readers see the old content or the new, never a part.

    Local: temp file + fsync + rename. Object stores (gs://) replace objects atomically.
    """
    fs, fs_path = filesystem(path)
    if is_local(path):
        os.makedirs(os.path.dirname(fs_path), exist_ok=True)
        tmp = f"{fs_path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, fs_path)
        except BaseException:  # a full disk, a killed write: no temp file is left behind
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    else:
        fs.pipe_file(fs_path, content)


def write_json(path: str, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


class LinkedPathError(ValueError):
    """A path under the prefix that passes through a symbolic link: lmflows never writes or
    deletes through one (a planted link could point anywhere)."""


def refuse_links_below(path: str, prefix: str | None = None) -> None:
    """Raise LinkedPathError if any component of local `path` below `prefix` is a link."""
    if not is_local(path):
        return
    prefix = (prefix or current_prefix()).rstrip("/")
    if not (path == prefix or path.startswith(prefix + "/")):
        return
    current = prefix
    for part in path[len(prefix) :].strip("/").split("/"):
        if not part:
            continue
        current = f"{current}/{part}"
        if os.path.islink(current):
            raise LinkedPathError(
                f"{current} is a symbolic link; lmflows never writes or deletes through links "
                "under its prefix (remove it, or point LMFLOWS_PREFIX at the real folder)"
            )


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
