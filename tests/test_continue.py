"""`train_lm(initialize_from=REF)` (issue 17, item 1): a training that starts from another
model's weights at step 0 of its own schedule (the cooldown of experiments/cooldown.py), with
the source's identity in its own; a source of another shape or tokenizer is refused in one
line before anything is written. The source is the session's shared tiny model (6 steps:
its loss falls from ~6.9 to ~5.9), copied to a prefix of this module's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny
from tests.helpers.continued import copy_outputs, provenance, train_losses

REPO = Path(__file__).resolve().parent.parent
SHAPE = {key: value for key, value in tiny.TINY.items() if key != "num_train_steps"}
COOL = dict(SHAPE, num_train_steps=3, steps_per_eval=1000, max_eval_batches=1)


@pytest.fixture(scope="module")
def inputs(tiny_lm, shared_prefix, tmp_path_factory) -> dict:
    fresh = str(tmp_path_factory.mktemp("continue") / ".lmflows" / "outputs")
    copy_outputs([tiny_lm[k] for k in ("tokenized", "tokenizer", "model")], shared_prefix, fresh)
    return {"prefix": fresh, **tiny_lm}


def _cool(inputs: dict, name: str, tokenizer=None, **overrides):
    from experiments.cooldown import cool_down
    from tasks.core import flow

    @flow(name="cool")
    def run():
        return cool_down(
            name,
            inputs["model"],
            tokenizer or inputs["tokenizer"],
            {"kjv": inputs["tokenized"]},
            {"kjv": 1.0},
            **{**COOL, **overrides},
        )

    return run(return_state=True)


def _rows(output: str) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(output, "metrics.jsonl").read_text().splitlines()]


def test_a_cooldown_starts_at_the_sources_last_loss_with_or_without_its_optimizer(
    inputs, monkeypatch
):
    monkeypatch.setenv("LMFLOWS_PREFIX", inputs["prefix"])
    source = train_losses(inputs["model"].path)
    first, last = source[min(source)], source[max(source)]
    assert first > last + 0.5  # the source learned something to start from

    state = _cool(inputs, "cool-weights")
    assert state.is_completed(), state.message
    weights_only = state.result()
    losses = train_losses(weights_only.path)
    assert sorted(losses) == [0, 1, 2]  # its own schedule, from step 0
    assert abs(losses[0] - last) < 0.3, (losses[0], last)  # not ln(512) ~ 6.2, nor ~6.9
    assert losses[0] < first - 0.5
    record = provenance(weights_only.path)
    assert record["attrs"]["initialize_from"] == inputs["model"].name_with_hash
    assert inputs["model"].name_with_hash in record["deps"][0]["identity"]

    state = _cool(inputs, "cool-optimizer", initialize_optimizer=True)
    assert state.is_completed(), state.message
    with_optimizer = state.result()
    assert with_optimizer.hash != weights_only.hash
    both = train_losses(with_optimizer.path)
    assert both[0] == losses[0]  # the same weights
    assert both[1] != losses[1]  # another update: the source's Adam moments
    rates = [row["optim/learning_rate"] for row in _rows(with_optimizer.path)
             if "optim/learning_rate" in row]  # fmt: skip
    # the schedule starts again at its peak (the source's step count is not carried over)
    assert rates[0] == pytest.approx(COOL["learning_rate"], rel=1e-6)


def _nothing_trained(prefix: str, name: str) -> None:
    assert not list(Path(prefix).glob(f"checkpoints/{name}-*"))
    assert not list(Path(prefix).glob(f".lmflows/staging/checkpoints/{name}-*/*/checkpoints"))


def test_a_source_of_another_shape_is_refused_before_anything_runs(inputs, monkeypatch):
    monkeypatch.setenv("LMFLOWS_PREFIX", inputs["prefix"])
    state = _cool(inputs, "cool-wide", hidden_dim=64)
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert "another model shape: hidden_dim 32 (this training: 64)" in message, message
    _nothing_trained(inputs["prefix"], "cool-wide")


@pytest.mark.parametrize(
    "shard, vocab, expected",
    [
        ("kjv-00", 600, "vocabulary of 512 tokens, this training's tokenizer has 600"),
        ("kjv-01", 512, "trained with another tokenizer (same size"),
    ],
)
def test_a_source_trained_with_another_tokenizer_is_refused_before_training(
    inputs, monkeypatch, tmp_path, shard, vocab, expected
):
    from tasks.data.train_tokenizer import train_tokenizer

    other = str(tmp_path / "tokenizer")
    corpus = str(REPO / f"data/kjv/{shard}.jsonl.gz")
    train_tokenizer.fn.__wrapped__(corpus=corpus, vocab_size=vocab, output_path=other)
    monkeypatch.setenv("LMFLOWS_PREFIX", inputs["prefix"])
    name = f"cool-tok-{vocab}"
    state = _cool(inputs, name, tokenizer=other)
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert expected in message, message
    _nothing_trained(inputs["prefix"], name)


def test_a_cooldown_from_an_adopted_checkpoint_reads_it_in_place(inputs, monkeypatch, tmp_path):
    """The Marin case: a checkpoint that lmflows did not make (here a copy of the tiny model's
    output outside the prefix) is `adopt`ed and trained from; the training's identity names
    the adopted content, and a plain path string is refused with the `adopt` call to write."""
    import shutil

    from experiments.cooldown import cool_down
    from tasks.core import adopt, flow

    monkeypatch.setenv("LMFLOWS_PREFIX", inputs["prefix"])
    elsewhere = tmp_path / "marin" / "checkpoint"
    shutil.copytree(inputs["model"].path, elsewhere, ignore=shutil.ignore_patterns(".lmflows"))

    @flow(name="cool-adopted")
    def run(source):
        model = adopt(str(elsewhere), name="marin-tiny") if source is None else source
        return cool_down(
            "cool-adopted", model, inputs["tokenizer"], {"kjv": inputs["tokenized"]},
            {"kjv": 1.0}, **COOL,
        )  # fmt: skip

    refused = run(str(elsewhere), return_state=True)
    assert refused.is_failed()
    assert "adopt(" in str(refused.message) + repr(refused.result(raise_on_failure=False))
    _nothing_trained(inputs["prefix"], "cool-adopted")

    state = run(None, return_state=True)
    assert state.is_completed(), state.message
    cooled = state.result()
    losses = train_losses(cooled.path)
    source = train_losses(inputs["model"].path)
    assert abs(losses[0] - source[max(source)]) < 0.3, (losses, source)
    record = provenance(cooled.path)
    assert record["attrs"]["initialize_from"].startswith("adopted/marin-tiny-")
