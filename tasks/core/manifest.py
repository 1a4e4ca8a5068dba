"""Manifests: the files of a committed output with sizes and checksums, carried in the commit.

Local disk: size and sha256, computed at commit. gs://: size, crc32c, md5 and generation as GCS
reports them (no download). A cached run checks what is cheap — every file still exists with
its size (and, on gs://, its generation, so an overwrite by a late writer is seen); `python -m
flows verify` also recomputes local checksums and reports files that appeared.
"""

from __future__ import annotations

from typing import Any

from tasks.core import stores

relative_files_local = stores.relative_files_local
sha256_of = stores.sha256_of


def build(out: str) -> dict[str, Any]:
    """The manifest of the output directory `out` (excluding `.lmflows/`): local disk with
    sha256 (computed once, at commit), object stores with what their listing reports."""
    return {"files": stores.store_for(out).file_entries(out, checksums=True)}


# What a cached run compares: whether each entry is a file, link or special file, its size,
# and on gs:// its generation (an overwrite by a late writer changes it).
_QUICK_KEYS = ("bytes", "generation", "symlink", "special")


def quick_problem(out: str, manifest: Any) -> str | None:
    """What a cached run checks: every file present with its size (gs://: and generation).
    None when intact, else one sentence naming the first problem."""
    files = _files(manifest)
    if files is None:
        return "its commit record carries no valid manifest"
    listing = stores.store_for(out).file_entries(out, checksums=False, only=files)
    for rel, want in files.items():
        have = listing.get(rel)
        if have is None:
            return f"file {rel} is missing"
        if ("bytes" in want) != ("bytes" in have):
            return f"{rel} changed kind (file, link or special)"
        for key in _QUICK_KEYS:
            if key in want and have.get(key) != want[key]:
                if key == "bytes":
                    return f"file {rel} has {have['bytes']} bytes, {want['bytes']} committed"
                return f"file {rel} changed ({key} {have.get(key)} != committed {want[key]})"
    return None


def problems(out: str, manifest: Any) -> list[str]:
    """Everything `verify` finds: missing, changed (checksums recomputed) and added files."""
    files = _files(manifest)
    if files is None:
        return ["its commit record carries no valid manifest"]
    found: list[str] = []
    # checksums recomputed where they are ours to compute (local sha256); a store's own
    # checksums come with its listing
    listing = stores.store_for(out).file_entries(out, checksums=True)
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
        if not _KINDS & entry.keys():  # `{}` would match any file: not an entry we write
            return None
    return files


# Every entry we write says what it is: a file's size, a link's target, a special file's mode.
_KINDS = {"bytes", "symlink", "special"}


def _safe_relative(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    if "\x00" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))
