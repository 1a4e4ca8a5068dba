"""Isolated step bodies (tasks/core/isolation.py): a worker process per executed body, one
line for a known refusal, a body that stops when its lease is lost, prints said once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, calls, run_python

EXPERIMENT = "tests/data/isolated_experiment.py"
TICKING = "tests/data/ticking_experiment.py"


def test_an_isolated_body_runs_in_a_process_of_its_own_and_cached_runs_start_none(prefix, call_log):
    from tasks.core import flow
    from tasks.core.inventory import describe
    from tests.helpers.steps import isolated

    @flow
    def two() -> list:
        return [isolated(n=3), isolated(n=4)]

    state = two(return_state=True)
    assert state.is_completed(), state.message
    refs = state.result()
    pids = {ref.metadata["pid"] for ref in refs}
    assert os.getpid() not in pids and len(pids) == 2, pids
    provenance = describe(refs[0].name_with_hash)["provenance"]
    assert provenance["pid"] == os.getpid()  # the framework's side stayed here
    assert provenance["notes"]["worker_pid"] == refs[0].metadata["pid"]  # notes came back
    assert json.loads(Path(refs[1].path, "data.json").read_text()) == [0, 1, 2, 3]
    assert sorted(calls(call_log)) == ["body-3", "body-4"]
    assert two(return_state=True).result() == refs
    assert sorted(calls(call_log)) == ["body-3", "body-4"], "a cached step starts no worker"


def test_forked_bodies_get_the_callers_environment_and_output_and_outlive_their_server(
    prefix, capfd, tmp_path, monkeypatch
):
    """Bodies are forked from a preloaded server (tasks/core/fork_server.py): each still gets
    the environment, working directory and stdout of its call, not the server's nor an
    earlier body's; a killed server is replaced; a killed body is reported as such."""
    from tasks.core import flow
    from tests.helpers.steps import isolated_env

    @flow
    def one(label: str, die: bool = False):
        return isolated_env(label=label, die=die)

    monkeypatch.delenv("LMFLOWS_TEST_LEAK", raising=False)
    monkeypatch.setenv("LMFLOWS_TEST_MARK", "first")
    first = one("a").metadata
    monkeypatch.setenv("LMFLOWS_TEST_MARK", "second")
    before = os.umask(0o027)  # what a fresh Python would inherit, a forked one must too
    try:
        second = one("b").metadata
    finally:
        os.umask(before)
    assert (first["mark"], second["mark"]) == ("first", "second")
    assert second["umask"] == 0o027 and first["umask"] == before
    assert first["random"] != second["random"], "each body draws its own numpy random state"
    assert first["leaked"] is None and second["leaked"] is None  # a's change stayed in a
    assert first["parent"] == second["parent"] != os.getpid()  # one server forked both
    assert "LMFLOWS_TEST_LEAK" not in os.environ
    out, _ = capfd.readouterr()
    assert "isolated-env says a" in out and "isolated-env says b" in out

    os.kill(first["parent"], signal.SIGKILL)  # the server dies: the next body gets a new one
    monkeypatch.chdir(tmp_path)
    third = one("c").metadata
    assert third["parent"] not in (first["parent"], os.getpid())
    assert third["cwd"] == str(tmp_path) and third["mark"] == "second"

    died = one("d", die=True, return_state=True)
    assert died.is_failed()
    with pytest.raises(Exception, match="StepProcessDied: .* was killed by SIGKILL"):
        died.result()


def flows_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_python(
        ["-m", "flows", "run", *args], env={"PREFECT_LOGGING_LEVEL": "INFO", **(env or {})}
    )


def test_a_known_refusal_is_one_line_and_a_bug_keeps_its_traceback(tmp_path):
    prefix = str(tmp_path / "out")
    refused = flows_run(EXPERIMENT, "--param", "n=-1", "--prefix", prefix)
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1, output[-3000:]
    assert output.count("planted refusal for n=-1") == 1, output
    assert "Traceback" not in output
    bug = flows_run(EXPERIMENT, "--param", "n=0", "--prefix", prefix)
    output = bug.stdout + bug.stderr
    assert bug.returncode == 1
    assert "Traceback" in output and "ZeroDivisionError: a genuine bug" in output
    assert "In the step's worker process" in output  # the body's own frames
    assert 'tests/helpers/steps.py", line' in output


