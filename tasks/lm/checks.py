"""Argument checks for the language-model steps, run before anything executes (also by
`plan`). Each is passed to `@step(validate=...)` with the call's arguments and defaults."""

from __future__ import annotations

from typing import Any

from tasks.data.checks import positive
from tasks.lm import accelerators


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
        positive(checkpoint_every=checkpoint_every)
    if not isinstance(data, dict) or not data:
        raise ValueError("data must map at least one dataset name to a tokenize output")
    unknown = sorted(set(weights or {}) - set(data))
    if unknown:
        raise ValueError(f"weights name datasets not in data: {unknown}")
    positive(
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
