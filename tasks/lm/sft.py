"""sft: supervised fine-tuning of a `train_lm` model on chat conversations, with levanter.

Everything is levanter's own machinery: its chat format (`ChatLmDatasetFormat`: the chat
template renders each conversation, `{% generation %}` marks what the assistant says, and only
those tokens carry loss; conversations are packed several to a sequence with segment ids), its
`train_lm` trainer, and its HF export. The step only prepares inputs and writes the record.

Why the base model is read from its HF export (`<model>/hf/step-N`) and not its levanter
checkpoint: fine-tuning starts from the weights alone, with a fresh optimizer and step 0.
levanter's `initialize_from_hf` does exactly that; its `initialize_from_checkpoint_path`
restores the whole training state (step counter, Adam moments), so fine-tuning would begin at
the pretraining's last step with its optimizer state.

The tokenizer (a `train_tokenizer` output) has no chat template. The step writes a copy that
carries `chat_template` and hands that copy to levanter, so the same template tokenizes the
data and is saved with the HF export: `AutoTokenizer.from_pretrained(export)
.apply_chat_template(...)` renders exactly what the model was tuned on. The template is a hash
attribute: another template is another fine-tuned model.

Chat data: JSON lines (optionally gzipped) of `{"messages": [{"role", "content"}, ...]}`, as
`data/chat/` holds; files matching `train_files` train, files matching `validation_files` are
held out and scored during training (assistant tokens only).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from tasks.core import StepRef, step
from tasks.core.argument_checks import positive
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.lm import accelerators
from tasks.lm.chat_data import (
    TRAIN_FILES,
    VALIDATION_FILES,
    build_chat_cache,
    chat_data_config,
    chat_files,
    read_conversations,
    split_files,
)
from tasks.lm.chat_template import DEFAULT_CHAT_TEMPLATE, check_chat_template, templated_tokenizer
from tasks.lm.checkpoints import latest_hf_export as base_hf_export
from tasks.lm.checkpoints import trained_config as base_model_config
from tasks.lm.model import check_tokenizer_matches, reference_model, tokenizer_fingerprint
from tasks.lm.train_run import (
    OPTIM_ATTRS,
    TRAINING_ATTRS,
    levanter_run,
    plan_run,
    publish,
    train,
)

# What this module offered before the chat template, the chat data and the run moved out;
# experiments and tests import them from here.
__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "OPTIM_ATTRS",
    "TRAIN_FILES",
    "VALIDATION_FILES",
    "base_hf_export",
    "base_model_config",
    "build_chat_cache",
    "chat_data_config",
    "chat_files",
    "check_chat_template",
    "check_sft",
    "read_conversations",
    "sft",
    "split_files",
    "templated_tokenizer",
]


def check_sft(
    model: Any,
    chat_data: Any,
    tokenizer: Any,
    chat_template: Any,
    train_files: Any,
    validation_files: Any,
    seq_len: Any,
    batch_size: Any,
    num_train_steps: Any,
    learning_rate: Any,
    accelerator: Any = "cpu",
    max_eval_batches: Any = None,
    steps_per_eval: Any = 1,
    mixed_precision: Any = "f32",
    **_: Any,
) -> None:
    """`sft`'s `validate=`: every argument, before anything is read or written."""
    import jmp

    accelerators.check(accelerator)
    try:
        jmp.get_policy(mixed_precision)
    except Exception as exc:
        raise ValueError(
            f"mixed_precision={mixed_precision!r} is not a jmp policy such as 'f32' or "
            f"'p=f32,c=bfloat16': {exc}"
        ) from exc
    for key, value in (("model", model), ("chat_data", chat_data), ("tokenizer", tokenizer)):
        if not isinstance(value, (str, StepRef)) or not value:
            raise ValueError(f"{key}={value!r} must be a step output (StepRef) or a path")
    for key, value in (("train_files", train_files), ("validation_files", validation_files)):
        if not isinstance(value, str) or not value or "/" in value:
            raise ValueError(f"{key}={value!r} must be a file-name pattern such as 'train-*'")
    positive(seq_len=seq_len, batch_size=batch_size, steps_per_eval=steps_per_eval)
    if not isinstance(num_train_steps, int) or isinstance(num_train_steps, bool):
        raise ValueError(f"num_train_steps={num_train_steps!r} must be an integer")
    if num_train_steps < 2:
        raise ValueError(
            f"num_train_steps={num_train_steps}: levanter saves no checkpoint or HF export "
            "at step 0, so fine-tuning needs at least 2 steps"
        )
    if max_eval_batches is not None:
        positive(max_eval_batches=max_eval_batches)
    if not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate!r} must be positive")
    check_chat_template(chat_template)
    base = base_model_config(model)
    if base is not None:
        base_seq_len = base["model"]["seq_len"]
        if seq_len > base_seq_len:
            raise ValueError(
                f"seq_len={seq_len} is longer than the base model's seq_len={base_seq_len}: "
                "its position embeddings were never trained that far"
            )


