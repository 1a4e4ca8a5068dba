"""prefect-ray: steps run their whole task engine on real local Ray workers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tasks.core.inventory import describe
from tests.conftest import REPO
from tests.helpers.api import final_task_states


def run_cli(args: list[str]) -> tuple[int, int, str]:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, proc.pid, output


def test_run_on_a_local_ray_cluster_then_cached(tmp_path):
    prefix = tmp_path / "out"
    args = ["run", "tests/data/file_experiment.py", "--runner", "ray", "--prefix", str(prefix)]
    code, cli_pid, output = run_cli(args)
    assert code == 0, output[-4000:]
    assert "Using Ray cluster" in output
    derived = next(prefix.glob("t/derive-*"))
    assert json.loads((derived / "data.json").read_text()) == [v * 7 for v in range(6)]
    for provenance_file in prefix.glob("t/*/.lmflows/provenance.json"):
        provenance = json.loads(provenance_file.read_text())
        assert provenance["pid"] != cli_pid, "the step must run in a Ray worker process"
        assert provenance["task_run_id"]
    commit = derived / ".lmflows/commit.json"
    commit_mtime = commit.stat().st_mtime_ns
    code, _, output = run_cli(args)
    assert code == 0, output[-4000:]
    # From the server, not from the workers' log lines: Ray forwards those asynchronously, and
    # the driver can exit before the last one reaches its stdout.
    [flow_run_id] = re.findall(r"lmflows: flow run \S*/runs/flow-run/([0-9a-f-]{36})", output)
    assert final_task_states(flow_run_id, 2) == ["Cached", "Cached"]
    assert commit.stat().st_mtime_ns == commit_mtime


_RAY_WORKER_EXITS = """
import os, sys, uuid
from prefect import task
from prefect.context import serialize_context
from flows.runners import StepRayTaskRunner

@task
def add_one(x: int) -> int:
    return x + 1

task_run_id = uuid.uuid4()
state = StepRayTaskRunner._run_prefect_task(
    task=add_one, task_run_id=task_run_id, context=serialize_context(), parameters={"x": 1}
)
print(task_run_id, state.name, flush=True)
os._exit(0)  # a local Ray ends its workers like this when the driver leaves: no atexit drain
"""


def test_a_ray_workers_task_run_states_reach_the_server_before_its_result_returns():
    """The remote function itself (no Ray needed to call it) sends the task run's queued
    events before returning: a worker killed right after its result went back leaves the
    run in the UI. Without the flush the process's exit loses the final state (CI saw a
    rerun whose two Cached task runs were missing)."""
    from prefect.client.orchestration import get_client

    done = subprocess.run(
        [sys.executable, "-c", _RAY_WORKER_EXITS], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    task_run_id, state_name = done.stdout.split()
    assert state_name == "Completed"
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            try:
                run = client.read_task_run(task_run_id)
            except Exception:  # not recorded (yet)
                run = None
            if run is not None and run.state and run.state.is_final():
                break
            assert time.monotonic() < deadline, "the task run never reached the server"
            time.sleep(0.25)
    assert run.state.name == "Completed"


# --- a Ray cluster started by the test: custom resources, concurrency, crashes -------------

import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from tests.conftest import calls, free_port  # noqa: E402

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray(*args: str) -> subprocess.CompletedProcess:
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    return subprocess.run(
        [ray, *args],
        env={**os.environ, **RAY_ENV},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` with 4 logical CPUs and one `TPU` (a custom resource)."""
    port = free_port()
    started = _ray(
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=4",
        '--resources={"TPU": 1}',
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--object-store-memory=100000000",
    )
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"127.0.0.1:{port}"
    _ray("stop", "--force")


