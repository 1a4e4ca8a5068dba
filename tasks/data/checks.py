"""Argument checks for the data steps, run before anything executes (also by `plan`).

Each is passed to `@step(validate=...)` and receives the call's arguments with defaults."""

from __future__ import annotations

from typing import Any


def positive(**values: Any) -> None:
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
    positive(num_perm=num_perm, bands=bands, ngram=ngram)
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")


def train_tokenizer(vocab_size: int, min_frequency: int, **_: Any) -> None:
    positive(min_frequency=min_frequency)
    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size!r}: a byte-level BPE needs at least 256 "
            "byte tokens + special tokens (>= 300)"
        )


def tokenize(validation_fraction: float, **_: Any) -> None:
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
