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

from tasks.core import step
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.data import checks
from tasks.data.shards import iter_documents
from tasks.data.tokenizer_files import load_tokenizer

SPLITS = ("train", "validation")


def _split_of(doc_key: str, validation_fraction: float, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{doc_key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if bucket < validation_fraction else "train"


@step(
    hash_attrs=["dataset", "tokenizer", "validation_fraction", "seed", "text_field"],
    operational=["batch_size"],
    name="tokenized/{name}",
    validate=checks.tokenize,
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
    from levanter.data.text import BatchTokenizer
    from levanter.store.cache import CacheMetadata, SerialCacheWriter

    tensorstore_follows_emulator()  # levanter's tensorstore writes, on a GCS emulator

    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    hf_tokenizer = load_tokenizer(tokenizer)
    processor = BatchTokenizer(
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
    batches: dict[str, list[dict]] = {split: [] for split in SPLITS}

    def flush(split: str) -> None:
        batch = batches[split]
        if not batch:
            return
        encoded = processor(batch)
        writers[split].write_batch(encoded)
        stats[split]["tokens"] += sum(len(row["input_ids"]) for row in encoded)
        batches[split] = []

    for doc in iter_documents(dataset, text_field):
        text = doc[text_field]
        key = str(doc.get("id") or text)
        split = _split_of(key, validation_fraction, seed)
        batches[split].append({text_field: text})
        stats[split]["documents"] += 1
        stats[split]["bytes"] += len(text.encode("utf-8"))
        if len(batches[split]) >= batch_size:
            flush(split)
    for split in SPLITS:
        flush(split)
        writers[split].__exit__(None, None, None)
    if stats["train"]["documents"] == 0:
        raise ValueError(f"dataset {dataset} produced no training documents")
    return {"splits": stats, "vocab_size": len(hf_tokenizer), "text_field": text_field}
