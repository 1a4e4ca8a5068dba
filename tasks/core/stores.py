"""Where bytes live: one `Store` per kind of prefix, picked once from the URL.

Every difference between local disk, gs:// and other fsspec filesystems is a method here; the
rest of lmflows asks a store to do something and never asks which kind it is. The layout (which
file sits where under a prefix) is `storage`'s; this module only says how to read, write,
list, publish and compare-and-swap on each backend.

- `LocalStore` (paths, file://): an attempt writes a staging folder that the commit renames
  into place; manifests carry size and sha256; the lease's compare-and-swap runs under an
  `flock` on a guard file.
- `GcsStore` (gs://, gcs://): an attempt writes in place after clearing it; manifests carry
  size, crc32c, md5 and generation; the compare-and-swap is a write with `ifGenerationMatch`.
- `MemoryStore` (memory://): in place; size only; one process's lock (only that process sees
  the filesystem, so steps that run their body in a worker process, `isolate=True`, are
  refused there in one line).
- `FsspecStore` (any other protocol): reads, writes and listings work; leases are refused in
  one line, because fsspec offers no atomic conditional write.

For folders lmflows did not write (`adopt`), a store also says what a folder is
(`path_kind`), lists its files cheaply with the digests it reports and its change hints
(`snapshot`: local size, ctime and inode; GCS size, crc32c, md5 and generation) and reads one
file's digest (`digest`: a local sha256).

A store that cannot compare-and-swap says so in one line (`LeaseUnsupportedError`) before a
step starts, rather than letting two holders both believe they won.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Collection, Iterator
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import fsspec
from fsspec import AbstractFileSystem

CHUNK = 1 << 20
# Keys of a file entry that are digests of its bytes (a local sha256 we compute; the crc32c and
# md5 GCS reports). Every other key but "bytes" is a change hint (ctime, inode, generation).
CONTENT_KEYS = ("sha256", "crc32c", "md5")
META_DIR = ".lmflows"  # storage.META_DIR (kept here too: storage imports this module)
COMMIT_FILE = f"{META_DIR}/commit.json"


class UnreadableRecord(OSError):
    """A framework file that is not a regular file of a sane size (planted, or damaged)."""


class LinkedPathError(ValueError):
    """A path under the prefix that passes through a symbolic link: lmflows never writes or
    deletes through one (a planted link could point anywhere)."""


class LeaseUnsupportedError(RuntimeError):
    """A store with no atomic compare-and-swap: steps cannot be leased (run) on it."""


class ProcessLocalStoreError(RuntimeError):
    """An isolated step (its body runs in a worker process) on a store only this process
    sees: the body's writes would vanish with the worker."""


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def local_path_of(url: str) -> str:
    return url.removeprefix("file://")


@runtime_checkable
class Store(Protocol):
    """What lmflows needs from a backend (see the module docstring's table)."""

    kind: str
    shared: bool  # other machines can see these bytes (a local folder: one machine)
    other_processes: bool  # other processes of this machine can see them (memory://: no)
    round_trips: bool  # each call is a network round trip: callers may fan reads out
    staged: bool  # attempts write into a staging folder published at commit

    def read_bytes(self, url: str, limit: int) -> bytes: ...
    def write_atomic(self, url: str, content: bytes) -> None: ...
    def remove_file(self, url: str) -> None: ...
    def exists(self, url: str) -> bool: ...
    def local_path(self, url: str) -> str | None: ...
    def refuse_links_below(self, path: str, prefix: str) -> None: ...
    def clear_folder(self, url: str) -> None: ...
    def delete_tree(self, url: str, trash: str) -> None: ...
    def publish(self, staging: str, final: str, trash: str) -> str | None: ...
    def file_entries(
        self, out: str, checksums: bool, only: Collection[str] | None = None
    ) -> dict[str, dict[str, Any]]: ...
    def list_files(self, out: str) -> list[dict[str, Any]]: ...
    def path_kind(self, url: str) -> str: ...
    def snapshot(self, url: str) -> dict[str, dict[str, Any]]: ...
    def digest(self, url: str) -> dict[str, str]: ...
    def tree_bytes(self, url: str) -> int: ...
    def committed_folders(self, prefix: str) -> Iterator[tuple[str, str, int, float]]: ...
    def files_named(self, root: str, name: str) -> Iterator[tuple[str, str]]: ...
    def check_leases(self, url: str) -> None: ...
    def read_versioned(self, url: str, limit: int) -> tuple[bytes | None, str]: ...
    def write_if_version(self, url: str, content: bytes | None, version: str) -> bool: ...
    def exclusive(self, url: str) -> contextlib.AbstractContextManager[None]: ...


