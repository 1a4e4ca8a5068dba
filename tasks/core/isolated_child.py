"""The worker process of an isolated step body (`python -m tasks.core.isolated_child FD`).

Reads its payload from stdin (see `tasks.core.isolation`), runs the body in the task run's
Prefect context, and sends `("note", values)`, then `("ok", metadata)` or `("error", ...)`
on the pipe FD. Anything it prints goes to the parent's terminal as it would in a thread.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any


def _import(module_name: str, file: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
    # An experiment loaded from a file path under a name of its own (flows.loader).
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file} as {module_name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def find_step(locator: tuple[Any, ...]) -> Any:
    if locator[0] == "value":
        import cloudpickle

        return cloudpickle.loads(locator[1])
    _, module_name, qualname, file, first_line = locator
    found: Any = _import(module_name, file)
    for part in qualname.split("."):
        found = getattr(found, part)
    definition = getattr(found, "definition", None)
    fn = getattr(definition, "fn", None)
    if fn is None or fn.__code__.co_firstlineno != first_line:
        raise ImportError(
            f"{module_name}.{qualname} in the worker process is not the step the parent ran "
            "(the file changed since the run started?)"
        )
    return found


@contextlib.contextmanager
def task_run_context(step: Any, payload: dict[str, Any]) -> Iterator[None]:
    """The parent's task run, so that logs and artifacts land on it in the Prefect UI."""
    if payload.get("task_run") is None:
        yield
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import TaskRun
    from prefect.context import TaskRunContext
    from prefect.logging.configuration import setup_logging
    from prefect.results import ResultStore

    setup_logging()
    task_run = TaskRun.model_validate(payload["task_run"])
    _link_to_flow_run(task_run.flow_run_id)
    with get_client(sync_client=True) as client:
        context = TaskRunContext(
            task=step,
            task_run=task_run,
            log_prints=payload.get("log_prints", False),
            parameters={},
            result_store=ResultStore(),
            client=client,
        )
        with context:
            try:
                yield
            finally:
                _flush_api_logs()


def _link_to_flow_run(flow_run_id: Any) -> None:
    """Prefect finds the flow run of an artifact (or an event) in a FlowRunContext, which
    this process does not have (rebuilding one would need the flow and its task runner):
    answer with the task run's own flow run instead of None."""
    import prefect.utilities.context as run_ids

    found = run_ids.get_flow_run_id

    def of_the_task_run() -> Any:
        return found() or flow_run_id

    run_ids.get_flow_run_id = of_the_task_run


def _flush_api_logs() -> None:
    """Send the events (a training's `lmflows.checkpoint.saved`) and logs still queued for the
    API before this process ends (os._exit would drop them). Prefect's queue services share
    one registry, so either call drains both; both are named so that neither depends on it."""
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        EventsWorker.drain_all(timeout=5, at_exit=False)
        APILogWorker.drain_all(timeout=5)


def main(fd: int) -> int:
    from tasks.core import artifacts, isolation, provenance
    from tasks.core.identity import to_plain

    # The sync Prefect client of the task run context meets a new event loop here: expected.
    warnings.filterwarnings("ignore", message="alru_cache detected event loop change")
    stdin = sys.stdin.buffer
    conn = Connection(fd)
    payload = isolation.read_payload(stdin)
    isolation.exit_when_parent_goes(stdin)
    if payload.get("lease_token"):
        isolation.watch_lease_in_child(
            payload["lease_path"], payload["lease_token"], payload["lease_seconds"]
        )
    try:
        step = find_step(payload["step"])
        notes, token = provenance.collecting_notes(lambda values: conn.send(("note", values)))
        artifacts.set_output(payload.get("output_url"))
        provenance.set_running_identity(payload.get("identity"))
        with task_run_context(step, payload):
            value = step.definition.fn(**payload["kwargs"])
        provenance.stop_collecting(token)
        label = payload["label"]
        conn.send(("ok", None if value is None else to_plain(value, f"return value of {label}")))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(("error", isolation.exception_message(exc)))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


if __name__ == "__main__":
    import os

    code = main(int(sys.argv[1]))
    os._exit(code)  # the body's threads (levanter's, jax's) must not hold the exit up
