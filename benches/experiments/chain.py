"""A synthetic DAG for the planning benchmark: BENCH_STEPS steps, each consuming the previous
one and (every tenth) a fan-in of earlier ones."""

from __future__ import annotations

import os

from prefect import flow

from tasks.core import step


@step(hash_attrs=["i", "lr", "inputs"], name="bench/node")
def node(i: int, lr: float, inputs: list, *, output_path: str) -> dict:
    return {"i": i}


@flow
def chain() -> None:
    n = int(os.environ.get("BENCH_STEPS", "10000"))
    refs = []
    for i in range(n):
        inputs = refs[-1:] if i % 10 else refs[-10:-1:3]
        refs.append(node(i=i, lr=1e-3, inputs=inputs))
