"""Argument checks for the pipeline steps, run before anything executes (also by `plan`).

Each is passed to `@step(validate=...)` and receives the call's arguments with defaults."""

from __future__ import annotations

from typing import Any

from tasks.lm import accelerators


def _positive(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def download_url(urls: Any, **_: Any) -> None:
    if isinstance(urls, str) or not isinstance(urls, (list, tuple)) or not urls:
        raise ValueError(f"urls={urls!r}: download_url needs a non-empty list of URLs")
    bad = [u for u in urls if not isinstance(u, str) or not u]
    if bad:
        raise ValueError(f"urls: {bad!r} are not URL strings")


def dedup(mode: str, num_perm: int, bands: int, ngram: int, threshold: float, **_: Any) -> None:
    if mode not in ("exact", "fuzzy"):
        raise ValueError(f"mode={mode!r}: expected 'exact' or 'fuzzy'")
    _positive(num_perm=num_perm, bands=bands, ngram=ngram)
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")


def train_tokenizer(vocab_size: int, min_frequency: int, **_: Any) -> None:
    _positive(min_frequency=min_frequency)
    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size!r}: a byte-level BPE needs at least 256 "
            "byte tokens + special tokens (>= 300)"
        )


def tokenize(validation_fraction: float, **_: Any) -> None:
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")


def train_lm(
    data: Any,
    weights: Any,
    hidden_dim: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_dim: int,
    seq_len: int,
    batch_size: int,
    num_train_steps: int,
    learning_rate: float,
    accelerator: Any = "cpu",
    checkpoint_every: Any = None,
    **_: Any,
) -> None:
    accelerators.check(accelerator)
    if checkpoint_every is not None:
        _positive(checkpoint_every=checkpoint_every)
    if not isinstance(data, dict) or not data:
        raise ValueError("data must map at least one dataset name to a tokenize output")
    unknown = sorted(set(weights or {}) - set(data))
    if unknown:
        raise ValueError(f"weights name datasets not in data: {unknown}")
    _positive(
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_dim=intermediate_dim,
        seq_len=seq_len,
        batch_size=batch_size,
        num_train_steps=num_train_steps,
    )
    if num_train_steps < 2:
        raise ValueError(
            f"num_train_steps={num_train_steps}: levanter saves no checkpoint at step 0, so a "
            "1-step run leaves no model to evaluate or resume; use at least 2"
        )
    if hidden_dim % num_heads:
        raise ValueError(f"hidden_dim={hidden_dim} must be a multiple of num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate} must be positive")
