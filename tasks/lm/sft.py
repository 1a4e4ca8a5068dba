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

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec

from tasks.core import StepRef, step
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.lm import accelerators
from tasks.lm.checkpoints import checkpoint_keep
from tasks.lm.files import join_url, write_json
from tasks.lm.model import (
    MODEL_ATTRS,
    check_tokenizer_matches,
    llama_config,
    tokenizer_fingerprint,
    write_reference_config,
)

logger = logging.getLogger("lmflows.sft")

# Plain-text role markers, not new special tokens: the base model's vocabulary is fixed (a new
# token would need a resized, untrained embedding row) and a model pretrained on plain text
# already knows "User:" and "Assistant:" as text. The assistant's words and the end-of-sequence
# token that ends its turn sit inside `{% generation %}`, so the model learns what to say and
# when to stop, and is never trained on the user's words. The leading space of the answer is
# in the generation part, so `add_generation_prompt=True` ends at "Assistant:" and the model
# produces " answer" as one word-initial token, as in training.
DEFAULT_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- 'Assistant:' -}}"
    "{%- generation -%}{{- ' ' + message['content'] | trim + eos_token -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['role'] | capitalize + ': ' + message['content'] | trim + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)
TRAIN_FILES = "train-*.jsonl*"
VALIDATION_FILES = "validation-*.jsonl*"
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
_PROBE = [
    {"role": "user", "content": "Continue this verse: In the beginning"},
    {"role": "assistant", "content": "God created the heaven and the earth."},
    {"role": "user", "content": "Which book is it from?"},
    {"role": "assistant", "content": "Genesis."},
]
# Longer than the first (a template may treat later turns differently) ...
_PROBE_LONG = _PROBE + [
    {"role": "user", "content": "And the third turn?"},
    {"role": "assistant", "content": "Let there be light."},
]
# ... and with a system message, which a template may refuse (then the data must have none).
_PROBE_SYSTEM = [{"role": "system", "content": "You answer from the Bible."}, *_PROBE]


# -- argument checks (before any work) ---------------------------------------------------------


def _render(chat_template: str, conversation: list[dict]) -> tuple[str, str]:
    """The rendered conversation and the part of it inside {% generation %} blocks."""
    from transformers.utils.chat_template_utils import render_jinja_template

    # transformers drops a {% generation %} span that starts at the first character (a system
    # message rendered first would pass unseen): the probe renders after a marker.
    rendered, spans = render_jinja_template(
        conversations=[conversation],
        chat_template="[probe]" + chat_template,
        return_assistant_tokens_mask=True,
        bos_token="<s>",
        eos_token="</s>",
    )
    text = rendered[0]
    return text, "".join(text[start:end] for start, end in spans[0])


def check_chat_template(chat_template: Any) -> None:
    """Refuse a template levanter could not train with: not a string, not valid Jinja, no
    `{% generation %}` block, or one that marks none of an assistant's words (nothing would
    carry loss) or marks anything else (a user's or the system's words: the model would learn
    to write them). Checked on probe conversations of two and three turns, and with a system
    message if the template renders one."""
    if not isinstance(chat_template, str) or not chat_template.strip():
        raise ValueError("chat_template must be a non-empty Jinja string")
    probes = [(_PROBE, False), (_PROBE_LONG, False), (_PROBE_SYSTEM, True)]
    for conversation, may_refuse in probes:
        try:
            text, generated = _render(chat_template, conversation)
        except Exception as exc:
            if may_refuse:
                continue  # a template without system messages; the data is checked when read
            raise ValueError(f"chat_template does not render a conversation: {exc}") from exc
        for message in conversation:
            inside = message["content"] in generated
            if message["role"] == "assistant" and not inside:
                raise ValueError(
                    "chat_template renders an assistant message outside {% generation %} ... "
                    "{% endgeneration %}: levanter trains only on the tokens it marks, so it "
                    f"would not be learned (rendered: {text[:200]!r})"
                )
            if message["role"] != "assistant" and inside:
                raise ValueError(
                    f"chat_template puts a {message['role']} message inside "
                    "{% generation %}: the model would be trained to write it"
                )


