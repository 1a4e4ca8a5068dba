"""Build the chat dataset in this folder from the checked-in King James Bible (data/kjv/).

Run from the repository root: `python data/chat/make_chat.py`. The output is deterministic
(fixed seed, sorted input, gzip without a timestamp), so running it again reproduces the
checked-in shards byte for byte. See README.md for what the conversations are.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
KJV = HERE.parent / "kjv"
SEED = 0
VALIDATION_FRACTION = 0.08
PER_CHAPTER = 2  # conversations drawn from each chapter
MIN_CHARS, MAX_CHARS = 40, 160  # verse-like sentences of this length only

BOOKS = {
    "Ge": "Genesis", "Exo": "Exodus", "Lev": "Leviticus", "Num": "Numbers",
    "Deu": "Deuteronomy", "Josh": "Joshua", "Jdgs": "Judges", "Ruth": "Ruth",
    "1Sm": "1 Samuel", "2Sm": "2 Samuel", "1Ki": "1 Kings", "2Ki": "2 Kings",
    "1Chr": "1 Chronicles", "2Chr": "2 Chronicles", "Ezra": "Ezra", "Neh": "Nehemiah",
    "Est": "Esther", "Job": "Job", "Psa": "Psalms", "Prv": "Proverbs",
    "Eccl": "Ecclesiastes", "SSol": "Song of Solomon", "Isa": "Isaiah", "Jer": "Jeremiah",
    "Lam": "Lamentations", "Eze": "Ezekiel", "Dan": "Daniel", "Hos": "Hosea",
    "Joel": "Joel", "Amos": "Amos", "Obad": "Obadiah", "Jonah": "Jonah", "Mic": "Micah",
    "Nahum": "Nahum", "Hab": "Habakkuk", "Zep": "Zephaniah", "Hag": "Haggai",
    "Zec": "Zechariah", "Mal": "Malachi", "Mat": "Matthew", "Mark": "Mark", "Luke": "Luke",
    "John": "John", "Acts": "Acts", "Rom": "Romans", "1Cor": "1 Corinthians",
    "2Cor": "2 Corinthians", "Gal": "Galatians", "Eph": "Ephesians", "Phi": "Philippians",
    "Col": "Colossians", "1Th": "1 Thessalonians", "2Th": "2 Thessalonians",
    "1Tim": "1 Timothy", "2Tim": "2 Timothy", "Titus": "Titus", "Phmn": "Philemon",
    "Heb": "Hebrews", "Jas": "James", "1Pet": "1 Peter", "2Pet": "2 Peter", "1Jn": "1 John",
    "2Jn": "2 John", "3Jn": "3 John", "Jude": "Jude", "Rev": "Revelation",
}  # fmt: skip
# A chapter is its verses joined by spaces; a sentence end followed by a capital is the
# nearest thing to a verse boundary the text keeps.
SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")


def chapters():
    for shard in sorted(KJV.glob("kjv-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def split_in_two(sentence: str) -> tuple[str, str]:
    """The sentence cut at the space nearest its middle."""
    middle = len(sentence) // 2
    spaces = [i for i, c in enumerate(sentence) if c == " "]
    cut = min(spaces, key=lambda i: abs(i - middle))
    return sentence[:cut], sentence[cut + 1 :]


def conversation(doc_id: str, book: str, sentence: str, kind: str) -> list[dict]:
    user, assistant = "user", "assistant"
    if kind == "continue":
        first, second = split_in_two(sentence)
        return [
            {"role": user, "content": f"Continue this verse: {first}"},
            {"role": assistant, "content": second},
        ]
    if kind == "book":
        return [
            {"role": user, "content": f"Which book of the Bible is this verse from? {sentence}"},
            {"role": assistant, "content": f"{book}."},
        ]
    first, second = split_in_two(sentence)  # "both": two turns
    return [
        {"role": user, "content": f"Continue this verse: {first}"},
        {"role": assistant, "content": second},
        {"role": user, "content": "Which book is it from?"},
        {"role": assistant, "content": f"{book}."},
    ]


def split_of(conversation_id: str) -> str:
    digest = hashlib.sha256(f"{SEED}:{conversation_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if bucket < VALIDATION_FRACTION else "train"


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    out: dict[str, list[dict]] = {"train": [], "validation": []}
    for doc in chapters():
        book = BOOKS[doc["id"].rsplit("-", 1)[0]]
        sentences = [
            s.strip()
            for s in SENTENCE_END.split(doc["text"])
            if MIN_CHARS <= len(s.strip()) <= MAX_CHARS and " " in s.strip()
        ]
        for k, sentence in enumerate(rng.sample(sentences, min(PER_CHAPTER, len(sentences)))):
            kind = rng.choice(["continue", "book", "both"])
            conversation_id = f"{doc['id']}-{k}"
            messages = conversation(doc["id"], book, sentence, kind)
            out[split_of(conversation_id)].append(
                {"id": conversation_id, "task": kind, "messages": messages}
            )
    return out


def write(rows: list[dict], path: Path) -> None:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(raw.getvalue())


def main() -> None:
    for split, rows in build().items():
        write(rows, HERE / f"{split}-00.jsonl.gz")
        print(f"{split}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
