"""A Prefect event per checkpoint a training saves, so that a deployment can evaluate it while
the training goes on (deploy/prefect.yaml `evaluate-checkpoint`, flows/evaluate_checkpoint.py).

`lmflows.checkpoint.saved` is emitted once levanter has written the checkpoint whole: from its
commit callback, which levanter calls after every array is written and `metadata.json` (the
mark of a complete checkpoint, what resuming looks for) is on storage. The resource is the
training step (`lmflows.step.NAME-HASH`) with the checkpoint's step and its path relative to the
prefix; the payload names the training's datasets and tokenizer by identity. Never a prefix,
an absolute path or a URL: a prefix may carry a bucket name or credentials, and the worker that
evaluates reads its own prefix. Only permanent checkpoints are announced: levanter deletes a
temporary (time-based) one after the next save, so an evaluation of it could find nothing.

Emitting never fails a training: a refused event is a warning in the training's log. Events
are queued in the process; the isolated worker process of a step body sends them before it
exits (tasks/core/isolated_child.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tasks.core import provenance, storage

EVENT = "lmflows.checkpoint.saved"
RESOURCE_PREFIX = "lmflows.step."
STEP_LABEL = "lmflows.checkpoint.step"
PATH_LABEL = "lmflows.checkpoint.path"

logger = logging.getLogger("lmflows.checkpoint_events")


def identity_under(path: str, prefix: str) -> str | None:
    """`path` relative to `prefix` (a step identity, or an identity with a sub-path, when the
    path is a step output's), or None when it is not below the prefix."""
    path = path[len("file://") :] if path.startswith("file://") else path
    base = prefix.rstrip("/") + "/"
    if not path.startswith(base):
        return None
    return path[len(base) :].strip("/") or None


def announce_saves(checkpointer_config: Any) -> Callable[[int, str], None] | None:
    """Make every checkpointer that `checkpointer_config` (levanter's CheckpointerConfig of
    this run) creates announce each permanent checkpoint it commits. The payload names the
    training's datasets and tokenizer as its identity does (`provenance.running_identity`:
    identities, also of adopted inputs that lie outside the prefix), never by the paths its
    body received. Does nothing outside a step run; returns the announcer (or None)."""
    own = provenance.running_identity()
    if own is None:
        return None
    identity = f"{own['name']}-{own['hash']}"
    prefix = storage.current_prefix()
    attrs = own.get("attrs") or {}
    payload = {
        "data": dict(sorted((attrs.get("data") or {}).items())),
        "tokenizer": attrs.get("tokenizer"),
    }
    announcer = functools.partial(announce, identity, prefix, payload)
    create = checkpointer_config.create
    # levanter's trainer calls `config.checkpointer.create(run_id)` on this very object
    object.__setattr__(
        checkpointer_config, "create", functools.partial(_create_watched, create, announcer)
    )
    return announcer


def _create_watched(create: Callable[[str], Any], announcer: Callable, run_id: str) -> Any:
    checkpointer = create(run_id)
    watch(checkpointer, announcer)
    return checkpointer


def watch(checkpointer: Any, announcer: Callable[[int, str], None]) -> None:
    """Chain `announcer(step, path)` after levanter's own commit callback of every permanent
    checkpoint `checkpointer` (a levanter Checkpointer) saves."""
    save = checkpointer.save_checkpoint

    def save_and_announce(
        info: Any, destination: str, commit_callback: Callable | None = None, **kwargs: Any
    ) -> Any:
        path = storage.join(str(checkpointer.base_path), destination)
        committed = functools.partial(
            _committed, commit_callback, announcer, int(info.step), path, kwargs
        )
        return save(info, destination, commit_callback=committed, **kwargs)

    checkpointer.save_checkpoint = save_and_announce


def _committed(
    levanters: Callable | None,
    announcer: Callable[[int, str], None],
    step: int,
    path: str,
    options: Mapping[str, Any],
) -> None:
    """levanter's commit callback (metadata.json is written), then the announcement."""
    import jax

    if levanters is not None:
        levanters()
    if not options.get("is_temporary", False) and jax.process_index() == 0:
        announcer(step, path)


def announce(identity: str, prefix: str, payload: Mapping[str, Any], step: int, path: str) -> None:
    """Emit `lmflows.checkpoint.saved` for checkpoint `step` of training `identity`, written
    at `path` (below `prefix`). A failure to emit is a warning, never the training's end."""
    try:
        from prefect.events import emit_event

        emitted = emit_event(
            event=EVENT,
            resource=checkpoint_resource(identity, step, identity_under(path, prefix) or ""),
            payload=dict(payload),
        )
        logger.info(
            "%s: checkpoint step %d saved; %s", identity, step, "announced" if emitted else
            "no Prefect API to announce it to",
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - announcing must never stop a training
        logger.warning("%s: checkpoint step %d not announced: %s", identity, step, exc)


def checkpoint_resource(identity: str, step: int, relative_path: str) -> dict[str, str]:
    """The event's resource: the training step, the checkpoint's step and where it lies
    relative to the prefix (label values are strings, as Prefect's resources require)."""
    return {
        "prefect.resource.id": f"{RESOURCE_PREFIX}{identity}",
        "prefect.resource.name": identity,
        STEP_LABEL: str(step),
        PATH_LABEL: relative_path,
    }
