"""Moved next to their steps (`tasks.data.dedup.check_dedup`, `tasks.data.tokenize.check_tokenize`,
...; `positive` to `tasks.core.argument_checks`); this import path keeps working for existing
experiments."""

from __future__ import annotations

from tasks.core.argument_checks import positive
from tasks.data.dedup import check_dedup as dedup
from tasks.data.download import check_download_url as download_url
from tasks.data.tokenize import check_tokenize as tokenize
from tasks.data.train_tokenizer import check_train_tokenizer as train_tokenizer

__all__ = ["dedup", "download_url", "positive", "tokenize", "train_tokenizer"]
