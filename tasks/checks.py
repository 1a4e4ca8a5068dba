"""Moved to `tasks.data.checks` (data steps) and `tasks.lm.checks` (language-model steps);
this import path keeps working for existing experiments."""

from tasks.data.checks import dedup, download_url, positive, tokenize, train_tokenizer
from tasks.lm.checks import train_lm

__all__ = ["dedup", "download_url", "positive", "tokenize", "train_lm", "train_tokenizer"]
