"""A worker process for concurrency and crash tests: runs one small flow, prints JSON."""

from __future__ import annotations

import json
import sys

from prefect import flow

from tests.helpers import steps


@flow
def chain_flow(n: int, k: int) -> list:
    a = steps.source(n, return_state=True)
    b = steps.derive(a.result(), k=k, return_state=True)
    return [a, b]


@flow
def blocker_flow(label: str):
    return steps.blocker(label, return_state=True)


@flow
def count_flow(total: int, pause: float):
    return steps.count_up(total, pause=pause, return_state=True)


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "count":
        if "--force" in argv:
            from tasks.core import set_force

            set_force(["t/count"])
        state = count_flow(int(argv[1]), float(argv[2]))
        print(json.dumps({"task": state.name, "metadata": state.result().metadata}))
        return 0 if state.is_completed() else 3
    if mode == "chain":
        states = chain_flow(int(argv[1]), int(argv[2]))
        print(json.dumps({"states": [s.name for s in states]}))
        return 0
    if mode == "blocker":
        if "--force" in argv:
            from tasks.core import set_force

            set_force(["t/blocker"])
        state = blocker_flow(argv[1], return_state=True)
        inner = state.result(raise_on_failure=False) if state.is_completed() else None
        print(
            json.dumps(
                {"flow": state.name, "task": getattr(inner, "name", None), "message": state.message}
            )
        )
        return 0 if state.is_completed() and inner is not None and inner.is_completed() else 3
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
