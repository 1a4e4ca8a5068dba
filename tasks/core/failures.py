"""A step refused for a known reason says so in one line; a bug keeps its traceback.

lmflows' own error classes (every exception class defined under `tasks.` or `flows.`: a
planted link, a lost lease, a refused tokenizer, a worker process that was killed) carry a
complete reason in their message. Prefect logs a task failure with its traceback, then the
task's final state, then the flow's exception with both stacks again and the flow's final
state: about 60 lines around one sentence. This filter, on Prefect's run loggers, keeps the
task's "Task run failed with exception: ..." line without its traceback and drops the later
records that only repeat the reason. Any other exception (a bug in a step body) is left as
Prefect logs it.
"""

from __future__ import annotations

import logging
import re

_KNOWN_PREFIXES = ("tasks.", "flows.")
# "... encountered an exception LinkedPathError: ..." in a task's or flow's final state.
_STATE_EXCEPTION = re.compile(r"encountered an exception:? (\w+):")
_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def is_known(exc: BaseException | None) -> bool:
    """Whether `exc` is, or was caused by, one of lmflows' own error classes (a StepFailedError
    counts only through its cause: the step's own failure)."""
    seen = 0
    while exc is not None and seen < 10:
        cls = type(exc)
        if cls.__module__.startswith(_KNOWN_PREFIXES) and cls.__name__ != "StepFailedError":
            return True
        exc = exc.__cause__
        seen += 1
    return False


def _known_class_names() -> set[str]:
    names: set[str] = set()
    stack = [BaseException]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith(_KNOWN_PREFIXES) and sub.__name__ != "StepFailedError":
                names.add(sub.__name__)
    return names


class KnownFailureFilter(logging.Filter):
    """On Prefect's run loggers: known failures in one line, said once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            if not is_known(exc):
                return True
            if type(exc).__name__ == "StepFailedError":
                return False  # the flow repeating a step's failure the task already logged
            record.exc_info = None
            record.exc_text = None
            message = record.getMessage().split(" - Retries are exhausted")[0]
            record.msg, record.args = " ".join(message.split()), ()
            return True
        message = record.getMessage()
        if message.startswith("Finished in state Failed"):
            named = _STATE_EXCEPTION.findall(message)
            if set(named) & _known_class_names():
                return False
        return True


_FILTER = KnownFailureFilter()


def install() -> None:
    """Attach the filter to Prefect's run loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
