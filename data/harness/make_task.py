"""Rebuild `kjv_completion.jsonl`, the local lm-eval task, from the checked-in KJV shards.

Run from the repository root: `python data/harness/make_task.py` (standard library only; the
output is byte-for-byte the same on every run, which tests/test_harness.py checks).

Items come from chapters that the tokenize step puts in its validation split at its defaults
(validation_fraction=0.05, seed=0), so a model trained by the demo has not trained on them.
Each item is one sentence split in the middle of its words: the first half is the context, the
choices are the true second half and the second halves of three other sentences of about the
same length (so neither `acc` nor `acc_norm` can win by length alone).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
KJV = HERE.parent / "kjv"
OUTPUT = HERE / "kjv_completion.jsonl"
ITEMS = 300
MIN_WORDS, MAX_WORDS = 10, 24
# A sentence ends at . ? or ! followed by a capital (verses are joined by spaces in data/kjv).
SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")


def in_validation(doc_id: str, validation_fraction: float = 0.05, seed: int = 0) -> bool:
    """The tokenize step's split (`tasks/data/tokenize.py` `_split_of`), restated here so this
    script needs nothing but the standard library; tests/test_harness.py checks they agree."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction


def held_out_sentences() -> list[tuple[str, str]]:
    """(chapter id, sentence) of every sentence of MIN..MAX words in a validation chapter."""
    found = []
    for shard in sorted(KJV.glob("kjv-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            for line in handle:
                doc = json.loads(line)
                if not in_validation(doc["id"]):
                    continue
                for sentence in SENTENCE_END.split(doc["text"]):
                    if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
                        found.append((doc["id"], sentence))
    return found


def build() -> list[dict]:
    rng = random.Random(0)
    sentences = held_out_sentences()
    halves = []
    for doc_id, sentence in sentences:
        words = sentence.split()
        cut = len(words) // 2
        halves.append((doc_id, " ".join(words[:cut]), " ".join(words[cut:])))
    picked = sorted(rng.sample(range(len(halves)), ITEMS))
    items = []
    for index in picked:
        doc_id, context, ending = halves[index]
        length = len(ending.split())
        pool = sorted(
            {
                other
                for _, _, other in halves
                if other != ending and abs(len(other.split()) - length) <= 2
            }
        )
        choices = [ending, *rng.sample(pool, 3)]
        rng.shuffle(choices)
        items.append(
            {
                "id": f"{doc_id}-{index}",
                "context": context,
                "choices": choices,
                "label": choices.index(ending),
            }
        )
    return items


def render(items: list[dict]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


if __name__ == "__main__":
    items = build()
    OUTPUT.write_text(render(items), encoding="utf-8")
    print(f"wrote {len(items)} items to {OUTPUT} ({OUTPUT.stat().st_size} bytes)")
