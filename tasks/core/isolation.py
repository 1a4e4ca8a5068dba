"""Where a step body runs: its own worker process (`@step(isolate=True)`) or the task's thread.

Why a process: levanter, transformers' chat templates, lm-eval, the Hugging Face offline
switches, jax's config, matplotlib, logging handlers, `os.environ` and the working directory
are process-wide. Two steps that use them side by side in threads of one process corrupt each
other (a clean-clone CI run failed with transformers' `AssistantTracker should not be reused`
and silently wrong assistant masks). Finding and serialising such regions one race at a time
does not end; a process per executed body does. Only an executed body pays for it: a
committed step is served `Cached` by the task engine before any of this runs. The process is
forked from a server that imported prefect, the step modules and levanter once
(tasks/core/fork_server.py: a few milliseconds instead of 1 to 4 s of imports per body).

The parent keeps everything of the framework's: the lease and its renewal, provenance, the
manifest and the commit. The child gets the call's plain arguments and runs the body alone, in
the Prefect task run's context (its logs and artifacts belong to the task run), and sends back
the body's JSON metadata, its provenance notes, or its exception with the traceback.

A body stops when the lease is lost, within a third of the lease: the parent kills an isolated
body's process group when its lease is gone; the child also reads the lease itself (so a paused
parent does not leave it writing next to a new holder), and exits when the lease names another
holder; a body in the task's thread gets `LeaseLostError` raised at its next Python instruction
(a blocking call in C finishes first).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from tasks.core import fork_server, lease

WATCH_SECONDS = 0.25  # how often the parent looks at its lease while a body runs
KILL_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL after this long


class StepProcessDied(RuntimeError):
    """An isolated step body's process ended without a result (killed, out of memory)."""


# --- the parent's side -----------------------------------------------------------------------


def run_body(definition: Any, kwargs: dict[str, Any], lease_path: str, label: str) -> Any:
    """Run the step's body with `kwargs` where its definition says (a worker process or this
    thread), stopping it when the lease at `lease_path` is lost."""
    if definition.isolate:
        return run_in_child(definition, kwargs, lease_path, label)
    with interrupted_on_lease_loss(lease_path):
        return definition.fn(**kwargs)


def run_in_child(definition: Any, kwargs: dict[str, Any], lease_path: str, label: str) -> Any:
    """The body in a fresh Python process; its metadata, or its exception."""
    from multiprocessing.connection import Connection

    from tasks.core import provenance

    payload = _payload(definition, kwargs, lease_path, label)
    read_fd, write_fd = os.pipe()
    try:
        child = fork_server.start_child(write_fd, child_environment())
    finally:
        os.close(write_fd)
    messages = Connection(read_fd)
    try:
        assert child.stdin is not None
        child.stdin.write(struct.pack(">Q", len(payload)) + payload)
        child.stdin.flush()  # stdin stays open: its end tells the child that we are gone
        while True:
            if messages.poll(WATCH_SECONDS):
                try:
                    kind, body = messages.recv()
                except EOFError:
                    raise _died(child, label) from None
                if kind == "note":
                    provenance.note(**body)
                    continue
                if kind == "ok":
                    return body
                raise _rebuilt(body)
            if not _lease_still_ours(lease_path):
                _stop(child)
                raise lease.LeaseLostError(
                    f"lease {lease_path} was lost while {label} ran; its worker process was stopped"
                )
    finally:
        messages.close()
        _stop(child)


def _payload(definition: Any, kwargs: dict[str, Any], lease_path: str, label: str) -> bytes:
    import cloudpickle
    from prefect.context import TaskRunContext

    from tasks.core import artifacts, provenance

    ctx = TaskRunContext.get()
    held = lease.held_token(lease_path)
    body = {
        "step": _locate(definition, ctx.task if ctx is not None else None),
        "kwargs": kwargs,
        "label": label,
        "lease_path": lease_path,
        "lease_token": held[0] if held else None,
        "lease_seconds": held[1] if held else None,
        "task_run": ctx.task_run.model_dump(mode="json") if ctx is not None else None,
        "log_prints": bool(ctx.log_prints) if ctx is not None else False,
        "output_url": artifacts.output_url(),
        "identity": provenance.running_identity(),
    }
    return cloudpickle.dumps(body)


def _locate(definition: Any, task: Any) -> tuple[Any, ...]:
    """How the child finds the step: by module and name when the child can import it (the
    common case, and cheap), else the step itself pickled by value (a step defined in a
    function, in `__main__`, or on a Ray worker from an experiment file it does not have)."""
    import cloudpickle

    fn = definition.fn
    module = sys.modules.get(fn.__module__)
    where = getattr(module, "__file__", None)
    if (
        fn.__module__ != "__main__"
        and "<locals>" not in fn.__qualname__
        and where
        and os.path.exists(where)
    ):
        return ("ref", fn.__module__, fn.__qualname__, where, fn.__code__.co_firstlineno)
    if task is None:  # outside a task run (no context to give the child either)
        from prefect import Task

        task = Task(fn=fn)
        task.definition = definition
    return ("value", cloudpickle.dumps(task))


