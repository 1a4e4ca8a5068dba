"""Per-step overhead of a cached re-run: a 1,000-step lmflows chain vs bare Prefect tasks with
the INPUTS cache policy and JSON results, both against the same real local server (goal:
lmflows <= 0.6x the bare Prefect task).

Timed inside each flow body, from its first call to its last: a flow run's own start and end
(and Prefect's heartbeat thread, joined at the end in 1 s steps) are not per-step costs.
Rounds are interleaved and the best of each is reported.

    python -m benches.cached_chain [--steps 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benches.common import isolate_prefect, prefect_server, ratio_line

GOAL_RATIO = 0.6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    isolate_prefect()
    os.environ["LMFLOWS_PREFIX"] = tempfile.mkdtemp(prefix="lmflows-bench-out-")
    with prefect_server() as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        from pathlib import Path

        from prefect import flow, task
        from prefect.cache_policies import INPUTS

        from tasks.core import step

        bare_storage = Path(tempfile.mkdtemp(prefix="lmflows-bench-bare-"))

        @task(
            cache_policy=INPUTS,
            result_serializer="json",
            persist_result=True,
            result_storage=bare_storage,
        )
        def bare(i: int, prev: int) -> int:
            return i

        @step(hash_attrs=["i", "prev"], name="bench/link")
        def link(i: int, prev: object = None, *, output_path: str) -> dict:
            return {"i": i}

        @flow
        def bare_chain(n: int) -> float:
            started = time.perf_counter()
            prev = 0
            for i in range(n):
                prev = bare(i, prev)
            return time.perf_counter() - started

        @flow
        def step_chain(n: int) -> float:
            started = time.perf_counter()
            prev = None
            for i in range(n):
                prev = link(i, prev)
            return time.perf_counter() - started

        flows = (("bare", bare_chain), ("lmflows", step_chain))
        for _, fn in flows:
            fn(args.steps)  # fill the cache
        results: dict[str, float] = {}
        for _ in range(args.rounds):  # interleaved rounds; the best of each is reported
            for label, fn in flows:
                per_step = fn(args.steps) / args.steps * 1000  # fully cached
                results[label] = min(results.get(label, per_step), per_step)
        print(
            f"cached re-run, {args.steps}-step chain, ms per step: "
            f"bare Prefect INPUTS+JSON {results['bare']:.2f}, lmflows {results['lmflows']:.2f}"
        )
        ratio = results["lmflows"] / results["bare"]
        print(
            ratio_line(
                "per-step ms, lmflows vs bare",
                results["lmflows"],
                results["bare"],
                f"goal <= {GOAL_RATIO}x",
            )
        )
        verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
        print(
            f"goal: cached per-step overhead <= {GOAL_RATIO}x a bare Prefect cached task: "
            f"{ratio:.2f}x -> {verdict}"
        )


if __name__ == "__main__":
    main()
