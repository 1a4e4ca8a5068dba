"""One levanter training run, as `train_lm` (pretraining) and `sft` (fine-tuning) both make it.

Both hand levanter's `train_lm` a Llama of a recorded shape, Adam, a trainer that runs with or
without an accelerator and logs through lmflows' JSON-lines tracker, checkpoints the step can
wait for, and an HF export at the last step; both then publish the loss curve and record
`train_config.json`. They differ in the data (a tokenized mixture, a chat cache), where the
weights start (fresh, an HF export) and resuming (train_lm only). Written once, so that a
levanter trap handled for one (docs/pipeline.md) is handled for the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fsspec

from tasks.lm.checkpoints import checkpoint_keep, waitable_checkpointer_config
from tasks.lm.files import join_url, write_json
from tasks.lm.model import MODEL_ATTRS

# levanter AdamConfig's field names, also the steps' argument names (each step keeps its own
# defaults: fine-tuning starts gentler than pretraining).
OPTIM_ATTRS = (
    "learning_rate",
    "weight_decay",
    "warmup",
    "min_lr_ratio",
    "lr_schedule",
    "beta1",
    "beta2",
    "max_grad_norm",
)
# What defines a training besides its data and model: the last hash attributes of both steps.
TRAINING_ATTRS = (*OPTIM_ATTRS, "batch_size", "num_train_steps", "seed", "mixed_precision")
# What changes what is logged and kept along the way, not the trained weights.
LOGGING_ATTRS = ("steps_per_eval", "max_eval_batches")


@dataclasses.dataclass
class TrainPlan:
    """levanter's config of one run, and what the step reads back after it."""

    config: Any
    checkpointer: Any
    metrics_path: str
    vocab_size: int
    weights: dict
    tokenizer_sha256: str
    # a levanter checkpoint whose weights (and optimizer state, if the flag) start the run at
    # step 0 (train_lm's initialize_from; tasks.lm.initialize.starting_from)
    start_from: tuple[str, bool] | None = None


