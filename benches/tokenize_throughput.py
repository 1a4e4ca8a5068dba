"""Tokenize throughput: the `tokenize` step's function (read shards, tokenize, write a
levanter cache) vs raw `tokenizers` `encode_batch` on the same texts, same cores.

    python -m benches.tokenize_throughput [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benches.common import ratio_line

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "kjv")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from tokenizers import Tokenizer

    from tasks.data.shards import iter_documents
    from tasks.data.tokenize import tokenize
    from tasks.data.train_tokenizer import train_tokenizer

    work = tempfile.mkdtemp(prefix="lmflows-bench-tok-")
    tok_dir = os.path.join(work, "tokenizer")
    train_tokenizer.fn.__wrapped__(corpus=CORPUS, vocab_size=4096, output_path=tok_dir)
    texts = [d["text"] for d in iter_documents(CORPUS)]
    raw = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))

    def bare() -> int:
        tokens = 0
        for i in range(0, len(texts), 256):
            tokens += sum(len(e.ids) for e in raw.encode_batch(texts[i : i + 256]))
        return tokens

    def step(run: int) -> int:
        meta = tokenize.fn.__wrapped__(
            dataset=CORPUS,
            tokenizer=tok_dir,
            name="bench",
            validation_fraction=0.05,
            output_path=os.path.join(work, f"cache-{run}"),
        )
        return sum(split["tokens"] for split in meta["splits"].values())

    bare_best, step_best, tokens = float("inf"), float("inf"), 0
    for run in range(args.repeat):
        started = time.perf_counter()
        tokens = bare()
        bare_best = min(bare_best, time.perf_counter() - started)
        started = time.perf_counter()
        step_tokens = step(run)
        step_best = min(step_best, time.perf_counter() - started)
    bare_rate, step_rate = tokens / bare_best, step_tokens / step_best
    print(
        f"{len(texts)} documents, {tokens} tokens (bare, no bos/eos) / {step_tokens} "
        f"(cache, with bos/eos); cores: {os.cpu_count()}"
    )
    print(f"tokens/s: raw encode_batch {bare_rate:,.0f}, tokenize step {step_rate:,.0f}")
    print(
        ratio_line(
            "tokens/s, tokenize step vs raw encode_batch", step_rate, bare_rate, "goal >= 0.9x"
        )
    )


if __name__ == "__main__":
    main()