def child_environment() -> dict[str, str]:
    """The parent's environment, its import path, and the Prefect API its task run talks to
    (a command line run or an ephemeral server set it in Prefect's settings or client, not
    in the environment; without it every child would start a server of its own)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([os.getcwd(), *paths]))
    url = _api_url()
    if url:
        env["PREFECT_API_URL"] = url
    return env


def _api_url() -> str | None:
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    url = getattr(getattr(ctx, "client", None), "api_url", None)
    if url:
        return str(url).rstrip("/")
    try:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    except Exception:  # no Prefect settings to pass on: the environment's are used
        return None


def _lease_still_ours(lease_path: str) -> bool:
    if lease.holds(lease_path) and not lease.expired(lease_path):
        return True
    try:  # expired by the clock (a paused process): lost only if another holder took it
        lease.assert_held_in_storage(lease_path)
    except lease.LeaseLostError:
        return False
    return True


def _stop(child: subprocess.Popen | fork_server.ForkedChild) -> None:
    """End the child's process group: SIGTERM, then SIGKILL."""
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()
    if child.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _died(child: subprocess.Popen | fork_server.ForkedChild, label: str) -> StepProcessDied:
    try:
        code = child.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        code = None
    if not getattr(child, "status_known", True):
        how = "ended, and its exit status was lost with its fork server,"
    elif code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    elif code == LEASE_LOST_EXIT:
        return lease.LeaseLostError(  # type: ignore[return-value]
            f"the worker process of {label} stopped: its lease was taken over"
        )
    else:
        how = f"exited with status {code}"
    return StepProcessDied(f"the worker process of {label} {how} before it finished")


def _rebuilt(body: dict[str, Any]) -> BaseException:
    """The child's exception, as itself when it unpickles (lmflows' error classes do), with
    the child's traceback as a note; else a RuntimeError naming its type."""
    exc: BaseException | None = None
    if body.get("pickled") is not None:
        with contextlib.suppress(Exception):
            exc = pickle.loads(body["pickled"])
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"{body['type']}: {body['message']}")
    if body.get("traceback"):
        exc.add_note("In the step's worker process:\n" + body["traceback"].rstrip())
    return exc


LEASE_LOST_EXIT = 75  # the child's exit status when it saw its lease taken over


# --- a body in the task's own thread ---------------------------------------------------------


@contextlib.contextmanager
def interrupted_on_lease_loss(lease_path: str) -> Iterator[None]:
    """Raise `LeaseLostError` in this thread (at its next Python instruction) when the lease
    is lost while the block runs. Python offers no other way to stop a thread; the exception
    is cleared if it arrives after the block ended."""
    thread_id = threading.get_ident()
    guard = threading.Lock()
    running = [True]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(WATCH_SECONDS):
            if _lease_still_ours(lease_path):
                continue
            with guard:
                if running[0]:
                    _raise_in(thread_id, lease.LeaseLostError)
            return

    watcher = threading.Thread(target=watch, daemon=True, name="lmflows-lease-watch")
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        with guard:
            running[0] = False
            _raise_in(thread_id, None)  # a pending exception that came too late is dropped


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


# --- the child's side (tasks/core/isolated_child.py runs these) ------------------------------


def read_payload(stream: io.BufferedReader) -> dict[str, Any]:
    import cloudpickle

    header = stream.read(8)
    if len(header) != 8:
        raise SystemExit("lmflows: isolated step: no payload from the parent")
    (size,) = struct.unpack(">Q", header)
    return cloudpickle.loads(stream.read(size))


def exception_message(exc: BaseException) -> dict[str, Any]:
    import traceback

    try:
        pickled: bytes | None = pickle.dumps(exc)
        pickle.loads(pickled)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        pickled = None
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "pickled": pickled,
        "traceback": "".join(traceback.format_exception(exc)),
    }


def watch_lease_in_child(lease_path: str, token: str, seconds: float) -> None:
    """Exit at once when the lease names another holder (a paused parent cannot stop us)."""

    def watch() -> None:
        while True:
            time.sleep(max(0.2, seconds / 3))
            try:
                current = lease.read(lease_path)
            except Exception:  # storage hiccup: the parent decides then
                continue
            if current is not None and current.get("token") not in (None, token):
                print(
                    f"lmflows: lease {lease_path} was taken over; stopping this step's work",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(LEASE_LOST_EXIT)

    threading.Thread(target=watch, daemon=True, name="lmflows-child-lease").start()


def exit_when_parent_goes(stream: io.BufferedReader) -> None:
    """The parent keeps our stdin open; its end (the parent died or stopped us) ends us."""

    def watch() -> None:
        with contextlib.suppress(Exception):
            while stream.read(1):
                pass
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="lmflows-parent-watch").start()
