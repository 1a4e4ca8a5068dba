"""Reading and writing JSON-lines document shards on any fsspec filesystem."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import fsspec

from tasks.core.storage import META_DIR

SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")


class CorpusError(ValueError):
    """A corpus that cannot be read as documents: names the shard, the line and the fix."""


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
    """Documents of one shard, streamed (gzip decided by the name). A line that is not UTF-8
    or not a JSON object stops the step with the shard and line number."""
    with fsspec.open(shard, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if shard.endswith(".gz") else raw
        for line_no, raw_line in enumerate(stream, 1):
            try:
                line = raw_line.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    f"{shard}:{line_no}: not UTF-8 text (byte {exc.start} of the line is "
                    f"{raw_line[exc.start : exc.start + 1]!r}); convert the shard to UTF-8"
                ) from None
            if not line:
                continue
            try:
                doc = json.loads(line)
            except ValueError as exc:
                raise CorpusError(f"{shard}:{line_no}: not a JSON line ({exc})") from None
            if not isinstance(doc, dict):
                raise CorpusError(
                    f"{shard}:{line_no}: a JSON {type(doc).__name__}, not an object"
                    " with a text field"
                )
            yield doc


def iter_documents(path: str, text_field: str = "text") -> Iterator[dict]:
    for shard in list_shards(path):
        for doc in iter_shard(shard):
            if not isinstance(doc.get(text_field), str):
                raise CorpusError(f"{shard}: a document has no string field {text_field!r}")
            yield doc


class ShardWriter:
    """Writes documents to one gzipped JSON-lines shard (a temp name until closed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._raw = fsspec.open(path, "wb").open()
        # Level 6 (zlib's and the gzip tool's default), not GzipFile's 9: twice as fast to
        # write, 1% larger on the KJV (benches/dedup_throughput.py's floor).
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, compresslevel=6)
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
