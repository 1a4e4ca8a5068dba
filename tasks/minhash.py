"""Moved to `tasks.data.minhash`; this import path keeps working for existing experiments.

This path is the very module object of the new one (not a copy of its names), so private
helpers and monkeypatching behave as before the move. A step's identity does not depend on
its module (see tests/test_layout.py)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("tasks.data.minhash")
