"""Supervised fine-tuning (tasks/lm/sft.py, tasks/lm/sft_eval.py, experiments/sft.py): a real
tiny pretrain -> sft -> held-out chat evaluation, the HF export with its chat template, the
argument checks, and the chat template as part of the fine-tune's identity."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _plan(params: dict) -> dict[str, str]:
    """step name -> name-with-hash of an experiment planned with `params`."""
    from flows.loader import load_flow
    from flows.params import bind
    from tasks.core import planning

    flow = load_flow(params.pop("experiment", "sft"))
    with planning.planning() as plan:
        flow.fn(**bind(flow, {k: json.dumps(v) for k, v in params.items()}))
    return {item.ref.name: key for key, item in plan.steps.items()}


def test_chat_template_rekeys_the_fine_tune_not_pretraining(tmp_path, monkeypatch):
    from tasks.lm.sft import DEFAULT_CHAT_TEMPLATE

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path))
    base = _plan({})
    other = _plan({"chat_template": DEFAULT_CHAT_TEMPLATE.replace("Assistant:", "Answer:")})
    assert base.keys() == other.keys()
    changed = sorted(name for name in base if base[name] != other[name])
    # the fine-tune and both held-out scores (they tokenize with the template)
    assert changed == ["eval-chat/kjv-chat", "eval-chat/kjv-chat-base", "sft/kjv-chat"]
    # pretraining is the demo's, step for step: Cached when the demo has run
    demo = _plan({"experiment": "demo"})
    shared = demo.keys() & base.keys()
    assert {"tokenizer/kjv", "tokenized/kjv", "checkpoints/demo-kjv"} <= shared
    assert all(base[name] == demo[name] for name in shared)
    # another learning rate re-tunes; the base model's score stays
    lr = _plan({"learning_rate": 2e-3})
    assert sorted(n for n in base if base[n] != lr[n]) == ["eval-chat/kjv-chat", "sft/kjv-chat"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_train_steps": -3}, "num_train_steps=-3"),
        ({"num_train_steps": 1}, "at least 2 steps"),
        ({"learning_rate": 0.0}, "learning_rate=0.0 must be positive"),
        ({"seq_len": 256}, "seq_len=256 is longer than the base model's seq_len=128"),
        (
            {"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
            "renders an assistant message outside",
        ),
        (  # the third turn's user message is trained on: a two-turn probe would not see it
            {
                "chat_template": "{% for m in messages %}{% if m['role'] == 'assistant' or "
                "loop.index0 >= 4 %}{% generation %}{{ m['content'] }}</s>{% endgeneration %}"
                "{% else %}U: {{ m['content'] }}\n{% endif %}{% endfor %}"
            },
            "puts a user message inside",
        ),
        (
            {
                "chat_template": "{% for m in messages %}{% generation %}{{ m['content'] }}"
                "{% endgeneration %}{% endfor %}"
            },
            "puts a user message inside",
        ),
        (  # a system message first, inside the generation block (transformers' span of a
            # block at the first character is empty: the check renders after a marker)
            {
                "chat_template": "{% for m in messages %}{% if m['role'] == 'user' %}U: "
                "{{ m['content'] }}\n{% else %}{% generation %}{{ m['role'] }}: "
                "{{ m['content'] }}</s>{% endgeneration %}{% endif %}{% endfor %}"
            },
            "puts a system message inside",
        ),
        ({"chat_template": "{% for m in messages %}"}, "does not render"),
        ({"train_files": ""}, "train_files=''"),
        ({"accelerator": "tpu-v9-8"}, "tpu-v9-8"),
        ({"mixed_precision": "f13"}, "mixed_precision='f13'"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(prefix, tmp_path, change, message):
    from tasks.lm.sft import sft

    base = tmp_path / "base"  # a committed-looking train_lm output, outside the prefix
    base.mkdir()
    (base / "train_config.json").write_text(
        json.dumps({"model": {"seq_len": 128}, "vocab_size": 512})
    )
    args = {"seq_len": 128, "num_train_steps": 10, **change}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        sft(str(base), str(tmp_path / "chat"), str(tmp_path / "tok"), name="bad", **args)
    assert not os.path.exists(prefix) or not os.listdir(prefix)  # nothing written


def test_chat_data_is_small_reproducible_and_well_formed(tmp_path):
    """`data/chat/make_chat.py` rebuilds the checked-in shards byte for byte."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_chat", REPO / "data/chat/make_chat.py")
    make_chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_chat)
    built = make_chat.build()
    for split, rows in built.items():
        make_chat.write(rows, tmp_path / f"{split}-00.jsonl.gz")
        checked_in = REPO / "data/chat" / f"{split}-00.jsonl.gz"
        assert checked_in.read_bytes() == (tmp_path / f"{split}-00.jsonl.gz").read_bytes()
    total = sum(p.stat().st_size for p in (REPO / "data/chat").iterdir())
    assert total < 300_000
    with gzip.open(REPO / "data/chat/validation-00.jsonl.gz", "rt") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) > 100
    train_ids = {r["id"] for r in built["train"]}
    assert not train_ids & {r["id"] for r in rows}  # held out
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant" and len(roles) % 2 == 0


