"""Tokenizer folders on any fsspec filesystem: what the tokenizer-training step writes and
every step that tokenizes, trains or evaluates reads (kept apart from the training step so
readers do not import it)."""

from __future__ import annotations

import os
import tempfile


def save_tokenizer(hf_tokenizer, output_path: str) -> None:
    """save_pretrained writes local files; copy them to any fsspec output."""
    if "://" not in output_path:
        hf_tokenizer.save_pretrained(output_path)
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

    if "://" in path_or_id and not path_or_id.startswith("file://"):
        import fsspec

        local = tempfile.mkdtemp(prefix="lmflows-tokenizer-")
        fs, root = fsspec.core.url_to_fs(path_or_id)
        for remote in fs.ls(root, detail=False):
            if not remote.rstrip("/").endswith(".lmflows"):
                fs.get_file(remote, os.path.join(local, os.path.basename(remote)))
        path_or_id = local
    return AutoTokenizer.from_pretrained(path_or_id)