def _positive(**values: Any) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}={value!r} must be a positive integer")


def base_model_config(model: Any) -> dict | None:
    """The base model's `train_config.json` (its shape and vocabulary), or None while the
    model is not there yet (a plan made before pretraining ran; the task checks again)."""
    path = model.path if isinstance(model, StepRef) else model
    if not isinstance(path, str):
        return None
    try:
        with fsspec.open(join_url(path, "train_config.json"), "r") as handle:
            return json.load(handle)
    except (FileNotFoundError, OSError, ValueError):
        return None


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
    _positive(seq_len=seq_len, batch_size=batch_size, steps_per_eval=steps_per_eval)
    if not isinstance(num_train_steps, int) or isinstance(num_train_steps, bool):
        raise ValueError(f"num_train_steps={num_train_steps!r} must be an integer")
    if num_train_steps < 2:
        raise ValueError(
            f"num_train_steps={num_train_steps}: levanter saves no checkpoint or HF export "
            "at step 0, so fine-tuning needs at least 2 steps"
        )
    if max_eval_batches is not None:
        _positive(max_eval_batches=max_eval_batches)
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


# -- data -----------------------------------------------------------------------------------


def chat_files(chat_data: str, pattern: str) -> list[str]:
    """The files directly under `chat_data` (any fsspec URL) whose names match `pattern`,
    sorted, as URLs."""
    import fnmatch

    fs, root = fsspec.core.url_to_fs(chat_data)
    names = sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(root, detail=False))
    matched = [join_url(chat_data, name) for name in names if fnmatch.fnmatch(name, pattern)]
    if not matched:
        raise FileNotFoundError(f"no file matching {pattern!r} in {chat_data} (found {names})")
    return matched


def split_files(chat_data: str, train_files: str, validation_files: str) -> dict[str, list[str]]:
    """The training and held-out files; a file matching both patterns is refused (held-out
    conversations that were trained on would make the held-out loss meaningless)."""
    files = {
        "train": chat_files(chat_data, train_files),
        "validation": chat_files(chat_data, validation_files),
    }
    both = sorted(set(files["train"]) & set(files["validation"]))
    if both:
        raise ValueError(
            f"train_files={train_files!r} and validation_files={validation_files!r} both match "
            f"{both}: a held-out file must not be trained on"
        )
    return files


def read_conversations(files: list[str], messages_field: str = "messages"):
    """Each conversation's messages, checked: a list of {"role", "content"} strings with at
    least one assistant message (levanter would fail later on a worse message)."""
    for url in files:
        with fsspec.open(url, "rt", compression="infer", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                messages = json.loads(line).get(messages_field)
                if not isinstance(messages, list) or not all(
                    isinstance(m, dict)
                    and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)
                    for m in messages
                ):
                    raise ValueError(
                        f"{url}:{number}: {messages_field!r} must be a list of "
                        '{"role": ..., "content": ...} messages'
                    )
                if not any(m["role"] == "assistant" for m in messages):
                    raise ValueError(f"{url}:{number}: a conversation without an assistant turn")
                yield messages


def templated_tokenizer(tokenizer: str, chat_template: str, local_dir: str):
    """A copy of `tokenizer` (any fsspec path or hub id) carrying `chat_template`, saved in
    the local folder `local_dir` (levanter and transformers load it by path)."""
    from tasks.data.tokenizer_files import load_tokenizer

    hf_tokenizer = load_tokenizer(tokenizer)
    hf_tokenizer.chat_template = chat_template
    hf_tokenizer.save_pretrained(local_dir)
    return hf_tokenizer


