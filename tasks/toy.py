"""Tiny steps for the toy experiment, tests and benchmarks (no heavy imports)."""

from __future__ import annotations

import json
import os
import random

from tasks.core import step


def _write_json(path: str, value: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(value, handle)


@step(hash_attrs=["n", "seed"], name="toy/numbers")
def make_numbers(n: int, seed: int, *, output_path: str) -> dict:
    rng = random.Random(seed)
    numbers = [rng.random() for _ in range(n)]
    _write_json(f"{output_path}/numbers.json", numbers)
    return {"count": n}


@step(hash_attrs=["source", "factor"], name="toy/scale")
def scale(source: str, factor: float, *, output_path: str) -> dict:
    with open(source) as handle:
        values = json.load(handle)
    values = values if isinstance(values, list) else list(values.values())
    scaled = [v * factor for v in values if isinstance(v, (int, float))]
    _write_json(f"{output_path}/numbers.json", scaled)
    return {"count": len(scaled), "total": sum(scaled)}


@step(hash_attrs=["text"], name="toy/words")
def count_words(text: str, *, output_path: str) -> dict:
    counts: dict[str, int] = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    _write_json(f"{output_path}/counts.json", counts)
    return {"distinct": len(counts)}


@step(hash_attrs=["inputs"], name="toy/summary")
def summarize(inputs: list, *, output_path: str) -> dict:
    sizes = {
        os.path.basename(os.path.dirname(p.rstrip("/"))) or p: len(os.listdir(p)) for p in inputs
    }
    _write_json(
        f"{output_path}/summary.json", {"inputs": len(inputs), "files": sum(sizes.values())}
    )
    return {"inputs": len(inputs)}
