"""evaluate_checkpoint: one levanter checkpoint of a training, evaluated while the training may
still run (what the `evaluate-checkpoint` deployment does for each `lmflows.checkpoint.saved`
event, flows/evaluate_checkpoint.py).

The identity names the training (NAME-HASH) and the checkpoint's step, so each checkpoint is
evaluated once: a second event for the same checkpoint is `Cached`. The training is named by
its identity, not passed as a StepRef: a StepRef input makes a step wait until its producer is
committed, and the point is not to wait for the end of the training.

Where a checkpoint lies moves: while its training runs on local disk it is in the training's
resume folder (`.lmflows/staging/NAME-HASH/resume`), which the commit renames into place. So
the body links the checkpoint's files into its own folder first (hard links: no copy, and a
linked file survives the rename) and reads the links; a rename in the middle of linking is
seen and linking starts again from the committed place. On gs:// a training writes into its
output folder, nothing moves, and the checkpoint is read where it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import fsspec

from tasks.core import step, storage, stores
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.core.outputs import RESUME_DIR
from tasks.data.tokenizer_files import load_tokenizer
from tasks.lm import accelerators
from tasks.lm.files import join_url, write_json
from tasks.lm.model import check_tokenizer_matches

CHECKPOINTS = "checkpoints"
TRAIN_CONFIG = "train_config.json"
REFERENCE_CONFIG = "hf_reference/config.json"


class CheckpointNotSaved(FileNotFoundError):
    """The checkpoint an evaluation names is not (or no longer) complete on storage."""


def checkpoint_places(training: str, checkpoint_step: int, prefix: str) -> list[str]:
    """Where checkpoint `checkpoint_step` of the training `training` (NAME-HASH) lies,
    relative to `prefix`: its committed output first, then (local disk) the resume folder a
    running training writes into. On gs:// a running training writes into its output."""
    folder = f"{CHECKPOINTS}/step-{checkpoint_step}"
    places = [f"{training}/{folder}"]
    if stores.store_for(prefix).staged:
        staging = storage.staging_root(training, prefix)[len(prefix.rstrip("/")) + 1 :]
        places.append(f"{staging}/{RESUME_DIR}/{folder}")
    return places


def training_folder(place: str) -> str:
    """The training output (or work folder) a checkpoint place (relative) belongs to."""
    return place.rsplit(f"/{CHECKPOINTS}/", 1)[0]


def find_checkpoint(training: str, checkpoint_step: int, prefix: str) -> str | None:
    """The first place (relative to `prefix`) holding the complete checkpoint: levanter's
    `metadata.json`, written after every array, naming this step. None if there is none."""
    for place in checkpoint_places(training, checkpoint_step, prefix):
        try:
            with fsspec.open(storage.join(prefix, place, "metadata.json"), "r") as handle:
                if int(json.load(handle)["step"]) == checkpoint_step:
                    return place
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _check(accelerator: Any = "cpu", checkpoint_step: Any = 0, **_: Any) -> None:
    accelerators.check(accelerator)
    if isinstance(checkpoint_step, bool) or not isinstance(checkpoint_step, int):
        raise ValueError(f"checkpoint_step={checkpoint_step!r} must be an integer")
    if checkpoint_step < 0:
        raise ValueError(f"checkpoint_step={checkpoint_step} must not be negative")


@step(
    # batch_size is identity: levanter evaluates max_eval_batches batches of it.
    hash_attrs=[
        "training",
        "checkpoint_step",
        "name",
        "data",
        "tokenizer",
        "max_eval_batches",
        "batch_size",
    ],
    operational=["accelerator"],
    name="eval/{name}/step-{checkpoint_step}",
    validate=_check,
    resources=accelerators.ray_options,
    isolate=True,
)
def evaluate_checkpoint(
    training: str,
    checkpoint_step: int,
    name: str,
    data: dict,
    tokenizer: str,
    max_eval_batches: int | None = None,
    batch_size: int = 32,
    accelerator: str = "cpu",
    *,
    output_path: str,
) -> dict:
    """Evaluate checkpoint `checkpoint_step` of the `train_lm` output `training` (NAME-HASH,
    committed or running under the current prefix) on tokenized validation splits (`data`),
    with the tokenizer it was trained with."""
    from tasks.lm.eval_run import score_splits

    tensorstore_follows_emulator()
    prefix = storage.current_prefix()
    with held_checkpoint(training, checkpoint_step, prefix, output_path) as (checkpoint, model):
        trained = trained_shape(model)
        check_tokenizer_matches(trained, load_tokenizer(tokenizer), training)
        results = score_splits(
            checkpoint,
            trained,
            tokenizer,
            data,
            batch_size=batch_size,
            max_eval_batches=max_eval_batches,
            output_path=output_path,
            work_prefix="lmflows-eval-checkpoint-",
        )
    write_json(join_url(output_path, "results.json"), results)
    _publish(name, training, checkpoint_step, results)
    return {"training": training, "checkpoint_step": checkpoint_step, "results": results}


