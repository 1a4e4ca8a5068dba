"""Chat data for levanter: the JSON-lines files of a chat folder, split into training and
held-out files, checked, and written into levanter's chat cache (`input_ids` and the
`assistant_masks` its loss uses), with the data config that reads the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fsspec

from tasks.lm.files import join_url

TRAIN_FILES = "train-*.jsonl*"
VALIDATION_FILES = "validation-*.jsonl*"


def chat_files(chat_data: str, pattern: str) -> list[str]:
    """The files directly under `chat_data` (any fsspec URL) whose names match `pattern`,
    sorted, as URLs."""
    import fnmatch

    fs, root = fsspec.core.url_to_fs(chat_data)
    names = sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(root, detail=False))
    matched = [join_url(chat_data, name) for name in names if fnmatch.fnmatch(name, pattern)]
    if not matched:
        raise FileNotFoundError(f"no file matching {pattern!r} in {chat_data} (found {names})")
    return matched


def split_files(chat_data: str, train_files: str, validation_files: str) -> dict[str, list[str]]:
    """The training and held-out files; a file matching both patterns is refused (held-out
    conversations that were trained on would make the held-out loss meaningless)."""
    files = {
        "train": chat_files(chat_data, train_files),
        "validation": chat_files(chat_data, validation_files),
    }
    both = sorted(set(files["train"]) & set(files["validation"]))
    if both:
        raise ValueError(
            f"train_files={train_files!r} and validation_files={validation_files!r} both match "
            f"{both}: a held-out file must not be trained on"
        )
    return files


def read_conversations(files: list[str], messages_field: str = "messages") -> Iterator[list[dict]]:
    """Each conversation's messages, checked: a list of {"role", "content"} strings with at
    least one assistant message (levanter would fail later on a worse message)."""
    for url in files:
        with fsspec.open(url, "rt", compression="infer", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                messages = json.loads(line).get(messages_field)
                if not isinstance(messages, list) or not all(
                    isinstance(m, dict)
                    and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)
                    for m in messages
                ):
                    raise ValueError(
                        f"{url}:{number}: {messages_field!r} must be a list of "
                        '{"role": ..., "content": ...} messages'
                    )
                if not any(m["role"] == "assistant" for m in messages):
                    raise ValueError(f"{url}:{number}: a conversation without an assistant turn")
                yield messages


def build_chat_cache(
    files: list[str], hf_tokenizer: Any, chat_template: str, cache_dir: str, seq_len: int
) -> dict[str, int]:
    """A levanter chat cache (`input_ids`, `assistant_masks`) of the conversations in
    `files`, written in-process with levanter's `ChatProcessor` and `SerialCacheWriter` (the
    same cache levanter's Ray builder makes; see tasks/data/tokenize.py for why not Ray)."""
    from levanter.data.text import ChatProcessor
    from levanter.store.cache import CacheMetadata, SerialCacheWriter

    processor = ChatProcessor(hf_tokenizer, chat_template=chat_template)
    stats = {"conversations": 0, "tokens": 0, "assistant_tokens": 0, "longer_than_seq_len": 0}
    with SerialCacheWriter(
        cache_dir,
        processor.output_exemplar,
        metadata=CacheMetadata(preprocessor_metadata=processor.metadata),
    ) as writer:
        batch: list[dict] = []

        def flush() -> None:
            encoded = processor(batch)
            writer.write_batch(encoded)
            for row in encoded:
                stats["conversations"] += 1
                stats["tokens"] += len(row["input_ids"])
                stats["assistant_tokens"] += int(row["assistant_masks"].sum())
                stats["longer_than_seq_len"] += int(len(row["input_ids"]) > seq_len)
            batch.clear()

        for messages in read_conversations(files):
            batch.append({"messages": messages})
            if len(batch) >= 256:
                flush()
        if batch:
            flush()
    if stats["conversations"] == 0:
        raise ValueError(f"no conversations in {files}")
    return stats


def chat_data_config(tokenizer_dir: str, cache_root: str, chat_template: str) -> Any:
    """levanter's data config for one chat dataset named "chat" whose caches are built
    (`cache_root/train`, `cache_root/validation`)."""
    from levanter.data.text import (
        ChatLmDatasetFormat,
        LMMixtureDatasetConfig,
        UrlDatasetSourceConfig,
    )

    source = UrlDatasetSourceConfig(
        cache_dir=cache_root, format=ChatLmDatasetFormat(chat_template=chat_template)
    )
    return LMMixtureDatasetConfig(
        tokenizer=tokenizer_dir,
        cache_dir=None,
        configs={"chat": source},
        train_weights={"chat": 1.0},
        chat_template=chat_template,
    )
