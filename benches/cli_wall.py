"""Wall time of a fully cached `python -m flows run toy` (5 steps): with a local Prefect
server already running (goal <= 3 s), and with Prefect's ephemeral server (reported).

    python -m benches.cli_wall
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from benches.common import isolate_prefect, prefect_server


def timed_run(env: dict, args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "flows", "run", "toy", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    isolate_prefect()
    env = {**os.environ, "LMFLOWS_PREFIX": tempfile.mkdtemp(prefix="lmflows-bench-cli-")}
    env.pop("PREFECT_API_URL", None)
    with prefect_server() as api_url:
        server_env = {**env, "PREFECT_API_URL": api_url}
        timed_run(server_env, [])  # fill the cache
        with_server = min(timed_run(server_env, []) for _ in range(3))
        import_only = min(
            _time([sys.executable, "-c", "import prefect"], server_env) for _ in range(3)
        )
    ephemeral = timed_run(env, ["--server", "ephemeral"])
    print(
        f"cached `python -m flows run toy`, server running: {with_server:.2f} s (goal <= 3 s; "
        f"`import prefect` alone {import_only:.2f} s)"
    )
    print(
        f"cached `python -m flows run toy`, ephemeral server: {ephemeral:.2f} s "
        f"-> {ephemeral / with_server:.1f}x the server-running time"
    )


def _time(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
