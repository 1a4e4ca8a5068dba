"""The kjv + pydoc mixture (experiments/mixture.py): the weights are part of the trained
model's identity and nothing upstream of it, and they reach levanter's data config."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _plan(weights: dict) -> dict[str, str]:
    """step name -> name-with-hash of the mixture experiment planned with `weights`."""
    from flows.loader import load_flow
    from flows.params import bind
    from tasks.core import planning

    flow = load_flow("mixture")
    with planning.planning() as plan:
        flow.fn(**bind(flow, {"weights": json.dumps(weights)}))
    return {item.ref.name: key for key, item in plan.steps.items()}


def test_a_weight_rekeys_training_and_evaluation_only(tmp_path, monkeypatch):
    from experiments.mixture import WEIGHTS

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path))
    assert WEIGHTS == {"kjv": 0.7, "pydoc": 0.3}
    base = _plan(WEIGHTS)
    other = _plan({"kjv": 0.5, "pydoc": 0.5})
    assert base.keys() == other.keys()
    changed = sorted(name for name in base if base[name] != other[name])
    assert changed == ["checkpoints/mixture-kjv-pydoc", "eval/mixture-kjv-pydoc"]
    # One tokenizer for both corpora; each corpus tokenized once, with it.
    assert [n for n in base if n.startswith("tokenizer/")] == ["tokenizer/kjv-pydoc"]
    assert {n for n in base if n.startswith("tokenized/")} == {"tokenized/kjv", "tokenized/pydoc"}
    # The same weights spelled in another key order are the same experiment.
    assert _plan({"pydoc": 0.3, "kjv": 0.7}) == base


def test_pydoc_corpus_is_shaped_like_kjv():
    shards = sorted((REPO / "data" / "pydoc").glob("pydoc-*.jsonl.gz"))
    assert len(shards) == 4
    ids = []
    for shard in shards:
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            docs = [json.loads(line) for line in handle]
        assert docs and all(set(d) == {"id", "text"} and d["text"].strip() for d in docs)
        ids += [d["id"] for d in docs]
    assert len(ids) == len(set(ids)) > 400
    assert sum(s.stat().st_size for s in shards) < 1_000_000  # keep the repository small


def test_mixture_weights_reach_levanter_and_each_corpus_is_evaluated(prefix, monkeypatch):
    """A real tiny run of the experiment's pipeline on one shard of each corpus."""
    from experiments.mixture import kjv_pydoc
    from tasks.core import flow

    weights = {"kjv": 0.8, "pydoc": 0.2}

    @flow(name="mixture-tiny")
    def tiny() -> dict:
        return kjv_pydoc(
            "mixture-tiny",
            weights,
            kjv_urls=["data/kjv/kjv-00.jsonl.gz"],
            pydoc_urls=["data/pydoc/pydoc-00.jsonl.gz"],
            vocab_size=512,
            hidden_dim=32,
            num_layers=1,
            num_heads=2,
            num_kv_heads=2,
            intermediate_dim=64,
            seq_len=32,
            batch_size=8,
            num_train_steps=6,
            learning_rate=1e-2,
            steps_per_eval=100,
            max_eval_batches=4,
        )

    state = tiny(return_state=True)
    assert state.is_completed(), state.message
    refs = state.result()
    # what the training body handed levanter (LMMixtureDatasetConfig.train_weights)
    plan = levanter_plan(refs["model"], weights)
    assert plan.config.data.train_weights == weights
    trained = json.loads(Path(refs["model"].path, "train_config.json").read_text())
    assert trained["weights"] == weights and trained["data"] == ["kjv", "pydoc"]

    results = refs["eval"].metadata
    assert set(results) == {"all", "kjv", "pydoc"}
    for key in ("kjv", "pydoc"):
        assert results[key]["loss"] > 0 and results[key]["bits_per_byte"] > 0, results
    assert results["kjv"]["loss"] != pytest.approx(results["pydoc"]["loss"])


def levanter_plan(model, weights: dict):
    """levanter's config as train_lm's body builds it for this model's arguments (the body
    runs in a worker process of its own, so it is rebuilt here from the same function)."""
    import tempfile

    from tasks.core import storage
    from tasks.core.inventory import describe
    from tasks.lm.train import build_train_config

    attrs = dict(describe(model.name_with_hash)["provenance"]["attrs"])
    data = {key: storage.output_dir(value) for key, value in attrs.pop("data").items()}
    tokenizer = storage.output_dir(attrs.pop("tokenizer"))
    assert attrs["weights"] == weights
    return build_train_config(
        data,
        tokenizer,
        tempfile.mkdtemp(),
        steps_per_eval=100,
        max_eval_batches=None,
        checkpoint_every=None,
        **attrs,
    )
