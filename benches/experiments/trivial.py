"""Independent trivial steps for runner-overhead benchmarks."""

from __future__ import annotations

from tasks.core import flow, step


@step(hash_attrs=["i"], name="bench/trivial")
def trivial(i: int, *, output_path: str) -> dict:
    return {"i": i}


@flow(name="trivial-steps")
def trivial_steps(n: int) -> list:
    return [trivial(i) for i in range(n)]