def trained_shape(model: str) -> dict[str, Any]:
    """What building the model needs, as `train_config.json` records it: the shape and the
    vocabulary (and, once the training is committed, its tokenizer's fingerprint). A running
    training has no `train_config.json` yet; its HF reference config, written when it
    started, holds the same shape."""
    try:
        with fsspec.open(join_url(model, TRAIN_CONFIG), "r") as handle:
            return json.load(handle)
    except FileNotFoundError:
        pass
    with fsspec.open(join_url(model, REFERENCE_CONFIG), "r") as handle:
        hf = json.load(handle)
    shape = {
        "hidden_dim": hf["hidden_size"],
        "num_layers": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"],
        "num_kv_heads": hf["num_key_value_heads"],
        "intermediate_dim": hf["intermediate_size"],
        "seq_len": hf["max_position_embeddings"],
    }
    return {"model": shape, "vocab_size": hf["vocab_size"]}


@contextlib.contextmanager
def held_checkpoint(
    training: str, checkpoint_step: int, prefix: str, output_path: str
) -> Iterator[tuple[str, str]]:
    """(checkpoint folder, training folder) to read, valid until the block ends: on local
    disk hard links under `output_path` (removed at the end), elsewhere the places
    themselves."""
    if not stores.store_for(prefix).staged:
        place = _found(training, checkpoint_step, prefix)
        yield storage.join(prefix, place), storage.join(prefix, training_folder(place))
        return
    held = os.path.join(output_path, ".checkpoint")
    try:
        for _ in range(5):  # a rename (the training's commit) while linking: once, in practice
            place = _found(training, checkpoint_step, prefix)
            shutil.rmtree(held, ignore_errors=True)
            try:
                _link_training(os.path.join(prefix, training_folder(place)), place, held)
            except FileNotFoundError:
                continue
            yield os.path.join(held, CHECKPOINTS, f"step-{checkpoint_step}"), held
            return
        raise CheckpointNotSaved(
            f"checkpoint step {checkpoint_step} of {training} kept moving while it was read"
        )
    finally:
        shutil.rmtree(held, ignore_errors=True)


def _found(training: str, checkpoint_step: int, prefix: str) -> str:
    place = find_checkpoint(training, checkpoint_step, prefix)
    if place is None:
        raise CheckpointNotSaved(
            f"checkpoint step {checkpoint_step} of {training} is not saved under the prefix "
            f"(looked in {', '.join(checkpoint_places(training, checkpoint_step, prefix))})"
        )
    return place


def _link_training(folder: str, place: str, held: str) -> None:
    """Hard links of the checkpoint's files and the training's shape records under `held`,
    with the same relative layout."""
    checkpoint = os.path.join(CHECKPOINTS, place.rsplit(f"/{CHECKPOINTS}/", 1)[1])
    for name in (TRAIN_CONFIG, REFERENCE_CONFIG):
        if os.path.exists(os.path.join(folder, name)):
            _link(os.path.join(folder, name), os.path.join(held, name))
    source = os.path.join(folder, checkpoint)
    if not os.path.isdir(source):
        raise FileNotFoundError(source)
    for root, _dirs, files in os.walk(source):
        if os.path.islink(root):
            raise FileNotFoundError(f"{root} is a link")
        for file in files:
            path = os.path.join(root, file)
            _link(path, os.path.join(held, os.path.relpath(path, folder)))
    if not os.path.exists(os.path.join(held, checkpoint, "metadata.json")):
        raise FileNotFoundError(os.path.join(source, "metadata.json"))


def _link(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(source):
        raise FileNotFoundError(f"{source} is a link")  # never read through one
    os.link(source, target)


def _publish(name: str, training: str, checkpoint_step: int, results: dict) -> None:
    """A keyed table (`eval-checkpoints-<name>`: one key per training, a version per
    checkpoint on the Artifacts page) and a line in the run log per dataset."""
    from tasks.core import artifacts

    rows = [{"step": checkpoint_step, "dataset": k, **v} for k, v in results.items()]
    for row in rows:
        if row.get("loss") is not None:
            _run_log(f"{training} step {checkpoint_step}: {row['dataset']}: loss {row['loss']:.4f}")
    artifacts.publish_table(
        artifacts.key("eval-checkpoints", name),
        rows,
        f"evaluation of {training} at step {checkpoint_step} {artifacts.output_url() or ''}",
    )


def _run_log(line: str) -> None:
    try:
        from prefect import get_run_logger

        get_run_logger().info(line)
    except Exception:  # outside a run
        pass
