"""train_lm: levanter's `train_lm` on a Llama built from plain arguments.

Everything that defines the trained model is a hash attribute (architecture, optimizer,
batch size, steps, seed, the data mixture and the tokenizer); checkpoint intervals, logging
and the accelerator are operational. No network: the tracker writes JSON lines, the tokenizer
is a step output, and the HF export's reference config is a local folder.

The output may be on any fsspec filesystem (gs:// in production): checkpoints and the HF
export are written by levanter (tensorstore and fsspec), the small files through fsspec, and
levanter's logs go to a local temporary folder that is not part of the output. The step is
resumable: a new attempt finds the newest complete checkpoint under `checkpoints/`, levanter
resumes from it, and `metrics.jsonl` keeps the earlier attempts' rows (each row names its
`attempt`).
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from typing import Any

import fsspec

from tasks.core import step
from tasks.core.argument_checks import positive
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.core.provenance import note, running_identity
from tasks.lm import accelerators, checkpoint_events, extension, initialize
from tasks.lm.checkpoints import checkpoint_keep, latest_checkpoint
from tasks.lm.files import join_url, put_folder
from tasks.lm.model import (
    MODEL_ATTRS,
    check_shape,
    llama_config,
    model_shape,
    reference_model,
    tokenizer_fingerprint,
    write_reference_config,
)
from tasks.lm.schedules import check_schedule
from tasks.lm.train_run import (
    LOGGING_ATTRS,
    OPTIM_ATTRS,
    TRAINING_ATTRS,
    TrainPlan,
    export_hf,
    levanter_run,
    pick,
    plan_run,
    publish,
    train,
)

# This module's names, and what it offered before the model, checkpoints and the run moved
# out (experiments import them from `tasks.train`, docs/migrating-from-marin.md).
__all__ = [
    "MODEL_ATTRS",
    "OPTIM_ATTRS",
    "SplitTooShortError",
    "TrainPlan",
    "build_train_config",
    "check_split_lengths",
    "check_train_lm",
    "checkpoint_keep",
    "export_hf",
    "latest_checkpoint",
    "llama_config",
    "split_tokens",
    "train_lm",
    "training_is_done",
    "write_reference_config",
]

logger = logging.getLogger("lmflows.train")


class SplitTooShortError(ValueError):
    """A tokenized split holds fewer tokens than one training sequence."""


def split_tokens(tokenized: str, split: str) -> int:
    """Tokens in one split of a tokenize output (levanter's cache of `input_ids`)."""
    import numpy as np
    from levanter.store.jagged_array import JaggedArrayStore

    store = JaggedArrayStore.open(
        join_url(tokenized, f"{split}/input_ids"), mode="r", item_rank=1, dtype=np.int32
    )
    return int(store.data_size)


def check_split_lengths(data: dict, seq_len: int) -> None:
    """Each dataset's training and validation splits must fill one sequence of `seq_len`
    tokens (levanter cuts the concatenated tokens into whole sequences), checked before
    levanter starts: it fails with `Requested indices beyond the end of the dataset` or an
    `IndexError` in its evaluation, after compiling."""
    for name, tokenized in sorted(data.items()):
        for split in ("train", "validation"):
            have = split_tokens(tokenized, split)
            if have < seq_len:
                raise SplitTooShortError(
                    f"dataset {name!r}: its {split} split has {have} tokens, fewer than one "
                    f"sequence of seq_len={seq_len}; lower seq_len or add documents "
                    f"({tokenized})"
                )


def check_train_lm(
    data: Any,
    weights: Any,
    batch_size: int,
    num_train_steps: int,
    learning_rate: float,
    accelerator: Any = "cpu",
    checkpoint_every: Any = None,
    lr_schedule: Any = "cosine",
    decay: Any = None,
    warmup: Any = 0.1,
    initialize_from: Any = None,
    initialize_optimizer: Any = False,
    **arguments: Any,
) -> None:
    """`train_lm`'s `validate=`: every argument, before anything is read or written (the
    source of `initialize_from` too, when it is already there)."""
    accelerators.check(accelerator)
    if checkpoint_every is not None:
        positive(checkpoint_every=checkpoint_every)
    if not isinstance(data, dict) or not data:
        raise ValueError("data must map at least one dataset name to a tokenize output")
    unknown = sorted(set(weights or {}) - set(data))
    if unknown:
        raise ValueError(f"weights name datasets not in data: {unknown}")
    positive(batch_size=batch_size, num_train_steps=num_train_steps)
    check_shape(arguments)
    if num_train_steps < 2:
        raise ValueError(
            f"num_train_steps={num_train_steps}: levanter saves no checkpoint at step 0, so a "
            "1-step run leaves no model to evaluate or resume; use at least 2"
        )
    if not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate} must be positive")
    check_schedule(lr_schedule, decay, warmup, num_train_steps)
    initialize.plan_check(initialize_from, initialize_optimizer, arguments)


