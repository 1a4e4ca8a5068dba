"""Manifests: the files of a committed output with sizes and checksums, carried in the commit.

Local disk: size and sha256, computed at commit. gs://: size, crc32c, md5 and generation as GCS
reports them (no download). A cached run checks what is cheap — every file still exists with
its size (and, on gs://, its generation, so an overwrite by a late writer is seen); `python -m
flows verify` also recomputes local checksums and reports files that appeared.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

from tasks.core import storage

CHUNK = 1 << 20


def relative_files_local(out: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(out):  # os.walk never follows directory links
        if root == out:
            dirs[:] = [d for d in dirs if d != storage.META_DIR]
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


def _remote_listing(out: str) -> dict[str, dict[str, Any]]:
    fs, base = storage.filesystem(out)
    base = base.rstrip("/")
    meta = f"{base}/{storage.META_DIR}/"
    try:
        listing = fs.find(base, detail=True)
    except FileNotFoundError:
        return {}
    files = {}
    for path, info in listing.items():
        if path.startswith(meta) or info.get("type") == "directory":
            continue
        entry: dict[str, Any] = {"bytes": int(info.get("size") or 0)}
        for key, name in (("crc32c", "crc32c"), ("md5Hash", "md5"), ("generation", "generation")):
            if info.get(key) is not None:
                entry[name] = str(info[key])
        files[path[len(base) + 1 :]] = entry
    return files


def build(out: str) -> dict[str, Any]:
    """The manifest of the output directory `out` (excluding `.lmflows/`)."""
    if storage.is_local(out):
        files = {
            rel: _local_entry(os.path.join(out, rel), True) for rel in relative_files_local(out)
        }
    else:
        fs, _ = storage.filesystem(out)
        fs.invalidate_cache()
        files = _remote_listing(out)
    return {"files": files}


def quick_problem(out: str, manifest: Any) -> str | None:
    """What a cached run checks: every file present with its size (gs://: and generation).
    None when intact, else one sentence naming the first problem."""
    files = _files(manifest)
    if files is None:
        return "its commit record carries no valid manifest"
    if storage.is_local(out):
        for rel, want in files.items():
            path = os.path.join(out, rel)
            try:
                have = _local_entry(path, False)
            except OSError:
                return f"file {rel} is missing"
            if "bytes" not in want or "bytes" not in have:
                if want != have:
                    return f"{rel} changed kind (file, link or special)"
            elif have["bytes"] != want.get("bytes"):
                return f"file {rel} has {have['bytes']} bytes, {want.get('bytes')} committed"
        return None
    listing = _remote_listing(out)
    for rel, want in files.items():
        have = listing.get(rel)
        if have is None:
            return f"file {rel} is missing"
        for key in ("bytes", "generation"):
            if key in want and have.get(key) != want[key]:
                return f"file {rel} changed ({key} {have.get(key)} != committed {want[key]})"
    return None


def problems(out: str, manifest: Any) -> list[str]:
    """Everything `verify` finds: missing, changed (checksums recomputed) and added files."""
    files = _files(manifest)
    if files is None:
        return ["its commit record carries no valid manifest"]
    found: list[str] = []
    if storage.is_local(out):
        present = set(relative_files_local(out)) if os.path.isdir(out) else set()
        for rel, want in sorted(files.items()):
            if rel not in present:
                found.append(f"file {rel} is missing")
                continue
            have = _local_entry(os.path.join(out, rel), "sha256" in want)
            if have != want:
                found.append(f"file {rel} changed")
    else:
        listing = _remote_listing(out)
        present = set(listing)
        for rel, want in sorted(files.items()):
            have = listing.get(rel)
            if have is None:
                found.append(f"file {rel} is missing")
            elif any(have.get(k) != v for k, v in want.items()):
                found.append(f"file {rel} changed")
    found += [f"file {rel} is not in the manifest" for rel in sorted(present - set(files))]
    return found


def _files(manifest: Any) -> dict[str, dict[str, Any]] | None:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    files = manifest["files"]
    for rel, entry in files.items():
        if not isinstance(entry, dict) or not _safe_relative(rel):
            return None
    return files


def _safe_relative(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    if "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))
