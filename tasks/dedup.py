"""Moved to `tasks.data.dedup`; this import path keeps working for existing experiments.

This path is the very module object of the new one (not a copy of its names), so every name
defined there, and monkeypatching it, behaves as before the move (a few private helpers
became public ones of shared modules: docs/migrating-from-marin.md lists them). A step's
identity does not depend on its module (see tests/test_layout.py)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("tasks.data.dedup")
