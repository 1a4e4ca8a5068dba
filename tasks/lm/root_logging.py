"""levanter's `initialize` calls `logging.basicConfig(force=True)`, which replaces the root
logger's handlers (Prefect's console output among them) for the rest of the process. Steps
that call levanter restore them afterwards."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def restored_root_logging() -> Iterator[None]:
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
