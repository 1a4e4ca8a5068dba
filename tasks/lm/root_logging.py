"""One levanter run at a time per process, its console noise kept out of the user's terminal,
and the process's logging left as it was.

levanter's `initialize` calls `logging.basicConfig(force=True)` with a file handler and a
console handler, which replaces the root logger's handlers (Prefect's console output among
them) for the rest of the process, and then logs every checkpoint write, every "Unknown leaf
type" and its whole config to the terminal. Inside this context levanter's records go to its
log file only (`log_dir`, a local temporary folder of the step), unless
`LMFLOWS_LEVANTER_CONSOLE=1`; what the user watches is the step's own progress lines in the
Prefect run log. levanter also keeps process-wide state (the current tracker, the device
mesh), so two trainings in threads of one process would log into each other: with concurrent
steps (`tasks.core.flow`) on the thread runner, levanter steps take turns here; on Ray each
runs in its own worker process and they overlap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator

CONSOLE_ENV = "LMFLOWS_LEVANTER_CONSOLE"
_LEVANTER = threading.RLock()
# levanter re-creates its global tracker for every run in a process (train, then evaluate):
# expected here, not a problem worth a warning on the user's terminal.
warnings.filterwarnings("ignore", message="Global tracker is already set")


@contextlib.contextmanager
def restored_root_logging() -> Iterator[None]:
    with _LEVANTER:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        levanter_logger = logging.getLogger("levanter")
        propagate, levanter_level = levanter_logger.propagate, levanter_logger.level
        patched = _quiet_levanter_console(handlers)
        if patched is not None:
            levanter_logger.propagate = False  # also what it logs before init_logging runs
        try:
            yield
        finally:
            if patched is not None:
                patched()
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            for handler in levanter_logger.handlers[:]:
                if getattr(handler, "_lmflows_moved", False):
                    levanter_logger.removeHandler(handler)
                    handler.close()
            levanter_logger.propagate = propagate
            levanter_logger.setLevel(levanter_level)  # init_logging sets INFO
            root.handlers[:] = handlers
            root.setLevel(level)


def _quiet_levanter_console(original_handlers: list[logging.Handler]):
    """Wrap levanter's `init_logging` so that, once it has run, its file handler serves the
    `levanter` logger alone and the root logger gets its own handlers back. Returns an
    undo function (None when the console was asked for)."""
    if os.environ.get(CONSOLE_ENV, "").strip() not in ("", "0"):
        return None
    try:
        import levanter.utils.logging as levanter_logging
    except ImportError:
        return None
    init_logging = levanter_logging.init_logging

    def quiet_init_logging(*args, **kwargs):
        init_logging(*args, **kwargs)
        root = logging.getLogger()
        files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        levanter_logger = logging.getLogger("levanter")
        for handler in files:
            handler._lmflows_moved = True  # type: ignore[attr-defined]
            levanter_logger.addHandler(handler)
        levanter_logger.propagate = False
        new = [h for h in root.handlers if h not in original_handlers]
        for handler in new:
            if handler not in files:
                handler.close()
        root.handlers[:] = original_handlers

    levanter_logging.init_logging = quiet_init_logging  # the trainer calls it through the module

    def undo() -> None:
        levanter_logging.init_logging = init_logging

    return undo


def printed_to_log():
    """levanter's eval_lm `print`s its loss: into levanter's log, not the user's terminal
    (unless LMFLOWS_LEVANTER_CONSOLE). While levanter runs, this process's other prints go
    there too (one levanter run at a time; the caller logs the results itself)."""
    import contextlib
    import io
    import logging

    if os.environ.get(CONSOLE_ENV, "").strip() not in ("", "0"):
        return contextlib.nullcontext()

    class ToLog(io.TextIOBase):
        def write(self, text: str) -> int:
            if text.strip():
                logging.getLogger("levanter.stdout").info(text.rstrip())
            return len(text)

    return contextlib.redirect_stdout(ToLog())
