"""One levanter run at a time per process, and the process's logging left as it was.

levanter's `initialize` calls `logging.basicConfig(force=True)`, which replaces the root
logger's handlers (Prefect's console output among them) for the rest of the process; steps
that call levanter restore them afterwards. levanter also keeps process-wide state (the
current tracker, the device mesh), so two trainings in threads of one process would log into
each other: with concurrent steps (`lmflows.flow`) on the thread runner, levanter steps take
turns here; on Ray each runs in its own worker process and they overlap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

_LEVANTER = threading.RLock()


@contextlib.contextmanager
def restored_root_logging() -> Iterator[None]:
    with _LEVANTER:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            yield
        finally:
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
