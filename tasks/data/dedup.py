"""dedup: exact (normalised-text hash) and fuzzy (MinHash + LSH) deduplication of JSON-lines
shards. Streams: documents are read, signed in worker processes a bounded window of chunks
at a time, decided in order (the first occurrence is kept) and written as they go; memory is
the signature index (one 32-bit value per permutation per kept document) plus the window.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

from tasks.core import step
from tasks.core.argument_checks import positive
from tasks.data.minhash import LshIndex, signatures_of
from tasks.data.shards import CorpusError, ShardWriter, iter_shard, list_shards

MAX_EXAMPLES = 5
SNIPPET = 160


def _chunks(dataset: str, text_field: str, size: int) -> Iterator[tuple[str, list[dict]]]:
    for shard in list_shards(dataset):
        chunk: list[dict] = []
        for doc in iter_shard(shard):
            if not isinstance(doc.get(text_field), str):
                raise ValueError(f"{shard}: a document has no string field {text_field!r}")
            chunk.append(doc)
            if len(chunk) >= size:
                yield shard, chunk
                chunk = []
        if chunk:
            yield shard, chunk


def _signed(
    chunks: Iterator[tuple[str, list[dict]]], text_field: str, processes: int, args: tuple
) -> Iterator[tuple[str, list[dict], list]]:
    """Sign chunks in order with at most 2 x processes chunks in flight (bounded memory)."""
    if processes <= 1:
        for shard, docs in chunks:
            yield shard, docs, signatures_of([d[text_field] for d in docs], *args)
        return
    # spawn, not fork: the parent runs Prefect's and the lease's threads
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        window: collections.deque = collections.deque()
        for shard, docs in chunks:
            texts = [d[text_field] for d in docs]
            window.append((shard, docs, pool.apply_async(signatures_of, (texts, *args))))
            if len(window) >= 2 * processes:
                shard_, docs_, pending = window.popleft()
                yield shard_, docs_, pending.get()
        while window:
            shard_, docs_, pending = window.popleft()
            yield shard_, docs_, pending.get()


def check_dedup(
    mode: str, num_perm: int, bands: int, ngram: int, threshold: float, **_: Any
) -> None:
    """`dedup`'s `validate=`: a known mode and a consistent LSH banding."""
    if mode not in ("exact", "fuzzy"):
        raise ValueError(f"mode={mode!r}: expected 'exact' or 'fuzzy'")
    positive(num_perm=num_perm, bands=bands, ngram=ngram)
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")


@step(
    hash_attrs=["dataset", "mode", "num_perm", "bands", "ngram", "threshold", "seed", "text_field"],
    operational=["processes", "chunk_size"],
    name="dedup/{name}",
    validate=check_dedup,
)
def dedup(
    dataset: str,
    name: str,
    mode: str = "fuzzy",
    num_perm: int = 128,
    bands: int = 32,
    ngram: int = 5,
    threshold: float = 0.7,
    seed: int = 0,
    text_field: str = "text",
    processes: int = 2,
    chunk_size: int = 256,
    *,
    output_path: str,
) -> dict:
    """Deduplicate the shards under `dataset` into `output_path/data/` (same shard names).

    mode "exact" drops documents whose normalised text was seen; "fuzzy" also drops documents
    whose estimated Jaccard similarity (word `ngram` shingles) to a kept one is >= threshold.
    `processes` and `chunk_size` are operational.
    """
    if mode not in ("exact", "fuzzy"):
        raise ValueError(f"mode={mode!r}: expected 'exact' or 'fuzzy'")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")
    fuzzy = mode == "fuzzy"
    index = LshIndex(num_perm, bands, threshold) if fuzzy else None
    seen_exact: dict[bytes, int] = {}
    kept_ids: list[str] = []
    snippets: list[str] = []
    cluster_sizes: collections.Counter[int] = collections.Counter()
    stats = {"documents_in": 0, "documents_out": 0, "exact_duplicates": 0, "fuzzy_duplicates": 0}
    examples: list[dict] = []
    writers: dict[str, ShardWriter] = {}
    root = dataset.rstrip("/")
    try:
        chunks = _chunks(dataset, text_field, chunk_size)
        for shard, docs, signed in _signed(
            chunks, text_field, processes, (ngram, num_perm, seed, fuzzy)
        ):
            if shard not in writers:
                rel = os.path.relpath(shard, root) if shard != root else os.path.basename(shard)
                rel = rel if rel.endswith(".gz") else rel + ".gz"
                writers[shard] = ShardWriter(f"{output_path}/data/{rel}")
            for position, (doc, (key, sig)) in enumerate(zip(docs, signed)):
                stats["documents_in"] += 1
                doc_id = str(doc.get("id", f"{os.path.basename(shard)}:{position}"))
                kept_as = seen_exact.get(key)
                kind, similarity = ("exact", 1.0) if kept_as is not None else (None, None)
                if kind is None and index is not None:
                    match = index.query(sig)
                    if match is not None:
                        kept_as, similarity = match
                        kind = "fuzzy"
                if kind is not None:
                    stats[f"{kind}_duplicates"] += 1
                    cluster_sizes[kept_as] += 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append(
                            {
                                "kind": kind,
                                "similarity": round(similarity, 3),
                                "kept": kept_ids[kept_as],
                                "kept_text": snippets[kept_as],
                                "dropped": doc_id,
                                "dropped_text": doc[text_field][:SNIPPET],
                            }
                        )
                    continue
                number = index.insert(sig) if index is not None else len(kept_ids)
                seen_exact[key] = number
                kept_ids.append(doc_id)
                snippets.append(doc[text_field][:SNIPPET] if len(examples) < MAX_EXAMPLES else "")
                writers[shard].write(doc)
                stats["documents_out"] += 1
    finally:
        for writer in writers.values():
            writer.close()
    if stats["documents_in"] == 0:
        raise CorpusError(
            f"{dataset} holds no documents (its shards are empty): nothing to deduplicate,"
            " tokenize or train on"
        )
    stats["duplicate_clusters"] = len(cluster_sizes)
    stats["largest_cluster"] = 1 + max(cluster_sizes.values(), default=0)
    report = {
        **stats,
        "examples": examples,
        "params": {
            "mode": mode,
            "num_perm": num_perm,
            "bands": bands,
            "ngram": ngram,
            "threshold": threshold,
            "seed": seed,
        },
    }
    with open_text(f"{output_path}/stats.json") as handle:
        json.dump(report, handle, indent=2)
    return stats


def open_text(path: str):
    import fsspec

    return fsspec.open(path, "w")
