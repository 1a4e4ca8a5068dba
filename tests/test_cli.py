"""`python -m flows`: run, plan (writes nothing), status, --force, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_python


def flows_cli(*args: str, env: dict | None = None, timeout: float = 240):
    return run_python(["-m", "flows", *args], env=env, timeout=timeout)


def flows_cli_many(*commands: list[str] | dict, timeout: float = 240) -> list:
    """Several `python -m flows` commands in one process (tests/helpers/cli_many.py): each
    one's result as `flows_cli` gives it. For the tests that run many read-only commands,
    where a process per command (~1 s of imports) is most of the test."""
    ran = run_python(["-m", "tests.helpers.cli_many", json.dumps(list(commands))], timeout=timeout)
    assert ran.returncode == 0, ran.stderr[-3000:]
    results = json.loads(ran.stdout.strip().splitlines()[-1])
    assert len(results) == len(commands)
    return [
        subprocess.CompletedProcess(r["argv"], r["returncode"], r["stdout"], r["stderr"])
        for r in results
    ]


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_plan_on_an_empty_prefix_writes_nothing(tmp_path):
    prefix = tmp_path / "never-created"
    result = flows_cli("plan", "toy", "--prefix", str(prefix))
    assert result.returncode == 0, result.stderr
    assert not prefix.exists()
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["STEP", "STATUS", "PATH"]
    assert len([ln for ln in lines[1:] if " missing " in ln]) == 5
    assert "5 steps (5 missing)" in result.stdout


def test_run_then_plan_status_and_force(tmp_path):
    prefix = tmp_path / "out"
    run = flows_cli("run", "toy", "--prefix", str(prefix))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "flow run http://127.0.0.1:" in run.stdout

    before = snapshot(prefix)
    plan = flows_cli("run", "toy", "--dry-run", "--prefix", str(prefix))
    assert plan.returncode == 0, plan.stderr
    assert "5 steps (5 committed)" in plan.stdout
    assert snapshot(prefix) == before, "plan must not write anything"

    status = flows_cli("status", "--prefix", str(prefix))
    assert status.returncode == 0, status.stderr
    assert "5 committed steps" in status.stdout
    assert len([ln for ln in status.stdout.splitlines() if ln.startswith("toy/")]) == 5
    assert "KiB" in status.stdout

    forced_plan = flows_cli("plan", "toy", "--force", "toy/scale", "--prefix", str(prefix))
    assert forced_plan.stdout.count(" forced ") == 2
    numbers = next(prefix.glob("toy/numbers-*"))
    scaled = sorted(prefix.glob("toy/scale-*"))
    numbers_mtime = (numbers / ".lmflows/commit.json").stat().st_mtime_ns
    scale_mtimes = [(p / ".lmflows/commit.json").stat().st_mtime_ns for p in scaled]
    forced = flows_cli("run", "toy", "--force", "toy/scale", "--prefix", str(prefix))
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert (numbers / ".lmflows/commit.json").stat().st_mtime_ns == numbers_mtime
    assert all(
        (p / ".lmflows/commit.json").stat().st_mtime_ns != m for p, m in zip(scaled, scale_mtimes)
    )


def test_force_and_step_are_repeatable_and_each_glob_is_checked(tmp_path):
    prefix = str(tmp_path / "out")
    assert flows_cli("run", "toy", "--prefix", prefix).returncode == 0
    both = flows_cli("plan", "toy", "--force", "toy/numbers", "--force", "toy/words",
                     "--prefix", prefix)  # fmt: skip
    assert both.returncode == 0, both.stderr
    lines = both.stdout.splitlines()
    forced = {ln.split()[0].rsplit("-", 1)[0] for ln in lines if " forced " in ln}
    assert forced == {"toy/numbers", "toy/words"}, both.stdout
    idle = flows_cli("plan", "toy", "--force", "nothing/*", "--force", "toy/words",
                     "--prefix", prefix)  # fmt: skip
    assert idle.returncode == 2 and "--force nothing/* matches no step" in idle.stderr, idle.stderr
    idle_last = flows_cli("plan", "toy", "--force", "toy/words", "--force", "nothing/*",
                          "--prefix", prefix)  # fmt: skip
    assert idle_last.returncode == 2 and "nothing/*" in idle_last.stderr, idle_last.stderr
    steps = flows_cli("explain", "toy", "--step", "toy/numbers", "--step", "toy/words",
                      "--prefix", prefix)  # fmt: skip
    assert steps.returncode == 0, steps.stderr
    explained = {ln.split(":")[0].rsplit("-", 1)[0] for ln in steps.stdout.splitlines()
                 if ln.startswith("toy/")}  # fmt: skip
    assert explained == {"toy/numbers", "toy/words"}, steps.stdout
    bad_step = flows_cli("explain", "toy", "--step", "toy/words", "--step", "zzz",
                         "--prefix", prefix)  # fmt: skip
    assert bad_step.returncode == 2 and "--step zzz matches no step" in bad_step.stderr


def test_run_a_flow_file_by_path(tmp_path):
    prefix = tmp_path / "out"
    result = flows_cli("run", "tests/data/file_experiment.py", "--prefix", str(prefix))
    assert result.returncode == 0, result.stderr[-3000:]
    derived = next(prefix.glob("t/derive-*"))
    assert json.loads((derived / "data.json").read_text()) == [v * 7 for v in range(6)]


BAD_INPUTS = [
    (["run", "no_such_experiment"], "unknown experiment 'no_such_experiment' (available:"),
    (["plan", "missing/file.py"], "experiment file missing/file.py does not exist"),
    (["run", "tests/data/two_flows.py"], "exactly one Prefect flow at module level; found 2"),
    (["plan", "tests/data/no_flow.py"], "found 0"),
    (["plan", "toy", "--prefix", "nosuchfs://bucket/x"], "unknown or unavailable filesystem"),
    (["status", "--prefix", "gs://"], "names no bucket"),
    (["run", "toy", "--prefix", "/proc/forbidden/x"], "is not writable"),
]


def test_bad_input_is_one_clear_line_and_a_nonzero_exit():
    commands = [args for args, _ in BAD_INPUTS]
    for (args, message), result in zip(BAD_INPUTS, flows_cli_many(*commands)):
        assert result.returncode != 0, args
        err = result.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lmflows: error:"), (args, result.stderr[-2000:])
        assert message in err[0], args


def test_lease_seconds_must_be_a_positive_number(tmp_path):
    result = flows_cli(
        "run", "toy", "--prefix", str(tmp_path / "o"), env={"LMFLOWS_LEASE_SECONDS": "soon"}
    )
    assert result.returncode != 0
    assert "LMFLOWS_LEASE_SECONDS='soon' is not a number" in result.stderr
    assert not list((tmp_path / "o").rglob("commit.json"))


def test_plan_does_not_contact_prefect(tmp_path):
    result = flows_cli(
        "plan",
        "toy",
        "--prefix",
        str(tmp_path / "x"),
        env={"PREFECT_API_URL": "http://127.0.0.1:9/api"},
    )
    assert result.returncode == 0, result.stderr
    assert os.listdir(tmp_path) == []


def _wait_for_exec(pid: int, marker: bytes) -> None:
    """Popen can return before the child's exec shows in /proc (vfork): wait for it."""
    import time

    deadline = time.monotonic() + 10
    while marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the child never showed its command line"
        time.sleep(0.01)


