"""The model shape shared by the language-model steps: which arguments define a Llama, the
levanter config they build, and the HF reference config its export needs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from tasks.core.argument_checks import positive

# levanter LlamaConfig's field names, also the steps' argument names: the architecture (one
# size of a scaling grid) and, with the sequence length, the model shape a training records.
ARCH_ATTRS = ("hidden_dim", "num_layers", "num_heads", "num_kv_heads", "intermediate_dim")
MODEL_ATTRS = (*ARCH_ATTRS, "seq_len")


def model_shape(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The MODEL_ATTRS of `arguments` (a step's arguments, a `train_config.json`'s model)."""
    return {key: arguments[key] for key in MODEL_ATTRS}


def check_shape(shape: Mapping[str, Any]) -> None:
    """Refuse a shape levanter cannot build: sizes that are not positive integers, heads that
    do not divide the hidden size, query heads not a multiple of the key-value heads."""
    positive(**model_shape(shape))
    hidden, heads, kv_heads = shape["hidden_dim"], shape["num_heads"], shape["num_kv_heads"]
    if hidden % heads:
        raise ValueError(f"hidden_dim={hidden} must be a multiple of num_heads={heads}")
    if heads % kv_heads:
        raise ValueError(f"num_heads={heads} must be a multiple of num_kv_heads={kv_heads}")


def llama_config(shape: Mapping[str, Any], tokenizer: str, reference: str) -> Any:
    """levanter's LlamaConfig of `shape` (MODEL_ATTRS; checked by `check_shape`)."""
    from levanter.models.llama import LlamaConfig

    return LlamaConfig(**model_shape(shape), tokenizer=tokenizer, reference_checkpoint=reference)


def write_reference_config(model_config, vocab_size: int, path: str) -> None:
    """HF export reads `reference_checkpoint`'s config.json with transformers, which cannot
    read gs://: `path` must be a local folder."""
    hf_config = model_config.to_hf_config(vocab_size)
    hf_config.save_pretrained(path)


def reference_model(shape: Mapping[str, Any], tokenizer: str, vocab_size: int, work: str) -> Any:
    """levanter's LlamaConfig of `shape`, its HF reference config (what the export converts
    with) written to the local folder `work/hf_reference`: transformers reads it and cannot
    read gs://."""
    reference = os.path.join(work, "hf_reference")
    model = llama_config(shape, tokenizer, reference)
    write_reference_config(model, vocab_size, reference)
    return model


def tokenizer_fingerprint(hf_tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary (every token and its id): what decides which ids a
    text becomes, recorded with a model so that it is never scored or tuned with another."""
    vocabulary = sorted(hf_tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode()).hexdigest()


def check_tokenizer_matches(trained: dict, hf_tokenizer: Any, model: str) -> None:
    """Refuse a tokenizer other than the one `model` was trained with (its `train_config.json`
    is `trained`). Ids past the model's vocabulary, or the same ids meaning other tokens, give
    numbers that look like results. Models trained before the fingerprint was recorded are
    checked by vocabulary size only."""
    size = len(hf_tokenizer)
    if size != trained.get("vocab_size"):
        raise ValueError(
            f"the tokenizer has {size} tokens but {model} was trained with "
            f"{trained.get('vocab_size')}: pass the tokenizer the model was trained with"
        )
    expected = trained.get("tokenizer_sha256")
    if expected is not None and tokenizer_fingerprint(hf_tokenizer) != expected:
        raise ValueError(
            f"the tokenizer's vocabulary is not the one {model} was trained with (same size, "
            "other tokens or ids): pass the tokenizer the model was trained with"
        )
