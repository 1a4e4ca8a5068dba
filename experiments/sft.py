"""Supervised fine-tuning: the demo's tiny KJV Llama, tuned to answer in a chat format.

Pretraining is the demo's (`prepare_data` + `train_and_evaluate` with the same arguments), so
every pretraining step is shared with `python -m flows run demo` (Cached if it has run). The
chat data are the conversations in `data/chat/` (made from the same Bible, see its README),
brought in through the download step like any other source. `sft` fine-tunes the pretrained
model on their training file; `chat_eval` then scores the pretrained and the fine-tuned model
on the held-out file with the same template, on the assistant's tokens only, so the two losses
are about the same tokens and their difference is what fine-tuning did.
"""

from __future__ import annotations

from flows.pretrain import KJV_URLS, TINY_LLAMA, prepare_data, train_and_evaluate
from tasks.core import flow
from tasks.data.download import download_url
from tasks.lm.sft import DEFAULT_CHAT_TEMPLATE, sft
from tasks.lm.sft_eval import chat_eval

CHAT_URLS = ["data/chat/train-00.jsonl.gz", "data/chat/validation-00.jsonl.gz"]


def pretrain_sft_evaluate(
    name: str,
    pretrain_name: str,
    kjv_urls: list[str] = KJV_URLS,
    chat_urls: list[str] = CHAT_URLS,
    vocab_size: int = 4096,
    pretrain: dict | None = None,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    eval_batch_size: int = 32,
    **sft_args: object,
) -> dict:
    """Pretrain (as the demo does), fine-tune on the chat data, score both models on the
    held-out conversations. `pretrain`: train_lm's arguments (default: the demo's)."""
    pretrain = dict(TINY_LLAMA, learning_rate=3e-3) if pretrain is None else pretrain
    data = prepare_data("kjv", kjv_urls, vocab_size=vocab_size)
    tokenizer = data["tokenizer"]
    base = train_and_evaluate(pretrain_name, {"kjv": data["tokenized"]}, tokenizer, **pretrain)
    chat = download_url(chat_urls, name="chat-kjv")
    tuned = sft(base["model"], chat, tokenizer, name=name, chat_template=chat_template, **sft_args)
    # Both scored at the fine-tuning's sequence length, so the same tokens are scored.
    scoring = dict(
        chat_template=chat_template,
        seq_len=sft_args.get("seq_len", 128),
        batch_size=eval_batch_size,
    )
    before = chat_eval(base["model"], chat, tokenizer, name=f"{name}-base", **scoring)
    after = chat_eval(tuned, chat, tokenizer, name=name, **scoring)
    return {
        "tokenizer": tokenizer,
        "model": base["model"],
        "eval": base["eval"],
        "chat": chat,
        "sft": tuned,
        "chat_eval_base": before,
        "chat_eval_sft": after,
    }


def publish_comparison(name: str, before: dict, after: dict) -> dict:
    """The held-out assistant-token loss before and after fine-tuning, as a keyed table
    artifact (`sft-comparison-<name>`) and the returned dict. Under `plan` the metadata are
    empty and there is nothing to compare (no call depends on this)."""
    from tasks.core import artifacts

    if "loss" not in before or "loss" not in after:
        return {}

    rows = [
        {"model": "pretrained", "loss": before["loss"], "perplexity": before["perplexity"]},
        {"model": "fine-tuned", "loss": after["loss"], "perplexity": after["perplexity"]},
    ]
    artifacts.publish_table(
        artifacts.key("sft-comparison", name),
        rows,
        f"held-out chat loss on {after['assistant_tokens']} assistant tokens of "
        f"{after['conversations']} conversations",
    )
    return {
        "before": before["loss"],
        "after": after["loss"],
        "gain": before["loss"] - after["loss"],
    }


@flow(name="sft")
def sft_experiment(
    learning_rate: float = 1e-3,
    num_train_steps: int = 100,
    batch_size: int = 32,
    seq_len: int = 128,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
) -> dict:
    result = pretrain_sft_evaluate(
        "kjv-chat",
        "demo-kjv",  # the demo's model: `python -m flows run demo` shares every step
        chat_template=chat_template,
        learning_rate=learning_rate,
        num_train_steps=num_train_steps,
        batch_size=batch_size,
        seq_len=seq_len,
    )
    comparison = publish_comparison(
        "kjv-chat", result["chat_eval_base"].metadata, result["chat_eval_sft"].metadata
    )
    return {"sft": result["sft"], "comparison": comparison}