def run_on(address: str, experiment: str, prefix, env: dict | None = None, timeout=300):
    args = [
        sys.executable, "-m", "flows", "run", experiment, "--runner", "ray",
        "--ray-address", address, "--prefix", str(prefix),
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        cwd=REPO,
        env={**os.environ, **RAY_ENV, "PREFECT_LOGGING_LEVEL": "INFO", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


def test_a_step_asking_for_a_tpu_runs_in_a_worker_holding_it(ray_head, tmp_path):
    code, output = finish(run_on(ray_head, "tests/data/ray_placement.py", tmp_path / "out"))
    assert code == 0, output[-4000:]
    [record] = (tmp_path / "out").glob("t/nap-tpu-*/.lmflows/provenance.json")
    placement = json.loads(record.read_text())["ray"]
    assert placement["assigned_resources"].get("TPU") == 1, placement
    assert placement["assigned_resources"].get("CPU") == 0.5, placement
    assert placement["node_id"]


def test_mapped_calls_each_get_their_resources(ray_head, tmp_path):
    code, output = finish(run_on(ray_head, "tests/data/ray_map.py", tmp_path / "out"))
    assert code == 0, output[-4000:]
    stamps, placements = [], []
    for out in (tmp_path / "out").glob("t/nap-map-*"):
        stamps.append(json.loads((out / "stamp.json").read_text()))
        placements.append(json.loads((out / ".lmflows/provenance.json").read_text())["ray"])
    assert len(placements) == 2
    assert all(p["assigned_resources"].get("TPU") == 1 for p in placements), placements
    # One TPU in the cluster: the two calls ran one after the other.
    (a, b) = sorted((s["started"], s["ended"]) for s in stamps)
    assert b[0] >= a[1]


def test_a_step_asking_for_more_than_the_cluster_has_is_reported_then_cancelled(ray_head, tmp_path):
    env = {"LMFLOWS_TEST_TPUS": "8", "LMFLOWS_RAY_INFEASIBLE_TIMEOUT": "5"}
    started = time.monotonic()
    code, output = finish(
        run_on(ray_head, "tests/data/ray_placement.py", tmp_path / "out", env), timeout=120
    )
    assert code != 0, output[-4000:]
    assert time.monotonic() - started < 90
    report = next(line for line in output.splitlines() if "waits for Ray resources" in line)
    assert "TPU: 8" in report and "TPU: 1" in report, report  # asked for, and what is offered
    assert "cancelled" in output
    assert not list((tmp_path / "out").glob("t/nap-tpu-*/.lmflows/commit.json"))


def test_independent_steps_overlap_on_ray_and_consumers_wait(ray_head, tmp_path):
    code, output = finish(run_on(ray_head, "tests/data/concurrent_experiment.py", tmp_path))
    assert code == 0, output[-4000:]
    stamps = [json.loads(p.read_text()) for p in tmp_path.glob("t/nap-*/stamp.json")]
    assert len(stamps) == 3
    assert max(s["started"] for s in stamps) < min(s["ended"] for s in stamps), stamps
    [consumer] = [json.loads(p.read_text()) for p in tmp_path.glob("t/consume-*/stamp.json")]
    assert consumer["producers_committed"] == [True, True, True]
    assert consumer["started"] >= max(s["ended"] for s in stamps)


def test_two_flows_on_one_ray_compute_each_step_once(ray_head, tmp_path):
    log = tmp_path / "calls.log"
    env = {"LMFLOWS_TEST_LOG": str(log)}
    procs = [
        run_on(ray_head, "tests/data/concurrent_experiment.py", tmp_path / "out", env)
        for _ in range(2)
    ]
    for proc in procs:
        code, output = finish(proc)
        assert code == 0, output[-4000:]
    assert sorted(calls(log)) == ["consume", "nap-a", "nap-b", "nap-c"]


def test_a_ray_worker_killed_mid_step_is_retried_and_commits_once(ray_head, tmp_path):
    pids, log = tmp_path / "pids", tmp_path / "calls.log"
    pids.mkdir()
    env = {
        "LMFLOWS_TEST_LOG": str(log),
        "LMFLOWS_TEST_PID_DIR": str(pids),
        "LMFLOWS_TEST_NAP": "6",
    }
    proc = run_on(ray_head, "tests/data/concurrent_experiment.py", tmp_path / "out", env)
    deadline = time.monotonic() + 120
    while not list(pids.glob("nap-a-*")):
        assert time.monotonic() < deadline and proc.poll() is None, "nap-a never started"
        time.sleep(0.2)
    victim = int(next(pids.glob("nap-a-*")).read_text())
    os.kill(victim, signal.SIGKILL)
    code, output = finish(proc)
    assert code == 0, output[-4000:]
    assert calls(log).count("nap-a") == 2, calls(log)  # the killed attempt and the retry
    [out] = (tmp_path / "out").glob("t/nap-a-*")
    stamp = json.loads((out / "stamp.json").read_text())
    assert stamp["pid"] != victim
    assert (out / ".lmflows/commit.json").exists()
    assert not list((tmp_path / "out" / ".lmflows" / "staging").glob("*/*"))  # nothing left


EXTERNAL_EXPERIMENT = '''
"""A user's experiment outside the repository, with steps of its own."""
import os

from tasks.core import flow, step


@step(hash_attrs=["n"], name="ext/square")
def square(n: int, *, output_path: str) -> dict:
    return {"square": n * n, "pid": os.getpid()}


@step(hash_attrs=["src"], name="ext/isolated", isolate=True)
def isolated_copy(src: str, *, output_path: str) -> dict:
    os.makedirs(output_path, exist_ok=True)
    with open(os.path.join(output_path, "from.txt"), "w") as handle:
        handle.write(src)
    with open(f"/proc/{os.getppid()}/stat") as stat:  # the fork server's parent
        grandparent = int(stat.read().rsplit(")", 1)[1].split()[1])
    return {"pid": os.getpid(), "parent": os.getppid(), "grandparent": grandparent}


@flow
def my_exp():
    on_tpu = square.with_resources({"num_cpus": 0.5, "resources": {"TPU": 1}})
    return isolated_copy(on_tpu(n=7))
'''


def test_an_experiment_file_outside_the_repository_runs_on_ray(ray_head, tmp_path):
    """The file's module reaches the workers by value (it has no importable name there),
    its own steps placed with their resources, an isolated one in a process of its own."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "my_exp.py").write_text(EXTERNAL_EXPERIMENT)
    code, output = finish(run_on(ray_head, str(outside / "my_exp.py"), tmp_path / "out"))
    assert code == 0, output[-4000:]
    assert "ModuleNotFoundError" not in output
    [square] = (tmp_path / "out").glob("ext/square-*/.lmflows/provenance.json")
    assert json.loads(square.read_text())["ray"]["assigned_resources"].get("TPU") == 1
    [copied] = (tmp_path / "out").glob("ext/isolated-*")
    assert (copied / "from.txt").read_text().startswith(str(tmp_path / "out" / "ext"))
    ray_worker = json.loads((copied / ".lmflows/provenance.json").read_text())["pid"]
    body = describe(f"ext/{copied.name}", str(tmp_path / "out"))["metadata"]
    # a process of its own, forked by the worker's fork server (tasks/core/fork_server.py)
    assert body["pid"] != ray_worker and body["parent"] != ray_worker, (body, ray_worker)
    assert body["grandparent"] == ray_worker, (body, ray_worker)


# Last: it adds a second node to the module's cluster.
def test_a_local_prefix_on_a_multi_node_cluster_is_refused(ray_head, tmp_path):
    """Runs last: it adds a second node to the module's cluster."""
    joined = _ray("start", f"--address={ray_head}", "--num-cpus=1", "--disable-usage-stats")
    assert joined.returncode == 0, joined.stdout + joined.stderr
    deadline = time.monotonic() + 60
    code, output = finish(run_on(ray_head, "tests/data/concurrent_experiment.py", tmp_path))
    assert time.monotonic() < deadline + 120
    assert code != 0
    assert "the Ray cluster has 2 nodes but the prefix" in output, output[-3000:]
    assert not list(tmp_path.glob("t/*"))
