"""Moved next to their steps (`tasks.lm.train.check_train_lm`, `tasks.lm.sft.check_sft`, ...);
this import path keeps working for existing experiments."""

from __future__ import annotations

from tasks.lm.train import check_train_lm as train_lm

__all__ = ["train_lm"]
