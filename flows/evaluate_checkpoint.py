"""evaluate-checkpoint: evaluate one checkpoint of a training, as announced by the training's
`lmflows.checkpoint.saved` event (tasks/lm/checkpoint_events.py). deploy/prefect.yaml runs it
from a trigger on that event; it can also be run by hand with the same parameters.

Event content is not trusted: anyone who can post an event to the server can set these
parameters. Before anything is read, one line refuses a training that is not a `train_lm`
output committed or running (a live lease) under the worker's prefix, a checkpoint path that
is absolute, escapes the prefix or is not where that training keeps that checkpoint, a
checkpoint that is not complete, and datasets or a tokenizer that are not the training's own
inputs (from its provenance once committed, from its lease's inputs while it runs). The
evaluation is the step `evaluate_checkpoint`, whose identity names the training and the
checkpoint step: the same event delivered twice is `Cached` the second time.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from flows.evaluate_latest import ref_of
from tasks.core import StepRef, flow, lease, records, storage
from tasks.core.adopt import read_in_place
from tasks.core.identity import split_name_with_hash, validate_name
from tasks.lm.checkpoint_events import RESOURCE_PREFIX
from tasks.lm.evaluate_checkpoint import (
    checkpoint_places,
    evaluate_checkpoint,
    find_checkpoint,
)

TRAINING_NAME = "checkpoints/"  # train_lm's outputs: `checkpoints/{name}`


class BadCheckpointEvent(ValueError):
    """Parameters (an event's content) that do not name a checkpoint of a training here."""


def training_identity(training: str) -> str:
    """NAME-HASH of a `train_lm` output, from an event's resource id (`lmflows.step.X`) or X."""
    if not isinstance(training, str):
        raise BadCheckpointEvent(f"training {training!r} is not a string")
    identity = training.removeprefix(RESOURCE_PREFIX)
    try:
        name, _ = split_name_with_hash(identity)
        validate_name(name)
    except ValueError as exc:
        raise BadCheckpointEvent(
            f"training {training!r} is not a step identity (NAME-HASH): {exc}"
        ) from None
    if not name.startswith(TRAINING_NAME):
        raise BadCheckpointEvent(
            f"training {identity!r} is not a train_lm output ({TRAINING_NAME}NAME-HASH)"
        )
    return identity


def step_number(checkpoint_step: Any) -> int:
    """A checkpoint step from a parameter (an event's label is text)."""
    text = str(checkpoint_step)
    # ASCII only: str.isdigit() is true for '²' (which int() refuses) and other scripts' digits
    if (
        isinstance(checkpoint_step, bool)
        or not (text.isascii() and text.isdigit())
        or len(text) > 12
    ):
        raise BadCheckpointEvent(f"checkpoint_step {checkpoint_step!r} is not a step number")
    return int(text)


def check_place(checkpoint: str, training: str, step: int, prefix: str) -> None:
    """`checkpoint` (relative to the prefix) must be one of the places where `training`
    keeps checkpoint `step`; a path that is absolute, a URL or leaves the prefix is refused
    as such."""
    if not isinstance(checkpoint, str):
        raise BadCheckpointEvent(f"checkpoint path {checkpoint!r} is not a string")
    normal = posixpath.normpath(checkpoint) if checkpoint else ""
    if (
        "://" in checkpoint
        or checkpoint.startswith("/")
        or normal == ".."
        or normal.startswith("../")
        or ".." in checkpoint.split("/")
        or "\\" in checkpoint
    ):
        raise BadCheckpointEvent(
            f"checkpoint path {checkpoint!r} escapes the prefix (give it relative to the "
            "prefix, without '..')"
        )
    places = checkpoint_places(training, step, prefix)
    if normal not in places:
        raise BadCheckpointEvent(
            f"checkpoint path {checkpoint!r} is not where {training} keeps checkpoint step "
            f"{step} ({' or '.join(places)})"
        )


def training_inputs(training: str, prefix: str) -> dict[str, Any]:
    """What the training's own records say it reads: its provenance's attributes once
    committed (`{"attrs": ...}`), its live lease's inputs while it runs (`{"deps": [...]}`).
    Neither: the training is not one of this prefix."""
    if records.read_commit(training, prefix, remember=False) is not None:
        import json

        path = storage.meta_path(training, storage.PROVENANCE_FILE, prefix)
        try:
            return {"attrs": json.loads(storage.read_bytes(path))["attrs"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadCheckpointEvent(
                f"training {training}: its provenance {path} is unreadable ({exc}); run "
                "`python -m flows verify`"
            ) from None
    current = lease.read(storage.lease_path(training, prefix))
    if lease.is_live(current):
        return {"deps": lease.deps_of(current)}
    raise BadCheckpointEvent(
        f"training {training} is neither committed nor running under the prefix {prefix}"
    )


def _base(identity: str) -> str:
    """NAME-HASH of an identity that may carry a sub-path."""
    return ref_of(identity).name_with_hash


def checked_inputs(
    training: str, data: Any, tokenizer: Any, recorded: Mapping[str, Any]
) -> tuple[dict[str, StepRef], StepRef]:
    """The datasets and tokenizer as StepRefs, each one the training's own input and
    committed. Anything else is refused: an event may only choose among what the training
    read."""
    if not isinstance(data, Mapping) or not data:
        raise BadCheckpointEvent(f"data {data!r} must map dataset names to step identities")
    named = {"tokenizer": tokenizer, **{f"data[{k!r}]": v for k, v in data.items()}}
    for where, value in named.items():
        segments = value.split("/") if isinstance(value, str) else [""]
        if any(part in ("", ".", "..") or "\\" in part for part in segments):
            raise BadCheckpointEvent(
                f"{where} {value!r} is not a step identity (NAME-HASH[/sub/path] inside the prefix)"
            )
        try:
            ref_of(value)
        except ValueError:
            raise BadCheckpointEvent(f"{where} {value!r} is not a step identity") from None
    if "attrs" in recorded:
        attrs = recorded["attrs"]
        theirs = attrs.get("data") or {}
        wrong = sorted(k for k, v in data.items() if theirs.get(k) != v)
        if wrong or attrs.get("tokenizer") != tokenizer:
            raise BadCheckpointEvent(
                f"data {dict(data)} and tokenizer {tokenizer!r} are not {training}'s inputs "
                f"(data {theirs}, tokenizer {attrs.get('tokenizer')!r})"
            )
    else:
        deps = set(recorded["deps"])
        foreign = sorted(v for v in named.values() if _base(v) not in deps)
        if foreign:
            raise BadCheckpointEvent(f"{foreign} are not inputs of the running {training}")
    for value in named.values():
        if records.read_commit(_base(value), remember=False) is None:
            raise BadCheckpointEvent(f"input {value} of {training} is not committed")
    refs = {key: read_in_place(ref_of(value)) for key, value in data.items()}
    return refs, read_in_place(ref_of(tokenizer))


@flow(name="evaluate-checkpoint")
def evaluate_checkpoint_flow(
    training: str,
    checkpoint_step: int | str,
    checkpoint: str | None = None,
    data: dict[str, str] | None = None,
    tokenizer: str | None = None,
    max_eval_batches: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Evaluate checkpoint `checkpoint_step` of the `train_lm` output `training` (its
    NAME-HASH or the event's resource id `lmflows.step.NAME-HASH`) on the training's datasets
    `data` with its `tokenizer` (identities, as the event's payload names them). `checkpoint`:
    the path the event announced, relative to the prefix (checked, never trusted)."""
    prefix = storage.current_prefix()
    identity = training_identity(training)
    step = step_number(checkpoint_step)
    if checkpoint is not None:
        check_place(checkpoint, identity, step, prefix)
    recorded = training_inputs(identity, prefix)
    refs, tokenizer_ref = checked_inputs(identity, data, tokenizer, recorded)
    if find_checkpoint(identity, step, prefix) is None:
        raise BadCheckpointEvent(
            f"checkpoint step {step} of {identity} is not saved (no complete checkpoint in "
            f"{' or '.join(checkpoint_places(identity, step, prefix))})"
        )
    name = identity.removeprefix(TRAINING_NAME).rsplit("-", 1)[0]
    scores = evaluate_checkpoint(
        identity,
        step,
        name,
        data=refs,
        tokenizer=tokenizer_ref,
        max_eval_batches=max_eval_batches,
        batch_size=batch_size,
    )
    return {"training": identity, "checkpoint_step": step, "eval": scores}
