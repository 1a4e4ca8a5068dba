"""`train_lm(initialize_from=REF)`: start a training from another model's weights (a
`train_lm` or `sft` output, or any adopted folder holding a levanter checkpoint or an HF
export), at step 0 of its own schedule; with `initialize_optimizer=True` also from its Adam
moments (a levanter checkpoint only).

What is read, in order: the source's `checkpoints/` (the newest complete levanter checkpoint:
the exact parameters, and the optimizer state), else its newest HF export (`hf/step-N`, or the
folder itself when it is one). What it must match, checked before anything is written: the
architecture (ARCH_ATTRS; `seq_len` may differ, as Llama's rotary positions have no weights)
and the tokenizer (vocabulary size and fingerprint), read from the source's
`train_config.json`, else from its HF export's `config.json` and tokenizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec

from tasks.lm.checkpoints import _step_folders, latest_hf_export
from tasks.lm.files import join_url
from tasks.lm.model import ARCH_ATTRS

# An HF Llama config.json's names for ARCH_ATTRS.
_HF_NAMES = {
    "hidden_dim": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "intermediate_dim": "intermediate_size",
}


class InitializeFromError(ValueError):
    """An `initialize_from` source that cannot start this training; one line naming why."""


@dataclasses.dataclass
class Source:
    """What a source folder offers: weights (a levanter checkpoint or an HF export) and what
    they were trained as (architecture, vocabulary size, tokenizer fingerprint if known)."""

    path: str
    checkpoint: str | None
    hf_export: str | None
    shape: dict[str, int]
    vocab_size: int | None
    tokenizer_sha256: str | None


def _read_json(url: str) -> dict | None:
    try:
        with fsspec.open(url, "r") as handle:
            value = json.load(handle)
    except (FileNotFoundError, OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _newest_checkpoint(path: str) -> str | None:
    root = join_url(path, "checkpoints")
    fs, plain, folders = _step_folders(root)
    for folder in folders:
        if fs.exists(f"{plain}/{folder}/metadata.json"):
            return f"{root}/{folder}"
    return None


def _hf_export(path: str) -> str | None:
    """`path` itself when it is an HF export (config.json and safetensors), else its newest
    `hf/step-N`."""
    fs, plain = fsspec.core.url_to_fs(path)
    try:
        names = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(plain, detail=False)}
    except FileNotFoundError:
        return None
    if "config.json" in names and any(name.endswith(".safetensors") for name in names):
        return path
    try:
        return latest_hf_export(path)
    except FileNotFoundError:
        return None


def read_source(path: str, shown: str | None = None) -> Source:
    """What the folder at `path` offers as a starting point, or InitializeFromError."""
    shown = shown or path
    checkpoint = _newest_checkpoint(path)
    export = _hf_export(path)
    if checkpoint is None and export is None:
        raise InitializeFromError(
            f"initialize_from={shown}: no levanter checkpoint (checkpoints/step-N with "
            "metadata.json) and no HF export (config.json and *.safetensors) in it"
        )
    trained = _read_json(join_url(path, "train_config.json"))
    if trained is not None and isinstance(trained.get("model"), dict):
        shape = {key: trained["model"].get(key) for key in ARCH_ATTRS}
        return Source(
            path, checkpoint, export, shape, trained.get("vocab_size"),
            trained.get("tokenizer_sha256"),
        )  # fmt: skip
    config = _read_json(join_url(export, "config.json")) if export else None
    if config is None:
        raise InitializeFromError(
            f"initialize_from={shown}: neither a train_config.json nor an HF export's "
            "config.json says the model's shape; cannot check it against this training"
        )
    shape = {key: config.get(hf, config.get("num_attention_heads")) if key == "num_kv_heads"
             else config.get(hf) for key, hf in _HF_NAMES.items()}  # fmt: skip
    return Source(path, checkpoint, export, shape, config.get("vocab_size"), None)


def check_shape(source: Source, arguments: Mapping[str, Any], shown: str) -> None:
    """Refuse a source whose architecture is not this training's, naming the differences."""
    differ = [
        f"{key} {source.shape.get(key)} (this training: {arguments[key]})"
        for key in ARCH_ATTRS
        if source.shape.get(key) != arguments[key]
    ]
    if differ:
        raise InitializeFromError(
            f"initialize_from={shown} has another model shape: {', '.join(differ)}; "
            "its weights cannot start this training"
        )


