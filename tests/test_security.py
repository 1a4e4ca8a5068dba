"""Security (docs/security.md): a self-hosted Prefect server secured with an auth string, and
secrets that never reach parameters, provenance, commit records, artifacts or logs.

One real `prefect server start` with PREFECT_SERVER_API_AUTH_STRING for the module (its own
PREFECT_HOME, so its database is not the session server's); the CLI runs against it as a
user's would, and what it left is read back through the Prefect API and from the prefix.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from uuid import UUID

import pytest

from tests.conftest import free_port, run_python, start_prefect_server, stop_prefect_server
from tests.test_download_hf import FILES, SHA, FakeHub, fake_hub  # noqa: F401, F811

USER = "lmflows"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """(api_url, auth_string): a real Prefect server that wants basic auth."""
    home = tmp_path_factory.mktemp("auth-prefect-home")
    auth = f"{USER}:{secrets.token_hex(16)}"
    port = free_port()
    log = open(home / "server.log", "wb")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_AUTH_STRING": auth}
    env.pop("PREFECT_API_URL", None)
    proc = start_prefect_server(port, log, env)
    yield f"http://127.0.0.1:{port}/api", auth
    stop_prefect_server(proc, log)


def _status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _run_cli(experiment: str, prefix: Path, api_url: str, env: dict) -> subprocess.CompletedProcess:
    base = {"PREFECT_API_URL": api_url, "LMFLOWS_SERVER_PORT": "1"}  # never a local server
    return run_python(
        ["-m", "flows", "run", experiment, "--prefix", str(prefix)],
        env={**base, **env},
        timeout=240,
    )


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- the auth string ---------------------------------------------------------------------


def test_the_server_answers_health_without_credentials_and_nothing_else(auth_server):
    """Why flows/server.py asks /admin/version: /health alone says nothing about access."""
    api_url, auth = auth_server
    assert _status(f"{api_url}/health") == 200
    assert _status(f"{api_url}/admin/version") == 401
    assert _status(f"{api_url}/admin/version", auth=f"{USER}:wrong") == 401
    assert _status(f"{api_url}/admin/version", auth=auth) == 200


@pytest.mark.parametrize(
    "client_auth, advice",
    [
        (None, "set PREFECT_API_AUTH_STRING to the server's auth string"),
        ("wrong", "PREFECT_API_AUTH_STRING does not match the server's auth string"),
    ],
)
def test_without_the_auth_string_the_run_is_refused_in_one_line(
    auth_server, tmp_path, client_auth, advice
):
    api_url, auth = auth_server
    prefix = tmp_path / "out"
    wrong = f"{USER}:{secrets.token_hex(8)}"
    env = {"PREFECT_API_AUTH_STRING": wrong} if client_auth else {}
    assert "PREFECT_API_AUTH_STRING" not in os.environ
    result = _run_cli("toy", prefix, api_url, env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"lmflows: error: the Prefect API at {api_url} refused the request (HTTP 401): {advice}"
    ]
    for secret in (wrong.split(":")[1], auth.split(":")[1]):
        assert secret not in result.stdout + result.stderr
    assert _files_under(prefix) == [], "nothing may be written before the server is usable"


def test_with_the_auth_string_the_run_commits(auth_server, tmp_path):
    api_url, auth = auth_server
    prefix = tmp_path / "out"
    result = _run_cli("toy", prefix, api_url, {"PREFECT_API_AUTH_STRING": auth})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished completed" in result.stdout
    assert len(list(prefix.glob("toy/*/.lmflows/commit.json"))) == 5


# --- secrets never stored ----------------------------------------------------------------


def _prefect_records(api_url: str, auth: str, flow_run_id: UUID) -> list[tuple[str, str]]:
    """Everything the server holds about the flow run, as (where, JSON text)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    found: list[tuple[str, str]] = []
    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: auth}):
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
            found.append(("flow run", flow_run.model_dump_json()))
            runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            task_runs = client.read_task_runs(flow_run_filter=runs)
            found += [(f"task run {t.name}", t.model_dump_json()) for t in task_runs]
            while True:  # every log of the run, page by page
                logs = client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                    limit=200,
                    offset=sum(1 for name, _ in found if name.startswith("log ")),
                )
                found += [(f"log {log.name}", log.model_dump_json()) for log in logs]
                if len(logs) < 200:
                    break
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
            found += [(f"artifact {a.key}", a.model_dump_json()) for a in artifacts]
            # Events (task-run states are sent as events) are persisted asynchronously.
            done = f'"prefect.flow-run.{flow_run_id}"'
            deadline = time.monotonic() + 30
            while True:
                page, events = client.read_events(limit=50), []
                while True:
                    events += [e.model_dump_json() for e in page.events]
                    if not page.next_page:
                        break
                    page = client.read_events_page(page.next_page)
                finished = [e for e in events if "prefect.flow-run.Completed" in e and done in e]
                if finished or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert finished, "the run's events reached the server"
            found += [("event", e) for e in events]
    return found, task_runs, logs, artifacts


