"""tokenize: a levanter tokenized cache (train and validation splits) from JSON-lines shards.

Why in-process `SerialCacheWriter` and not levanter's Ray cache builder: at its defaults the
Ray builder asks for 4 CPUs + 6 GiB per copy task and waits forever on a 2-CPU machine, and it
is ~25x slower here for small corpora (measured on this 2-core machine). The expensive part of
tokenizing is the Rust tokenizer, which already spreads a batch over every core; the cache
write is a small sequential append. On a cluster, parallelism comes from running one tokenize
step per dataset (each a Ray task through Prefect's task runner), which keeps each cache
byte-identical to what levanter's own builder produces (same `BatchTokenizer`, same ledger).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tasks.core import step
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.data.shards import CorpusError, iter_documents
from tasks.data.tokenizer_files import load_tokenizer

SPLITS = ("train", "validation")


def _split_of(doc_key: str, validation_fraction: float, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{doc_key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if bucket < validation_fraction else "train"


def _batches(
    dataset: str, text_field: str, validation_fraction: float, seed: int, batch_size: int
) -> Iterator[tuple[list[dict], list[str]]]:
    """Documents in reading order, `batch_size` at a time, each with its split."""
    batch: list[dict] = []
    splits: list[str] = []
    for doc in iter_documents(dataset, text_field):
        text = doc[text_field]
        batch.append({text_field: text})
        splits.append(_split_of(str(doc.get("id") or text), validation_fraction, seed))
        if len(batch) >= batch_size:
            yield batch, splits
            batch, splits = [], []
    if batch:
        yield batch, splits


def _read_ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """`items`, produced by a background thread up to `depth` ahead of the consumer.

    Why: reading and parsing the shards is Python and holds the GIL, `encode_batch` is Rust
    and releases it, so the next batch is read while this one is tokenized. Hand-written
    because the standard library has no bounded prefetching iterator; an error in the reader
    is raised in the consumer, and a consumer that stops early stops the reader."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def offer(message: tuple[str, Any]) -> bool:
        while not stopped.is_set():
            try:
                handoff.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not offer(("item", item)):
                    return
            offer(("end", None))
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            offer(("error", error))

    reader = threading.Thread(target=read, name="lmflows-tokenize-read", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stopped.set()
        reader.join()


def check_tokenize(validation_fraction: float, **_: Any) -> None:
    """`tokenize`'s `validate=`: a validation fraction in [0, 1)."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")


@step(
    hash_attrs=["dataset", "tokenizer", "validation_fraction", "seed", "text_field"],
    operational=["batch_size"],
    name="tokenized/{name}",
    validate=check_tokenize,
    isolate=True,
)
def tokenize(
    dataset: str,
    tokenizer: str,
    name: str,
    validation_fraction: float = 0.05,
    seed: int = 0,
    text_field: str = "text",
    batch_size: int = 1024,
    *,
    output_path: str,
) -> dict:
    """Tokenize `dataset` (shards under a path) with `tokenizer` (a step output or hub id).

    Documents go to validation by a hash of their id (or text), so the split is stable when
    documents are added. `batch_size` is operational.
    """
    from levanter.store.cache import CacheMetadata, SerialCacheWriter

    from tasks.data.batch_tokenizer import DirectBatchTokenizer

    tensorstore_follows_emulator()  # levanter's tensorstore writes, on a GCS emulator

    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    hf_tokenizer = load_tokenizer(tokenizer)
    processor = DirectBatchTokenizer(
        hf_tokenizer, text_field=text_field, enforce_bos=True, enforce_eos=True
    )
    metadata = CacheMetadata(preprocessor_metadata=processor.metadata)
    stats = {split: {"documents": 0, "tokens": 0, "bytes": 0} for split in SPLITS}
    writers = {
        split: SerialCacheWriter(
            os.path.join(output_path, split), processor.output_exemplar, metadata=metadata
        )
        for split in SPLITS
    }

    def write(encoded: list[dict], splits: list[str]) -> None:
        for split in SPLITS:
            rows = [row for row, where in zip(encoded, splits) if where == split]
            if rows:
                writers[split].write_batch(rows)
                stats[split]["tokens"] += sum(len(row["input_ids"]) for row in rows)

    # One batch stream for both splits (full batches keep every core busy in encode_batch),
    # and the cache writes of a batch overlap the tokenization of the next: one writer thread,
    # at most one batch in flight, so each split's rows are written in reading order. Both
    # `encode_batch` and tensorstore release the GIL.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmflows-cache-write") as pool:
        pending = None
        batches = _batches(dataset, text_field, validation_fraction, seed, batch_size)
        for batch, splits in _read_ahead(batches):
            for doc, split in zip(batch, splits):
                stats[split]["documents"] += 1
                stats[split]["bytes"] += len(doc[text_field].encode("utf-8"))
            encoded = processor(batch)
            if pending is not None:
                pending.result()  # a failed write stops the step here
            pending = pool.submit(write, encoded, splits)
        if pending is not None:
            pending.result()
    for split in SPLITS:
        writers[split].__exit__(None, None, None)
    if stats["train"]["documents"] == 0:
        raise CorpusError(f"dataset {dataset} produced no training documents")
    if validation_fraction > 0 and stats["validation"]["documents"] == 0:
        total = stats["train"]["documents"]
        raise CorpusError(
            f"dataset {dataset}: none of its {total} documents went to the validation split"
            f" (validation_fraction={validation_fraction}); add documents or raise"
            " validation_fraction"
        )
    return {"splits": stats, "vocab_size": len(hf_tokenizer), "text_field": text_field}
