"""Exactly once across real processes: concurrent runs, SIGKILL and takeover, lost leases."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tasks.core import storage
from tests.conftest import REPO
from tests.helpers import steps

WORKER = [sys.executable, "-m", "tests.helpers.worker"]


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [*WORKER, *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


def log_lines(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_three_concurrent_processes_run_each_step_body_once(prefix, tmp_path):
    log = tmp_path / "calls.log"
    env = {"LMFLOWS_TEST_LOG": str(log), "LMFLOWS_TEST_SLEEP": "1.5"}
    procs = [start(["chain", "4", "3"], env) for _ in range(3)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert sorted(log_lines(log)) == ["derive-3", "source-4"]
    states = [json.loads(out.strip().splitlines()[-1])["states"] for out, _ in outputs]
    assert sorted(s[0] for s in states) == ["Cached", "Cached", "Completed"]
    assert sorted(s[1] for s in states) == ["Cached", "Cached", "Completed"]


def test_sigkill_mid_step_then_rerun_takes_over_and_serves_nothing_from_the_dead_attempt(
    prefix, tmp_path
):
    ready = tmp_path / "ready"
    first = start(
        ["blocker", "k"],
        {"LMFLOWS_TEST_READY": str(ready), "LMFLOWS_TEST_RELEASE": str(tmp_path / "never")},
    )
    wait_for(ready)
    ref = steps.blocker.ref_for("k")
    out = Path(ref.path)
    lease = json.loads(Path(storage.lease_path(ref.name_with_hash)).read_text())
    assert lease["pid"] == first.pid
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    staging = Path(storage.staging_root(ref.name_with_hash))
    (dead,) = staging.iterdir()
    assert (dead / "partial.txt").read_text() == f"attempt by {first.pid}"
    assert not out.exists(), "the killed attempt published nothing"

    # The default 90 s lease has not expired: takeover happens because the holder is a dead
    # process on this host.
    release = tmp_path / "release"
    release.write_text("go")
    started = time.monotonic()
    second = start(["blocker", "k"], {"LMFLOWS_TEST_RELEASE": str(release)})
    stdout, stderr = second.communicate(timeout=180)
    assert second.returncode == 0, stderr[-3000:]
    assert time.monotonic() - started < 60
    assert json.loads(stdout.strip().splitlines()[-1])["task"] == "Completed"
    assert (out / "partial.txt").read_text() == f"attempt by {second.pid}"
    assert (out / "done.txt").read_text() == f"finished by {second.pid}"
    assert json.loads((out / ".lmflows/provenance.json").read_text())["pid"] == second.pid
    assert not staging.exists(), "the dead attempt's staging is gone"


def test_expired_lease_of_another_host_is_taken_over_after_expiry(prefix, tmp_path, monkeypatch):
    ref = steps.blocker.ref_for("remote")
    out = Path(ref.path)
    out.mkdir(parents=True)
    (out / "partial.txt").write_text("written by a machine that vanished")
    (out / "stray.txt").write_text("written by a machine that vanished")
    now = time.time()
    lease_file = Path(storage.lease_path(ref.name_with_hash))
    lease_file.parent.mkdir(parents=True)
    lease_file.write_text(
        json.dumps(
            {
                "holder": "elsewhere",
                "token": "t0",
                "host": "some-other-host",
                "pid": 1,
                "pid_started": 0,
                "acquired_at": now,
                "expires_at": now + 6,
            }
        )
    )
    release = tmp_path / "release"
    release.write_text("go")
    started = time.monotonic()
    proc = start(["blocker", "remote"], {"LMFLOWS_TEST_RELEASE": str(release)})
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    waited = time.monotonic() - started
    assert waited >= 5.0, "a live lease of another host must be respected until it expires"
    assert (out / "partial.txt").read_text() == f"attempt by {proc.pid}"
    assert not (out / "stray.txt").exists(), "leftovers are never mixed into the output"


def test_a_holder_that_lost_its_lease_fails_instead_of_committing(prefix, tmp_path):
    env = {"LMFLOWS_LEASE_SECONDS": "3"}
    ready, release = tmp_path / "ready", tmp_path / "release"
    first = start(
        ["blocker", "lost"],
        {**env, "LMFLOWS_TEST_READY": str(ready), "LMFLOWS_TEST_RELEASE": str(release)},
    )
    wait_for(ready)
    ref = steps.blocker.ref_for("lost")
    out = Path(ref.path)
    first.send_signal(signal.SIGSTOP)  # a paused holder: no renewals, but alive
    try:
        time.sleep(4)
        # Pretend the paused holder lives on another host, so the takeover must rely on expiry.
        lease_file = Path(storage.lease_path(ref.name_with_hash))
        lease = json.loads(lease_file.read_text())
        assert lease["pid"] == first.pid and lease["expires_at"] < time.time()
        lease_file.write_text(json.dumps({**lease, "host": f"not-{socket.gethostname()}"}))
        second = start(
            ["blocker", "lost"],
            {
                **env,
                "LMFLOWS_TEST_RELEASE": str(release),
                "LMFLOWS_TEST_READY": str(tmp_path / "ready2"),
            },
        )
        wait_for(tmp_path / "ready2")
    finally:
        first.send_signal(signal.SIGCONT)
    release.write_text("go")
    out1, err1 = first.communicate(timeout=180)
    out2, err2 = second.communicate(timeout=180)
    assert second.returncode == 0, err2[-3000:]
    assert first.returncode != 0, out1
    assert "LeaseLostError" in err1 or "lease" in (out1 + err1).lower()
    record = json.loads((out / ".lmflows/commit.json").read_text())
    assert json.loads(record["result"])["metadata"] == {"pid": second.pid}
    assert json.loads((out / ".lmflows/provenance.json").read_text())["pid"] == second.pid
    # The paused holder woke up after losing its lease and wrote its files: into its own
    # staging directory, never into the committed output.
    assert (out / "partial.txt").read_text() == f"attempt by {second.pid}"
    assert (out / "done.txt").read_text() == f"finished by {second.pid}"


def test_a_step_longer_than_several_leases_lives_on_renewal_alone(prefix, tmp_path):
    """Lease 2 s, step 7 s: only renewal keeps the second process waiting (the holder is a
    live local process, so nothing but an expired lease would let it take over)."""
    log = tmp_path / "calls.log"
    env = {"LMFLOWS_TEST_LOG": str(log), "LMFLOWS_LEASE_SECONDS": "2"}
    first = start(["chain", "4", "3"], {**env, "LMFLOWS_TEST_SLEEP": "7"})
    ref = steps.source.ref_for(4)
    lease_file = Path(storage.lease_path(ref.name_with_hash))
    wait_for(lease_file)
    second = start(["chain", "4", "3"], env)
    seen_expiries = set()
    while first.poll() is None:
        try:
            seen_expiries.add(json.loads(lease_file.read_text())["expires_at"])
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 0, err2[-3000:]
    assert log_lines(log).count("source-4") == 1, log_lines(log)
    assert json.loads(out1.strip().splitlines()[-1])["states"][0] == "Completed"
    assert json.loads(out2.strip().splitlines()[-1])["states"][0] == "Cached"
    assert len(seen_expiries) >= 3, "the lease was renewed during the step"