@step(
    hash_attrs=[
        "data",
        "weights",
        "tokenizer",
        *MODEL_ATTRS,
        *TRAINING_ATTRS,
        "decay",
        "initialize_from",
        "initialize_optimizer",
    ],
    # Added after trainings were committed: at their defaults identities stay as they were.
    omit_at_default=["decay", "initialize_from", "initialize_optimizer"],
    # Evaluation cadence, checkpoint frequency and the hardware change what is logged and
    # kept along the way and where it runs, not the trained model.
    operational=["steps_per_eval", "max_eval_batches", "checkpoint_every", "accelerator"],
    name="checkpoints/{name}",
    validate=check_train_lm,
    resources=accelerators.ray_options,
    resumable=True,
    isolate=True,
    starts_from=extension.describe,
)
def train_lm(
    data: dict,
    tokenizer: str,
    name: str,
    weights: dict | None = None,
    hidden_dim: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 4,
    intermediate_dim: int = 256,
    seq_len: int = 128,
    learning_rate: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: float = 0.1,
    min_lr_ratio: float = 0.1,
    lr_schedule: str = "cosine",
    beta1: float = 0.9,
    beta2: float = 0.95,
    max_grad_norm: float = 1.0,
    batch_size: int = 32,
    num_train_steps: int = 50,
    seed: int = 0,
    mixed_precision: str = "f32",
    steps_per_eval: int = 25,
    max_eval_batches: int | None = None,
    checkpoint_every: int | None = None,
    accelerator: str = "cpu",
    decay: float | int | None = None,
    initialize_from: str | None = None,
    initialize_optimizer: bool = False,
    *,
    output_path: str,
) -> dict:
    """Train a Llama with levanter on tokenized caches.

    `data` maps a dataset name to a tokenize step output; `weights` its mixture weight
    (default: equal). `max_eval_batches=None` scores the whole validation split during
    training (what `evaluate` scores); a number scores that many batches and every figure of
    it is labelled a subset. `steps_per_eval`, `max_eval_batches`, `checkpoint_every` and
    `accelerator` (what the call asks Ray for, `tasks.lm.accelerators`) are operational.
    An attempt after an interrupted one resumes from its newest complete checkpoint.

    `lr_schedule`: cosine, linear, constant or wsd (warmup-stable-decay; `decay` is its
    decay phase: a fraction of the run, or a whole number of steps). A run that differs from
    a committed one only in `num_train_steps`, on constant or wsd with `warmup` in steps,
    starts from that run's checkpoint where their rates part (tasks.lm.extension).
    `initialize_from`: a StepRef of a train_lm or sft output (or an adopted folder with a
    levanter checkpoint or an HF export) whose weights start this run at step 0; with
    `initialize_optimizer` its Adam state too (tasks.lm.initialize).
    """
    arguments = dict(locals())  # first: the call's arguments by name, what levanter is given
    from tasks.lm.report import progress_reporter
    from tasks.lm.tracker import repair as repair_metrics

    tensorstore_follows_emulator()  # levanter's tensorstore writes, on a GCS emulator
    check_split_lengths(data, seq_len)
    source = _checked_source(initialize_from, initialize_optimizer, tokenizer, arguments)
    attempt = uuid.uuid4().hex[:8]
    resumed = latest_checkpoint(join_url(output_path, "checkpoints"))
    note(resumed_from_step=resumed[1] if resumed else None)
    if resumed:
        logger.info("attempt %s resumes from %s (step %d)", attempt, resumed[0], resumed[1])
    extends = None if resumed else _extension()
    if extends is not None:
        note(extends={"identity": extends.source, "step": extends.step})
        logger.info("attempt %s extends %s from step %d", attempt, extends.source, extends.step)
    with tempfile.TemporaryDirectory(prefix="lmflows-train-", ignore_cleanup_errors=True) as work:
        plan = build_train_config(
            data,
            tokenizer,
            output_path,
            **pick(arguments, _BUILD_ARGUMENTS),
            on_step=progress_reporter(name, num_train_steps, batch_size * seq_len),
            attempt=attempt,
            work_dir=work,
            start=_start(source, initialize_optimizer, extends),
        )
        checkpoint_events.announce_saves(plan.checkpointer)  # evaluate-checkpoint
        with levanter_run(plan):
            if resumed and training_is_done(resumed[1], num_train_steps):
                # Killed after its last checkpoint: levanter would resume at the end and
                # raise "No training steps were executed". Finish from that checkpoint.
                logger.info("attempt %s: training was done at step %d", attempt, resumed[1])
                export_hf(plan, resumed[0], join_url(output_path, "hf", f"step-{resumed[1]}"))
                repair_metrics(plan.metrics_path)
            else:
                train(plan)
        final = publish(plan, output_path, name, arguments, sorted(data))
    return {
        "final": final,
        "hf_export": "hf",
        "checkpoints": "checkpoints",
        "vocab_size": plan.vocab_size,
        "num_train_steps": num_train_steps,
    }


