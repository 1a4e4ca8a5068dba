"""What a training output holds: finding its levanter checkpoints and HF exports, reading its
`train_config.json`, and choosing which checkpoints levanter keeps."""

from __future__ import annotations

import json
import re
from typing import Any

import fsspec

from tasks.lm.files import join_url

_STEP_DIR = re.compile(r"step-(\d+)")


def latest_checkpoint(checkpoints: str) -> tuple[str, int] | None:
    """The newest complete levanter checkpoint under `checkpoints` (any fsspec URL) and its
    step, or None. A step folder without `metadata.json` (levanter writes it last) is an
    interrupted save and does not count."""
    from levanter.checkpoint import discover_latest_checkpoint

    fs, root = fsspec.core.url_to_fs(checkpoints)
    if not fs.exists(root):
        return None
    _drop_unreadable_metadata(fs, root)
    found = discover_latest_checkpoint(checkpoints)
    if found is None:
        return None
    with fsspec.open(join_url(found, "metadata.json"), "r") as handle:
        return found, int(json.load(handle)["step"])


def _drop_unreadable_metadata(fs, root: str) -> None:
    """Remove step folders whose `metadata.json` exists but does not parse: a save killed while
    writing it (seen as an empty file after SIGKILL). levanter's discovery, here and when it
    resumes, would fail on it instead of ignoring it as it ignores a missing one. Only the
    resumable step's own staging folder is searched, under its lease."""
    for entry in fs.ls(root, detail=False):
        metadata = f"{entry.rstrip('/')}/metadata.json"
        if not _STEP_DIR.fullmatch(entry.rstrip("/").rsplit("/", 1)[-1]) or not fs.exists(metadata):
            continue
        try:
            with fs.open(metadata, "r") as handle:
                json.load(handle)["step"]
        except (ValueError, KeyError, TypeError):
            fs.rm(entry, recursive=True)


def checkpoint_keep(
    checkpoint_every: int | None, num_train_steps: int, also: int | None = None
) -> list[dict]:
    """levanter's checkpoint `keep` intervals: every `checkpoint_every` steps (if set), the
    step `also` (if set: the one a longer run of an extendable schedule starts from,
    tasks.lm.schedules.kept_step), and the last step.

    levanter's final forced hook run does not pass `force` to the checkpointer, so the last
    checkpoint is written only if the last step index (n - 1) is a multiple of `every`.
    CheckpointerConfig.__post_init__ reads every interval's "until" (None: the last one) and
    wants them increasing; levanter applies the first interval whose `until` is at or past a
    step, so `also` gets an interval of its own ending there (step 0 is never saved)."""
    keep = []
    if also is not None and 1 <= also < num_train_steps - 1:
        if checkpoint_every and also > 1:
            keep.append({"every": checkpoint_every, "until": also - 1})
        keep.append({"every": also, "until": also})
    if checkpoint_every and num_train_steps - 2 > (keep[-1]["until"] if keep else -1):
        keep.append({"every": checkpoint_every, "until": num_train_steps - 2})
    keep.append({"every": max(1, num_train_steps - 1), "until": None})
    return keep


def checkpoint_at_or_before(checkpoints: str, step: int) -> tuple[str, int] | None:
    """The complete levanter checkpoint (with `metadata.json`) of the highest step at or
    before `step` under `checkpoints` (any fsspec URL), and its step; None if there is none."""
    fs, path, folders = _step_folders(checkpoints)
    for folder in folders:
        found = int(folder.removeprefix("step-"))
        if found <= step and fs.exists(f"{path}/{folder}/metadata.json"):
            return f"{checkpoints.rstrip('/')}/{folder}", found
    return None


def _step_folders(root: str) -> tuple[Any, str, list[str]]:
    """(filesystem, path, `step-N` folder names newest first) under `root` (any fsspec URL;
    none if it does not exist)."""
    fs, path = fsspec.core.url_to_fs(root)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        entries = []
    steps = []
    for entry in entries:
        match = _STEP_DIR.fullmatch(entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            steps.append((int(match.group(1)), match.group(0)))
    return fs, path.rstrip("/"), [folder for _, folder in sorted(steps, reverse=True)]


def final_checkpoint(model: str) -> str:
    """The complete checkpoint (one with levanter's `metadata.json`, written last) of the
    highest step under `model/checkpoints` (any fsspec URL)."""
    root = f"{model.rstrip('/')}/checkpoints"
    fs, path, folders = _step_folders(root)
    for folder in folders:
        if fs.exists(f"{path}/{folder}/metadata.json"):
            return f"{root}/{folder}"
    raise FileNotFoundError(f"no complete levanter checkpoint under {root}")


def latest_hf_export(model: str) -> str:
    """The newest complete HF export (`hf/step-N` with config.json and weights) of a
    `train_lm` or `sft` output at any fsspec URL: what fine-tuning starts from."""
    root = join_url(model, "hf")
    fs, path, folders = _step_folders(root)
    for folder in folders:
        names = {e.rsplit("/", 1)[-1] for e in fs.ls(f"{path}/{folder}", detail=False)}
        if "config.json" in names and any(n.endswith(".safetensors") for n in names):
            return f"{root}/{folder}"
    raise FileNotFoundError(f"no HF export (hf/step-N with config.json and weights) in {model}")


def trained_config(model: Any) -> dict | None:
    """A training output's `train_config.json` (its shape and vocabulary), or None while the
    model is not there yet (a plan made before pretraining ran; the task checks again)."""
    from tasks.core import StepRef

    path = model.path if isinstance(model, StepRef) else model
    if not isinstance(path, str):
        return None
    try:
        with fsspec.open(join_url(path, "train_config.json"), "r") as handle:
            return json.load(handle)
    except (FileNotFoundError, OSError, ValueError):
        return None


def waitable_checkpointer_config():
    """A CheckpointerConfig that remembers the checkpointers it creates, so the step can wait
    for levanter's asynchronous final save before it commits (train_lm's main does not)."""
    import dataclasses

    from levanter.checkpoint import CheckpointerConfig

    @dataclasses.dataclass
    class WaitableCheckpointerConfig(CheckpointerConfig):
        created: list = dataclasses.field(default_factory=list)

        def create(self, run_id):
            checkpointer = super().create(run_id)
            self.created.append(checkpointer)
            return checkpointer

        def wait_until_finished(self) -> None:
            for checkpointer in self.created:
                checkpointer.wait_until_finished()

    return WaitableCheckpointerConfig
