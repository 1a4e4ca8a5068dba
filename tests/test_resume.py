"""Resumable steps (`@step(resumable=True)`): a new attempt of the same identity keeps what
killed attempts wrote, never resumes from a half-written checkpoint, logs every attempt in
the provenance, commits once; `--force` and non-resumable steps start from nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core import storage
from tests.conftest import REPO, calls
from tests.helpers import steps

WORKER = [sys.executable, "-m", "tests.helpers.worker"]


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*WORKER, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def kill_after_checkpoint(work: Path, step: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not (work / f"ckpt-{step:03d}" / "done").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_killed_resumable_step_resumes_from_its_newest_complete_checkpoint(prefix, call_log):
    ref = steps.count_up.ref_for(12, pause=0.3)
    work = Path(storage.staging_root(ref.name_with_hash)) / "resume"
    first = start(["count", "12", "0.3"])
    kill_after_checkpoint(work, 4, first)
    assert not Path(ref.path).exists(), "nothing is published by a killed attempt"
    # A checkpoint the dead holder was writing (no `done`) must not be resumed from.
    newest = max(int(p.name.split("-")[1]) for p in work.glob("ckpt-*") if (p / "done").exists())
    half = work / f"ckpt-{newest + 1:03d}"
    half.mkdir(exist_ok=True)
    (half / "value").write_text("garbage")

    result = finish(start(["count", "12", "0.1"]))  # same identity: `pause` is operational
    assert result["task"] == "Completed"
    assert result["metadata"]["resumed_from"] == newest >= 4
    out = Path(ref.path)
    by = {int(p.parent.name.split("-")[1]): int(p.read_text()) for p in out.glob("ckpt-*/by")}
    assert sorted(by) == list(range(1, 13))
    assert by[1] == first.pid and by[newest] == first.pid  # the first attempt's work is kept
    assert by[newest + 1] != first.pid  # the half-written checkpoint was redone
    assert (out / f"ckpt-{newest + 1:03d}" / "value").read_text() == str(newest + 1)
    assert calls(call_log) == ["count-from-None", f"count-from-{newest}"]

    provenance = json.loads((out / ".lmflows/provenance.json").read_text())
    attempts = provenance["attempts"]
    assert [a["pid"] for a in attempts][0] == first.pid and len(attempts) == 2
    assert [a["notes"]["resumed_from_step"] for a in attempts] == [None, newest]
    # the killed attempt could not say how it ended: the next one recorded it
    assert attempts[0]["error"] == "unrecorded" and "failed_at" not in attempts[1]
    assert attempts[0]["failed_at"] >= attempts[0]["started_at"]
    assert provenance["notes"]["resumed_from_step"] == newest
    assert not work.exists(), "the shared work folder became the output"
    assert not Path(storage.state_path(ref.name_with_hash, "attempts.jsonl")).exists()

    again = finish(start(["count", "12", "0.1"]))
    assert again["task"] == "Cached"


def test_force_starts_from_nothing_after_a_commit_or_a_killed_attempt(prefix, call_log):
    finish(start(["count", "3", "0"]))
    result = finish(start(["count", "3", "0", "--force"]))
    assert result["task"] == "Completed" and result["metadata"]["resumed_from"] is None
    ref = steps.count_up.ref_for(8, pause=0.2)
    killed = start(["count", "8", "0.2"])
    kill_after_checkpoint(Path(storage.staging_root(ref.name_with_hash)) / "resume", 2, killed)
    result = finish(start(["count", "8", "0", "--force"]))
    assert result["metadata"]["resumed_from"] is None  # --force means "compute it again"
    assert calls(call_log) == ["count-from-None"] * 4


@pytest.mark.parametrize("resumable", [True, False])
def test_only_resumable_steps_keep_a_dead_attempts_files(prefix, resumable):
    from tasks.core import outputs

    nwh = "t/x-0123456789"
    first = outputs.begin(nwh, prefix, resumable=resumable)
    Path(first.write_path, "partial").write_text("from the dead attempt")
    second = outputs.begin(nwh, prefix, resumable=resumable)
    assert Path(second.write_path, "partial").exists() is resumable
    outputs.abandon(second)
    assert Path(second.write_path).exists() is resumable


def test_a_resumable_step_never_writes_through_a_link_planted_in_its_work_folder(prefix, tmp_path):
    from prefect import flow

    outside = tmp_path / "outside"
    outside.mkdir()
    ref = steps.count_up.ref_for(2)
    work = Path(storage.staging_root(ref.name_with_hash)) / "resume"
    work.mkdir(parents=True)
    (work / ".lmflows").symlink_to(outside)

    @flow
    def count():
        return steps.count_up(2)

    assert count() == ref
    assert list(outside.iterdir()) == []
    assert (Path(ref.path) / ".lmflows").is_dir() and not (Path(ref.path) / ".lmflows").is_symlink()


def test_failed_attempts_are_logged_and_the_log_stays_bounded(prefix, monkeypatch):
    from prefect import flow

    from tasks.core import outputs

    ref = steps.count_up.ref_for(4)
    log = Path(storage.state_path(ref.name_with_hash, "attempts.jsonl"))
    log.parent.mkdir(parents=True)
    log.write_bytes(b'{"attempt": "planted"}\n' * (5 << 20 // 23))  # over the 4 MiB limit

    @flow
    def count():
        return steps.count_up(4)

    monkeypatch.setenv("LMFLOWS_TEST_FAIL_AT", "3")
    assert count(return_state=True).is_failed()
    assert log.stat().st_size <= outputs.MAX_ATTEMPTS_LOG
    monkeypatch.delenv("LMFLOWS_TEST_FAIL_AT")
    assert count() == ref
    attempts = json.loads((Path(ref.path) / ".lmflows/provenance.json").read_text())["attempts"]
    failed, succeeded = attempts[-2:]
    assert failed["error"] == "RuntimeError" and failed["failed_at"] >= failed["started_at"]
    assert failed["notes"]["resumed_from_step"] is None
    assert succeeded["notes"]["resumed_from_step"] == 2 and "error" not in succeeded


def test_a_resumable_begin_clears_dead_attempts_of_a_non_resumable_version(prefix):
    from tasks.core import outputs

    nwh = "t/y-0123456789"
    dead = outputs.begin(nwh, prefix, resumable=False)
    Path(dead.write_path, "partial").write_text("x")
    resumed = outputs.begin(nwh, prefix, resumable=True)
    assert not Path(dead.write_path).exists()
    assert Path(resumed.write_path).is_dir()