def pick(arguments: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The `names` of a step's `arguments`, a KeyError naming any that is missing."""
    return {name: arguments[name] for name in names}


def plan_run(
    data_config: Any,
    model_config: Any,
    output_path: str,
    arguments: Mapping[str, Any],
    *,
    vocab_size: int,
    tokenizer_sha256: str,
    weights: dict,
    run_id: str,
    work: str,
    on_step: Any = None,
    attempt: str | None = None,
    initialize_from_hf: str | bool = False,
    initialize_from_checkpoint: str | None = None,
    initialize_optimizer: bool = False,
    resume_from: str | None = None,
) -> TrainPlan:
    """levanter's TrainLmConfig of one run. `arguments` are the step's, by name: TRAINING_ATTRS,
    LOGGING_ATTRS and, if the step has it, `checkpoint_every`. `work` is a local folder for
    what is not part of the output (levanter's logs). `attempt` tags every metrics row;
    `on_step` sees every step's metrics; `initialize_from_hf`: the HF export whose weights
    the run starts from (with a fresh optimizer and step 0); `initialize_from_checkpoint`: a
    levanter checkpoint whose weights (and optimizer state if `initialize_optimizer`) start
    it at step 0; `resume_from`: a checkpoint of another run levanter resumes from as if it
    were this run's own (an extension, tasks.lm.extension), used only while this run has no
    checkpoint of its own. A run of an extendable schedule also keeps the checkpoint longer
    runs start from (tasks.lm.schedules.kept_step)."""
    import jmp
    import levanter.main.train_lm as levanter_train
    from levanter.distributed import RayConfig
    from levanter.optim import AdamConfig
    from levanter.trainer import TrainerConfig

    from tasks.lm.schedules import kept_step, levanter_schedule
    from tasks.lm.tracker import JsonlTrackerConfig, register_on_step

    num_train_steps = arguments["num_train_steps"]
    metrics_path = join_url(output_path, "metrics.jsonl")
    register_on_step(metrics_path, on_step)
    # levanter saves the last checkpoint asynchronously: the step waits for it before it commits
    checkpointer = waitable_checkpointer_config()(
        base_path=join_url(output_path, "checkpoints"),
        append_run_id_to_base_path=False,
        keep=checkpoint_keep(
            arguments.get("checkpoint_every"),
            num_train_steps,
            also=kept_step(arguments, num_train_steps),
        ),
    )
    trainer = TrainerConfig(
        num_train_steps=num_train_steps,
        train_batch_size=arguments["batch_size"],
        seed=arguments["seed"],
        mp=jmp.get_policy(arguments["mixed_precision"]),
        require_accelerator=False,
        **pick(arguments, LOGGING_ATTRS),
        tracker=JsonlTrackerConfig(path=metrics_path, attempt=attempt),
        ray=RayConfig(auto_start_cluster=False),
        log_dir=Path(work) / "logs",  # local, not part of the output
        id=run_id,
        checkpointer=checkpointer,
        load_checkpoint_path=resume_from,
        # the tracker keeps no artifacts: tracing the step again for its jaxpr and HLO
        # cost about 8% of a small run
        log_jaxprs=False,
        log_xla_hlo=False,
    )
    config = levanter_train.TrainLmConfig(
        data=data_config,
        trainer=trainer,
        model=model_config,
        optimizer=AdamConfig(
            **{
                **pick(arguments, OPTIM_ATTRS),
                **levanter_schedule(arguments["lr_schedule"], arguments.get("decay")),
            }
        ),
        initialize_from_hf=initialize_from_hf,
        hf_save_path=join_url(output_path, "hf"),
        hf_save_steps=num_train_steps,
    )
    start_from = (
        (initialize_from_checkpoint, initialize_optimizer) if initialize_from_checkpoint else None
    )
    return TrainPlan(
        config, checkpointer, metrics_path, vocab_size, weights, tokenizer_sha256, start_from
    )


@contextlib.contextmanager
def levanter_run(plan: TrainPlan) -> Iterator[None]:
    """Around what runs levanter on `plan`: one levanter run in the process at a time, its
    console kept in its log; the metrics so far are closed even when it fails."""
    from tasks.lm.root_logging import restored_root_logging
    from tasks.lm.tracker import finish_all, register_on_step

    try:
        with restored_root_logging():
            yield
    finally:
        finish_all(plan.metrics_path)  # a failed run still leaves its metrics so far
        register_on_step(plan.metrics_path, None)


def train(plan: TrainPlan) -> None:
    """levanter's training of `plan`, returning once its last checkpoint is saved (levanter
    saves it asynchronously and does not wait)."""
    import levanter.main.train_lm as levanter_train

    from tasks.lm.initialize import starting_from

    with starting_from(*plan.start_from) if plan.start_from else contextlib.nullcontext():
        levanter_train.main(plan.config)
    plan.checkpointer.wait_until_finished()


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


def publish(
    plan: TrainPlan,
    output_path: str,
    label: str,
    arguments: Mapping[str, Any],
    data: list[str],
    **extra: Any,
) -> dict[str, Any]:
    """The loss curve and final metrics as artifacts (keyed by `label`), and
    `train_config.json`: the shape and optimizer levanter trained with (read back from its
    config), the vocabulary and tokenizer fingerprint that readers check, the datasets and
    their weights, and the step's `extra` fields. Returns the final metrics."""
    from tasks.lm.report import publish_training_report

    max_eval_batches = arguments["max_eval_batches"]
    final = publish_training_report(
        plan.metrics_path,
        output_path,
        label,
        eval_subset=max_eval_batches * arguments["batch_size"] if max_eval_batches else None,
    )
    config = plan.config
    write_json(
        join_url(output_path, "train_config.json"),
        {
            "model": {key: getattr(config.model, key) for key in MODEL_ATTRS},
            "optimizer": {key: getattr(config.optimizer, key) for key in (*OPTIM_ATTRS, "decay")},
            "vocab_size": plan.vocab_size,
            "tokenizer_sha256": plan.tokenizer_sha256,
            "data": data,
            "weights": plan.weights,
            **extra,
        },
    )
    return final
