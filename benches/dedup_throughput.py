"""Dedup documents/s (exact and fuzzy, 1 and 2 processes), against the I/O floor measured in
the same run: reading and re-writing the same shards without deduplicating.

    python -m benches.dedup_throughput [--copies 4]
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


def build_corpus(copies: int, root: str) -> int:
    """KJV chapters plus `copies - 1` lightly edited copies: realistic duplicate load."""
    from tasks.data.shards import iter_documents

    rng = random.Random(0)
    docs = list(iter_documents(CORPUS))
    count = 0
    for copy in range(copies):
        with gzip.open(os.path.join(root, f"copy-{copy}.jsonl.gz"), "wt") as handle:
            for doc in docs:
                words = doc["text"].split()
                if copy:
                    for i in rng.sample(range(len(words)), max(1, len(words) // 50)):
                        words[i] = "selah"
                handle.write(json.dumps({"id": f"{doc['id']}-{copy}", "text": " ".join(words)}))
                handle.write("\n")
                count += 1
    return count


def io_floor(src: str, out: str) -> float:
    from tasks.data.shards import ShardWriter, iter_shard, list_shards

    started = time.perf_counter()
    for shard in list_shards(src):
        with ShardWriter(os.path.join(out, os.path.basename(shard))) as writer:
            for doc in iter_shard(shard):
                writer.write(doc)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()
    from tasks.data.dedup import dedup

    work = tempfile.mkdtemp(prefix="lmflows-bench-dedup-")
    src = os.path.join(work, "src")
    os.makedirs(src)
    documents = build_corpus(args.copies, src)
    os.makedirs(os.path.join(work, "floor"))
    floor = io_floor(src, os.path.join(work, "floor"))
    print(
        f"{documents} documents ({args.copies} copies of the KJV chapters, copies edited "
        f"at 2% of words); read+write floor {documents / floor:,.0f} docs/s"
    )
    for mode, processes in (("exact", 1), ("fuzzy", 1), ("fuzzy", 2)):
        started = time.perf_counter()
        stats = dedup.fn.__wrapped__(
            dataset=src,
            name="bench",
            mode=mode,
            processes=processes,
            output_path=os.path.join(work, f"{mode}-{processes}"),
        )
        elapsed = time.perf_counter() - started
        print(
            f"dedup mode={mode} processes={processes}: {documents / elapsed:,.0f} docs/s, "
            f"kept {stats['documents_out']} of {stats['documents_in']}"
        )
        print("  " + ratio_line("seconds vs read+write floor", elapsed, floor, "report"))


if __name__ == "__main__":
    main()
