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

import dataclasses
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import fsspec

from tasks.core import step
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.core.provenance import note
from tasks.lm import accelerators, checks
from tasks.lm.checkpoints import (
    checkpoint_keep,
    latest_checkpoint,
    waitable_checkpointer_config,
)
from tasks.lm.files import join_url, put_folder, write_json
from tasks.lm.model import (
    MODEL_ATTRS,
    llama_config,
    tokenizer_fingerprint,
    write_reference_config,
)

logger = logging.getLogger("lmflows.train")

OPTIM_ATTRS = [
    "learning_rate",
    "weight_decay",
    "warmup",
    "min_lr_ratio",
    "lr_schedule",
    "beta1",
    "beta2",
    "max_grad_norm",
]


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


def _ray_options(accelerator: str = "cpu", **_: Any) -> dict[str, Any]:
    """Ray remote options of a call (the step's `resources`): what its accelerator needs."""
    return accelerators.ray_resources(accelerator)


@step(
    hash_attrs=[
        "data",
        "weights",
        "tokenizer",
        *MODEL_ATTRS,
        *OPTIM_ATTRS,
        "batch_size",
        "num_train_steps",
        "seed",
        "mixed_precision",
    ],
    # Evaluation cadence, checkpoint frequency and the hardware change what is logged and
    # kept along the way and where it runs, not the trained model.
    operational=["steps_per_eval", "max_eval_batches", "checkpoint_every", "accelerator"],
    name="checkpoints/{name}",
    validate=checks.train_lm,
    resources=_ray_options,
    resumable=True,
    isolate=True,
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
    """
    import levanter.main.train_lm as levanter_train

    from tasks.lm.report import progress_reporter, publish_training_report
    from tasks.lm.root_logging import restored_root_logging
    from tasks.lm.tracker import finish_all
    from tasks.lm.tracker import repair as repair_metrics

    tensorstore_follows_emulator()  # levanter's tensorstore writes, on a GCS emulator
    check_split_lengths(data, seq_len)
    attempt = uuid.uuid4().hex[:8]
    resumed = latest_checkpoint(join_url(output_path, "checkpoints"))
    note(resumed_from_step=resumed[1] if resumed else None)
    if resumed:
        logger.info("attempt %s resumes from %s (step %d)", attempt, resumed[0], resumed[1])
    work = tempfile.mkdtemp(prefix="lmflows-train-")
    try:
        plan = build_train_config(
            data,
            tokenizer,
            output_path,
            weights=weights,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            intermediate_dim=intermediate_dim,
            seq_len=seq_len,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup=warmup,
            min_lr_ratio=min_lr_ratio,
            lr_schedule=lr_schedule,
            beta1=beta1,
            beta2=beta2,
            max_grad_norm=max_grad_norm,
            batch_size=batch_size,
            num_train_steps=num_train_steps,
            seed=seed,
            mixed_precision=mixed_precision,
            steps_per_eval=steps_per_eval,
            max_eval_batches=max_eval_batches,
            checkpoint_every=checkpoint_every,
            on_step=progress_reporter(name, num_train_steps, batch_size * seq_len),
            attempt=attempt,
            work_dir=work,
        )
        try:
            with restored_root_logging():
                if resumed and training_is_done(resumed[1], num_train_steps):
                    # Killed after its last checkpoint: levanter would resume at the end and
                    # raise "No training steps were executed". Finish from that checkpoint.
                    logger.info("attempt %s: training was done at step %d", attempt, resumed[1])
                    export_hf(plan, resumed[0], join_url(output_path, "hf", f"step-{resumed[1]}"))
                    repair_metrics(plan.metrics_path)
                else:
                    levanter_train.main(plan.config)
                    plan.checkpointer.wait_until_finished()  # levanter saves the last async
        finally:
            finish_all(plan.metrics_path)  # a failed run still leaves its metrics so far
        final = publish_training_report(
            plan.metrics_path,
            output_path,
            name,
            eval_subset=max_eval_batches * batch_size if max_eval_batches else None,
        )
        write_json(
            join_url(output_path, "train_config.json"),
            {
                "model": {k: getattr(plan.config.model, k) for k in MODEL_ATTRS},
                # read back from levanter's own optimizer config: what it trains with
                "optimizer": {k: getattr(plan.config.optimizer, k) for k in OPTIM_ATTRS},
                "vocab_size": plan.vocab_size,
                "tokenizer_sha256": plan.tokenizer_sha256,
                "data": sorted(data),
                "weights": plan.weights,
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "final": final,
        "hf_export": "hf",
        "checkpoints": "checkpoints",
        "vocab_size": plan.vocab_size,
        "num_train_steps": num_train_steps,
    }


def training_is_done(checkpoint_step: int, num_train_steps: int) -> bool:
    """levanter numbers steps from 0 and saves the last one as `step-{n - 1}`."""
    return checkpoint_step >= num_train_steps - 1


def export_hf(plan: TrainPlan, checkpoint: str, hf_dir: str) -> None:
    """The HF export levanter's training writes at its last step, made from a checkpoint:
    the same converter (reference config, tokenizer) on the checkpoint's model weights.
    A partial export of a killed attempt is replaced."""
    import equinox as eqx
    import haliax
    import jax
    from levanter.checkpoint import load_checkpoint
    from levanter.utils.jax_utils import is_inexact_arrayish

    from tasks.data.tokenizer_files import load_tokenizer

    config = plan.config
    fs, root = fsspec.core.url_to_fs(hf_dir)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    vocab = haliax.Axis("vocab", plan.vocab_size)
    with config.trainer.device_mesh, haliax.axis_mapping(config.trainer.parameter_axis_mapping):
        shape = eqx.filter_eval_shape(config.model.build, vocab, key=jax.random.PRNGKey(0))
        trainable, frozen = eqx.partition(shape, is_inexact_arrayish)
        trainable = load_checkpoint(trainable, checkpoint, subpath="model")
        model = eqx.combine(trainable, frozen)
        converter = config.model.hf_checkpoint_converter().replaced(
            tokenizer=load_tokenizer(config.data.tokenizer)
        )
        converter.save_pretrained(model, hf_dir, upload_to_hf=False)


@dataclasses.dataclass
class TrainPlan:
    config: Any
    checkpointer: Any
    metrics_path: str
    vocab_size: int
    weights: dict
    tokenizer_sha256: str


def build_train_config(
    data: dict,
    tokenizer: str,
    output_path: str,
    *,
    weights: dict | None,
    hidden_dim: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_dim: int,
    seq_len: int,
    learning_rate: float,
    weight_decay: float,
    warmup: float,
    min_lr_ratio: float,
    lr_schedule: str,
    beta1: float,
    beta2: float,
    max_grad_norm: float,
    batch_size: int,
    num_train_steps: int,
    seed: int,
    mixed_precision: str,
    steps_per_eval: int,
    max_eval_batches: int | None,
    checkpoint_every: int | None,
    on_step: Any = None,
    attempt: str | None = None,
    work_dir: str | None = None,
) -> TrainPlan:
    """levanter's TrainLmConfig from plain arguments (shared by the step and the benchmark
    that runs levanter directly, so both train the same thing).

    `output_path` may be any fsspec URL. `work_dir` is a local folder for what is not part
    of the output (levanter's logs, the HF reference config transformers reads); default: a
    new temporary folder. `attempt` tags every metrics row."""
    import jmp
    import levanter.main.train_lm as levanter_train
    from levanter.data.text import LMMixtureDatasetConfig, UrlDatasetSourceConfig
    from levanter.distributed import RayConfig
    from levanter.optim import AdamConfig
    from levanter.trainer import TrainerConfig

    from tasks.data.tokenizer_files import load_tokenizer
    from tasks.lm.tracker import JsonlTrackerConfig, register_on_step

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
    # transformers reads `reference_checkpoint` and cannot read gs://: a local copy is the
    # one levanter uses; the output keeps one too (hf_reference/), as a record.
    reference = os.path.join(work_dir, "hf_reference")
    model = llama_config(
        hidden_dim,
        num_layers,
        num_heads,
        num_kv_heads,
        intermediate_dim,
        seq_len,
        tokenizer,
        reference,
    )
    write_reference_config(model, vocab_size, reference)
    put_folder(reference, join_url(output_path, "hf_reference"))
    metrics_path = join_url(output_path, "metrics.jsonl")
    register_on_step(metrics_path, on_step)
    mixture = LMMixtureDatasetConfig(
        tokenizer=tokenizer,
        cache_dir=None,
        configs={key: UrlDatasetSourceConfig(cache_dir=path) for key, path in data.items()},
        train_weights={key: float(w) for key, w in weights.items()},
    )
    checkpointer = waitable_checkpointer_config()(
        base_path=join_url(output_path, "checkpoints"),
        append_run_id_to_base_path=False,
        keep=checkpoint_keep(checkpoint_every, num_train_steps),
    )
    trainer = TrainerConfig(
        num_train_steps=num_train_steps,
        train_batch_size=batch_size,
        seed=seed,
        mp=jmp.get_policy(mixed_precision),
        require_accelerator=False,
        steps_per_eval=steps_per_eval,
        max_eval_batches=max_eval_batches,
        tracker=JsonlTrackerConfig(path=metrics_path, attempt=attempt),
        ray=RayConfig(auto_start_cluster=False),
        log_dir=Path(work_dir) / "logs",  # local, not part of the output
        id="run",
        checkpointer=checkpointer,
        # the tracker keeps no artifacts: tracing the step again for its jaxpr and HLO
        # cost about 8% of a small run
        log_jaxprs=False,
        log_xla_hlo=False,
    )
    optimizer = AdamConfig(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup=warmup,
        min_lr_ratio=min_lr_ratio,
        lr_schedule=lr_schedule,
        beta1=beta1,
        beta2=beta2,
        max_grad_norm=max_grad_norm,
    )
    config = levanter_train.TrainLmConfig(
        data=mixture,
        trainer=trainer,
        model=model,
        optimizer=optimizer,
        hf_save_path=join_url(output_path, "hf"),
        hf_save_steps=num_train_steps,
    )
    return TrainPlan(
        config,
        checkpointer,
        metrics_path,
        vocab_size,
        weights,
        tokenizer_fingerprint(hf_tokenizer),
    )
