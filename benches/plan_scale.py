"""Planning cost: `plan` of a synthetic DAG at several sizes (goal: 10,000 steps <= 0.3 s with
status checks, as `python -m flows plan` does it; linear).

Absolute seconds are noisy on a shared machine, so each figure is also a ratio against floors
measured in the same run: hashing the same 10,000 identity payloads (json + sha256, nothing
else) for the identities, one `os.stat` per step for the status checks. Best of --rounds.

python -m benches.plan_scale [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benches.common import isolate_prefect

GOAL_S = 0.3


def plan_seconds(n: int) -> tuple[float, float]:
    from benches.experiments.chain import chain
    from tasks.core import planning

    os.environ["BENCH_STEPS"] = str(n)
    started = time.perf_counter()
    with planning.planning() as plan:
        chain.fn()
    planned = time.perf_counter() - started
    plan.check_status()
    total = time.perf_counter() - started
    assert len(plan.steps) == n
    return planned, total


def floors(n: int) -> tuple[float, float]:
    """(hash n payloads shaped like the DAG's, stat n missing commit records)."""
    from tasks.core import storage
    from tasks.core.identity import compute_hash

    started = time.perf_counter()
    previous = "bench/node-0000000000"
    for i in range(n):
        previous = "bench/node-" + compute_hash(
            "bench/node", {"i": i, "lr": 1e-3, "inputs": [previous]}, [previous]
        )
    hashing = time.perf_counter() - started
    prefix = storage.current_prefix()
    started = time.perf_counter()
    for i in range(n):
        try:
            os.stat(f"{prefix}/bench/node-{i:010x}/.lmflows/commit.json")
        except FileNotFoundError:
            pass
    return hashing, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    isolate_prefect()
    os.environ["LMFLOWS_PREFIX"] = tempfile.mkdtemp(prefix="lmflows-bench-plan-")
    plan_seconds(100)  # warm imports
    best: dict[int, tuple[float, float]] = {}
    best_floor = (float("inf"), float("inf"))
    for _ in range(args.rounds):  # interleaved; the best of each is reported
        for n in (1000, 10000):
            planned, total = plan_seconds(n)
            old = best.get(n, (planned, total))
            best[n] = (min(old[0], planned), min(old[1], total))
        hashing, stats = floors(10000)
        best_floor = (min(best_floor[0], hashing), min(best_floor[1], stats))
    for n, (planned, total) in best.items():
        print(
            f"plan of {n:>6} steps: identities {planned:.3f} s, with status checks {total:.3f} s"
            f" ({total / n * 1e6:.0f} us/step)"
        )
    planned, total = best[10000]
    hashing, stats = best_floor
    print(
        f"floors for 10,000 steps: json+sha256 of the payloads {hashing:.3f} s, "
        f"one os.stat per step {stats:.3f} s"
    )
    print(
        f"10,000 steps: identities {planned / hashing:.1f}x the hashing floor; status checks "
        f"{(total - planned) / stats:.1f}x the stat floor"
    )
    print(
        f"scaling 1,000 -> 10,000 steps: {total / best[1000][1]:.1f}x time for 10x steps "
        f"(linear = 10x)"
    )
    verdict = "met" if total <= GOAL_S else "NOT met"
    print(
        f"goal: plan of 10,000 steps (with status checks) <= {GOAL_S} s: {total:.3f} s -> "
        f"{verdict} (identities alone {planned:.3f} s)"
    )


if __name__ == "__main__":
    main()
