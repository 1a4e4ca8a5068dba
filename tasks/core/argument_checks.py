"""Argument checks shared by steps of several packages (each step's own checks sit beside it)."""

from __future__ import annotations

from typing import Any


def positive(**values: Any) -> None:
    """Each named value is an int >= 1 (not a bool)."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
