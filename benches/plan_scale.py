"""Planning cost: `plan` of a synthetic DAG at several sizes (goal: 10,000 steps <= 1 s, linear).

python -m benches.plan_scale
"""

from __future__ import annotations

import os
import tempfile
import time

from benches.common import isolate_prefect


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


def main() -> None:
    isolate_prefect()
    os.environ["LMFLOWS_PREFIX"] = tempfile.mkdtemp(prefix="lmflows-bench-plan-")
    plan_seconds(100)  # warm imports
    rows = [(n, *plan_seconds(n)) for n in (1000, 10000)]
    for n, planned, total in rows:
        print(
            f"plan of {n:>6} steps: identities {planned:.3f} s, with status checks {total:.3f} s"
            f" ({total / n * 1e6:.0f} us/step)"
        )
    small, big = rows[0], rows[-1]
    print(
        f"scaling 1,000 -> 10,000 steps: {big[2] / small[2]:.1f}x time for 10x steps "
        f"(linear = 10x); 10,000 steps in {big[2]:.2f} s (goal <= 1 s)"
    )


if __name__ == "__main__":
    main()
