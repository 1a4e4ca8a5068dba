"""Resume: time from a restart to the first new training step, vs a cold start of the same
training (same command, same data already prepared), on this machine's CPU.

    python -m benches.resume_time

Cold: `flows run` of a 400-step training whose data is prepared (a 2-step run of the same
experiment prepared it). Restart: that run SIGKILLed once a checkpoint at step >= 20 exists,
then `flows run` again (levanter loads the checkpoint). Both times run from the command's
start to the first metrics row the new attempt writes: process start, Prefect, imports and
compilation are in both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benches.common import isolate_prefect, prefect_server, ratio_line

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "benches/experiments/resume.py"


def start(prefix: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "run", EXPERIMENT, "--prefix", str(prefix), *extra],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def metrics_rows(prefix: Path) -> list[dict]:
    found = list(prefix.glob(".lmflows/staging/checkpoints/resume-*/resume/metrics.jsonl"))
    if not found:
        return []
    rows = []
    for line in found[0].read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return rows


def wait_for_new_step(prefix: Path, proc: subprocess.Popen, known: set[str]) -> dict:
    while True:
        rows = [r for r in metrics_rows(prefix) if r.get("attempt") not in known]
        steps = [r for r in rows if r.get("step") is not None and "train/loss" in r]
        if steps:
            return steps[0]
        if proc.poll() is not None:
            raise RuntimeError("the run ended before a new training step")
        time.sleep(0.05)


def main() -> None:
    isolate_prefect()
    prefix = Path(tempfile.mkdtemp(prefix="lmflows-bench-resume-"))
    with prefect_server() as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        warm = subprocess.run(  # prepares the data (and trains a 2-step model)
            [sys.executable, "-m", "flows", "run", EXPERIMENT, "--prefix", str(prefix)],
            cwd=REPO, capture_output=True, text=True,
            env={**os.environ, "LMFLOWS_BENCH_TRAIN_STEPS": "2"},
        )  # fmt: skip
        if warm.returncode != 0:
            raise SystemExit(warm.stdout[-3000:] + warm.stderr[-3000:])

        os.environ["LMFLOWS_BENCH_TRAIN_STEPS"] = "400"
        started = time.monotonic()
        cold = start(prefix)
        row = wait_for_new_step(prefix, cold, set())
        cold_seconds = time.monotonic() - started
        first_attempt = {row["attempt"]}
        while not any(
            (p / "metadata.json").exists() and int(p.name[5:]) >= 20
            for p in prefix.glob(".lmflows/staging/checkpoints/resume-*/resume/checkpoints/step-*")
        ):
            time.sleep(0.05)
        os.killpg(cold.pid, signal.SIGKILL)
        cold.wait()

        started = time.monotonic()
        restart = start(prefix)
        resumed = wait_for_new_step(prefix, restart, first_attempt)
        restart_seconds = time.monotonic() - started
        os.killpg(restart.pid, signal.SIGKILL)
        restart.wait()
    print(
        f"cold start to step {row['step']}: {cold_seconds:.1f} s; restart to step "
        f"{resumed['step']}: {restart_seconds:.1f} s  "
        + ratio_line("restart / cold", restart_seconds, cold_seconds, "report only")
    )


if __name__ == "__main__":
    main()
