"""What tests/test_stress.py runs in a fresh process: steps side by side, and whether the flow's
own process ever imported levanter (two steps importing it at once in one process raised
ImportErrors from half-initialised modules before steps were isolated)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile

from tasks.core import StepRef, flow, step
from tasks.lm.sft import sft

CHAT_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "chat", "train-00.jsonl.gz")


def chat_masks_digest(tokenizer: str) -> tuple[int, str]:
    """sft's and chat_eval's chat rendering (levanter's ChatProcessor on the default template)
    of every conversation in data/chat/train-00: (count, sha256 of ids and assistant masks)."""
    from levanter.data.text import ChatProcessor

    from tasks.lm.sft import DEFAULT_CHAT_TEMPLATE, read_conversations, templated_tokenizer

    hf = templated_tokenizer(tokenizer, DEFAULT_CHAT_TEMPLATE, tempfile.mkdtemp())
    processor = ChatProcessor(hf, chat_template=DEFAULT_CHAT_TEMPLATE)
    conversations = [{"messages": m} for m in read_conversations([os.path.abspath(CHAT_FILE)])]
    digest = hashlib.sha256()
    for start in range(0, len(conversations), 256):
        for row in processor(conversations[start : start + 256]):
            digest.update(row["input_ids"].tobytes())
            digest.update(row["assistant_masks"].tobytes())
    return len(conversations), digest.hexdigest()


# Isolated exactly when sft is: dropping sft's isolation brings the threads back here too.
@step(hash_attrs=["tokenizer", "copy"], name="t/chat-masks", isolate=sft.definition.isolate)
def chat_masks(tokenizer: str, copy: int, *, output_path: str) -> dict:
    count, digest = chat_masks_digest(tokenizer)
    return {"conversations": count, "digest": digest}


@flow(name="chat-pairs")
def chat_pairs(tokenizer: dict, pairs: int) -> list:
    tokenizer = StepRef.from_json(tokenizer)
    return [chat_masks(tokenizer, copy) for copy in range(2 * pairs)]


@flow(name="all-at-once")
def all_at_once(refs: dict) -> dict:
    """Every kind of pipeline step on the shared tiny model, all started at once."""
    from tasks.data.download import download_url
    from tasks.data.tokenize import tokenize
    from tasks.data.train_tokenizer import train_tokenizer
    from tasks.lm.evaluate import evaluate
    from tasks.lm.harness import harness_eval, harness_tasks
    from tasks.lm.sft_eval import chat_eval
    from tasks.lm.train import train_lm
    from tests.helpers import tiny

    model, tokenizer, data = refs["model"], refs["tokenizer"], refs["dedup"].cd("data")
    chat_files = [
        os.path.abspath(CHAT_FILE),
        os.path.abspath(CHAT_FILE.replace("train", "validation")),
    ]
    chat = download_url(chat_files, name="chat-stress")
    small = dict(tiny.TINY, num_train_steps=2)
    return {
        "train": train_lm({"kjv": refs["tokenized"]}, tokenizer, name="stress", **small),
        "evaluate": evaluate(model, {"kjv": refs["tokenized"]}, tokenizer, name="stress",
                             max_eval_batches=2, batch_size=8),
        "harness": harness_eval(model, tokenizer, ["kjv_completion"], name="stress",
                                task_folder=harness_tasks(), max_eval_instances=4),
        "chat_eval": chat_eval(model, chat, tokenizer, name="stress", batch_size=8,
                               max_eval_batches=1),
        "sft": sft(model, chat, tokenizer, name="stress", batch_size=8, num_train_steps=2,
                   steps_per_eval=100, max_eval_batches=1),
        "tokenize": tokenize(data, tokenizer, name="stress"),
        "train_tokenizer": train_tokenizer(data, name="stress", vocab_size=600),
    }  # fmt: skip


def main() -> None:
    """`python -m tests.helpers.stress WHICH ARG`: run a flow, print the outcome as JSON."""
    which, arg = sys.argv[1], sys.argv[2]
    if which == "chat":
        state = chat_pairs(tokenizer=json.loads(arg), pairs=10, return_state=True)
    else:
        refs = {k: StepRef.from_json(v) for k, v in json.loads(arg).items()}
        state = all_at_once(refs=refs, return_state=True)
    result = state.result() if state.is_completed() else None
    if isinstance(result, list):
        result = [ref.metadata for ref in result]
    elif isinstance(result, dict):
        result = {key: ref.name_with_hash for key, ref in result.items()}
    print(json.dumps({
        "completed": state.is_completed(),
        "message": state.message,
        "result": result,
        "levanter_imported": any(m.split(".")[0] == "levanter" for m in sys.modules),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
