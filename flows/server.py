"""Which Prefect API a command-line run talks to (docs/design.md §9).

An ephemeral server costs ~13 s per process on these machines, a running one ~0.5 s, so the
default is to reuse a local server, or start one in the background once and keep it. A user
whose environment or Prefect profile sets PREFECT_API_URL is never second-guessed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
        return  # alive: Prefect's own message will say what to do
    except ProcessLookupError:
        pass
    except PermissionError:
        return
    announce(f"lmflows: removing {pid_file}: its server (pid {pid}) is gone")
    pid_file.unlink(missing_ok=True)


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
        subprocess.run(
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
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(api_url):
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the Prefect server on port {port} did not become healthy "
                    f"within {START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.5)
    os.environ["PREFECT_API_URL"] = api_url
    return api_url
