"""Noticing that the Prefect server went away during a run, and not waiting for it at exit.

The truth of the cache is in storage, not in the server: steps go on committing without it
(Prefect sends task-run states as events). What goes wrong without a server is noise and
exit: Prefect's events client logs every undeliverable event and, at interpreter exit, retries
each queued one for ~7 s (measured: a 40-step run whose server was killed took 394 s to exit).
A watch thread pings `/health`; after the server has stopped answering it says so once,
silences the loggers that would repeat it, and `exit_now` ends the process without the drain.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import urllib.request
from collections.abc import Callable

# Loggers that repeat "cannot reach the server" for every event once it is gone. Prefect's
# internal loggers ignore levels (SafeLogger), so a filter silences them.
_NOISY = (
    "prefect.events.clients",
    "prefect._internal.concurrency",
    "prefect._internal",
    "EventsWorker",
    "prefect.client",
)
# Run loggers: only their "cannot connect" errors (with a traceback) are dropped.
_RUNS = ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine")


def _drop_all(record: logging.LogRecord) -> bool:
    return False


def _drop_connection_errors(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    while exc is not None:
        if type(exc).__name__ in ("ConnectError", "ConnectTimeout", "ConnectionRefusedError"):
            return False
        exc = exc.__cause__ or exc.__context__
    return "Connection refused" not in record.getMessage()


class ServerWatch:
    """Pings `{api_url}/health` every `interval` seconds until stopped."""

    def __init__(
        self,
        api_url: str,
        interval: float = 2.0,
        misses: int = 2,
        settled: Callable[[], int | None] | None = None,
    ) -> None:
        """`settled`, polled once the server is lost, returns an exit code when nothing is
        left to run (every step committed): the process then ends without waiting for
        Prefect's retries of calls that can no longer succeed."""
        self.api_url = api_url.rstrip("/")
        self.interval = interval
        self.misses = misses
        self.settled = settled
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="lmflows-server-watch", daemon=True
        )

    def __enter__(self) -> ServerWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=self.interval) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _watch(self) -> None:
        missed = 0
        while not self._stop.wait(self.interval):
            missed = 0 if self.healthy() else missed + 1
            if missed >= self.misses:
                self.mark_lost()
                break
        while self.settled is not None and not self._stop.wait(self.interval):
            code = self.settled()
            if code is not None:
                exit_now(code)

    def mark_lost(self) -> None:
        if self.lost:
            return
        self.lost = True
        for name in _NOISY:
            logging.getLogger(name).addFilter(_drop_all)
        for name in _RUNS:
            logging.getLogger(name).addFilter(_drop_connection_errors)
        print(
            f"lmflows: the Prefect server at {self.api_url} stopped answering; steps go on and "
            "commit to storage, the UI misses the rest of this run",
            file=sys.stderr,
            flush=True,
        )


def exit_now(code: int) -> None:
    """End the process at once: no atexit hooks, so no drain of undeliverable events."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
