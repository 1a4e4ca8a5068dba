"""The model shape shared by the language-model steps: which arguments define a Llama, the
levanter config they build, and the HF reference config its export needs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MODEL_ATTRS = [
    "hidden_dim",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_dim",
    "seq_len",
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
    """levanter's LlamaConfig (arguments checked by `tasks.lm.checks.train_lm`)."""
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
    """HF export reads `reference_checkpoint`'s config.json with transformers, which cannot
    read gs://: `path` must be a local folder."""
    hf_config = model_config.to_hf_config(vocab_size)
    hf_config.save_pretrained(path)


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