def build_chat_cache(
    files: list[str], hf_tokenizer, chat_template: str, cache_dir: str, seq_len: int
) -> dict[str, int]:
    """A levanter chat cache (`input_ids`, `assistant_masks`) of the conversations in
    `files`, written in-process with levanter's `ChatProcessor` and `SerialCacheWriter` (the
    same cache levanter's Ray builder makes; see tasks/data/tokenize.py for why not Ray)."""
    from levanter.data.text import ChatProcessor
    from levanter.store.cache import CacheMetadata, SerialCacheWriter

    processor = ChatProcessor(hf_tokenizer, chat_template=chat_template)
    stats = {"conversations": 0, "tokens": 0, "assistant_tokens": 0, "longer_than_seq_len": 0}
    with SerialCacheWriter(
        cache_dir,
        processor.output_exemplar,
        metadata=CacheMetadata(preprocessor_metadata=processor.metadata),
    ) as writer:
        batch: list[dict] = []

        def flush() -> None:
            encoded = processor(batch)
            writer.write_batch(encoded)
            for row in encoded:
                stats["conversations"] += 1
                stats["tokens"] += len(row["input_ids"])
                stats["assistant_tokens"] += int(row["assistant_masks"].sum())
                stats["longer_than_seq_len"] += int(len(row["input_ids"]) > seq_len)
            batch.clear()

        for messages in read_conversations(files):
            batch.append({"messages": messages})
            if len(batch) >= 256:
                flush()
        if batch:
            flush()
    if stats["conversations"] == 0:
        raise ValueError(f"no conversations in {files}")
    return stats


def chat_data_config(tokenizer_dir: str, cache_root: str, chat_template: str):
    """levanter's data config for one chat dataset named "chat" whose caches are built
    (`cache_root/train`, `cache_root/validation`)."""
    from levanter.data.text import (
        ChatLmDatasetFormat,
        LMMixtureDatasetConfig,
        UrlDatasetSourceConfig,
    )

    source = UrlDatasetSourceConfig(
        cache_dir=cache_root, format=ChatLmDatasetFormat(chat_template=chat_template)
    )
    return LMMixtureDatasetConfig(
        tokenizer=tokenizer_dir,
        cache_dir=None,
        configs={"chat": source},
        train_weights={"chat": 1.0},
        chat_template=chat_template,
    )


