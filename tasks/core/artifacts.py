"""Prefect artifacts that lmflows publishes: keys, output URLs, the steps table.

Keys make artifacts first-class in the Prefect UI: an artifact with a key is listed on the
Artifacts page and keeps its history across runs (each new version under the same key).
Keys may hold lowercase letters, digits and dashes only, so names are slugged. Locations are
shown as URLs (`gs://...`, `file://...`): a path printed on one machine means nothing to
someone watching the UI from another.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from typing import Any

from tasks.core import storage

logger = logging.getLogger("lmflows.artifacts")
MAX_KEY = 120
_OUTPUT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lmflows_output_url", default=None
)


def key(kind: str, name: str) -> str:
    """``key("loss-curve", "demo-kjv")`` -> ``loss-curve-demo-kjv``. A name that slugging
    changes or shortens gets 8 hex of its sha256 (``loss-curve-sweep-lr0-01-1c2d3e4f``), so
    `lr0.01` and `lr0-01` (both valid step names) never share an artifact's history."""
    import hashlib

    plain = f"{kind}-{name}"
    slug = re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-")
    if slug == plain and len(slug) <= MAX_KEY:
        return slug
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{slug[: MAX_KEY - 9].rstrip('-') or kind}-{digest}"


def url_of(path: str) -> str:
    """A location as a URL: local paths as ``file://``, remote URLs as they are."""
    return f"file://{path}" if "://" not in path else path


def output_url() -> str | None:
    """The committed location of the step running here (not its staging folder)."""
    return _OUTPUT.get()


def set_output(url: str | None) -> contextvars.Token:
    return _OUTPUT.set(url)


def reset_output(token: contextvars.Token) -> None:
    _OUTPUT.reset(token)


def in_task_run() -> bool:
    from prefect.context import TaskRunContext

    return TaskRunContext.get() is not None


def in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def publish_table(artifact_key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A keyed table artifact; never fails the caller (artifacts are a view, files the record)."""
    if not in_run():
        return
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=rows, key=artifact_key, description=description)
    except Exception as exc:
        logger.warning("could not publish artifact %s: %s", artifact_key, exc)


def step_row(ref: Any, state: Any, prefix: str) -> dict[str, Any]:
    """One row of the steps table: identity, state, output URL, duration, size."""
    from tasks.core import records

    name_with_hash = ref.name_with_hash
    row: dict[str, Any] = {
        "step": name_with_hash,
        "state": state.name if state is not None else "Unknown",
        "output": url_of(storage.output_dir(name_with_hash, prefix)),
        "seconds": None,
        "bytes": None,
    }
    if state is None or not state.is_completed():
        return row
    try:
        content = storage.read_bytes(storage.meta_path(name_with_hash, storage.COMMIT_FILE, prefix))
        _, manifest = records.parse_commit(content, name_with_hash)
        row["bytes"] = sum(int(f.get("bytes", 0)) for f in manifest["files"].values())
        provenance = json.loads(
            storage.read_bytes(storage.meta_path(name_with_hash, storage.PROVENANCE_FILE, prefix))
        )
        row["seconds"] = round(float(provenance["ended_at"]) - float(provenance["started_at"]), 2)
    except Exception:  # a table cell, not a check: verify and status do the checking
        pass
    if row["state"] == "Cached":
        row["seconds"] = 0.0  # this run did not compute it (the build time is in `show`)
    return row
