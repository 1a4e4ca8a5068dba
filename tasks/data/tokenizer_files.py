"""Tokenizer folders on any fsspec filesystem: what the tokenizer-training step writes and
every step that tokenizes, trains or evaluates reads (kept apart from the training step so
readers do not import it)."""

from __future__ import annotations

import json
import os
import tempfile

# What a Hugging Face tokenizer folder holds: at least one of these.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


class TokenizerFileError(ValueError):
    """A tokenizer folder that cannot be loaded: names the folder or file and what is wrong."""


def check_tokenizer_folder(folder: str, shown_as: str | None = None) -> None:
    """Refuse a local folder with no tokenizer file, or a `tokenizer.json` that is not JSON,
    with one line naming it (transformers says `'NoneType' object has no attribute
    'endswith'` or `EOF while parsing` without a file name)."""
    shown = (shown_as or folder).rstrip("/")
    present = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise TokenizerFileError(
            f"tokenizer {shown} has none of {', '.join(TOKENIZER_FILES)}: not a tokenizer folder"
            " (a train_tokenizer output or a save_pretrained folder)"
        )
    if "tokenizer.json" in present:
        try:
            with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as handle:
                json.load(handle)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenizerFileError(
                f"{shown}/tokenizer.json is not valid JSON ({exc}): truncated or damaged"
            ) from None


def save_tokenizer(hf_tokenizer, output_path: str) -> None:
    """save_pretrained writes local files; copy them to any fsspec output."""
    from tasks.core import stores

    local = stores.store_for(output_path).local_path(output_path)
    if local is not None:
        hf_tokenizer.save_pretrained(local)
        return
    import fsspec

    with tempfile.TemporaryDirectory() as tmp:
        hf_tokenizer.save_pretrained(tmp)
        fs, root = fsspec.core.url_to_fs(output_path)
        for name in os.listdir(tmp):
            fs.put_file(os.path.join(tmp, name), f"{root}/{name}")


def load_tokenizer(path_or_id: str):
    """A tokenizer from a step output (any fsspec path) or a hub id."""
    from transformers import AutoTokenizer

    shown = path_or_id
    if "://" in path_or_id and not path_or_id.startswith("file://"):
        import fsspec

        local = tempfile.mkdtemp(prefix="lmflows-tokenizer-")
        fs, root = fsspec.core.url_to_fs(path_or_id)
        for remote in fs.ls(root, detail=False):
            if not remote.rstrip("/").endswith(".lmflows"):
                fs.get_file(remote, os.path.join(local, os.path.basename(remote)))
        path_or_id = local
    path_or_id = path_or_id.removeprefix("file://")
    if os.path.isdir(path_or_id):  # else a hub id
        check_tokenizer_folder(path_or_id, shown)
    return AutoTokenizer.from_pretrained(path_or_id)
