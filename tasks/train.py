"""train_lm: levanter's `train_lm` on a Llama built from plain arguments.

Everything that defines the trained model is a hash attribute (architecture, optimizer,
batch size, steps, seed, the data mixture and the tokenizer); checkpoint intervals, logging
and resources are operational. No network: the tracker writes JSON lines, the tokenizer is
local, and the HF export's reference config is written next to the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from tasks import checks
from tasks.core import step

logger = logging.getLogger("lmflows.train")

MODEL_ATTRS = [
    "hidden_dim",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_dim",
    "seq_len",
]
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


def llama_config(
    hidden_dim: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_dim: int,
    seq_len: int,
    tokenizer: str,
    reference: str,
):
    """levanter's LlamaConfig (arguments checked by `tasks.checks.train_lm`)."""
    from levanter.models.llama import LlamaConfig

    return LlamaConfig(
        seq_len=seq_len,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        tokenizer=tokenizer,
        reference_checkpoint=reference,
    )


def write_reference_config(model_config, vocab_size: int, path: str) -> None:
    """HF export reads `reference_checkpoint`'s config.json; make it a local folder."""
    hf_config = model_config.to_hf_config(vocab_size)
    hf_config.save_pretrained(path)


def _waitable_checkpointer_config():
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


def _progress_reporter(total_steps: int):
    """Update a Prefect progress artifact as levanter logs steps (no-op outside a task run)."""
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is None:
            return None
        artifact_id = create_progress_artifact(progress=0.0, description="training progress")
    except Exception as exc:  # the UI is a convenience; never fail training over it
        logger.warning("no progress artifact: %s", exc)
        return None
    last = {"pct": -1.0}

    def report(step: int, metrics: Any) -> None:
        pct = round(100.0 * min(step + 1, total_steps) / total_steps, 1)
        if pct - last["pct"] >= 5 or pct >= 100:
            last["pct"] = pct
            try:
                update_progress_artifact(artifact_id=artifact_id, progress=pct)
            except Exception as exc:
                logger.warning("progress artifact update failed: %s", exc)

    return report


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
    # Evaluation cadence and checkpoint frequency change what is logged and kept along the
    # way, not the trained model.
    operational=["steps_per_eval", "max_eval_batches", "checkpoint_every"],
    name="checkpoints/{name}",
    validate=checks.train_lm,
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
    max_eval_batches: int | None = 8,
    checkpoint_every: int | None = None,
    *,
    output_path: str,
) -> dict:
    """Train a Llama with levanter on tokenized caches.

    `data` maps a dataset name to a tokenize step output; `weights` its mixture weight
    (default: equal). `steps_per_eval`, `max_eval_batches` and `checkpoint_every` are
    operational.
    """
    import levanter.main.train_lm as levanter_train

    from tasks.lm.report import publish_training_report
    from tasks.lm.root_logging import restored_root_logging

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
        on_step=_progress_reporter(num_train_steps),
    )
    with restored_root_logging():
        levanter_train.main(plan.config)
        plan.checkpointer.wait_until_finished()  # levanter saves the last one asynchronously
    final = publish_training_report(plan.metrics_path, output_path, name)
    with open(os.path.join(output_path, "train_config.json"), "w") as handle:
        json.dump(
            {
                "model": {k: getattr(plan.config.model, k) for k in MODEL_ATTRS},
                "vocab_size": plan.vocab_size,
                "data": sorted(data),
                "weights": plan.weights,
            },
            handle,
            indent=2,
        )
    return {
        "final": final,
        "hf_export": "hf",
        "checkpoints": "checkpoints",
        "vocab_size": plan.vocab_size,
        "num_train_steps": num_train_steps,
    }


@dataclasses.dataclass
class TrainPlan:
    config: Any
    checkpointer: Any
    metrics_path: str
    vocab_size: int
    weights: dict


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
) -> TrainPlan:
    """levanter's TrainLmConfig from plain arguments (shared by the step and the benchmark
    that runs levanter directly, so both train the same thing)."""
    import jmp
    import levanter.main.train_lm as levanter_train
    from levanter.data.text import LMMixtureDatasetConfig, UrlDatasetSourceConfig
    from levanter.distributed import RayConfig
    from levanter.optim import AdamConfig
    from levanter.trainer import TrainerConfig

    from tasks.lm.tracker import JsonlTrackerConfig, register_on_step
    from tasks.train_tokenizer import load_tokenizer

    if not data:
        raise ValueError("train_lm needs at least one tokenized dataset in `data`")
    weights = weights or {key: 1.0 for key in data}
    unknown = set(weights) - set(data)
    if unknown:
        raise ValueError(f"weights name datasets not in data: {sorted(unknown)}")
    os.makedirs(output_path, exist_ok=True)
    vocab_size = len(load_tokenizer(tokenizer))
    reference = os.path.join(output_path, "hf_reference")
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
    metrics_path = os.path.join(output_path, "metrics.jsonl")
    register_on_step(metrics_path, on_step)
    mixture = LMMixtureDatasetConfig(
        tokenizer=tokenizer,
        cache_dir=None,
        configs={key: UrlDatasetSourceConfig(cache_dir=path) for key, path in data.items()},
        train_weights={key: float(w) for key, w in weights.items()},
    )
    # levanter's final forced hook run does not pass `force` to the checkpointer, so the last
    # checkpoint is written only if the last step index (n - 1) is a multiple of `every`.
    keep = [{"every": checkpoint_every, "until": num_train_steps - 2}] if checkpoint_every else []
    keep.append({"every": max(1, num_train_steps - 1)})
    checkpointer = _waitable_checkpointer_config()(
        base_path=os.path.join(output_path, "checkpoints"),
        append_run_id_to_base_path=False,
        keep=keep,
    )
    trainer = TrainerConfig(
        num_train_steps=num_train_steps,
        train_batch_size=batch_size,
        seed=seed,
        mp=jmp.get_policy(mixed_precision),
        require_accelerator=False,
        steps_per_eval=steps_per_eval,
        max_eval_batches=max_eval_batches,
        tracker=JsonlTrackerConfig(path=metrics_path),
        ray=RayConfig(auto_start_cluster=False),
        log_dir=Path(output_path) / "logs",
        id="run",
        checkpointer=checkpointer,
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
        hf_save_path=os.path.join(output_path, "hf"),
        hf_save_steps=num_train_steps,
    )
    return TrainPlan(config, checkpointer, metrics_path, vocab_size, weights)
