"""The worked examples of the guides run as written: docs/experiments.md's `length_filter` step
filters a real shard and its `kjv-long` experiment plans on the demo's upstream identities;
docs/migrating-from-marin.md's port and sweep plan, sharing every upstream step."""

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


def _python_blocks(doc: Path = DOC) -> dict[str, str]:
    """Each ```python block of a guide that names its file on its first line (`# x/y.py`);
    the other blocks are fragments."""
    blocks = {}
    for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S):
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


def test_the_marin_port_and_its_sweep_plan_on_shared_upstream_steps(monkeypatch):
    from tasks.core import planning
    from tests.test_pinned import EXPERIMENT_IDENTITIES

    guide = REPO / "docs" / "migrating-from-marin.md"
    port_source = _python_blocks(guide)["experiments/kjv_port.py"]
    sweep_source = next(
        block
        for block in re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
        if block.startswith('@flow(name="kjv-port-sweep")')
    )
    monkeypatch.delitem(sys.modules, "experiments.kjv_port", raising=False)
    port = _module_from(port_source, "experiments.kjv_port")
    monkeypatch.delitem(sys.modules, "experiments.kjv_port", raising=False)
    exec(compile(sweep_source, "<kjv_port_sweep>", "exec"), port.__dict__)  # the same imports

    with planning.planning() as plan:
        port.kjv_port.fn()
    assert list(plan.steps)[:4] == EXPERIMENT_IDENTITIES["demo"][:4]  # the demo's data steps
    with planning.planning() as sweep:
        port.kjv_port_sweep.fn(learning_rates=(1e-3, 3e-3, 1e-2))
    names = [key.rsplit("-", 1)[0] for key in sweep.steps]
    assert list(sweep.steps)[:4] == EXPERIMENT_IDENTITIES["demo"][:4]  # planned once each
    assert names[4:] == [
        f"{kind}/kjv-nano-lr{lr}"
        for lr in ("0.001", "0.003", "0.01")
        for kind in ("checkpoints", "eval")
    ]
