"""The model shape shared by the language-model steps: which arguments define a Llama, the
levanter config they build, and the HF reference config its export needs."""

from __future__ import annotations

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
