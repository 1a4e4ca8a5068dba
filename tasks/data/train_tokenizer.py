"""train_tokenizer: a byte-level BPE trained with `tokenizers`, saved as a HuggingFace
tokenizer directory that `AutoTokenizer.from_pretrained(path)` loads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tasks.core import step
from tasks.core.argument_checks import positive
from tasks.data.shards import iter_documents

# load_tokenizer: re-exported, existing experiments import it from here (tasks.train_tokenizer).
from tasks.data.tokenizer_files import load_tokenizer, save_tokenizer

__all__ = ["BOS", "EOS", "PAD", "load_tokenizer", "save_tokenizer", "train_tokenizer"]

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def _texts(corpus: str, max_documents: int | None) -> Iterator[str]:
    for i, doc in enumerate(iter_documents(corpus)):
        if max_documents is not None and i >= max_documents:
            return
        yield doc["text"]


def check_train_tokenizer(vocab_size: int, min_frequency: int, **_: Any) -> None:
    """`train_tokenizer`'s `validate=`: room for the byte alphabet and specials."""
    positive(min_frequency=min_frequency)
    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size!r}: a byte-level BPE needs at least 256 "
            "byte tokens + special tokens (>= 300)"
        )


@step(
    hash_attrs=["corpus", "vocab_size", "min_frequency", "max_documents", "model_max_length"],
    name="tokenizer/{name}",
    validate=check_train_tokenizer,
    isolate=True,
)
def train_tokenizer(
    corpus: str,
    name: str = "bpe",
    vocab_size: int = 8192,
    min_frequency: int = 2,
    max_documents: int | None = None,
    model_max_length: int = 4096,
    *,
    output_path: str,
) -> dict:
    """Train on the `text` field of the JSON-lines shards under `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size}: a byte-level BPE needs at least 256 + special tokens"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(corpus, max_documents), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=model_max_length,
    )
    save_tokenizer(hf, output_path)
    return {"vocab_size": len(hf), "bos": BOS, "eos": EOS, "pad": PAD}
