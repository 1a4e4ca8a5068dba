"""The worked examples of docs/experiments.md run as written: the `length_filter` step filters
a real shard, and the `kjv-long` experiment plans, sharing the demo's upstream identities."""

from __future__ import annotations

import gzip
import json
import re
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "experiments.md"


def _python_blocks() -> dict[str, str]:
    """Each ```python block of the guide that names its file on its first line (`# x/y.py`);
    the other blocks are fragments."""
    blocks = {}
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        named = re.fullmatch(r"# ([\w/]+\.py)", block.splitlines()[0])
        if named:
            blocks[named.group(1)] = block
    return blocks


def _module_from(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = f"<{DOC.name}: {name}>"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@pytest.fixture
def doc_modules(monkeypatch):
    blocks = _python_blocks()
    assert set(blocks) == {"tasks/data/length_filter.py", "experiments/kjv_long.py"}
    for name in ("tasks.data.length_filter", "experiments.kjv_long"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    filter_module = _module_from(blocks["tasks/data/length_filter.py"], "tasks.data.length_filter")
    experiment = _module_from(blocks["experiments/kjv_long.py"], "experiments.kjv_long")
    yield filter_module, experiment
    for name in ("tasks.data.length_filter", "experiments.kjv_long"):
        sys.modules.pop(name, None)


def test_the_length_filter_example_filters(doc_modules, tmp_path):
    filter_module, _ = doc_modules
    shard = REPO / "data" / "kjv" / "kjv-00.jsonl.gz"
    out = tmp_path / "out"
    meta = filter_module.length_filter.fn.__wrapped__(
        dataset=str(shard), name="kjv", min_chars=3000, output_path=str(out)
    )
    with gzip.open(shard, "rt") as handle:
        lengths = [len(json.loads(line)["text"]) for line in handle]
    assert meta == {
        "kept": sum(n >= 3000 for n in lengths),
        "dropped": sum(n < 3000 for n in lengths),
    }
    assert 0 < meta["kept"] < len(lengths)
    with gzip.open(out / "data" / "part-00000.jsonl.gz", "rt") as handle:
        kept = [json.loads(line) for line in handle]
    assert len(kept) == meta["kept"] and all(len(d["text"]) >= 3000 for d in kept)


def test_the_experiment_example_plans_and_shares_the_demos_data_steps(doc_modules, tmp_path):
    from tasks.core import planning
    from tests.test_pinned import EXPERIMENT_IDENTITIES

    _, experiment = doc_modules
    with planning.planning() as plan:
        experiment.kjv_long.fn(min_chars=100, learning_rate=0.01)
    keys = list(plan.steps)
    demo = EXPERIMENT_IDENTITIES["demo"]
    assert keys[:2] == demo[:2]  # raw/kjv and dedup/kjv: the demo's, Cached after it ran
    assert [key.rsplit("-", 1)[0] for key in keys[2:]] == [
        "filtered/kjv",
        "tokenizer/kjv-long",
        "tokenized/kjv-long",
        "checkpoints/kjv-long",
        "eval/kjv-long",
    ]
