"""download: bring a dataset into the step's output, from URLs (http(s), gs://, local files
through fsspec) or from the HuggingFace hub. Records file names, sizes and checksums."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

from tasks.core import step, stores
from tasks.core.manifest import sha256_of
from tasks.core.provenance import note
from tasks.core.storage import META_DIR

logger = logging.getLogger("lmflows.download")

REPO_ROOT = Path(__file__).resolve().parents[2]  # tasks/data/download.py -> the repository
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
CHUNK = 1 << 20


def resolve_source(url: str) -> str:
    """Relative local paths are relative to the lmflows checkout (not the working directory),
    so the same experiment names the same file on every machine."""
    if "://" in url or os.path.isabs(url):
        return url
    return str(REPO_ROOT / url)


def _file_name(url: str, taken: set[str]) -> str:
    base = os.path.basename(urlparse(url).path.rstrip("/")) or "download"
    name, i = base, 1
    while name in taken:
        name, i = f"{i}-{base}", i + 1
    taken.add(name)
    return name


def copy_with_checksum(source: str, destination: str) -> tuple[int, str]:
    """Stream `source` to `destination` (any fsspec URLs); return (bytes, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with fsspec.open(source, "rb") as src, fsspec.open(destination, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def check_download_url(urls: Any, **_: Any) -> None:
    """`download_url`'s `validate=`: a non-empty list of URL strings."""
    if isinstance(urls, str) or not isinstance(urls, (list, tuple)) or not urls:
        raise ValueError(f"urls={urls!r}: download_url needs a non-empty list of URLs")
    bad = [u for u in urls if not isinstance(u, str) or not u]
    if bad:
        raise ValueError(f"urls: {bad!r} are not URL strings")


@step(
    hash_attrs=["urls"],
    operational=["expected_sha256"],
    name="raw/{name}",
    validate=check_download_url,
)
def download_url(
    urls: list[str], name: str = "url", expected_sha256: dict | None = None, *, output_path: str
) -> dict:
    """Download every URL into the output folder under its base name.

    `expected_sha256` (file name -> hex digest) verifies content without changing identity.
    """
    if not urls or isinstance(urls, str):
        raise ValueError("download_url needs a non-empty list of URLs")
    files, taken = [], set()
    for url in urls:
        file_name = _file_name(url, taken)
        size, sha = copy_with_checksum(resolve_source(url), f"{output_path}/{file_name}")
        want = (expected_sha256 or {}).get(file_name)
        if want is not None and want != sha:
            raise ValueError(f"{url}: sha256 {sha} does not match the expected {want}")
        files.append({"name": file_name, "url": url, "bytes": size, "sha256": sha})
    return {"files": files, "total_bytes": sum(f["bytes"] for f in files)}


@step(
    hash_attrs=["dataset_id", "revision", "allow_patterns"],
    operational=["token"],
    name="raw/hf/{name}",
    isolate=True,
)
def download_hf(
    dataset_id: str,
    revision: str,
    name: str,
    allow_patterns: list[str] | None = None,
    token: str | None = None,
    *,
    output_path: str,
) -> dict:
    """Snapshot a HuggingFace dataset repository at `revision` into the output folder.

    A moving revision (a branch or tag such as "main") is allowed but warned about: the
    identity then does not pin the content. The commit it resolved to is recorded in the
    metadata and the provenance record.

    `token` is a hub access token for a gated or private dataset. It is operational (access,
    not content: the resolved commit pins the bytes) and must never be a hash attribute: it
    would enter the identity payload and the provenance record, and rotating it would re-key
    the step. It is passed only to huggingface_hub, never noted, logged or returned. None
    leaves it to huggingface_hub (HF_TOKEN, or the token `hf auth login` saved). See
    docs/security.md.
    """
    from huggingface_hub import HfApi, snapshot_download

    if not _COMMIT.match(revision):
        logger.warning(
            "download_hf(%s, revision=%r): a moving revision; the step's identity "
            "will not change when the dataset does. Pin a commit hash to be "
            "reproducible.",
            dataset_id,
            revision,
        )
    info = HfApi(token=token).dataset_info(dataset_id, revision=revision)
    commit = info.sha
    note(hf_dataset=dataset_id, requested_revision=revision, resolved_commit=commit)
    in_place = stores.store_for(output_path).local_path(output_path)  # None: an object store
    local = in_place or tempfile.mkdtemp(prefix="lmflows-hf-")
    snapshot_download(
        repo_id=dataset_id,
        repo_type="dataset",
        revision=commit,
        allow_patterns=allow_patterns,
        local_dir=local,
        token=token,
    )
    files = []
    for path in sorted(Path(local).rglob("*")):
        parts = path.relative_to(local).parts
        if path.is_file() and not {".cache", META_DIR} & set(parts):
            rel = str(path.relative_to(local))
            if in_place is None:
                copy_with_checksum(str(path), f"{output_path}/{rel}")
            files.append(
                {"name": rel, "bytes": path.stat().st_size, "sha256": sha256_of(str(path))}
            )
    return {
        "files": files,
        "resolved_commit": commit,
        "revision": revision,
        "total_bytes": sum(f["bytes"] for f in files),
    }