def test_a_stale_server_pid_file_is_removed_but_a_live_one_is_kept(tmp_path):
    """`prefect server start --background` refuses to start while server.pid exists, even
    when that server died (reboot, OOM): `make demo` would fail until the user found out."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_HOME, temporary_settings

    from flows.server import _remove_stale_pid_file

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file = tmp_path / "server.pid"
    said = []
    with temporary_settings({PREFECT_HOME: tmp_path}):
        pid_file.write_text(str(dead.pid))
        _remove_stale_pid_file(said.append)
        assert not pid_file.exists() and f"pid {dead.pid}" in said[0]
        pid_file.write_text(str(os.getpid()))  # alive, and a python running prefect (pytest)?
        sleeper = subprocess.Popen(["sleep", "30"])  # alive, but not a Prefect server
        try:
            _wait_for_exec(sleeper.pid, b"sleep")
            pid_file.write_text(str(sleeper.pid))
            _remove_stale_pid_file(said.append)
            assert not pid_file.exists() and "is not a Prefect server" in said[1]
        finally:
            sleeper.kill()
        server_like = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)", "prefect", "server"]
        )
        try:
            _wait_for_exec(server_like.pid, b"prefect")
            pid_file.write_text(str(server_like.pid))
            _remove_stale_pid_file(said.append)
            assert pid_file.exists() and len(said) == 2  # a live server's file is kept
        finally:
            server_like.kill()


def test_a_plain_prefect_flow_run_from_the_cli_ends_with_its_steps_table(tmp_path):
    """tests/data/file_experiment.py uses `prefect.flow`: its calls run to their end as in
    Prefect, and the command line still records them into a steps table."""
    import json
    import re
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    prefix = tmp_path / "out"
    result = flows_cli("run", "tests/data/file_experiment.py", "--prefix", str(prefix))
    assert result.returncode == 0, result.stderr[-3000:]
    flow_run_id = re.search(r"flow-run/([0-9a-f-]{36})", result.stdout).group(1)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
        )
    [table] = [a for a in artifacts if a.key == "steps-file-experiment"]
    rows = json.loads(table.data)
    assert [row["step"].split("-")[0] for row in rows] == ["t/source", "t/derive"]
    assert all(row["state"] == "Completed" and row["bytes"] > 0 for row in rows)
    assert rows[0]["output"] == f"file://{prefix}/{rows[0]['step']}"


def test_an_api_that_fails_authenticated_requests_is_one_line(monkeypatch):
    """Prefect's server answers /health but fails every other request with HTTP 500 when its
    auth string is not ASCII: that must not pass for "accepted"."""
    import http.server
    import threading

    from flows.server import ServerError, check_access

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path.endswith("/health") else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api"
        with pytest.raises(ServerError, match=r"failed an authenticated request \(HTTP 500\)"):
            check_access(url)
    finally:
        server.shutdown()