def base_hf_export(model: str) -> str:
    """The newest complete HF export (`hf/step-N` with config.json and weights) of a
    `train_lm` (or `sft`) output at any fsspec URL."""
    import re

    root = join_url(model, "hf")
    fs, path = fsspec.core.url_to_fs(root)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        entries = []
    found = []
    for entry in entries:
        match = re.fullmatch(r"step-(\d+)", entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            found.append((int(match.group(1)), match.group(0)))
    for _, folder in sorted(found, reverse=True):
        names = {e.rsplit("/", 1)[-1] for e in fs.ls(f"{path}/{folder}", detail=False)}
        if "config.json" in names and any(n.endswith(".safetensors") for n in names):
            return f"{root}/{folder}"
    raise FileNotFoundError(f"no HF export (hf/step-N with config.json and weights) in {model}")


# -- the step -------------------------------------------------------------------------------


def _ray_options(accelerator: str = "cpu", **_: Any) -> dict[str, Any]:
    """Ray remote options of a call (the step's `resources`): what its accelerator needs."""
    return accelerators.ray_resources(accelerator)


@step(
    hash_attrs=[
        "model",
        "chat_data",
        "tokenizer",
        "chat_template",
        "train_files",
        "validation_files",
        "seq_len",
        *OPTIM_ATTRS,
        "batch_size",
        "num_train_steps",
        "seed",
        "mixed_precision",
    ],
    # What is logged and scored along the way, and the hardware: not the tuned weights.
    operational=["steps_per_eval", "max_eval_batches", "accelerator"],
    name="sft/{name}",
    validate=check_sft,
    resources=_ray_options,
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
    import jmp
    import levanter.main.train_lm as levanter_train
    from levanter.distributed import RayConfig
    from levanter.optim import AdamConfig
    from levanter.trainer import TrainerConfig

    from tasks.lm.checkpoints import waitable_checkpointer_config
    from tasks.lm.report import progress_reporter, publish_training_report, read_metrics
    from tasks.lm.root_logging import restored_root_logging
    from tasks.lm.tracker import JsonlTrackerConfig, finish_all, register_on_step

    tensorstore_follows_emulator()  # levanter's tensorstore writes, on a GCS emulator
    base = base_model_config(model)
    if base is None:
        raise FileNotFoundError(f"{model} has no train_config.json: not a train_lm output")
    base_export = base_hf_export(model)
    work = tempfile.mkdtemp(prefix="lmflows-sft-")
    metrics_path = join_url(output_path, "metrics.jsonl")
    try:
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
        reference = os.path.join(work, "hf_reference")
        shape = {**base["model"], "seq_len": seq_len}
        model_config = llama_config(**shape, tokenizer=tokenizer_dir, reference=reference)
        write_reference_config(model_config, base["vocab_size"], reference)
        # Artifact keys say "sft-": a train_lm call of the same name keeps its own history.
        label = f"sft-{name}"
        register_on_step(
            metrics_path, progress_reporter(label, num_train_steps, batch_size * seq_len)
        )
        # levanter saves the last checkpoint asynchronously: wait for it before committing.
        checkpointer = waitable_checkpointer_config()(
            base_path=join_url(output_path, "checkpoints"),
            append_run_id_to_base_path=False,
            keep=checkpoint_keep(None, num_train_steps),
        )
        config = levanter_train.TrainLmConfig(
            data=chat_data_config(tokenizer_dir, cache_root, chat_template),
            trainer=TrainerConfig(
                num_train_steps=num_train_steps,
                train_batch_size=batch_size,
                seed=seed,
                mp=jmp.get_policy(mixed_precision),
                require_accelerator=False,
                steps_per_eval=steps_per_eval,
                max_eval_batches=max_eval_batches,
                tracker=JsonlTrackerConfig(path=metrics_path),
                ray=RayConfig(auto_start_cluster=False),
                log_dir=Path(work) / "logs",
                id="sft",
                checkpointer=checkpointer,
                # the tracker keeps no artifacts: tracing the step again for its jaxpr and HLO
                # cost about 8% of a small run
                log_jaxprs=False,
                log_xla_hlo=False,
            ),
            model=model_config,
            optimizer=AdamConfig(
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                warmup=warmup,
                min_lr_ratio=min_lr_ratio,
                lr_schedule=lr_schedule,
                beta1=beta1,
                beta2=beta2,
                max_grad_norm=max_grad_norm,
            ),
            initialize_from_hf=base_export,
            hf_save_path=join_url(output_path, "hf"),
            hf_save_steps=num_train_steps,
        )
        try:
            with restored_root_logging():
                levanter_train.main(config)
                checkpointer.wait_until_finished()
        finally:
            finish_all(metrics_path)  # a failed run still leaves its metrics so far
            register_on_step(metrics_path, None)
        final = publish_training_report(
            metrics_path,
            output_path,
            label,
            eval_subset=max_eval_batches * batch_size if max_eval_batches else None,
        )
        export = base_hf_export(output_path)
        write_json(
            join_url(output_path, "train_config.json"),
            {
                "model": {key: shape[key] for key in MODEL_ATTRS},
                "vocab_size": base["vocab_size"],
                "tokenizer_sha256": tokenizer_fingerprint(hf_tokenizer),
                "data": ["chat"],
                "weights": {"chat": 1.0},
                "base_model_export": "/".join(base_export.rsplit("/", 2)[-2:]),
                "chat_template": chat_template,
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    losses = [
        row["train/loss"] for row in read_metrics(metrics_path) if row.get("train/loss") is not None
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
