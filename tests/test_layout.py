"""tasks/ is grouped into tasks/core (machinery), tasks/data and tasks/lm. Experiments written
against the flat layout keep importing the old paths; readers of a step's output do not import
the step that writes it; and a step's identity is its name's, never its module's."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core import StepRef

REPO = Path(__file__).resolve().parent.parent

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


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_an_old_import_path_is_the_moved_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_what_experiments_imported_before_the_move_still_imports():
    """The names the flat layout's users imported, from their old modules."""
    from flows.pretrain import prepare_data, train_and_evaluate  # noqa: F401
    from tasks.checks import tokenize as check_tokenize
    from tasks.checks import train_lm as check_train_lm
    from tasks.data.checks import tokenize as data_check_tokenize
    from tasks.dedup import dedup
    from tasks.download import download_hf, download_url  # noqa: F401
    from tasks.evaluate import evaluate
    from tasks.lm.checks import train_lm as lm_check_train_lm
    from tasks.tokenization import tokenize
    from tasks.train import MODEL_ATTRS, build_train_config, checkpoint_keep, train_lm  # noqa: F401
    from tasks.train_tokenizer import load_tokenizer, train_tokenizer  # noqa: F401

    assert check_tokenize is data_check_tokenize and check_train_lm is lm_check_train_lm
    import tasks.data.dedup
    import tasks.data.tokenize
    import tasks.lm.evaluate
    import tasks.lm.train

    assert dedup is tasks.data.dedup.dedup and tokenize is tasks.data.tokenize.tokenize
    assert train_lm is tasks.lm.train.train_lm and evaluate is tasks.lm.evaluate.evaluate


def test_monkeypatching_an_old_path_reaches_the_code(monkeypatch):
    """Users' tests patch `tasks.train.<helper>`: with a copy of the names that would patch
    nothing the step uses."""
    import tasks.lm.train
    import tasks.train

    monkeypatch.setattr(tasks.train, "checkpoint_keep", "patched")
    assert tasks.lm.train.checkpoint_keep == "patched"


def _modules_after_import(module: str) -> set[str]:
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tasks'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_readers_do_not_import_the_steps_that_write_what_they_read():
    evaluate_imports = _modules_after_import("tasks.lm.evaluate")
    assert "tasks.lm.model" in evaluate_imports  # the shared model shape
    assert "tasks.lm.train" not in evaluate_imports and "tasks.train" not in evaluate_imports
    tokenize_imports = _modules_after_import("tasks.data.tokenize")
    assert "tasks.data.tokenizer_files" in tokenize_imports  # the shared tokenizer reader
    assert "tasks.data.train_tokenizer" not in tokenize_imports
    assert "tasks.train_tokenizer" not in tokenize_imports


def _load_copy(path: Path, module_name: str):
    """The module at `path` loaded again under another name: the same steps, defined in a
    module somewhere else."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[module_name]
    return module


def test_an_identity_does_not_depend_on_the_module_defining_the_step():
    """The demo's training step, defined in a module with another name and path, has the
    demo's pinned identity (tests/test_pinned.py)."""
    from flows.pretrain import TINY_LLAMA
    from tasks.lm.train import train_lm

    elsewhere = _load_copy(REPO / "tasks" / "lm" / "train.py", "somewhere_else.training")
    assert elsewhere.train_lm is not train_lm
    assert elsewhere.train_lm.fn.__module__ == "somewhere_else.training"
    arguments = dict(
        data={"kjv": StepRef("tokenized/kjv", "7ec78c5661")},
        tokenizer=StepRef("tokenizer/kjv", "4ab8872db2"),
        name="demo-kjv",
        learning_rate=3e-3,
        **TINY_LLAMA,
    )
    moved = elsewhere.train_lm.ref_for(**arguments)
    assert moved.name_with_hash == train_lm.ref_for(**arguments).name_with_hash
    assert moved.name_with_hash == "checkpoints/demo-kjv-30080c6844"


def test_relative_data_urls_still_name_the_checked_in_files():
    """download_url resolves `data/...` against the checkout; the move put the module one
    folder deeper (found when every experiment's download failed after the move)."""
    from tasks.data.download import resolve_source

    for url in ("data/kjv/kjv-00.jsonl.gz", "data/pydoc/pydoc-00.jsonl.gz"):
        assert Path(resolve_source(url)) == REPO / url
        assert Path(resolve_source(url)).is_file()


def test_an_old_path_leaves_the_moved_module_its_own_spec():
    """Found by an attack: importing `tasks.minhash` gave `tasks.data.minhash` the alias's
    spec, so `importlib.reload` re-ran nothing and renamed the module."""
    code = (
        "import importlib, json; import tasks.data.minhash as real; import tasks.minhash; "
        "real.normalize = None; importlib.reload(real); "
        "print(json.dumps([real.__spec__.name, real.__name__, real.normalize is not None]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        "tasks.data.minhash",
        "tasks.data.minhash",
        True,
    ]
