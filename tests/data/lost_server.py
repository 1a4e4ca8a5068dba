"""Forty short steps, for the lost-server test (the server is killed mid-run)."""

import time

from prefect import flow

from tasks.core import step


@step(hash_attrs=["i"], name="lost/node")
def node(i: int, *, output_path: str) -> dict:
    time.sleep(0.3)
    return {"i": i}


@flow
def lost_server():
    for i in range(40):
        node(i)