# --- local disk ---------------------------------------------------------------------------


class LocalStore:
    """Plain paths (and file:// URLs). Plain `os` calls, not fsspec: fsspec costs ~10x more
    per small file, and a cached re-run reads one small record per step."""

    kind = "local"
    shared = False
    other_processes = True
    round_trips = False
    staged = True

    def read_bytes(self, url: str, limit: int) -> bytes:
        path = local_path_of(url)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise UnreadableRecord(f"{url} is not a regular file ({exc.strerror})") from None
        try:
            handle = os.fdopen(fd, "rb")
        except IsADirectoryError:  # a folder opens read-only; Python's file object refuses it
            os.close(fd)
            raise UnreadableRecord(f"{url} is not a regular file (a folder)") from None
        with handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UnreadableRecord(f"{url} is not a regular file")
            if info.st_size > limit:
                raise UnreadableRecord(f"{url} has {info.st_size} bytes (at most {limit})")
            data = handle.read(limit + 1)
            if len(data) > limit:
                raise UnreadableRecord(f"{url} grew past {limit} bytes while read")
            return data

    def write_atomic(self, url: str, content: bytes) -> None:
        """Temp file + fsync + rename: readers see the old content or the new, never a part."""
        path = local_path_of(url)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk, a killed write: no temp file is left behind
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def remove_file(self, url: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(local_path_of(url))

    def exists(self, url: str) -> bool:
        return os.path.exists(local_path_of(url))

    def local_path(self, url: str) -> str | None:
        return local_path_of(url)

    def refuse_links_below(self, path: str, prefix: str) -> None:
        path, prefix = local_path_of(path), local_path_of(prefix).rstrip("/")
        if not (path == prefix or path.startswith(prefix + "/")):
            return
        current = prefix
        for part in path[len(prefix) :].strip("/").split("/"):
            if not part:
                continue
            current = f"{current}/{part}"
            if os.path.islink(current):
                raise LinkedPathError(
                    f"{current} is a symbolic link; lmflows never writes or deletes through "
                    "links under its prefix (remove it, or point LMFLOWS_PREFIX at the real "
                    "folder)"
                )

    def clear_folder(self, url: str) -> None:
        discard_local(local_path_of(url))

    def publish(self, staging: str, final: str, trash: str) -> str | None:
        """Move the attempt's folder into the output's place; returns where a replaced older
        version now sits. A reader sees the old output or the new one, never a mix."""
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.rename(staging, final)  # no older version: one atomic rename
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(staging))  # the emptied staging root
            return None
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        if _exchange(staging, final):
            return staging  # after the swap the old version sits in the staging place
        # Two renames: for an instant there is no output (readers see "not committed"), but
        # never a mix of two versions.
        old = os.path.join(trash, uuid.uuid4().hex)
        os.makedirs(os.path.dirname(old), exist_ok=True)
        os.rename(final, old)
        os.rename(staging, final)
        return old

    def delete_tree(self, url: str, trash: str) -> None:
        """Move the folder aside in one rename (readers never see half of it), then delete."""
        path = local_path_of(url)
        if not os.path.lexists(path):
            return
        old = os.path.join(local_path_of(trash), uuid.uuid4().hex)
        os.makedirs(os.path.dirname(old), exist_ok=True)
        os.rename(path, old)
        discard_local(old)

    def file_entries(
        self, out: str, checksums: bool, only: Collection[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Entries of the files under `out` (not `.lmflows/`); `only`: just those relative
        paths, each one `lstat` (what a cached run checks: no walk of a large output)."""
        base = local_path_of(out)
        names = relative_files_local(base) if only is None else only
        found = {}
        for rel in names:
            try:
                found[rel] = _local_entry(os.path.join(base, rel), checksums)
            except OSError:
                continue
        return found

    def list_files(self, out: str) -> list[dict[str, Any]]:
        base = local_path_of(out)
        files = []
        for rel in relative_files_local(base):
            path = os.path.join(base, rel)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            entry: dict[str, Any] = {"path": rel, "bytes": info.st_size}
            if stat.S_ISLNK(info.st_mode):
                entry["link"] = os.readlink(path)
            files.append(entry)
        return files

    def path_kind(self, url: str) -> str:
        """What `url` is: folder, file, link (never followed) or missing."""
        try:
            info = os.lstat(local_path_of(url))
        except FileNotFoundError:
            return "missing"
        if stat.S_ISLNK(info.st_mode):
            return "link"
        return "folder" if stat.S_ISDIR(info.st_mode) else "file"

    def snapshot(self, url: str) -> dict[str, dict[str, Any]]:
        """What is cheap to know about every file under `url` (not `.lmflows/`): its size and
        change hints, one `lstat` each. ctime and inode change with every write or replacement
        and, unlike mtime, a user cannot set them back; links and special files are entries of
        their own kind."""
        base = local_path_of(url)
        found: dict[str, dict[str, Any]] = {}
        for rel in relative_files_local(base):
            path = os.path.join(base, rel)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                found[rel] = {"symlink": os.readlink(path)}
            elif not stat.S_ISREG(info.st_mode):
                found[rel] = {"special": stat.S_IFMT(info.st_mode)}
            else:
                found[rel] = {
                    "bytes": info.st_size,
                    "ctime_ns": info.st_ctime_ns,
                    "ino": info.st_ino,
                }
        return found

    def digest(self, url: str) -> dict[str, str]:
        """The content digest of one file, read whole: its sha256."""
        return {"sha256": sha256_of(local_path_of(url))}

    def tree_bytes(self, url: str) -> int:
        """Bytes under `url`, counting links as links (a dangling one is no error)."""
        total = 0
        for folder, _, names in os.walk(local_path_of(url)):
            for name in names:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    continue
        return total

    def committed_folders(self, prefix: str) -> Iterator[tuple[str, str, int, float]]:
        """(NAME-HASH, folder, bytes, commit record's mtime) of every folder holding a commit
        record; never descends into an output's files or follows a directory link."""
        root = local_path_of(prefix)
        for folder, dirs, _files in os.walk(root):
            commit = os.path.join(folder, COMMIT_FILE)
            if META_DIR in dirs and os.path.isfile(commit):
                dirs[:] = []
                name_with_hash = os.path.relpath(folder, root)
                yield name_with_hash, folder, self.tree_bytes(folder), os.path.getmtime(commit)
            else:
                dirs[:] = [d for d in dirs if d != META_DIR]

    def files_named(self, root: str, name: str) -> Iterator[tuple[str, str]]:
        """(folder relative to `root`, path) of every file called `name` below `root`."""
        base = local_path_of(root)
        for folder, _dirs, files in os.walk(base):
            if name in files:
                yield os.path.relpath(folder, base), os.path.join(folder, name)

    def check_leases(self, url: str) -> None:
        return None

    def read_versioned(self, url: str, limit: int) -> tuple[bytes | None, str]:
        """Local writes happen under `exclusive`, so the content is its own version."""
        return _read_unversioned(self, url, limit)

    def write_if_version(self, url: str, content: bytes | None, version: str) -> bool:
        """Call inside `exclusive(url)`: nobody else can write meanwhile."""
        path = local_path_of(url)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)  # planted in lmflows' own state folder: garbage
        if content is None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        else:
            self.write_atomic(path, content)
        return True

    @contextlib.contextmanager
    def exclusive(self, url: str) -> Iterator[None]:
        """An exclusive `flock` on `{name}.guard` beside the file: every change to it (and
        whatever the caller does meanwhile) is serialised across processes. The kernel
        releases it if the holder dies."""
        import fcntl

        path = local_path_of(url)
        guard = os.path.splitext(path)[0] + ".guard"
        os.makedirs(os.path.dirname(guard), exist_ok=True)
        try:  # O_NOFOLLOW: a planted link must not make us create a file anywhere else
            fd = os.open(guard, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise LinkedPathError(
                f"{guard} is a symbolic link; lmflows never writes through links under its "
                "prefix (remove it)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _read_unversioned(store: Any, url: str, limit: int) -> tuple[bytes | None, str]:
    try:
        return store.read_bytes(url, limit), ""
    except FileNotFoundError:
        return None, ""


def relative_files_local(out: str) -> list[str]:
    """Files (and links to folders) under `out`, not its `.lmflows/`; never follows links."""
    found = []
    for root, dirs, names in os.walk(out):  # os.walk never follows directory links
        if root == out:
            dirs[:] = [d for d in dirs if d != META_DIR]
        dirs.sort()
        for name in sorted(names):
            found.append(os.path.relpath(os.path.join(root, name), out))
        for name in dirs[:]:
            if os.path.islink(os.path.join(root, name)):
                found.append(os.path.relpath(os.path.join(root, name), out))
    return found


def sha256_of(path: str) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _local_entry(path: str, checksum: bool) -> dict[str, Any]:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return {"symlink": os.readlink(path)}
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device: never opened (it could block)
        return {"special": stat.S_IFMT(info.st_mode)}
    entry: dict[str, Any] = {"bytes": info.st_size}
    if checksum:
        entry["sha256"] = sha256_of(path)
    return entry


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two paths in one step. Python's `os` has no binding
    and no maintained library offers one, hence ctypes; False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def discard_local(path: str) -> None:
    """Delete a local path lmflows owns without following links out of it."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.remove(path)
        return
    shutil.rmtree(path, ignore_errors=True)  # rmtree unlinks links, never follows them


# --- fsspec filesystems -------------------------------------------------------------------


class FsspecStore:
    """Any fsspec filesystem: objects are replaced whole, there are no links and no renames,
    so attempts write in place. It has no atomic conditional write, so leases are refused."""

    kind = "fsspec"
    shared = True
    other_processes = True
    round_trips = True
    staged = False
    # checksums a listing may report, by fsspec's key -> the manifest's name
    CHECKSUM_KEYS: tuple[tuple[str, str], ...] = (("crc32c", "crc32c"), ("md5Hash", "md5"))
    VERSION_KEY: str | None = None  # a listing key that changes with every write

    def filesystem(self, url: str) -> tuple[AbstractFileSystem, str]:
        return fsspec.core.url_to_fs(url)

    def read_bytes(self, url: str, limit: int) -> bytes:
        fs, path = self.filesystem(url)
        size = fs.size(path)
        if size is not None and size > limit:
            raise UnreadableRecord(f"{url} has {size} bytes (at most {limit})")
        return fs.cat_file(path)

    def write_atomic(self, url: str, content: bytes) -> None:
        """Object stores replace an object whole."""
        fs, path = self.filesystem(url)
        fs.pipe_file(path, content)

    def remove_file(self, url: str) -> None:
        fs, path = self.filesystem(url)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

    def exists(self, url: str) -> bool:
        fs, path = self.filesystem(url)
        return fs.exists(path)

    def local_path(self, url: str) -> str | None:
        return None

    def refuse_links_below(self, path: str, prefix: str) -> None:
        return None  # object stores have no links

    def clear_folder(self, url: str) -> None:
        fs, path = self.filesystem(url)
        with contextlib.suppress(FileNotFoundError):
            doomed = fs.find(path)
            if doomed:
                fs.rm(doomed)

    def delete_tree(self, url: str, trash: str) -> None:
        self.clear_folder(url)

    def publish(self, staging: str, final: str, trash: str) -> str | None:
        return None  # attempts write in place: there is nothing to move

    def _listing(self, out: str) -> dict[str, dict[str, Any]]:
        fs, base = self.filesystem(out)
        fs.invalidate_cache()
        base = base.rstrip("/")
        meta = f"{base}/{META_DIR}/"
        try:
            listing = fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {
            path[len(base) + 1 :]: info
            for path, info in listing.items()
            if not path.startswith(meta) and info.get("type") != "directory"
        }

    def file_entries(
        self, out: str, checksums: bool, only: Collection[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """One listing (no download): sizes and what the store reports, with or without
        `checksums` (they come free with the listing)."""
        found = {}
        for rel, info in self._listing(out).items():
            entry: dict[str, Any] = {"bytes": int(info.get("size") or 0)}
            keys = [*self.CHECKSUM_KEYS]
            if self.VERSION_KEY:
                keys.append((self.VERSION_KEY, self.VERSION_KEY))
            for key, name in keys:
                if info.get(key) is not None:
                    entry[name] = str(info[key])
            found[rel] = entry
        return found

    def list_files(self, out: str) -> list[dict[str, Any]]:
        return [
            {"path": rel, "bytes": info.get("size")}
            for rel, info in sorted(self._listing(out).items())
        ]

    def path_kind(self, url: str) -> str:
        """What `url` is: folder, file or missing (object stores have no links)."""
        fs, path = self.filesystem(url)
        fs.invalidate_cache()
        if fs.isdir(path):
            return "folder"
        return "file" if fs.exists(path) else "missing"

    def snapshot(self, url: str) -> dict[str, dict[str, Any]]:
        """One listing (no download): sizes, the digests the store reports (GCS: crc32c and
        md5) and its version (GCS: generation)."""
        return self.file_entries(url, checksums=True)

    def digest(self, url: str) -> dict[str, str]:
        """For a store that reports no digest: the object's sha256, downloaded."""
        fs, path = self.filesystem(url)
        digest = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return {"sha256": digest.hexdigest()}

    def tree_bytes(self, url: str) -> int:
        fs, path = self.filesystem(url)
        try:
            return int(fs.du(path))
        except FileNotFoundError:
            return 0

    def committed_folders(self, prefix: str) -> Iterator[tuple[str, str, int, float]]:
        """One listing of the whole prefix: each output's size is summed from it."""
        fs, base = self.filesystem(prefix)
        base = base.rstrip("/")
        try:
            listing = fs.find(base, detail=True)
        except FileNotFoundError:
            return
        suffix = "/" + COMMIT_FILE
        own = f"{base}/{META_DIR}/"  # leases, staging: not outputs
        protocol = protocol_of(prefix)
        for path, info in listing.items():
            if not path.endswith(suffix) or path.startswith(own):
                continue
            out = path[: -len(suffix)]
            size = sum(i.get("size") or 0 for p, i in listing.items() if p.startswith(out + "/"))
            yield out[len(base) + 1 :], f"{protocol}://{out}", int(size), _mtime(info)

    def files_named(self, root: str, name: str) -> Iterator[tuple[str, str]]:
        fs, base = self.filesystem(root)
        base = base.rstrip("/")
        protocol = protocol_of(root)
        try:
            listing = fs.find(base)
        except FileNotFoundError:
            return
        for found in listing:
            if found.endswith("/" + name) and found.startswith(base + "/"):
                yield found[len(base) + 1 : -len("/" + name)], f"{protocol}://{found}"

    def check_leases(self, url: str) -> None:
        raise LeaseUnsupportedError(
            f"{url}: the {protocol_of(url)}:// filesystem offers no atomic conditional write "
            "through fsspec, so two machines could both take a step's lease; use gs:// or a "
            "local folder as the prefix"
        )

    def read_versioned(self, url: str, limit: int) -> tuple[bytes | None, str]:
        """No versions here: writing a lease is refused (memory://: done under a lock)."""
        return _read_unversioned(self, url, limit)

    def write_if_version(self, url: str, content: bytes | None, version: str) -> bool:
        self.check_leases(url)
        return False

    @contextlib.contextmanager
    def exclusive(self, url: str) -> Iterator[None]:
        yield  # the conditional write is the exclusion


def _mtime(info: dict[str, Any]) -> float:
    from datetime import datetime

    for key in ("mtime", "updated", "created", "LastModified"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


class GcsStore(FsspecStore):
    """gs://: an object's generation is its version; a conditional write names it
    (`ifGenerationMatch`), so the lease compare-and-swap is the store's own."""

    kind = "gcs"
    VERSION_KEY = "generation"

    def check_leases(self, url: str) -> None:
        return None

    def read_versioned(self, url: str, limit: int) -> tuple[bytes | None, str]:
        """(content, generation); (None, "0") when absent: generation 0 means "must not
        exist" to a conditional write. An object over `limit` reads as b"" (not a record),
        with its generation, so replacing it stays conditional."""
        fs, path = self.filesystem(url)
        try:
            info = fs.info(path, refresh=True)
            generation = str(info.get("generation") or "")
            if int(info.get("size") or 0) > limit:
                return b"", generation
            return fs.cat_file(path), generation
        except FileNotFoundError:
            return None, "0"

    def write_if_version(self, url: str, content: bytes | None, version: str) -> bool:
        fs, path = self.filesystem(url)
        bucket, key, _ = fs.split_path(path)
        if content is None:
            with contextlib.suppress(FileNotFoundError, FileExistsError):
                fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=version)
            fs.invalidate_cache(path)
            return True
        kwargs = {"ifGenerationMatch": version} if version else {}
        # gcsfs exposes only ifGenerationMatch=0 (mode="create"); a lease renewal needs the
        # current generation, so this is gcsfs's own multipart upload with that parameter.
        meta = json.dumps({"name": key, "contentType": "application/json"})
        body = (
            (
                f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{meta}\n--==0==\n"
                "Content-Type: application/json\n\n"
            ).encode()
            + content
            + b"\n--==0==--"
        )
        try:
            fs.call(
                "POST",
                f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                uploadType="multipart",
                headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                data=body,
                json_out=True,
                **kwargs,
            )
        except FileExistsError:  # gcsfs maps HTTP 412 (precondition failed) to this
            return False
        fs.invalidate_cache(path)
        return True


class MemoryStore(FsspecStore):
    """memory://: fsspec's in-process filesystem. Only this process sees it, so one lock
    makes the compare-and-swap atomic; useful for tests and throwaway runs."""

    kind = "memory"
    shared = False
    other_processes = False
    round_trips = False
    _LOCK = threading.RLock()

    def check_leases(self, url: str) -> None:
        return None

    def write_if_version(self, url: str, content: bytes | None, version: str) -> bool:
        """Call inside `exclusive(url)`."""
        if content is None:
            self.remove_file(url)
        else:
            self.write_atomic(url, content)
        return True

    @contextlib.contextmanager
    def exclusive(self, url: str) -> Iterator[None]:
        with self._LOCK:
            yield


# --- picking a store ----------------------------------------------------------------------

_STORES: dict[str, type] = {"file": LocalStore, "gs": GcsStore, "gcs": GcsStore}
_STORES["memory"] = MemoryStore


@lru_cache(maxsize=32)
def _for_protocol(protocol: str) -> Store:
    return _STORES.get(protocol, FsspecStore)()


def store_for(url: str) -> Store:
    """The store that serves `url` (a prefix, or any path under one)."""
    return _for_protocol(protocol_of(url))
