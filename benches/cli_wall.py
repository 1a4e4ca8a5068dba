"""Wall time of a fully cached `python -m flows run toy` (5 steps): with a local Prefect
server already running (goal <= 2.0 s), and with Prefect's ephemeral server (reported).

Baselines from the same run, against the same server: `python -c "import prefect"` (the floor
of any Prefect process) and a plain-Prefect script doing the same thing (a flow of 5 cached
tasks, INPUTS cache policy, JSON results). Best of --rounds.

    python -m benches.cli_wall [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from benches.common import isolate_prefect, prefect_server

GOAL_S = 2.0

BARE_PREFECT = """
import sys
from pathlib import Path
from prefect import flow, task
from prefect.cache_policies import INPUTS

@task(cache_policy=INPUTS, result_serializer="json", persist_result=True,
      result_storage=Path(sys.argv[1]))
def work(i: int, prev: int) -> int:
    return i

@flow(name="bare-toy")
def bare_toy() -> None:
    prev = 0
    for i in range(5):
        prev = work(i, prev)

bare_toy()
"""


def timed(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    isolate_prefect()
    env = {**os.environ, "LMFLOWS_PREFIX": tempfile.mkdtemp(prefix="lmflows-bench-cli-")}
    env.pop("PREFECT_API_URL", None)
    toy = [sys.executable, "-m", "flows", "run", "toy"]
    bare = [sys.executable, "-c", BARE_PREFECT, tempfile.mkdtemp(prefix="lmflows-bench-bare-")]
    importing = [sys.executable, "-c", "import prefect"]
    with prefect_server() as api_url:
        server_env = {**env, "PREFECT_API_URL": api_url}
        timed(toy, server_env)  # fill the caches
        timed(bare, server_env)
        best = {"toy": float("inf"), "bare": float("inf"), "import": float("inf")}
        for _ in range(args.rounds):  # interleaved; the best of each is reported
            for label, cmd in (("toy", toy), ("bare", bare), ("import", importing)):
                best[label] = min(best[label], timed(cmd, server_env))
    ephemeral = timed([*toy, "--server", "ephemeral"], env)
    with_server = best["toy"]
    print(
        f"cached `python -m flows run toy`, server running: {with_server:.2f} s; "
        f"plain-Prefect script, 5 cached tasks: {best['bare']:.2f} s; "
        f"`import prefect` alone: {best['import']:.2f} s"
    )
    print(
        f"ratios: run toy / plain-Prefect script {with_server / best['bare']:.2f}x; "
        f"run toy / `import prefect` {with_server / best['import']:.2f}x "
        f"(what lmflows adds beyond importing Prefect: {with_server - best['import']:.2f} s)"
    )
    print(
        f"cached `python -m flows run toy`, ephemeral server: {ephemeral:.2f} s "
        f"-> {ephemeral / with_server:.1f}x the server-running time"
    )
    verdict = "met" if with_server <= GOAL_S else "NOT met"
    print(
        f"goal: cached `run toy` with a server running <= {GOAL_S} s: {with_server:.2f} s "
        f"-> {verdict}"
    )


if __name__ == "__main__":
    main()
