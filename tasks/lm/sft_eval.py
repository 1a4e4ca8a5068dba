"""chat_eval: a model's loss on held-out chat conversations, on the assistant's tokens only.

The same step scores a pretrained `train_lm` output and its `sft` fine-tune (both leave a
levanter checkpoint and a `train_config.json`), with the same template, files and sequence
length, so the two figures are about exactly the same tokens and the fine-tuning's effect is
their difference. Scoring is levanter's `eval_lm` on its chat format (the loss mask is the
template's `{% generation %}` part), not a hand-written loop.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any

from tasks.core import StepRef, step
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.lm import accelerators
from tasks.lm.chat_data import VALIDATION_FILES, build_chat_cache, chat_data_config, chat_files
from tasks.lm.chat_template import DEFAULT_CHAT_TEMPLATE, check_chat_template, templated_tokenizer
from tasks.lm.checkpoints import final_checkpoint, trained_config
from tasks.lm.files import write_json
from tasks.lm.model import check_tokenizer_matches, reference_model


def _check(
    model: Any,
    chat_data: Any,
    chat_template: Any,
    validation_files: Any,
    seq_len: Any,
    batch_size: Any,
    max_eval_batches: Any = None,
    accelerator: Any = "cpu",
    **_: Any,
) -> None:
    accelerators.check(accelerator)
    for key, value in (("model", model), ("chat_data", chat_data)):
        if not isinstance(value, (str, StepRef)) or not value:
            raise ValueError(f"{key}={value!r} must be a step output (StepRef) or a path")
    if not isinstance(validation_files, str) or not validation_files or "/" in validation_files:
        raise ValueError(f"validation_files={validation_files!r} must be a file-name pattern")
    for key, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}={value!r} must be a positive integer")
    if max_eval_batches is not None and (
        not isinstance(max_eval_batches, int)
        or isinstance(max_eval_batches, bool)  # True would be another identity for 1
        or max_eval_batches < 1
    ):
        raise ValueError(f"max_eval_batches={max_eval_batches!r} must be a positive integer")
    check_chat_template(chat_template)
    base = trained_config(model)
    if base is not None and seq_len > base["model"]["seq_len"]:
        raise ValueError(
            f"seq_len={seq_len} is longer than the model's seq_len={base['model']['seq_len']}"
        )


@step(
    # batch_size is identity for the same reason as in `evaluate`: with max_eval_batches it
    # decides which conversations are scored. seq_len decides how they are packed and cut.
    hash_attrs=[
        "model",
        "chat_data",
        "tokenizer",
        "chat_template",
        "validation_files",
        "seq_len",
        "batch_size",
        "max_eval_batches",
    ],
    operational=["accelerator"],
    name="eval-chat/{name}",
    validate=_check,
    resources=accelerators.ray_options,
    isolate=True,
)
def chat_eval(
    model: str,
    chat_data: str,
    tokenizer: str,
    name: str,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    validation_files: str = VALIDATION_FILES,
    seq_len: int = 128,
    batch_size: int = 32,
    max_eval_batches: int | None = None,
    accelerator: str = "cpu",
    *,
    output_path: str,
) -> dict:
    """Score the final checkpoint of `model` (a `train_lm` or `sft` output) on the
    conversations of `chat_data` matching `validation_files`: mean loss per assistant token
    (nats), its perplexity, and bits per byte. Writes `results.json` and `metrics.jsonl`."""
    from tasks.lm.eval_run import run_eval_lm

    tensorstore_follows_emulator()
    trained = trained_config(model)
    if trained is None:
        raise FileNotFoundError(f"{model} has no train_config.json: not a train_lm/sft output")
    work = tempfile.mkdtemp(prefix="lmflows-chat-eval-")
    try:
        tokenizer_dir = os.path.join(work, "tokenizer")
        templated_tokenizer(tokenizer, chat_template, tokenizer_dir)
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        check_tokenizer_matches(trained, hf_tokenizer, model)
        cache_root = os.path.join(work, "cache")
        stats = build_chat_cache(
            chat_files(chat_data, validation_files),
            hf_tokenizer,
            chat_template,
            os.path.join(cache_root, "validation"),
            seq_len,
        )
        shape = {**trained["model"], "seq_len": seq_len}
        model_config = reference_model(shape, tokenizer_dir, trained["vocab_size"], work)
        logged = run_eval_lm(
            final_checkpoint(model),
            model_config,
            chat_data_config(tokenizer_dir, cache_root, chat_template),
            batch_size=batch_size,
            max_eval_batches=max_eval_batches,
            run_id="chat-eval",
            work=work,
            output_path=output_path,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loss = logged.get("eval/loss")
    if loss is None:
        raise RuntimeError(f"levanter logged no eval/loss for {name}: {sorted(logged)}")
    results = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": logged.get("eval/bpb"),
        "conversations": stats["conversations"],
        "assistant_tokens": stats["assistant_tokens"],
        "longer_than_seq_len": stats["longer_than_seq_len"],
    }
    write_json(f"{output_path.rstrip('/')}/results.json", results)
    _publish(name, results)
    return results


def _publish(name: str, results: dict) -> None:
    from tasks.core import artifacts

    artifacts.publish_table(
        artifacts.key("eval-chat", name),
        [{"metric": k, "value": v} for k, v in results.items()],
        f"held-out chat loss (assistant tokens) of {name} {artifacts.output_url() or ''}",
    )
