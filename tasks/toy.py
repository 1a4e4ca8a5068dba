"""Tiny steps for the toy experiment, tests and benchmarks (no heavy imports). They read and
write through fsspec, so any prefix works (a local folder, gs://)."""

from __future__ import annotations

import json
import os
import random

import fsspec

from tasks.core import step


def _write_json(path: str, value: object) -> None:
    fs, target = fsspec.core.url_to_fs(path)
    fs.makedirs(fs._parent(target), exist_ok=True)
    with fs.open(target, "w") as handle:
        json.dump(value, handle)


def _read_json(path: str) -> object:
    with fsspec.open(path, "r") as handle:
        return json.load(handle)


def _entries(path: str) -> int:
    """How many files and folders are directly in the folder `path` (any fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(path)
    return len(fs.ls(root, detail=False, refresh=True))


@step(hash_attrs=["n", "seed"], name="toy/numbers")
def make_numbers(n: int, seed: int, *, output_path: str) -> dict:
    rng = random.Random(seed)
    numbers = [rng.random() for _ in range(n)]
    _write_json(f"{output_path}/numbers.json", numbers)
    return {"count": n}


@step(hash_attrs=["source", "factor"], name="toy/scale")
def scale(source: str, factor: float, *, output_path: str) -> dict:
    values = _read_json(source)
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
    sizes = {os.path.basename(os.path.dirname(p.rstrip("/"))) or p: _entries(p) for p in inputs}
    _write_json(
        f"{output_path}/summary.json", {"inputs": len(inputs), "files": sum(sizes.values())}
    )
    return {"inputs": len(inputs)}
