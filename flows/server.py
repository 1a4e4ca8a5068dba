"""Which Prefect API a command-line run talks to (docs/design.md §9).

An ephemeral server costs ~13 s per process on these machines, a running one ~0.5 s, so the
default is to reuse a local server, or start one in the background once and keep it. A user
whose environment or Prefect profile sets PREFECT_API_URL is never second-guessed.

A server secured with PREFECT_SERVER_API_AUTH_STRING answers `/health` without credentials
and refuses everything else with HTTP 401, so a reachable API is also asked one authenticated
question (`/admin/version`, which Prefect's client asks first anyway) before anything runs:
a missing or wrong PREFECT_API_AUTH_STRING is one line, not a traceback after a step started.
The auth string itself is never printed (docs/security.md).
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

PORT_ENV = "LMFLOWS_SERVER_PORT"
DEFAULT_PORT = 4200
START_TIMEOUT_S = 120.0


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _authorization() -> str | None:
    """The Authorization header Prefect's client sends: basic auth from PREFECT_API_AUTH_STRING
    (environment or profile), else a bearer PREFECT_API_KEY (Prefect Cloud), else none."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    auth_string = api.auth_string.get_secret_value() if api.auth_string else None
    if auth_string:
        return "Basic " + base64.b64encode(auth_string.encode("utf-8")).decode("ascii")
    api_key = api.key.get_secret_value() if api.key else None
    return f"Bearer {api_key}" if api_key else None


def refused(api_url: str, timeout: float = 5.0) -> int | None:
    """The HTTP status (401 or 403) with which the API refuses this client's credentials, or
    None when it accepts them (or fails some other way, which the run itself reports)."""
    request = urllib.request.Request(f"{api_url.rstrip('/')}/admin/version")
    if header := _authorization():
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return exc.code if exc.code in (401, 403) or exc.code >= 500 else None
    except OSError:
        return None


# Loggers known to print credentials at DEBUG: `websockets` logs the handshake's headers
# (Authorization: Basic base64(auth string)) and every frame, including Prefect's events
# client's {"type": "auth", "token": AUTH_STRING} message.
CREDENTIAL_LOGGERS = ("websockets.client", "websockets.protocol")


class _Redact(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def redact_credential_logs() -> None:
    """Redact this client's Prefect credentials from the loggers that print them at DEBUG
    (a user who sets PREFECT_LOGGING_ROOT_LEVEL=DEBUG must not find the auth string in the
    console or a CI log)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    secrets = []
    for value in (api.auth_string, api.key):
        if value and value.get_secret_value():
            raw = value.get_secret_value()
            secrets += [raw, base64.b64encode(raw.encode("utf-8")).decode("ascii")]
    if not secrets:
        return
    for name in CREDENTIAL_LOGGERS:
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, _Redact)]
        logger.addFilter(_Redact(secrets))


def check_access(api_url: str) -> None:
    """One line for a server that answers but refuses this client (never the secret)."""
    status = refused(api_url)
    if status is None:
        return
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    if status >= 500:
        raise ServerError(
            f"the Prefect API at {api_url} failed an authenticated request (HTTP {status}); "
            "its server log says why (Prefect's server fails every request when "
            "PREFECT_SERVER_API_AUTH_STRING has non-ASCII characters)"
        )
    if api.auth_string and api.auth_string.get_secret_value():
        advice = "PREFECT_API_AUTH_STRING does not match the server's auth string"
    elif api.key and api.key.get_secret_value():
        advice = (
            "PREFECT_API_KEY is for Prefect Cloud; for a self-hosted server set "
            "PREFECT_API_AUTH_STRING to the server's auth string"
        )
    else:
        advice = "set PREFECT_API_AUTH_STRING to the server's auth string"
    raise ServerError(f"the Prefect API at {api_url} refused the request (HTTP {status}): {advice}")


def ui_url(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


class ServerError(RuntimeError):
    """The Prefect API cannot be used (bad port setting, a configured URL that does not
    answer, a server that would not start); one line for the user."""


def server_port() -> int:
    raw = os.environ.get(PORT_ENV, str(DEFAULT_PORT))
    try:
        port = int(raw)
    except ValueError:
        raise ServerError(f"{PORT_ENV}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ServerError(f"{PORT_ENV}={raw!r} is not a port number (1-65535)")
    return port


def _remove_stale_pid_file(announce=print) -> None:
    """`prefect server start --background` refuses to start while `$PREFECT_HOME/server.pid`
    exists, even when that server died long ago (a reboot, an OOM kill): remove the file when
    no process with its pid is alive. (`prefect server stop` would signal whatever process has
    that pid now.)"""
    from prefect.settings import PREFECT_HOME

    pid_file = PREFECT_HOME.value() / "server.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        announce(f"lmflows: removing {pid_file}: its server (pid {pid}) is gone")
        pid_file.unlink(missing_ok=True)
        return
    except PermissionError:
        return
    if not _is_prefect_server(pid):  # the pid was reused by another program
        announce(f"lmflows: removing {pid_file}: pid {pid} is not a Prefect server")
        pid_file.unlink(missing_ok=True)


def _is_prefect_server(pid: int) -> bool:
    """Whether a live process looks like a Prefect server (Linux: its command line); when
    that cannot be known, assume it is (never remove a live server's pid file)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ")
    except OSError:
        return True
    if not command.strip():
        return True  # a process being replaced (exec) or a zombie: cannot say
    return b"prefect" in command or b"uvicorn" in command


def ensure_server(mode: str = "auto", announce=print) -> str | None:
    """Return the API URL runs should use, starting a local server if needed.

    mode: "auto" (reuse or start a local server), "ephemeral" (Prefect's per-process
    temporary server: slow, but leaves nothing running).
    """
    configured = configured_api_url()
    if configured:
        if not healthy(configured):  # used as it is, but a run against nothing cannot start
            raise ServerError(
                f"the Prefect API at {configured} (PREFECT_API_URL) does not answer; start "
                "that server, or unset PREFECT_API_URL to use a local one"
            )
        check_access(configured)
        redact_credential_logs()
        return configured
    if mode == "ephemeral":
        return None
    port = server_port()
    api_url = f"http://127.0.0.1:{port}/api"
    if not healthy(api_url):
        announce(
            f"lmflows: starting a local Prefect server on 127.0.0.1:{port} "
            "(once; later runs reuse it; stop it with `prefect server stop`)"
        )
        _remove_stale_pid_file(announce)
        started = subprocess.run(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--background",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if started.returncode != 0:
            said = " ".join(started.stdout.split())[-300:]
            raise ServerError(f"`prefect server start --background` failed: {said}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(api_url):
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the Prefect server on port {port} did not become healthy "
                    f"within {START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.5)
    check_access(api_url)
    redact_credential_logs()
    os.environ["PREFECT_API_URL"] = api_url
    return api_url
