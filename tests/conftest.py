"""Test environment: an isolated PREFECT_HOME, one real Prefect server for the session, a
fresh output prefix per test.

Prefect reads its settings when imported, so the environment is set here, before any test
module imports prefect.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_HOME = tempfile.mkdtemp(prefix="lmflows-test-prefect-")
# Under pytest-xdist (`make test` runs two workers) each worker is its own session: its own
# PREFECT_HOME, server and port. What the workers of one run share is keyed by the run's id:
# the XLA compile cache and the tiny model's prefix (`shared_prefix`).
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_RUN_DIR = os.path.join(tempfile.gettempdir(), f"lmflows-test-run-{_RUN_ID}") if _RUN_ID else _HOME
os.makedirs(_RUN_DIR, exist_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_PORT = free_port()
API_URL = f"http://127.0.0.1:{_PORT}/api"
os.environ.update(
    {
        "PREFECT_HOME": _HOME,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": API_URL,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_TO_API_ENABLED": "false",
        "RAY_AUTH_MODE": "disabled",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        # One persistent XLA compile cache for the session, inherited by every step's worker
        # process: the suite's trainings share a handful of tiny shapes, and each fresh process
        # would otherwise compile them again (measured: 63 s -> 50 s for the tiny experiment).
        "JAX_COMPILATION_CACHE_DIR": os.path.join(_RUN_DIR, "jax-cache"),
        # A size bound turns on jax's file lock around each read and write: steps that run
        # side by side never read an entry another process is still writing.
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 * 1024**3),
    }
)
os.environ.pop("LMFLOWS_PREFIX", None)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_prefect_server(port: int, log, env: dict | None = None, *extra: str) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:`port` in its own session; returns once healthy."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Prefect server on port {port} did not start")
        time.sleep(0.5)
    return proc


# The full tier only (`make test`): real trainings, clusters, deployments, browsers, stress.
# `make test-fast` (`-m "not slow"`) is the core contract: identity, declarations, records,
# leases, planning, isolation, CLI errors, in under 3 minutes.
SLOW_MODULES = {
    "test_browser",
    "test_checkpoints",
    "test_continue",
    "test_deploy",
    "test_deploy_ray",
    "test_download_hf",
    "test_extend",
    "test_gcs",
    "test_gcs_pipeline",
    "test_harness",
    "test_mixture",
    "test_pipeline",
    "test_ray",
    "test_scaling",
    "test_security",
    "test_server_loss",
    "test_sft",
    "test_stress",
    "test_tokenize_cache",
    "test_tokenizer_match",
    "test_train_done",
    "test_train_resume",
    "test_watching",
}


# Single tests of fast modules that take many seconds (real processes paused, killed or
# waiting out leases; many command-line runs): the full tier's.
SLOW_TESTS = (
    "test_cli.py::test_run_then_plan_status_and_force",
    "test_cli.py::test_force_and_step_are_repeatable_and_each_glob_is_checked",
    "test_cli_cache.py::test_gc_lists_unreachable_outputs",
    "test_concurrency.py::test_a_step_longer_than_several_leases_lives_on_renewal_alone",
    "test_store_contract.py::test_three_processes",
    "test_store_contract.py::test_a_sigkilled_holder",
    "test_store_contract.py::test_a_live_lease_of_another_host",
    "test_store_contract.py::test_a_holder_that_lost_its_lease",
    "test_gc_inputs.py::",
    "test_hostile.py::test_malformed_files_are_misses_and_never_crash_a_command",
    "test_hostile.py::test_dangling_links_inside_an_output_do_not_break_the_commands",
    "test_hostile.py::test_a_step_waiting_on_a_live_lease_says_whose_and_until_when",
    "test_hostile.py::test_ctrl_c_",
    "test_isolation.py::test_a_body_whose_lease_is_lost_stops_within_a_third_of_the_lease",
    "test_resume.py::",
    "test_audit_bugs.py::test_the_weight_decay_asked_for_reaches_levanters_optimizer",
    "test_audit_bugs.py::test_a_built_chat_example_trains_on_the_assistant_turn_only",
    "test_evaluate_checkpoint.py::test_each_checkpoint_of_a_training_is_evaluated_once",
)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        where = item.nodeid.rsplit("/", 1)[-1]
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SLOW_MODULES or where.startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def no_flow_heartbeats():
    """Flow runs in this process send no heartbeats. Prefect 3.9's heartbeat thread sleeps in
    one-second steps and every flow run joins it on exit, so each short flow run of a test
    waited ~1 s for nothing (measured: 1.07 s of a 1.10 s cached three-step flow). Nothing
    here tests Prefect's zombie detection; processes the tests start keep the default."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """A real `prefect server start` process, shared by the session."""
    log = open(Path(_HOME) / "server.log", "wb")
    proc = start_prefect_server(_PORT, log)
    yield API_URL
    stop_prefect_server(proc, log)


def stop_prefect_server(proc: subprocess.Popen, log) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def prefix(tmp_path, monkeypatch) -> str:
    """A fresh LMFLOWS_PREFIX for the test (local disk)."""
    out = tmp_path / ".lmflows" / "outputs"  # the default's shape: a dot-folder named .lmflows
    monkeypatch.setenv("LMFLOWS_PREFIX", str(out))
    return str(out)


@pytest.fixture(scope="session")
def shared_prefix(tmp_path_factory) -> str:
    """One prefix for the whole run, for outputs that many tests consume unchanged (the tiny
    model): identities make sharing safe, and each is computed once. Two xdist workers share
    it too: the first to need the tiny model trains it under its lease, the other waits for
    that lease and then finds it cached (the framework's own promise, kept for free)."""
    if _RUN_ID:
        return os.path.join(_RUN_DIR, "shared", ".lmflows", "outputs")
    return str(tmp_path_factory.mktemp("shared") / ".lmflows" / "outputs")


@pytest.fixture(scope="session")
def tiny_lm(shared_prefix, prefect_server) -> dict:
    """The tiny KJV model of tests/helpers/tiny.py, trained once per session under
    `shared_prefix`. Read its refs' paths with that prefix set (the `on_shared` fixture)."""
    from tasks.core import flow
    from tests.helpers.tiny import tiny_base

    @flow(name="tiny-shared")
    def shared() -> dict:
        return tiny_base()

    before = os.environ.get("LMFLOWS_PREFIX")
    os.environ["LMFLOWS_PREFIX"] = shared_prefix
    try:
        state = shared(return_state=True)
    finally:
        if before is None:
            os.environ.pop("LMFLOWS_PREFIX", None)
        else:
            os.environ["LMFLOWS_PREFIX"] = before
    assert state.is_completed(), state.message
    return state.result()


@pytest.fixture
def on_shared(shared_prefix, tiny_lm, monkeypatch) -> str:
    """This test works under the session's shared prefix, where the tiny model is committed."""
    monkeypatch.setenv("LMFLOWS_PREFIX", shared_prefix)
    return shared_prefix


@pytest.fixture
def call_log(tmp_path, monkeypatch) -> Path:
    """A log of step bodies run (tests/helpers/steps.py appends to it, in any process)."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("LMFLOWS_TEST_LOG", str(log))
    return log


def calls(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def run_python(
    code_or_args: list[str], env: dict | None = None, timeout: float = 180, **kwargs
) -> subprocess.CompletedProcess:
    """Run `python ARGS` in the repo with the test environment (plus `env`)."""
    return subprocess.run(
        [sys.executable, *code_or_args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