@step(
    hash_attrs=[
        "model",
        "chat_data",
        "tokenizer",
        "chat_template",
        "train_files",
        "validation_files",
        "seq_len",
        *TRAINING_ATTRS,
    ],
    # What is logged and scored along the way, and the hardware: not the tuned weights.
    operational=["steps_per_eval", "max_eval_batches", "accelerator"],
    name="sft/{name}",
    validate=check_sft,
    resources=accelerators.ray_options,
    isolate=True,
)
def sft(
    model: str,
    chat_data: str,
    tokenizer: str,
    name: str = "sft",
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    train_files: str = TRAIN_FILES,
    validation_files: str = VALIDATION_FILES,
    seq_len: int = 128,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    warmup: float = 0.05,
    min_lr_ratio: float = 0.1,
    lr_schedule: str = "cosine",
    beta1: float = 0.9,
    beta2: float = 0.95,
    max_grad_norm: float = 1.0,
    batch_size: int = 32,
    num_train_steps: int = 100,
    seed: int = 0,
    mixed_precision: str = "f32",
    steps_per_eval: int = 50,
    max_eval_batches: int | None = None,
    accelerator: str = "cpu",
    *,
    output_path: str,
) -> dict:
    """Fine-tune the `train_lm` output `model` on the conversations in `chat_data` (a
    download output: JSON-lines files of {"messages": [...]}) with `chat_template`.

    `tokenizer` is the one the model was pretrained with. The output holds levanter
    checkpoints (`checkpoints/`), the HF export with the tokenizer and its chat template
    (`hf/step-N`), `metrics.jsonl` (training loss per step, held-out assistant-token loss
    every `steps_per_eval`), `loss.png` and `train_config.json` (the shape `evaluate`-like
    steps read, as for `train_lm`).
    """
    arguments = dict(locals())  # first: the call's arguments by name, what levanter is given
    from tasks.lm.report import progress_reporter, read_metrics

    tensorstore_follows_emulator()  # levanter's tensorstore writes, on a GCS emulator
    base = base_model_config(model)
    if base is None:
        raise FileNotFoundError(f"{model} has no train_config.json: not a train_lm output")
    base_export = base_hf_export(model)
    with tempfile.TemporaryDirectory(prefix="lmflows-sft-", ignore_cleanup_errors=True) as work:
        tokenizer_dir = os.path.join(work, "tokenizer")
        hf_tokenizer = templated_tokenizer(tokenizer, chat_template, tokenizer_dir)
        check_tokenizer_matches(base, hf_tokenizer, model)
        # Reload by path so the processor's metadata (the tokenizer's name) is what levanter
        # sees when it opens the cache.
        hf_tokenizer = type(hf_tokenizer).from_pretrained(tokenizer_dir)
        cache_root = os.path.join(work, "cache")
        data_stats = {
            split: build_chat_cache(
                files, hf_tokenizer, chat_template, os.path.join(cache_root, split), seq_len
            )
            for split, files in split_files(chat_data, train_files, validation_files).items()
        }
        shape = {**base["model"], "seq_len": seq_len}
        # Artifact keys say "sft-": a train_lm call of the same name keeps its own history.
        label = f"sft-{name}"
        plan = plan_run(
            chat_data_config(tokenizer_dir, cache_root, chat_template),
            reference_model(shape, tokenizer_dir, base["vocab_size"], work),
            output_path,
            arguments,
            vocab_size=base["vocab_size"],
            tokenizer_sha256=tokenizer_fingerprint(hf_tokenizer),
            weights={"chat": 1.0},
            run_id="sft",
            work=work,
            on_step=progress_reporter(label, num_train_steps, batch_size * seq_len),
            initialize_from_hf=base_export,
        )
        with levanter_run(plan):
            train(plan)
        final = publish(
            plan,
            output_path,
            label,
            arguments,
            ["chat"],
            base_model_export="/".join(base_export.rsplit("/", 2)[-2:]),
            chat_template=chat_template,
        )
    export = base_hf_export(output_path)
    losses = [
        row["train/loss"]
        for row in read_metrics(plan.metrics_path)
        if row.get("train/loss") is not None
    ]
    return {
        "final": final,
        "first_train_loss": losses[0] if losses else None,
        "last_train_loss": losses[-1] if losses else None,
        "hf_export": export[len(output_path.rstrip("/")) + 1 :],
        "checkpoints": "checkpoints",
        "data": data_stats,
        "vocab_size": base["vocab_size"],
        "num_train_steps": num_train_steps,
    }
