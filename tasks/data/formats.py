"""Format conversion steps: raw downloads into JSON-lines shards with a `text` field."""

from __future__ import annotations

import fnmatch

import fsspec

from tasks.core import step
from tasks.data.shards import ShardWriter


@step(hash_attrs=["source", "pattern", "separator", "docs_per_shard"], name="jsonl/{name}")
def text_to_jsonl(
    source: str,
    name: str,
    pattern: str = "*.txt",
    separator: str = "<|endoftext|>",
    docs_per_shard: int = 100_000,
    *,
    output_path: str,
) -> dict:
    """Split the text files under `source` matching `pattern` into documents at `separator`
    (TinyStories' format) and write them as gzipped JSON-lines shards."""
    fs, root = fsspec.core.url_to_fs(source)
    protocol = source.split("://", 1)[0] + "://" if "://" in source else ""
    files = sorted(p for p in fs.find(root) if fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern))
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} under {source}")
    shard, writer, total = 0, None, 0
    for path in files:
        with fsspec.open(f"{protocol}{path}" if protocol else path, "r", encoding="utf-8") as fh:
            for piece in fh.read().split(separator):
                text = piece.strip()
                if not text:
                    continue
                if writer is None or writer.count >= docs_per_shard:
                    if writer is not None:
                        writer.close()
                    writer = ShardWriter(f"{output_path}/shard-{shard:05d}.jsonl.gz")
                    shard += 1
                writer.write({"id": f"{name}-{total}", "text": text})
                total += 1
    if writer is not None:
        writer.close()
    return {"documents": total, "shards": shard}