def _checked_source(
    initialize_from: str | None, optimizer: bool, tokenizer: str, arguments: dict
) -> initialize.Source | None:
    """The `initialize_from` folder, checked against this training (shape, tokenizer,
    optimizer state) before anything is written."""
    if initialize_from is None:
        return None
    from tasks.data.tokenizer_files import load_tokenizer

    # named by its identity where the body knows it (the path is a detail of this prefix)
    shown = ((running_identity() or {}).get("attrs") or {}).get("initialize_from")
    shown = shown if isinstance(shown, str) else initialize_from
    source = initialize.read_source(initialize_from, shown)
    initialize.check_shape(source, arguments, shown)
    initialize.check_optimizer(source, optimizer, shown)
    initialize.check_tokenizer(source, load_tokenizer(tokenizer), shown)
    return source


def _extension() -> extension.Extension | None:
    """The committed run this one extends (found by its identity), if any."""
    from tasks.core import storage

    identity = running_identity()
    if identity is None:  # the body called outside a step run (tests call it directly)
        return None
    return extension.find(identity["name"], identity["attrs"], storage.current_prefix())


def _start(
    source: initialize.Source | None, optimizer: bool, extends: extension.Extension | None
) -> dict[str, Any]:
    """plan_run's arguments for where the weights start: an extension's checkpoint (resumed
    as this run's own), a source's levanter checkpoint or its HF export, or nothing."""
    if extends is not None:
        return {"resume_from": extends.checkpoint}
    if source is None:
        return {}
    if source.checkpoint is not None:
        return {"initialize_from_checkpoint": source.checkpoint, "initialize_optimizer": optimizer}
    return {"initialize_from_hf": source.hf_export}


def training_is_done(checkpoint_step: int, num_train_steps: int) -> bool:
    """levanter numbers steps from 0 and saves the last one as `step-{n - 1}`."""
    return checkpoint_step >= num_train_steps - 1


# What build_train_config takes of train_lm's arguments besides the data and tokenizer.
_BUILD_ARGUMENTS = (
    "weights",
    *MODEL_ATTRS,
    *TRAINING_ATTRS,
    *LOGGING_ATTRS,
    "checkpoint_every",
    "decay",
)


def build_train_config(
    data: dict,
    tokenizer: str,
    output_path: str,
    *,
    weights: dict | None = None,
    on_step: Any = None,
    attempt: str | None = None,
    work_dir: str | None = None,
    start: dict[str, Any] | None = None,
    **arguments: Any,
) -> TrainPlan:
    """levanter's TrainLmConfig from plain arguments (shared by the step and the benchmark
    that runs levanter directly, so both train the same thing).

    `arguments` are train_lm's by name: the model shape (MODEL_ATTRS), TRAINING_ATTRS,
    `steps_per_eval`, `max_eval_batches` and `checkpoint_every`. `output_path` may be any
    fsspec URL. `work_dir` is a local folder for what is not part of the output (levanter's
    logs, the HF reference config transformers reads); default: a new temporary folder.
    `attempt` tags every metrics row; `start` where the weights start (plan_run's
    `resume_from`, `initialize_from_checkpoint` and `initialize_optimizer`, or
    `initialize_from_hf`; default: fresh)."""
    from levanter.data.text import LMMixtureDatasetConfig, UrlDatasetSourceConfig

    from tasks.data.tokenizer_files import load_tokenizer

    unknown = set(arguments) - set(_BUILD_ARGUMENTS)
    if unknown:
        raise TypeError(f"build_train_config got unexpected arguments {sorted(unknown)}")
    if not data:
        raise ValueError("train_lm needs at least one tokenized dataset in `data`")
    weights = weights or {key: 1.0 for key in data}
    unknown = set(weights) - set(data)
    if unknown:
        raise ValueError(f"weights name datasets not in data: {sorted(unknown)}")
    work_dir = work_dir or tempfile.mkdtemp(prefix="lmflows-train-")
    fs, root = fsspec.core.url_to_fs(output_path)
    fs.makedirs(root, exist_ok=True)
    hf_tokenizer = load_tokenizer(tokenizer)
    vocab_size = len(hf_tokenizer)
    model = reference_model(model_shape(arguments), tokenizer, vocab_size, work_dir)
    # the output keeps a copy of the reference config levanter used, as a record
    put_folder(f"{work_dir}/hf_reference", join_url(output_path, "hf_reference"))
    mixture = LMMixtureDatasetConfig(
        tokenizer=tokenizer,
        cache_dir=None,
        configs={key: UrlDatasetSourceConfig(cache_dir=path) for key, path in data.items()},
        train_weights={key: float(w) for key, w in weights.items()},
    )
    return plan_run(
        mixture,
        model,
        output_path,
        arguments,
        vocab_size=vocab_size,
        tokenizer_sha256=tokenizer_fingerprint(hf_tokenizer),
        weights=weights,
        run_id="run",
        work=work_dir,
        on_step=on_step,
        attempt=attempt,
        **(start or {}),
    )
