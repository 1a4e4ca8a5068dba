"""`gc --delete` never deletes an output that a running step reads (issue #19, item 2).

A step's lease lists its inputs; gc removes an output's commit record, then scans the live
leases and puts the record back when one lists the output. A consumer writes its lease, then
checks that its inputs are committed: either gc sees the consumer, or the consumer sees the
input gone and fails with one line (MissingInputError) before its body runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow

from flows.gc import consumers_of
from tasks.core import lease, storage
from tasks.toy import make_numbers
from tests.conftest import REPO, calls
from tests.helpers.gc_steps import slow_read
from tests.test_cli import flows_cli

CONSUMER = """
from prefect import flow

from tasks.toy import make_numbers
from tests.helpers.gc_steps import slow_read


@flow
def gc_consumer(n: int = 7):
    return slow_read(make_numbers(n=n, seed=0))
"""

# The input by reference only: the flow does not call its producer (which would recompute a
# missing input), exactly like a consumer whose producer ran earlier in the flow.
REF_CONSUMER = """
from tasks.core import flow

from tasks.toy import make_numbers
from tests.helpers.gc_steps import slow_read


@flow
def gc_ref_consumer(n: int = 5):
    return slow_read(make_numbers.ref_for(n=n, seed=0))
"""


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_lease(path: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """The live lease at `path`, once the process `proc` has written it."""
    deadline = time.monotonic() + timeout
    while True:
        current = lease.read(path)
        if lease.is_live(current):
            assert current is not None
            return current
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0] if proc.poll() is not None else "(still running)"
            pytest.fail(f"no live lease at {path}: {out[-3000:]}")
        time.sleep(0.05)


def test_gc_keeps_an_input_a_running_step_reads_then_deletes_it_once_done(tmp_path, call_log):
    prefix = tmp_path / "out"
    # an output no experiment's default plan reaches: toy with n=7
    toy = flows_cli("run", "toy", "--param", "n=7", "--prefix", str(prefix))
    assert toy.returncode == 0, toy.stderr[-3000:]
    numbers = make_numbers.ref_for(n=7, seed=0)
    consumer = slow_read.ref_for(numbers).name_with_hash
    experiment = tmp_path / "gc_consumer.py"
    experiment.write_text(CONSUMER)
    ready, release = tmp_path / "ready", tmp_path / "release"
    proc = _start(
        ["run", str(experiment), "--prefix", str(prefix)],
        {"LMFLOWS_TEST_READY": str(ready), "LMFLOWS_TEST_RELEASE": str(release)},
    )
    try:
        held = _wait_for_lease(storage.lease_path(consumer, str(prefix)), proc)
        assert held["deps"] == [numbers.name_with_hash]
        deadline = time.monotonic() + 60
        while not ready.exists():  # the body runs and is about to read its input
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        gc = flows_cli("gc", "--delete", "--prefix", str(prefix))
    finally:
        release.write_text("go")
    out = proc.communicate(timeout=180)[0]
    assert gc.returncode == 0, gc.stderr[-3000:]
    kept = [ln for ln in gc.stdout.splitlines() if ln.startswith("kept ")]
    assert kept == [
        f"kept {numbers.name_with_hash}: running step {consumer} (lease holder "
        f"{held['holder']} on host {held['host']}, pid {proc.pid}) reads it as an input"
    ], gc.stdout
    deleted = [ln for ln in gc.stdout.splitlines() if ln.startswith("deleted ")]
    assert len(deleted) == 4, gc.stdout  # toy/summary and two toy/scale, then the total
    assert deleted[-1] == "deleted 3 outputs, kept 1 in use"
    assert (prefix / numbers.name_with_hash / ".lmflows" / "commit.json").exists()

    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((prefix / consumer / "summary.json").read_text())
    assert summary == {"files": [".lmflows", "numbers.json"], "n": 7}
    assert calls(call_log) == ["slow-read-start", "slow-read-done"]

    again = flows_cli("gc", "--delete", "--prefix", str(prefix))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"deleted {numbers.name_with_hash}" in again.stdout.splitlines()
    assert f"deleted {consumer}" in again.stdout.splitlines()
    assert not (prefix / numbers.name_with_hash).exists()


@flow
def produce(n: int) -> None:
    make_numbers(n=n, seed=0)


@pytest.mark.parametrize("gc_outcome", ["deleted", "kept"])
def test_a_step_whose_input_gc_is_deleting_waits_then_fails_in_one_line_or_runs(
    gc_outcome, prefix, call_log, tmp_path
):
    """gc's side played by the test: hold the input's lease, remove its commit record, and
    (once the consumer has taken its own lease) either leave it removed or put it back."""
    produce(5)
    numbers = make_numbers.ref_for(n=5, seed=0).name_with_hash
    consumer = slow_read.ref_for(make_numbers.ref_for(n=5, seed=0)).name_with_hash
    record = Path(prefix, numbers, ".lmflows", "commit.json")
    content = record.read_bytes()
    input_lease = storage.lease_path(numbers, prefix)
    assert lease.try_acquire(input_lease, "test-gc")
    try:
        record.unlink()
        experiment = tmp_path / "gc_ref_consumer.py"
        experiment.write_text(REF_CONSUMER)
        proc = _start(["run", str(experiment), "--prefix", prefix], {})
        held = _wait_for_lease(storage.lease_path(consumer, prefix), proc)
        assert held["deps"] == [numbers]
        time.sleep(1.0)
        assert proc.poll() is None, "the consumer waits while gc holds its input's lease"
        assert calls(call_log) == [], "its body has not started"
        if gc_outcome == "kept":
            record.write_bytes(content)
    finally:
        lease.release(input_lease, "test-gc")
    out = proc.communicate(timeout=180)[0]
    if gc_outcome == "kept":
        assert proc.returncode == 0, out[-3000:]
        assert calls(call_log) == ["slow-read-start", "slow-read-done"]
        return
    assert proc.returncode == 1, out[-3000:]
    message = (
        f"input {numbers} of step {consumer} is no longer committed (deleted by gc?); "
        "run again to recompute it"
    )
    [line] = [ln for ln in out.splitlines() if "MissingInputError" in ln]
    assert line.endswith(f"Task run failed with exception: MissingInputError({message!r})"), out
    assert "Traceback" not in out, out[-3000:]
    assert calls(call_log) == [], "the body never ran"
    assert lease.read(storage.lease_path(consumer, prefix)) is None, "its lease was released"
    assert not Path(prefix, consumer, ".lmflows", "commit.json").exists()


@pytest.mark.parametrize("store", ["local", "memory"])
def test_a_lease_lists_its_inputs_across_renewals(store, prefix, monkeypatch):
    """Also on an fsspec store (memory://: the listing gc does on gs://)."""
    if store == "memory":
        prefix = f"memory://gc-inputs-{os.getpid()}-{time.monotonic_ns()}"
        monkeypatch.setenv("LMFLOWS_PREFIX", prefix)
    monkeypatch.setenv("LMFLOWS_LEASE_SECONDS", "1")  # renewed every third of a second
    path = storage.lease_path("t/user-0123456789", prefix)
    assert lease.try_acquire(path, "holder", deps=["a/b-0123456789", "c-0123456789"])
    try:
        first = lease.read(path)
        time.sleep(1.5)  # past the first expiry: only renewals keep it live
        renewed = lease.read(path)
        assert renewed is not None and first is not None
        assert renewed["expires_at"] > first["expires_at"] and lease.is_live(renewed)
        assert renewed["deps"] == ["a/b-0123456789", "c-0123456789"]
        [user] = consumers_of("a/b-0123456789", prefix)
        assert (user.step, user.holder) == ("t/user-0123456789", "holder")
        assert consumers_of("t/user-0123456789", prefix) == []
    finally:
        lease.release(path, "holder")
    assert consumers_of("a/b-0123456789", prefix) == []