def test_planted_secrets_appear_nowhere(auth_server, fake_hub, tmp_path):  # noqa: F811
    """Fake credentials in the environment and in download_hf's `token=`: the run uses them
    (the hub sees the token) and no record the run leaves holds any of them."""
    api_url, auth = auth_server
    planted = {
        "HF_TOKEN": "hf_" + secrets.token_hex(16),
        "token= argument": "hf_" + secrets.token_hex(16),
        "GOOGLE_APPLICATION_CREDENTIALS content": secrets.token_hex(16),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20),
        "PREFECT_API_AUTH_STRING password": auth.split(":", 1)[1],
        "PREFECT_API_AUTH_STRING as basic auth": base64.b64encode(auth.encode()).decode(),
    }
    credentials = tmp_path / "service-account.json"
    credentials.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "lmflows-test",
                "private_key_id": "0",
                "private_key": planted["GOOGLE_APPLICATION_CREDENTIALS content"],
                "client_email": "runner@lmflows-test.iam.gserviceaccount.com",
            }
        )
    )
    prefix = tmp_path / "out"
    FakeHub.authorizations.clear()
    started = time.monotonic()
    result = _run_cli(
        "tests/data/secret_experiment.py",
        prefix,
        api_url,
        {
            "PREFECT_API_AUTH_STRING": auth,
            "HF_TOKEN": planted["HF_TOKEN"],
            "LMFLOWS_TEST_HF_TOKEN_ARGUMENT": planted["token= argument"],
            "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
            "AWS_ACCESS_KEY_ID": "AKIATESTLMFLOWS",
            "AWS_SECRET_ACCESS_KEY": planted["AWS_SECRET_ACCESS_KEY"],
            "HF_ENDPOINT": fake_hub,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            # As much as a run can say: every library's debug logs on stderr, lmflows' and
            # the hub's loggers also to the API.
            "PREFECT_LOGGING_LEVEL": "DEBUG",
            "PREFECT_LOGGING_ROOT_LEVEL": "DEBUG",
            "PREFECT_LOGGING_TO_API_ENABLED": "true",
            "PREFECT_LOGGING_EXTRA_LOGGERS": "lmflows,huggingface_hub",
        },
    )
    run_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]

    # The run really used the explicit token (over HF_TOKEN), and got the data.
    sent = set(FakeHub.authorizations)
    assert sent == {f"Bearer {planted['token= argument']}"}, sent
    out = next(prefix.glob("raw/hf/gated-*"))
    assert (out / "train.jsonl").read_bytes() == FILES["train.jsonl"]
    provenance = json.loads((out / ".lmflows/provenance.json").read_text())
    assert provenance["notes"]["resolved_commit"] == SHA
    assert "token" not in provenance["attrs"]

    haystacks: list[tuple[str, bytes]] = [
        ("CLI stdout", result.stdout.encode()),
        ("CLI stderr", result.stderr.encode()),
    ]
    files = _files_under(prefix)
    assert any(p.name == "provenance.json" for p in files)
    assert any(p.name == "commit.json" for p in files)
    haystacks += [(f"file {p.relative_to(prefix)}", p.read_bytes()) for p in files]

    flow_run_id = UUID(result.stdout.split("/runs/flow-run/")[1].split()[0])
    records, task_runs, logs, artifacts = _prefect_records(api_url, auth, flow_run_id)
    assert {t.name.split("-")[0] for t in task_runs} == {"toy/numbers", "raw/hf/gated"}
    assert logs, "the run's logs reached the API (otherwise nothing was checked there)"
    assert any("moving revision" in log.message for log in logs), "lmflows loggers in the API"
    assert "downloaded-files" in {a.key for a in artifacts}
    haystacks += [(where, text.encode()) for where, text in records]

    leaks = [
        f"{what} in {where}"
        for where, data in haystacks
        for what, secret in planted.items()
        if secret.encode() in data
    ]
    assert not leaks, leaks
    print(
        f"searched {len(haystacks)} records ({len(files)} files, {len(task_runs)} task runs, "
        f"{len(logs)} logs, {len(artifacts)} artifacts, "
        f"{sum(1 for w, _ in records if w == 'event')} events); run {run_seconds:.1f} s"
    )
