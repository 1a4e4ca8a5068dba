"""What the test session's Prefect server recorded about a flow run."""

from __future__ import annotations

import time
from typing import Any


def final_task_runs(flow_run_id: Any, expected: int, timeout: float = 60) -> list:
    """The flow run's task runs once at least `expected` of them are in a final state.

    The server persists task-run states from events, after the flow call has returned: read
    at once, a run can still show `Pending` or `Running` (seen in the isoflop test once flow
    runs stopped waiting ~1 s for their heartbeat thread). Returns what it has at `timeout`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            final = [r for r in runs if r.state and r.state.is_final()]
            if len(final) >= expected or time.monotonic() > deadline:
                return runs
            time.sleep(0.25)


def final_task_states(flow_run_id: Any, expected: int, timeout: float = 60) -> list[str]:
    """The sorted state names of `final_task_runs`."""
    runs = final_task_runs(flow_run_id, expected, timeout)
    return sorted(run.state.name for run in runs if run.state)