def check_tokenizer(source: Source, hf_tokenizer: Any, shown: str) -> None:
    """Refuse a source trained with another tokenizer: the same ids would mean other tokens.
    A source that recorded no fingerprint (an HF export) is compared with the tokenizer its
    export carries."""
    from tasks.data.tokenizer_files import load_tokenizer
    from tasks.lm.model import tokenizer_fingerprint

    size = len(hf_tokenizer)
    if source.vocab_size is not None and source.vocab_size != size:
        raise InitializeFromError(
            f"initialize_from={shown} was trained with a vocabulary of {source.vocab_size} "
            f"tokens, this training's tokenizer has {size}: pass the source's tokenizer"
        )
    expected = source.tokenizer_sha256
    if expected is None and source.hf_export is not None:
        try:
            expected = tokenizer_fingerprint(load_tokenizer(source.hf_export))
        except (OSError, ValueError):
            expected = None
    if expected is None:
        raise InitializeFromError(
            f"initialize_from={shown}: no recorded tokenizer fingerprint and no tokenizer in "
            "its HF export; cannot check that it was trained with this tokenizer"
        )
    if tokenizer_fingerprint(hf_tokenizer) != expected:
        raise InitializeFromError(
            f"initialize_from={shown} was trained with another tokenizer (same size, other "
            "tokens or ids): pass the tokenizer it was trained with"
        )


def check_optimizer(source: Source, initialize_optimizer: bool, shown: str) -> None:
    if initialize_optimizer and source.checkpoint is None:
        raise InitializeFromError(
            f"initialize_from={shown} has only an HF export, which holds no optimizer state; "
            "use initialize_optimizer=False (weights only) or a source with checkpoints/"
        )


def plan_check(initialize_from: Any, initialize_optimizer: Any, arguments: Mapping) -> None:
    """`train_lm`'s argument check of its source, before anything runs: a plain path is
    refused (its identity would be its location); a StepRef whose output is already there
    is read (small JSON files) and its shape checked. A source planned in the same run is
    checked by the step before it writes anything."""
    from tasks.core import StepRef

    if not isinstance(initialize_optimizer, bool):
        raise ValueError(f"initialize_optimizer={initialize_optimizer!r} must be True or False")
    if initialize_from is None:
        if initialize_optimizer:
            raise ValueError("initialize_optimizer=True needs initialize_from=")
        return
    if not isinstance(initialize_from, StepRef):
        raise ValueError(
            f"initialize_from={initialize_from!r} is not a step output: adopt() the folder "
            "first (initialize_from=adopt(path, name=...)), so that the training's identity "
            "names the source's content, not where it lies"
        )
    path = initialize_from.path
    fs, plain = fsspec.core.url_to_fs(path)
    if not fs.exists(plain):
        return
    shown = initialize_from.identity  # NAME-HASH, with a .cd() sub-path when there is one
    source = read_source(path, shown)
    check_shape(source, arguments, shown)
    check_optimizer(source, initialize_optimizer, shown)


@contextlib.contextmanager
def starting_from(checkpoint: str, optimizer: bool) -> Iterator[None]:
    """levanter's trainer, for the duration, starts a fresh run (step 0) from the model
    weights of the levanter `checkpoint` (and its optimizer state if `optimizer`, with the
    schedule's step count set back to 0 so that this run's schedule starts at its beginning;
    Adam's own count stays, as it belongs to the moments). A run that resumes from its own
    checkpoint (step > 0) is left as it is. The step's body runs in its own process, so
    patching levanter's class there touches no other run."""
    from levanter.trainer import Trainer

    original = Trainer.initial_state

    def initial_state(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = original(self, *args, **kwargs)
        if int(state.step) != 0:
            return state
        return _load_into(state, checkpoint, optimizer, self)

    Trainer.initial_state = initial_state
    try:
        yield
    finally:
        Trainer.initial_state = original


def _load_into(state: Any, checkpoint: str, optimizer: bool, trainer: Any) -> Any:
    import equinox as eqx
    import jax
    from levanter.checkpoint import load_checkpoint
    from levanter.utils.jax_utils import is_inexact_arrayish

    where = {
        "discover_latest": False,
        "axis_mapping": trainer.parameter_axis_mapping,
        "mesh": trainer.device_mesh,
    }
    trainable, frozen = eqx.partition(state.model, is_inexact_arrayish)
    model = eqx.combine(load_checkpoint(trainable, checkpoint, subpath="model", **where), frozen)
    replaced = {"model": model}
    if optimizer:
        loaded = load_checkpoint(state.opt_state, checkpoint, subpath="opt_state", **where)
        # the schedule's count (outside the inner optimizer's state) restarts with this run
        replaced["opt_state"] = jax.tree_util.tree_map_with_path(
            _fresh_schedule_count, state.opt_state, loaded
        )
    return dataclasses.replace(state, **replaced)


def _fresh_schedule_count(path: tuple, fresh: Any, loaded: Any) -> Any:
    """optax.inject_hyperparams keeps the schedule's `count` beside `inner_state`; Adam's
    bias-correction `count` lies inside `inner_state` and stays with its moments."""
    names = [getattr(key, "name", getattr(key, "key", None)) for key in path]
    if names and names[-1] == "count" and "inner_state" not in names:
        return fresh
    return loaded