def test_a_planted_link_refusal_is_one_line(tmp_path):
    """The framework's own refusal (outside the body): a link planted in the staging area."""
    prefix = tmp_path / "out"
    staging = prefix / ".lmflows" / "staging"
    staging.mkdir(parents=True)
    (tmp_path / "victim").mkdir()
    (staging / "t").symlink_to(tmp_path / "victim")
    result = flows_run(EXPERIMENT, "--prefix", str(prefix))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output
    assert len([line for line in output.splitlines() if "LinkedPathError" in line]) == 1, output


def test_a_flow_body_prints_once_per_run(tmp_path):
    result = flows_run(EXPERIMENT, "--prefix", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("flow body says n=3") == 1, result.stdout


# --- a lost lease stops the body ------------------------------------------------------------

LEASE = 3.0


def _ticks(log: Path, n: int) -> list[tuple[float, int]]:
    """(time, pid) of every tick a body of step n logged."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        label, pid = line.split()
        if label.startswith(f"tick-{n}@"):
            out.append((float(label.split("@")[1]), int(pid)))
    return out


def _start(tmp_path: Path, log: Path, isolate: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "run", TICKING, "--param", "n=5", "--param",
         "sleep=30" if not (tmp_path / "second").exists() else "sleep=1",
         "--param", f"isolate={json.dumps(isolate)}", "--prefix", str(tmp_path / "out")],
        cwd=REPO,
        env={**os.environ, "LMFLOWS_LEASE_SECONDS": str(LEASE), "LMFLOWS_TEST_LOG": str(log)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip


def _wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-thread"])
def test_a_body_whose_lease_is_lost_stops_within_a_third_of_the_lease(tmp_path, isolate):
    """Pause the holder (SIGSTOP) past its lease; a second run takes over and commits; the
    first body stops within lease/3 (an isolated body, whose parent is paused, sees the new
    holder itself; a body in the task's thread stops once its process runs again)."""
    log = tmp_path / "calls.log"
    first = _start(tmp_path, log, isolate)
    _wait_for(lambda: _ticks(log, 5))
    first_pid = _ticks(log, 5)[0][1]
    os.kill(first.pid, signal.SIGSTOP)  # the CLI process; an isolated body runs on
    paused_at = time.time()
    (tmp_path / "second").touch()
    second = _start(tmp_path, log, isolate)
    try:
        _wait_for(lambda: any(pid != first_pid for _, pid in _ticks(log, 5)))
        taken_over = min(t for t, pid in _ticks(log, 5) if pid != first_pid)
        assert taken_over - paused_at >= LEASE - 0.5  # nobody took the lease before it expired
        if isolate:
            time.sleep(LEASE / 3 + 1.5)
            last = max(t for t, pid in _ticks(log, 5) if pid == first_pid)
            assert last <= taken_over + LEASE / 3 + 0.5, last - taken_over
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 0, output[-3000:]
    finally:
        os.kill(first.pid, signal.SIGCONT)
    resumed_at = time.time()
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 1, output[-3000:]
    assert "LeaseLostError" in output or "lease" in output.lower(), output[-3000:]
    last = max(t for t, pid in _ticks(log, 5) if pid == first_pid)
    assert last <= max(resumed_at, taken_over) + LEASE / 3 + 0.5, last - resumed_at
    [out] = (tmp_path / "out").glob("t/*-*")
    assert json.loads((out / "data.json").read_text()) == [0, 1, 2, 3, 4]
    provenance = json.loads((out / ".lmflows" / "provenance.json").read_text())
    assert provenance["pid"] == second.pid  # committed once, by the second run
