"""Dedup documents/s (exact and fuzzy, 1 and 2 processes) against two baselines measured in
the same run on the same documents:

- the I/O floor: reading and re-writing the same shards without deduplicating;
- datasketch (MinHash + MinHashLSH) in one process, doing the same job the same way: the same
  word 5-gram shingles of the same normalised text, 128 permutations, 32 bands of 4 rows,
  candidates verified at estimated Jaccard >= 0.7, the first occurrence kept, the same shard
  reading and writing.

Recall is measured for both against the planted near-duplicates: copies 1.. of the corpus are
the KJV chapters with 2% of their words replaced, so each of their documents is a
near-duplicate of its copy-0 original. Goal: lmflows' fuzzy dedup (1 process) >= 2x
datasketch's documents/s at equal recall (within 1 point). Best of --rounds.

    python -m benches.dedup_throughput [--copies 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import tempfile
import time

from benches.common import ratio_line

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "kjv")
GOAL_RATIO = 2.0
NUM_PERM, BANDS, NGRAM, THRESHOLD, SEED = 128, 32, 5, 0.7, 0


def build_corpus(copies: int, root: str) -> tuple[int, set[str]]:
    """KJV chapters plus `copies - 1` lightly edited copies: realistic duplicate load.
    Returns the document count and the ids of the planted near-duplicates."""
    from tasks.data.shards import iter_documents

    rng = random.Random(0)
    docs = list(iter_documents(CORPUS))
    count = 0
    planted = set()
    for copy in range(copies):
        with gzip.open(os.path.join(root, f"copy-{copy}.jsonl.gz"), "wt") as handle:
            for doc in docs:
                words = doc["text"].split()
                if copy:
                    for i in rng.sample(range(len(words)), max(1, len(words) // 50)):
                        words[i] = "selah"
                    planted.add(f"{doc['id']}-{copy}")
                handle.write(json.dumps({"id": f"{doc['id']}-{copy}", "text": " ".join(words)}))
                handle.write("\n")
                count += 1
    return count, planted


def io_floor(src: str, out: str) -> float:
    from tasks.data.shards import ShardWriter, iter_shard, list_shards

    started = time.perf_counter()
    for shard in list_shards(src):
        with ShardWriter(os.path.join(out, os.path.basename(shard))) as writer:
            for doc in iter_shard(shard):
                writer.write(doc)
    return time.perf_counter() - started


def shingle_bytes(text: str) -> set[bytes]:
    """The baseline's shingles: the UTF-8 bytes of `tasks.data.minhash.shingles` (word
    5-grams of the normalised text), built the fast way lmflows builds them, so that the
    comparison is of MinHash + LSH, not of tokenising (`shingles` itself is ~3x slower)."""
    from tasks.data.minhash import _words, normalize

    words = _words(normalize(text))
    if len(words) <= NGRAM:
        return {b" ".join(words)}
    return set(map(b" ".join, zip(*(words[i:] for i in range(NGRAM)))))


def datasketch_dedup(src: str, out: str) -> float:
    """The same job with datasketch 2.0 as its documentation suggests: a MinHash per document
    (permutations made once and shared), MinHashLSH with the same bands, `jaccard` to verify."""
    from datasketch import MinHash, MinHashLSH

    from tasks.data.shards import ShardWriter, iter_shard, list_shards

    started = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, NUM_PERM // BANDS))
    template = MinHash(num_perm=NUM_PERM, seed=SEED)
    kept: dict[str, MinHash] = {}
    for shard in list_shards(src):
        with ShardWriter(os.path.join(out, os.path.basename(shard))) as writer:
            for doc in iter_shard(shard):
                signature = MinHash(
                    num_perm=NUM_PERM, permutations=template.permutations, scheme=template.scheme
                )
                signature.update_batch(shingle_bytes(doc["text"]))
                if any(kept[c].jaccard(signature) >= THRESHOLD for c in lsh.query(signature)):
                    continue
                lsh.insert(doc["id"], signature)
                kept[doc["id"]] = signature
                writer.write(doc)
    return time.perf_counter() - started


def lmflows_dedup(src: str, out: str, mode: str, processes: int) -> tuple[float, dict]:
    from tasks.data.dedup import dedup

    started = time.perf_counter()
    stats = dedup.fn.__wrapped__(
        dataset=src,
        name="bench",
        mode=mode,
        num_perm=NUM_PERM,
        bands=BANDS,
        ngram=NGRAM,
        threshold=THRESHOLD,
        seed=SEED,
        processes=processes,
        output_path=out,
    )
    return time.perf_counter() - started, stats


def kept_ids(out: str) -> set[str]:
    from tasks.data.shards import iter_shard, list_shards

    return {doc["id"] for shard in list_shards(out) for doc in iter_shard(shard)}


def quality(all_ids: set[str], planted: set[str], out: str) -> tuple[float, int]:
    """(recall of the planted near-duplicates, documents dropped that were not planted)."""
    dropped = all_ids - kept_ids(out)
    return len(dropped & planted) / len(planted), len(dropped - planted)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import shutil

    work = tempfile.mkdtemp(prefix="lmflows-bench-dedup-")
    src = os.path.join(work, "src")
    os.makedirs(src)
    documents, planted = build_corpus(args.copies, src)
    all_ids = {f"{i}" for i in kept_ids(src)}

    def fresh(name: str) -> str:
        path = os.path.join(work, name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    best: dict[str, float] = {}
    stats: dict[str, dict] = {}
    runs = [("floor", None, 0), ("datasketch", None, 1), ("exact", "exact", 1)]
    runs += [("fuzzy-1", "fuzzy", 1), ("fuzzy-2", "fuzzy", 2)]
    for _ in range(args.rounds):  # interleaved; the best of each is reported
        for label, mode, processes in runs:
            out = fresh(label)
            if label == "floor":
                elapsed = io_floor(src, out)
            elif label == "datasketch":
                elapsed = datasketch_dedup(src, out)
            else:
                elapsed, stats[label] = lmflows_dedup(src, out, mode, processes)
            best[label] = min(best.get(label, elapsed), elapsed)
    floor = best["floor"]
    print(
        f"{documents} documents ({args.copies} copies of the KJV chapters, copies edited "
        f"at 2% of words: {len(planted)} planted near-duplicates); "
        f"read+write floor {documents / floor:,.0f} docs/s"
    )
    recall = {}
    for label in ("datasketch", "exact", "fuzzy-1", "fuzzy-2"):
        recall[label], extra = quality(all_ids, planted, os.path.join(work, label))
        kept = f", kept {stats[label]['documents_out']}" if label in stats else ""
        print(
            f"{label:>10}: {documents / best[label]:,.0f} docs/s{kept}; recall of planted "
            f"near-duplicates {recall[label]:.4f}, other documents dropped {extra}"
        )
        print("    " + ratio_line("seconds vs read+write floor", best[label], floor, "report"))
    ratio = best["datasketch"] / best["fuzzy-1"]
    print(
        f"fuzzy, 1 process: lmflows {documents / best['fuzzy-1']:,.0f} docs/s vs datasketch "
        f"{documents / best['datasketch']:,.0f} docs/s -> {ratio:.2f}x throughput; recall "
        f"{recall['fuzzy-1']:.4f} vs {recall['datasketch']:.4f}"
    )
    equal = recall["fuzzy-1"] >= recall["datasketch"] - 0.01
    verdict = "met" if ratio >= GOAL_RATIO and equal else "NOT met"
    print(
        f"goal: fuzzy dedup >= {GOAL_RATIO}x datasketch at equal recall (within 0.01): "
        f"{ratio:.2f}x, recall {'equal' if equal else 'lower'} -> {verdict}"
    )


if __name__ == "__main__":
    main()
