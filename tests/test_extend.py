"""Extending a training without starting over (issue 17, item 2): a `train_lm` call that
differs from a committed one only in `num_train_steps`, on a schedule whose first steps do not
depend on the total (constant; wsd up to its decay), starts from the committed run's
checkpoint where their rates part; a cosine run never does. Real levanter trainings of the
shared tiny model's shape on its committed data (seconds each: the compile dominates)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tests.helpers import tiny
from tests.helpers.continued import copy_outputs, provenance, train_losses

RUN = dict(tiny.TINY, steps_per_eval=1000, max_eval_batches=1, warmup=2)


@pytest.fixture(scope="module")
def inputs(tiny_lm, shared_prefix, tmp_path_factory) -> dict:
    """The tiny model's tokenized data and tokenizer, in a prefix of this module's own."""
    fresh = str(tmp_path_factory.mktemp("extend") / ".lmflows" / "outputs")
    copy_outputs([tiny_lm["tokenized"], tiny_lm["tokenizer"]], shared_prefix, fresh)
    return {"prefix": fresh, "tokenized": tiny_lm["tokenized"], "tokenizer": tiny_lm["tokenizer"]}


def _train(inputs: dict, name: str, steps: int, **schedule):
    from tasks.core import flow
    from tasks.lm.train import train_lm

    @flow(name="extend")
    def run():
        return train_lm(
            data={"kjv": inputs["tokenized"]},
            tokenizer=inputs["tokenizer"],
            name=name,
            **{**RUN, "num_train_steps": steps, **schedule},
        )

    state = run(return_state=True)
    assert state.is_completed(), state.message
    return state.result()


EXPERIMENT = """
from tasks.core import StepRef, flow
from tasks.lm.train import train_lm
from tests.test_extend import RUN


@flow(name="extend-explained")
def extend_explained():
    return train_lm(
        data={{"kjv": StepRef({tokenized!r}, {tokenized_hash!r})}},
        tokenizer=StepRef({tokenizer!r}, {tokenizer_hash!r}),
        name="ext-constant", **{{**RUN, "num_train_steps": 80, "lr_schedule": "constant"}},
    )
"""


def _explain(inputs: dict, tmp_path) -> str:
    """What `python -m flows explain` prints for the 80-step constant run (in-process)."""
    from flows.reports import cmd_explain

    tokenized, tokenizer = inputs["tokenized"], inputs["tokenizer"]
    experiment = tmp_path / "extend_explained.py"
    experiment.write_text(EXPERIMENT.format(
        tokenized=tokenized.name, tokenized_hash=tokenized.hash,
        tokenizer=tokenizer.name, tokenizer_hash=tokenizer.hash,
    ))  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cmd_explain(str(experiment)) == 0
    return out.getvalue()


def test_a_constant_run_of_80_steps_trains_only_the_40_after_a_committed_40(
    inputs, tmp_path, monkeypatch
):
    monkeypatch.setenv("LMFLOWS_PREFIX", inputs["prefix"])
    short = _train(inputs, "ext-constant", 40, lr_schedule="constant")
    assert sorted(train_losses(short.path)) == list(range(40))
    explained = _explain(inputs, tmp_path)
    assert f"extends {short.name_with_hash} from step 39" in explained, explained

    longer = _train(inputs, "ext-constant", 80, lr_schedule="constant")
    assert longer.hash != short.hash  # its own output, its own identity
    assert sorted(train_losses(longer.path)) == list(range(40, 80))  # 40 steps trained
    notes = provenance(longer.path)["notes"]
    assert notes["extends"] == {"identity": short.name_with_hash, "step": 39}
    assert provenance(longer.path)["attrs"]["num_train_steps"] == 80


def test_a_wsd_run_extends_from_the_step_before_its_decay(inputs, monkeypatch):
    monkeypatch.setenv("LMFLOWS_PREFIX", inputs["prefix"])
    wsd = {"lr_schedule": "wsd", "decay": 0.25}
    short = _train(inputs, "ext-wsd", 40, **wsd)
    # the 40-step run decays over its last 10 updates; it keeps the state before them
    kept = sorted(folder.name for folder in Path(short.path, "checkpoints").iterdir())
    assert kept == ["step-30", "step-39"]
    longer = _train(inputs, "ext-wsd", 80, **wsd)
    assert provenance(longer.path)["notes"]["extends"] == {
        "identity": short.name_with_hash,
        "step": 30,
    }
    assert sorted(train_losses(longer.path)) == list(range(31, 80))


def test_a_cosine_run_is_never_extended(inputs, monkeypatch):
    monkeypatch.setenv("LMFLOWS_PREFIX", inputs["prefix"])
    # short runs (the compile is the cost): 4 -> 8 steps, warmup 2, both checkpoints kept
    _train(inputs, "ext-cosine", 4, lr_schedule="cosine")
    longer = _train(inputs, "ext-cosine", 8, lr_schedule="cosine")
    assert "extends" not in provenance(longer.path)["notes"]
    assert sorted(train_losses(longer.path)) == list(range(8))  # trained from step 0
