"""Preemption-safe training: SIGKILL a real `train_lm` run (levanter, CPU) after a checkpoint
at step >= N exists, run again: it resumes at >= N, finishes, commits once, and `evaluate`
runs on the final model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

N = 10
# The resume benchmark's experiment: 40 steps by default, checkpoints every 5, then evaluate.
EXPERIMENT = "benches/experiments/resume.py"


def cli(prefix: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "run", EXPERIMENT,
         "--prefix", str(prefix)],
        cwd=REPO,
        env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip


def test_killed_training_resumes_from_its_checkpoint_and_commits_once(tmp_path):
    prefix = tmp_path / "out"
    first = cli(prefix)
    deadline = time.monotonic() + 600
    work = None
    while True:
        found = list(prefix.glob(".lmflows/staging/checkpoints/resume-*/resume/checkpoints/step-*"))
        done = [p for p in found if (p / "metadata.json").exists() and int(p.name[5:]) >= N]
        if done:
            work = done[0].parent.parent
            break
        assert first.poll() is None, first.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no checkpoint at step >= N appeared"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    killed_rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    first_attempt = {row["attempt"] for row in killed_rows}
    assert len(first_attempt) == 1

    second = cli(prefix)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-4000:]
    [model] = prefix.glob("checkpoints/resume-*")
    provenance = json.loads((model / ".lmflows/provenance.json").read_text())
    resumed = provenance["notes"]["resumed_from_step"]
    assert resumed >= N
    attempts = provenance["attempts"]
    assert len(attempts) == 2
    assert [a["notes"]["resumed_from_step"] for a in attempts] == [None, resumed]

    rows = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    new = [r for r in rows if r.get("attempt") not in first_attempt and r.get("step") is not None]
    assert new, "the second attempt logged nothing"
    assert min(r["step"] for r in new) >= N, sorted({r["step"] for r in new})[:5]
    assert max(r["step"] for r in rows) >= 39
    assert rows[: len(killed_rows)] == killed_rows  # the killed attempt's metrics were kept

    # What the user's terminal shows: progress lines, not levanter's own console output.
    assert re.search(r"resume: step \d+/40 loss [0-9.]+, [0-9,]+ tokens/s, ETA \d+ s", output)
    assert "levanter.checkpoint" not in output and "Unknown leaf type" not in output

    # Committed once, and evaluated on the final model.
    finished = re.findall(r"Task run '([^']+)' - Finished in state (\w+)\(", output)
    assert [s for n, s in finished if n.startswith(("checkpoints/", "eval/"))] == ["Completed"] * 2
    [scores] = prefix.glob("eval/resume-*/results.json")
    assert json.loads(scores.read_text())["kjv"]["loss"] > 0
    assert not list(prefix.glob(".lmflows/staging/checkpoints/*"))
    again = subprocess.run(
        [sys.executable, "-m", "flows", "run", EXPERIMENT,
         "--prefix", str(prefix)],
        cwd=REPO, env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0
    states = re.findall(
        r"Task run '[^']+' - Finished in state (\w+)\(", again.stdout + again.stderr
    )
    assert states == ["Cached"] * 6, states
