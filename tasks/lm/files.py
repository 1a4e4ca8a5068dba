"""Small files and folders at any fsspec URL (local paths and gs:// alike)."""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec


def join_url(path: str, *parts: str) -> str:
    """`path`/`parts` for local paths and fsspec URLs alike."""
    return "/".join([path.rstrip("/"), *parts])


def write_json(url: str, value: Any) -> None:
    """A small JSON file at any fsspec URL."""
    with fsspec.open(url, "w") as handle:
        json.dump(value, handle, indent=2)


def put_folder(local: str, url: str) -> None:
    """Copy the files of the local folder `local` to `url` (any fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    for name in sorted(os.listdir(local)):
        fs.put_file(os.path.join(local, name), f"{root.rstrip('/')}/{name}")