def test_sft_loss_falls_export_loads_and_rerun_is_cached(on_shared):
    """A real tiny run: the shared tiny model (pretrained 6 steps on one KJV shard), fine-tune
    30 steps on the chat data, score both models on the held-out conversations; then the
    same flow again."""
    import numpy as np
    from transformers import AutoTokenizer, FlaxLlamaForCausalLM

    from experiments.sft import CHAT_URLS, pretrain_sft_evaluate
    from tasks.core import flow
    from tasks.lm.report import read_metrics
    from tasks.lm.sft import DEFAULT_CHAT_TEMPLATE
    from tests.helpers import tiny as shared
    from tests.helpers.api import final_task_states

    @flow(name="sft-tiny")
    def tiny() -> dict:
        return pretrain_sft_evaluate(
            "sft-tiny",
            shared.NAME,
            kjv_urls=shared.KJV_URLS,
            chat_urls=[str(REPO / url) for url in CHAT_URLS],
            vocab_size=shared.VOCAB_SIZE,
            pretrain=shared.TINY,
            eval_batch_size=8,
            seq_len=128,
            batch_size=8,
            num_train_steps=30,
            learning_rate=1e-2,
            steps_per_eval=100,
            max_eval_batches=1,
        )

    state = tiny(return_state=True)
    assert state.is_completed(), state.message
    refs = state.result()
    tuned = refs["sft"]
    losses = [
        row["train/loss"]
        for row in read_metrics(f"{tuned.path}/metrics.jsonl")
        if row.get("train/loss") is not None
    ]
    assert len(losses) >= 30
    early, late = np.mean(losses[:5]), np.mean(losses[-5:])
    assert late < early - 0.5, (early, late)
    before, after = refs["chat_eval_base"].metadata, refs["chat_eval_sft"].metadata
    assert before["assistant_tokens"] == after["assistant_tokens"] > 1000  # the same tokens
    assert after["loss"] < before["loss"] - 0.3, (before, after)

    export = Path(tuned.path, tuned.metadata["hf_export"])
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    prompt = [{"role": "user", "content": "Continue this verse: And God said"}]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="np")
    assert tokenizer.decode(ids[0]).endswith("Continue this verse: And God said\nAssistant:")
    model = FlaxLlamaForCausalLM.from_pretrained(export)
    logits = np.asarray(model(ids).logits)
    assert logits.shape == (1, ids.shape[1], 512) and np.isfinite(logits).all()

    again = tiny(return_state=True)
    assert again.is_completed(), again.message
    states = final_task_states(again.state_details.flow_run_id, 10)
    assert states == ["Cached"] * 10, states


def test_a_held_out_file_matched_by_the_training_pattern_is_refused():
    from tasks.lm.sft import split_files

    chat = str(REPO / "data" / "chat")
    files = split_files(chat, "train-*.jsonl*", "validation-*.jsonl*")
    assert [f.rsplit("/", 1)[-1] for f in files["validation"]] == ["validation-00.jsonl.gz"]
    with pytest.raises(ValueError, match="must not be trained on"):
        split_files(chat, "*.jsonl*", "validation-*.jsonl*")


def test_chat_eval_refuses_a_boolean_batch_count():
    """`True` would be another identity for the same work as `1`."""
    from tasks.lm.sft import DEFAULT_CHAT_TEMPLATE
    from tasks.lm.sft_eval import chat_eval

    check = chat_eval.definition.check
    args = dict(
        model="m",
        chat_data="c",
        tokenizer="t",
        name="n",
        chat_template=DEFAULT_CHAT_TEMPLATE,
        validation_files="validation-*.jsonl*",
        seq_len=32,
        batch_size=8,
    )
    with pytest.raises(ValueError, match="max_eval_batches=True"):
        check({**args, "max_eval_batches": True})
