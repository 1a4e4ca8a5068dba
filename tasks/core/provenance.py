"""Provenance records: what produced an output, written beside its commit (docs/design.md §10)."""

from __future__ import annotations

import contextvars
import functools
import importlib.metadata
import os
import socket
import subprocess
from typing import Any

from tasks.core import storage
from tasks.core.identity import Identity

_NOTES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "lmflows_provenance_notes", default=None
)
_ON_NOTE: contextvars.ContextVar[Any] = contextvars.ContextVar("lmflows_on_note", default=None)


_IDENTITY: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "lmflows_running_identity", default=None
)


def running_identity() -> dict[str, Any] | None:
    """Inside a step body (also in its worker process): the running step's identity as plain
    JSON, `{"name", "hash", "attrs", "deps"}`; None elsewhere. A body receives its inputs as
    paths; this is how it can compare itself with other committed outputs by identity (train_lm
    finds the run it extends)."""
    return _IDENTITY.get()


def set_running_identity(identity: dict[str, Any] | None) -> contextvars.Token:
    return _IDENTITY.set(identity)


def reset_running_identity(token: contextvars.Token) -> None:
    _IDENTITY.reset(token)


def note(**values: Any) -> None:
    """Add facts to the running step's provenance record (e.g. a resolved hub commit).

    Values must be JSON; secrets must never be passed here. Outside a step this does nothing.
    """
    notes = _NOTES.get()
    if notes is not None:
        notes.update(values)
        on_note = _ON_NOTE.get()
        if on_note is not None:
            on_note(values)


def collecting_notes(on_note: Any = None) -> tuple[dict[str, Any], tuple[Any, Any]]:
    """Start collecting notes for one attempt; `on_note(values)` also sees each note as it
    is made (a resumable attempt logs them at once, so a killed attempt keeps them)."""
    notes: dict[str, Any] = {}
    return notes, (_NOTES.set(notes), _ON_NOTE.set(on_note))


def stop_collecting(token: tuple[Any, Any]) -> None:
    _NOTES.reset(token[0])
    _ON_NOTE.reset(token[1])


def ray_placement() -> dict[str, Any] | None:
    """Where Ray ran this attempt: node and the resources Ray assigned (None outside Ray)."""
    import sys

    if "ray" not in sys.modules:
        return None
    try:
        import ray

        if not ray.is_initialized():
            return None
        context = ray.get_runtime_context()
        if context.worker.mode != ray.WORKER_MODE:
            return None
        return {
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "assigned_resources": context.get_assigned_resources(),
            "accelerator_ids": context.get_accelerator_ids(),
        }
    except Exception:  # provenance must never fail a step
        return None


_PACKAGES = (
    "lmflows",
    "prefect",
    "prefect-ray",
    "fsspec",
    "gcsfs",
    "levanter",
    "haliax",
    "jax",
    "jaxlib",
    "tokenizers",
    "transformers",
    "numpy",
)


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@functools.lru_cache(maxsize=32)
def git_commit(directory: str) -> dict[str, Any] | None:
    """HEAD of the git checkout holding `directory`, and whether it had local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", directory, "status", "--porcelain", "-uno"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def _run_ids() -> dict[str, str | None]:
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        task_ctx = TaskRunContext.get()
        flow_ctx = FlowRunContext.get()
        return {
            "task_run_id": str(task_ctx.task_run.id) if task_ctx else None,
            "flow_run_id": str(flow_ctx.flow_run.id) if flow_ctx and flow_ctx.flow_run else None,
        }
    except Exception:
        return {"task_run_id": None, "flow_run_id": None}


def build(
    identity: Identity,
    fn: Any,
    started: float,
    ended: float,
    prefix: str,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    source_file = getattr(getattr(fn, "__code__", None), "co_filename", None)
    return {
        "name": identity.name,
        "hash": identity.hash,
        "attrs": identity.attrs,
        "deps": [{"identity": dep, "path": storage.join(prefix, dep)} for dep in identity.deps],
        "function": f"{fn.__module__}.{fn.__qualname__}",
        "git": git_commit(os.path.dirname(os.path.abspath(source_file))) if source_file else None,
        "packages": package_versions(),
        "started_at": started,
        "ended_at": ended,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **_run_ids(),
        "ray": ray_placement(),
        "notes": notes or {},
    }
