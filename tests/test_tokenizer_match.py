"""A model is scored and tuned only with the tokenizer it was trained with: `train_lm` records
its tokenizer's vocabulary fingerprint, and evaluate, harness_eval, chat_eval and sft refuse
another one before any work, also one of the same size (found by the attack review: the
harness scored a 512-token model with a 1024-token tokenizer and committed the numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import tiny as shared

REPO = Path(__file__).resolve().parent.parent
# The shared tiny model's shape (tests/helpers/tiny.py), shorter: 2 steps of 32 tokens.
TINY = dict(shared.TINY, seq_len=32, num_train_steps=2, max_eval_batches=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained with a tokenizer of the first KJV shard, and two other tokenizers:
    the same size from another shard, and another size."""
    from tasks.data.tokenize import tokenize
    from tasks.data.train_tokenizer import train_tokenizer
    from tasks.lm.train import train_lm

    root = tmp_path_factory.mktemp("match")
    shard, other_shard = (str(REPO / f"data/kjv/kjv-0{i}.jsonl.gz") for i in (0, 1))
    paths = {key: str(root / key) for key in ("tok", "same-size", "other-size", "data", "model")}
    train_tokenizer.fn.__wrapped__(corpus=shard, vocab_size=512, output_path=paths["tok"])
    train_tokenizer.fn.__wrapped__(
        corpus=other_shard, vocab_size=512, output_path=paths["same-size"]
    )
    train_tokenizer.fn.__wrapped__(corpus=shard, vocab_size=600, output_path=paths["other-size"])
    tokenize.fn.__wrapped__(
        dataset=shard, tokenizer=paths["tok"], name="kjv", output_path=paths["data"]
    )
    train_lm.fn.__wrapped__(
        data={"kjv": paths["data"]},
        tokenizer=paths["tok"],
        name="match",
        output_path=paths["model"],
        **TINY,
    )
    return paths


def test_training_records_its_tokenizers_fingerprint(trained):
    from tasks.data.tokenizer_files import load_tokenizer
    from tasks.lm.model import tokenizer_fingerprint

    config = json.loads(Path(trained["model"], "train_config.json").read_text())
    assert config["tokenizer_sha256"] == tokenizer_fingerprint(load_tokenizer(trained["tok"]))
    assert config["tokenizer_sha256"] != tokenizer_fingerprint(load_tokenizer(trained["same-size"]))


@pytest.mark.parametrize(
    "which, message",
    [("same-size", "vocabulary is not the one"), ("other-size", "has 600 tokens")],
)
@pytest.mark.parametrize("consumer", ["evaluate", "harness_eval", "chat_eval", "sft"])
def test_another_tokenizer_is_refused(trained, tmp_path, consumer, which, message):
    from tasks.lm.evaluate import evaluate
    from tasks.lm.harness import harness_eval, harness_tasks
    from tasks.lm.sft import sft
    from tasks.lm.sft_eval import chat_eval

    chat = str(REPO / "data" / "chat")
    model, tokenizer, out = trained["model"], trained[which], str(tmp_path / "out")
    calls = {
        "evaluate": lambda: evaluate.fn.__wrapped__(
            model, data={"kjv": trained["data"]}, tokenizer=tokenizer, name="m", output_path=out
        ),
        "harness_eval": lambda: harness_eval.fn.__wrapped__(
            model,
            tokenizer,
            ["kjv_completion"],
            name="m",
            task_folder=harness_tasks(),
            max_eval_instances=4,
            output_path=out,
        ),
        "chat_eval": lambda: chat_eval.fn.__wrapped__(
            model, chat, tokenizer, name="m", seq_len=32, output_path=out
        ),
        "sft": lambda: sft.fn.__wrapped__(
            model, chat, tokenizer, name="m", seq_len=32, num_train_steps=2, output_path=out
        ),
    }
    with pytest.raises(ValueError, match=message):
        calls[consumer]()
    assert not Path(out, "results.json").exists() and not Path(out, "checkpoints").exists()
