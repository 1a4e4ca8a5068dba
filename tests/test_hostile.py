"""Hostile storage and bad input: planted and copied records, damaged outputs, poisoned leases,
bad names, symlinks, and one clear line for every bad command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow

from tasks.core import StepNameError, storage
from tests.conftest import REPO, calls
from tests.helpers import steps
from tests.test_cli import flows_cli, flows_cli_many


@flow
def pair(n: int = 3, m: int = 4) -> dict:
    a = steps.source(n, return_state=True)
    b = steps.source(m, return_state=True)
    c = steps.derive(a.result(), k=1, return_state=True)
    return {"states": [a, b, c], "refs": [a.result(), b.result(), c.result()]}


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


# --- 1. a record belongs to exactly one output --------------------------------------------------


def test_a_record_copied_from_another_output_is_never_served(prefix, call_log, caplog):
    first = pair()
    a, b, _ = first["refs"]
    record_b = Path(b.path, ".lmflows/commit.json")
    shutil.copy(record_b, Path(a.path, ".lmflows/commit.json"))
    caplog.set_level("WARNING")
    again = pair()
    assert [s.name for s in again["states"]] == ["Completed", "Cached", "Cached"]
    assert again["refs"][0] == a and again["refs"][0].metadata == {"n": 3}
    assert calls(call_log).count("source-3") == 2
    assert any(f"in {a.path} belongs to '{b.name_with_hash}'" in w for w in warnings_of(caplog)), (
        warnings_of(caplog)
    )


def test_a_planted_record_escaping_its_folder_is_refused_everywhere(prefix, call_log, tmp_path):
    first = pair()
    a = first["refs"][0]
    record = Path(a.path, ".lmflows/commit.json")
    content = json.loads(record.read_text())
    result = json.loads(content["result"])
    content["result"] = json.dumps({**result, "sub_path": "../../../../etc"})
    record.write_text(json.dumps(content))
    for command in (["plan", "tests/data/file_experiment.py"], ["status"]):
        out = flows_cli(*command, "--prefix", prefix)
        assert out.returncode == 0, out.stderr
        assert a.name_with_hash not in out.stdout or " missing " in out.stdout
    again = pair()
    assert again["states"][0].name == "Completed"
    assert again["refs"][0].sub_path == ""
    # a harmless-looking sub-path is refused too: a commit names its whole output
    content = json.loads(record.read_text())
    content["result"] = json.dumps({**json.loads(content["result"]), "sub_path": "data.json"})
    record.write_text(json.dumps(content))
    third = pair()
    assert third["states"][0].name == "Completed"
    assert third["refs"][0].sub_path == ""


# --- 2. committed outputs are immutable, damage is found ---------------------------------------


def test_a_deleted_or_truncated_file_makes_a_miss_and_verify_names_it(prefix, call_log, caplog):
    a = pair()["refs"][0]
    data = Path(a.path, "data.json")
    data.write_text("[]")  # truncated
    caplog.set_level("WARNING")
    again = pair()
    assert again["states"][0].name == "Completed", "a damaged output is recomputed"
    assert any("is damaged: file data.json has 2 bytes" in w for w in warnings_of(caplog))
    assert json.loads(data.read_text()) == [0, 1, 2]

    ok = flows_cli("verify", "--prefix", prefix)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    same_size = json.dumps([9, 9, 9])  # content changed, size kept: only verify sees it
    assert len(same_size) == data.stat().st_size
    data.write_text(same_size)
    Path(a.path, "planted.txt").write_text("x")
    bad = flows_cli("verify", "--prefix", prefix)
    assert bad.returncode == 1
    line = next(ln for ln in bad.stdout.splitlines() if ln.startswith("DAMAGED"))
    assert a.name_with_hash in line
    assert "file data.json changed" in line and "file planted.txt is not in the manifest" in line
    assert "1 damaged" in bad.stdout
    only = flows_cli("verify", "tests/data/file_experiment.py", "--prefix", prefix)
    assert only.returncode == 0, only.stdout  # that experiment's outputs are not these


def test_force_keeps_the_old_output_committed_until_the_new_one_replaces_it(prefix, tmp_path):
    release = tmp_path / "release"
    release.write_text("go")
    env = {**os.environ, "LMFLOWS_TEST_RELEASE": str(release)}
    first = subprocess.run(
        [sys.executable, "-m", "tests.helpers.worker", "blocker", "f"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    ref = steps.blocker.ref_for("f")
    out = Path(ref.path)
    old_done = (out / "done.txt").read_text()
    release.unlink()
    ready = tmp_path / "ready"
    forced = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.worker", "blocker", "f", "--force"],
        cwd=REPO,
        env={**env, "LMFLOWS_TEST_READY": str(ready)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert time.monotonic() < deadline and forced.poll() is None, forced.stderr
            time.sleep(0.05)
        # mid-run: the old output is whole and still committed
        assert (out / "done.txt").read_text() == old_done
        assert (out / ".lmflows/commit.json").exists()
        assert sorted(p.name for p in out.iterdir()) == [".lmflows", "done.txt", "partial.txt"]
    finally:
        release.write_text("go")
    stdout, stderr = forced.communicate(timeout=180)
    assert forced.returncode == 0, stderr[-3000:]
    assert (out / "done.txt").read_text() == f"finished by {forced.pid}"
    assert (out / "partial.txt").read_text() == f"attempt by {forced.pid}"


# --- 3. leases that cannot be poisoned ----------------------------------------------------------


BAD_LEASE_SECONDS = ["nan", "abc", "0", "-5", "inf", "1e400", "100000"]


def test_bad_lease_seconds_is_one_line_before_anything_runs(tmp_path):
    out = tmp_path / "o"
    commands = [
        {"argv": [command, "toy", "--prefix", str(out)], "env": {"LMFLOWS_LEASE_SECONDS": value}}
        for value in BAD_LEASE_SECONDS
        for command in ("run", "plan")
    ]
    # one real process on its own, then every value in one process (a second of imports each)
    alone = flows_cli("run", "toy", "--prefix", str(out), env={"LMFLOWS_LEASE_SECONDS": "nan"})
    for command, result in zip([None, *commands], [alone, *flows_cli_many(*commands)]):
        assert result.returncode == 2, (command, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lmflows: error: LMFLOWS_LEASE_SECONDS="), (
            command,
            result.stderr[-2000:],
        )
        assert not out.exists()


def _plant_lease(name_with_hash: str, body: object) -> Path:
    path = Path(storage.lease_path(name_with_hash))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize(
    "body, why",
    [
        ([1], "is a list"),
        ({"expires_at": "soon", "token": "t"}, "expires_at='soon'"),
        (
            {
                "holder": "h",
                "token": "t",
                "host": "another-host",
                "pid": 1,
                "expires_at": 9.0e11,  # the year 30,000
            },
            "beyond any lease",
        ),
    ],
)
def test_a_poisoned_lease_file_is_treated_as_expired_with_a_warning(prefix, tmp_path, body, why):
    ref = steps.source.ref_for(3)
    _plant_lease(ref.name_with_hash, body)
    plan = flows_cli("plan", "tests/data/file_experiment.py", "--prefix", prefix)
    assert plan.returncode == 0, plan.stderr
    assert "Traceback" not in plan.stderr
    # a real process, bounded: a trusted poisoned lease would make it wait forever
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.worker", "chain", "3", "1"],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["states"][0] == "Completed"
    logs = result.stdout + result.stderr
    assert why in logs and "treating it as expired" in logs, logs[-3000:]


def test_a_step_waiting_on_a_live_lease_says_whose_and_until_when(prefix, call_log, tmp_path):
    ref = steps.source.ref_for(3)
    _plant_lease(
        ref.name_with_hash,
        {
            "holder": "other-run",
            "token": "t",
            "host": "far-away-host",
            "pid": 4242,
            "expires_at": time.time() + 6,
        },
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.worker", "chain", "3", "1"],
        cwd=REPO,
        env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started >= 5
    logs = result.stdout + result.stderr
    assert "held by 'other-run' on host 'far-away-host' (pid 4242) until" in logs


# --- 4. names -------------------------------------------------------------------------------


def test_bad_names_are_refused_before_anything_runs(prefix):
    from tasks.core import step

    @step(hash_attrs=["x"], name="t/{label}")
    def named(label: str, x: int = 0, *, output_path: str):
        raise AssertionError("must not run")

    for label, message in [
        ("x\n", "characters"),
        ("a" * 300, "at most"),
        ("numbers-a5ab788e68/inner", "inside the output"),
        (".lmflows", "starts with '.'"),
    ]:
        with pytest.raises(StepNameError, match=message):
            named.ref_for(label)
    assert not Path(prefix).exists()
    result = flows_cli("plan", "tests/data/long_name.py", "--prefix", prefix)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "at most 120" in result.stderr


# --- 5. symlinks ----------------------------------------------------------------------------


def test_an_output_that_is_a_symlink_is_refused_and_its_target_untouched(prefix, tmp_path):
    ref = steps.source.ref_for(3)
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link = Path(ref.path)
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    state = pair(return_state=True)
    assert state.is_failed()
    assert "is a symbolic link" in str(state.message) or "symbolic link" in repr(
        state.result(raise_on_failure=False)
    )
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_dangling_links_inside_an_output_do_not_break_the_commands(prefix):
    a = pair()["refs"][0]
    Path(a.path, "dangling").symlink_to("/nonexistent/target")
    for command in (["status"], ["show", a.name_with_hash], ["gc"], ["verify"]):
        result = flows_cli(*command, "--prefix", prefix)
        assert "Traceback" not in result.stderr, (command, result.stderr[-2000:])
        assert result.returncode in (0, 1), (command, result.stderr)
    verify = flows_cli("verify", "--prefix", prefix)
    assert "file dangling is not in the manifest" in verify.stdout


# --- 6. one line for every bad command ----------------------------------------------------------


COMMANDS_OF_EXPERIMENTS = ["run", "plan", "explain", "verify"]


@pytest.mark.parametrize(
    "experiment, message",
    [
        ("tests/data/syntax_error.py", "failed to import at "),
        ("tests/data/failing_import.py", "ModuleNotFoundError: No module named 'no_such_pkg'"),
        ("tests/data/two_flows.py", "found 2"),
        ("tests/data/no_flow.py", "found 0"),
        ("tests/data/bad_experiment.py", "hidden_dim=32 must be a multiple of num_heads=3"),
        ("tests/data/long_name.py", "at most 120"),
        ("tests/data/needs_param.py", "needs parameter text"),
    ],
)
def test_every_command_answers_a_bad_experiment_with_one_line(experiment, message, tmp_path):
    commands = [[c, experiment, "--prefix", str(tmp_path / "o")] for c in COMMANDS_OF_EXPERIMENTS]
    for command, result in zip(commands, flows_cli_many(*commands)):
        assert result.returncode == 2, (command, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lmflows: error:"), (
            command,
            result.stderr[-2000:],
        )
        assert message in lines[0], command
        assert not (tmp_path / "o").exists()


def test_ctrl_c_exits_130_with_one_line(prefix, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows", "run", "tests/data/slow_experiment.py"],
        cwd=REPO,
        env={
            **os.environ,
            "LMFLOWS_TEST_READY": str(tmp_path / "ready"),
            "LMFLOWS_TEST_RELEASE": str(tmp_path / "never"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "lmflows: interrupted"
    assert "Traceback" not in stderr


def test_ctrl_c_during_concurrent_steps_exits_130_within_seconds(prefix, tmp_path, call_log):
    """Steps of a `tasks.core.flow` run in the task runner's threads, whose shutdown waits for
    them: without the grace timer Ctrl-C held the terminal until every step finished."""
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "LMFLOWS_TEST_PID_DIR": str(pids), "LMFLOWS_TEST_NAP": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows", "run", "tests/data/concurrent_experiment.py"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(pids.iterdir())) < 3:
        assert time.monotonic() < deadline and proc.poll() is None, "the naps never started"
        time.sleep(0.05)
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - interrupted < 20
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "lmflows: interrupted"


# --- found by attacking the second version ----------------------------------------------------


def test_a_commit_that_cannot_be_written_fails_the_step(prefix, call_log, monkeypatch):
    import errno

    real = storage.write_atomic

    def disk_full(path: str, content: bytes) -> None:
        if path.endswith("commit.json"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(path, content)

    monkeypatch.setattr(storage, "write_atomic", disk_full)
    state = pair(return_state=True)
    assert state.is_failed(), "a step whose commit failed must not finish Completed"
    a = steps.source.ref_for(3)
    assert not Path(a.path).exists()
    assert "derive-1" not in calls(call_log), "nothing downstream ran on a missing output"
    # the step body itself failed (not only Prefect's write after it): its failure is
    # recorded for `plan`, and its attempt folder is gone
    failed = json.loads(Path(storage.failed_path(a.name_with_hash)).read_text())
    assert failed["error"] == "OSError" and "No space left" in failed["message"]
    staging = Path(storage.staging_root(a.name_with_hash))
    assert not staging.exists() or not any(staging.iterdir())
    monkeypatch.setattr(storage, "write_atomic", real)
    assert [s.name for s in pair()["states"]] == ["Completed", "Completed", "Completed"]


def test_a_link_planted_in_the_staging_area_is_never_followed(prefix, tmp_path):
    victim = tmp_path / "victim" / f"source-{steps.source.ref_for(3).hash}"
    victim.mkdir(parents=True)
    (victim / "important.txt").write_text("precious")
    staging = Path(prefix, ".lmflows", "staging")
    staging.mkdir(parents=True)
    (staging / "t").symlink_to(tmp_path / "victim")
    state = pair(return_state=True)
    assert state.is_failed()
    assert (victim / "important.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "damage",
    ["commit-is-a-folder", "output-is-a-file", "deep-json", "nul-in-manifest", "sparse-3g", "fifo"],
)
def test_malformed_files_are_misses_and_never_crash_a_command(prefix, call_log, damage):
    a = pair()["refs"][0]
    out = Path(a.path)
    record = out / ".lmflows" / "commit.json"
    if damage == "commit-is-a-folder":
        record.unlink()
        record.mkdir()
    elif damage == "output-is-a-file":
        shutil.rmtree(out)
        out.write_text("not a folder")
    elif damage == "deep-json":
        record.write_text("[" * 200000)
    elif damage == "nul-in-manifest":
        content = json.loads(record.read_text())
        result = json.loads(content["result"])
        result["manifest"]["files"]["x\u0000y"] = {"bytes": 1}
        content["result"] = json.dumps(result)
        record.write_text(json.dumps(content))
    elif damage == "sparse-3g":
        with open(record, "r+b") as handle:
            handle.truncate(3 << 30)
    elif damage == "fifo":
        data = out / "data.json"
        data.unlink()
        os.mkfifo(data)
    commands = [
        ["plan", "tests/data/file_experiment.py"],
        ["status"],
        ["show", a.name_with_hash],
        ["gc"],
        ["verify"],
        ["explain", "tests/data/file_experiment.py"],
    ]
    results = flows_cli_many(*[[*c, "--prefix", prefix] for c in commands], timeout=120)
    for command, result in zip(commands, results):
        assert "Traceback" not in result.stderr, (command, result.stderr[-2000:])
        if damage == "sparse-3g" and command[0] == "status":  # refused by size, never read
            assert f"has {3 << 30} bytes (at most {storage.MAX_RECORD_BYTES})" in result.stderr
        code = result.returncode
        assert code in (0, 1), (command, code, result.stderr[-2000:])
        assert not result.stderr.startswith("lmflows: error:"), (command, result.stderr)
    again = pair()
    assert again["states"][0].name == "Completed", "the damaged output is recomputed"
    assert json.loads(Path(a.path, "data.json").read_text()) == [0, 1, 2]


@pytest.mark.parametrize(
    "body", [b"[1]", b'{"expires_at": 1' + b"0" * 400 + b', "token": "x"}', b"[" * 100000]
)
def test_lease_files_that_are_folders_or_absurd_numbers_count_as_expired(prefix, body):
    ref = steps.source.ref_for(3)
    lease_file = Path(storage.lease_path(ref.name_with_hash))
    lease_file.parent.mkdir(parents=True)
    if body == b"[1]":
        lease_file.mkdir()  # a folder where the lease file belongs
    else:
        lease_file.write_bytes(body)
    plan = flows_cli("plan", "tests/data/file_experiment.py", "--prefix", prefix)
    assert plan.returncode == 0 and "Traceback" not in plan.stderr, plan.stderr[-2000:]
    assert pair()["states"][0].name == "Completed"


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["run", "toy"], {"LMFLOWS_SERVER_PORT": "abc"}, "LMFLOWS_SERVER_PORT='abc' is not a port"),
        (["plan", "toy"], {"LMFLOWS_PREFIX": "/etc/passwd"}, "is a file, not a folder"),
        (["plan", "toy"], {"LMFLOWS_PREFIX": ""}, "LMFLOWS_PREFIX is set but empty"),
        (
            ["run", "toy"],
            {"PREFECT_API_URL": "http://127.0.0.1:9/api"},
            "the Prefect API at http://127.0.0.1:9/api (PREFECT_API_URL) does not answer",
        ),
        (["run", "toy"], {"LMFLOWS_LEASE_SECONDS": "0.001"}, "must be a number of seconds from 1"),
        (["show"], {}, "the following arguments are required"),
        (["run", "toy", "--runner", "x"], {}, "invalid choice: 'x'"),
    ],
)
def test_bad_settings_and_arguments_are_one_line(args, env, message, tmp_path):
    extra = [] if "LMFLOWS_PREFIX" in env else ["--prefix", str(tmp_path / "o")]
    result = flows_cli(*args, *extra, env=env)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmflows: error:"), result.stderr[-2000:]
    assert message in lines[0]


def test_a_manifest_entry_that_says_nothing_is_no_manifest(prefix, tmp_path):
    """Found by an attack: an entry `{}` compared equal to any file (or link) at that path."""
    from tasks.core import manifest

    out = tmp_path / "out"
    out.mkdir()
    (out / "data.json").write_text("[1]")
    (out / "link").symlink_to("data.json")
    for files in ({"data.json": {}}, {"data.json": {"bytes": 3}, "link": {}}):
        assert manifest.quick_problem(str(out), {"files": files}) == (
            "its commit record carries no valid manifest"
        )
        assert manifest.problems(str(out), {"files": files}) == [
            "its commit record carries no valid manifest"
        ]
    intact = manifest.build(str(out))
    assert (
        manifest.quick_problem(str(out), intact) is None
        and manifest.problems(str(out), intact) == []
    )


def test_a_lease_guard_planted_as_a_link_is_refused_and_its_target_never_created(prefix, tmp_path):
    """Found by an attack: the guard was opened with O_CREAT through a planted link."""
    from tasks.core import lease

    path = storage.lease_path("t/guarded-0123456789")
    guard = Path(path).with_name("lease.guard")
    guard.parent.mkdir(parents=True)
    target = tmp_path / "elsewhere" / "created-by-lmflows"
    target.parent.mkdir()
    guard.symlink_to(target)  # dangling: O_CREAT would create it
    with pytest.raises(storage.LinkedPathError, match="lease.guard is a symbolic link"):
        lease.try_acquire(path, "me")
    assert not target.exists()
