"""A step that reads an adopted folder in place, and the flow the adopt tests run."""

from __future__ import annotations

import json
import os

import fsspec

from tasks.core import adopt, flow, step


@step(hash_attrs=["data", "file"], name="t/read-adopted")
def read_adopted(data: str, file: str = "a.txt", *, output_path: str) -> dict:
    """Records which path it was handed (the adopted folder, never a copy) and what it read."""
    log = os.environ.get("LMFLOWS_TEST_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"read-adopted {os.getpid()}\n")
    with fsspec.open(f"{data}/{file}", "r") as handle:
        text = handle.read()
    with fsspec.open(f"{output_path}/read.json", "w") as handle:
        handle.write(json.dumps({"text": text}))
    return {"data": data, "text": text}


def adopt_then_read(path: str, name: str = "fixture", fingerprint: str | None = None) -> dict:
    """The body both flows share: adopt a folder, read it whole and by `.cd()`."""
    source = adopt(path, name=name, fingerprint=fingerprint)
    whole = read_adopted(source)
    inside = read_adopted(source.cd("sub"), file="b.bin")
    return {"source": source, "whole": whole, "inside": inside}


@flow(name="adopt-and-read")
def adopt_and_read(path: str, name: str = "fixture", fingerprint: str | None = None) -> dict:
    return adopt_then_read(path, name, fingerprint)
