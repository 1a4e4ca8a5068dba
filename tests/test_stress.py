"""Steps side by side never share a library's process state (issues #16 and #19, item 4).

Each flow runs in a fresh process, which must never import levanter itself: every levanter,
transformers or lm-eval body runs in a worker process of its own. Before isolation, `sft` and
`chat_eval` in two threads failed with transformers' `AssistantTracker should not be reused`
or, worse, rendered assistant masks that differ from a serial run with no error at all."""

from __future__ import annotations

import json

from tests.conftest import run_python


def _run(which: str, arg: str) -> dict:
    result = run_python(["-m", "tests.helpers.stress", which, arg], timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_chat_rendering_side_by_side_matches_a_serial_run_ten_pairs(on_shared, tiny_lm):
    from tests.helpers.stress import chat_masks_digest

    tokenizer = tiny_lm["tokenizer"].path
    serial = chat_masks_digest(tokenizer)
    assert serial[0] >= 1000
    outcome = _run("chat", json.dumps(tiny_lm["tokenizer"].to_json()))
    assert outcome["completed"], outcome["message"]
    assert len(outcome["result"]) == 20
    for masks in outcome["result"]:
        assert (masks["conversations"], masks["digest"]) == serial
    assert not outcome["levanter_imported"], "the flow's own process imported levanter"


def test_every_kind_of_pipeline_step_at_once(on_shared, tiny_lm):
    refs = {key: tiny_lm[key].to_json() for key in ("model", "tokenizer", "tokenized", "dedup")}
    outcome = _run("all", json.dumps(refs))
    assert outcome["completed"], outcome["message"]
    assert set(outcome["result"]) == {
        "train", "evaluate", "harness", "chat_eval", "sft", "tokenize", "train_tokenizer"
    }  # fmt: skip
    assert not outcome["levanter_imported"], "the flow's own process imported levanter"
