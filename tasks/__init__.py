"""lmflows steps: `tasks.core` (the machinery), `tasks.data` and `tasks.lm` (the pipeline).

Modules of the first, flat layout moved into `tasks.data` and `tasks.lm`. Their old import
paths keep working through one alias table (`MOVED`): importing an old path gives the very
module object of the new one (not a copy of its names), so every name defined there, and
monkeypatching it, behaves as before the move. A step's identity never depends on its module
(tests/test_layout.py)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# old import path -> where the module lives now
MOVED = {
    "tasks.data_io": "tasks.data.shards",
    "tasks.download": "tasks.data.download",
    "tasks.dedup": "tasks.data.dedup",
    "tasks.minhash": "tasks.data.minhash",
    "tasks.formats": "tasks.data.formats",
    "tasks.train_tokenizer": "tasks.data.train_tokenizer",
    "tasks.tokenization": "tasks.data.tokenize",
    "tasks.train": "tasks.lm.train",
    "tasks.evaluate": "tasks.lm.evaluate",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of `MOVED` and loads it as the moved module itself. (The import
    system keeps whatever module `create_module` returns, and `exec_module` has nothing left
    to run: the target is already executed; it only gives the module its own spec back.)"""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # the import system overwrites it: put it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # `reload` and `-m` see the real one


if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Alias())
