"""Reading and writing JSON-lines document shards on any fsspec filesystem."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator

import fsspec

from tasks.core.storage import META_DIR

SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")


def list_shards(path: str) -> list[str]:
    """The JSON-lines shards under `path` (a file or a folder, searched recursively), sorted."""
    fs, root = fsspec.core.url_to_fs(path)
    protocol = path.split("://", 1)[0] + "://" if "://" in path else ""
    if fs.isfile(root):
        return [path]
    base = root.rstrip("/") + "/"
    found = sorted(
        p
        for p in fs.find(root)
        if p.endswith(SHARD_SUFFIXES) and META_DIR not in p[len(base) :].split("/")
    )
    if not found:
        raise FileNotFoundError(f"no .jsonl or .jsonl.gz shards under {path}")
    return [f"{protocol}{p}" if protocol and not p.startswith(protocol) else p for p in found]


def iter_shard(shard: str) -> Iterator[dict]:
    """Documents of one shard, streamed (gzip decided by the name)."""
    with fsspec.open(shard, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if shard.endswith(".gz") else raw
        for line_no, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8"), 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{shard}:{line_no}: not a JSON line ({exc})") from exc


def iter_documents(path: str, text_field: str = "text") -> Iterator[dict]:
    for shard in list_shards(path):
        for doc in iter_shard(shard):
            if not isinstance(doc.get(text_field), str):
                raise ValueError(f"{shard}: a document has no string field {text_field!r}")
            yield doc


class ShardWriter:
    """Writes documents to one gzipped JSON-lines shard (a temp name until closed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._raw = fsspec.open(path, "wb").open()
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
        self.count = 0

    def write(self, doc: dict) -> None:
        self._gz.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())
        self.count += 1

    def close(self) -> None:
        self._gz.close()
        self._raw.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
