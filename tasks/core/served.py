"""A committed step called in a plain `prefect.flow`, served without Prefect's task engine
(the engine's Pending, Running and Cached events, its transaction, lock manager and two more
reads of the record cost about two thirds of a cached step: benches/cached_chain.py). The
caller (`Step.__call__`) has already ruled out a call inside a step's body and one with
futures among its arguments."""

from __future__ import annotations

from typing import Any

from tasks.core import records
from tasks.core.identity import Identity
from tasks.core.ref import StepRef


def serve_committed(task: Any, params: dict[str, Any], return_state: bool) -> Any:
    """A plain call in a plain `prefect.flow` of a step whose output is committed: its
    StepRef (or `Cached` state), recorded by Prefect as a `Cached` task run; None where the
    engine must run it (anything not committed, forced, hooked, tagged, in a transaction, in
    a step's body, outside a flow run, with futures).

    What the engine would do for it: the same commit record read and validated
    (`records.read_commit`, as the lease lock manager's double check does), the same task run
    (name = identity, task key, dynamic key, inputs linking upstream runs, parameters' links)
    ending `Cached`, the same result links for downstream calls and the same `Finished in
    state Cached(type=COMPLETED)` log line. What it skips: the Pending and Running events
    before the final one, the transaction, the lock manager and Prefect's own two reads of
    the record (benches/cached_chain.py: about a third of a bare Prefect cached task)."""
    from prefect.context import FlowRunContext, TagsContext

    flow_ctx = FlowRunContext.get()
    if flow_ctx is None or flow_ctx.flow_run is None:
        return None
    if not _plain_task(task) or TagsContext.get().current_tags:
        return None
    identity = task.identify(params)
    ref = records.read_commit(identity.name_with_hash)
    if ref is None:
        return None
    try:
        state = _record_cached_run(task, params, identity, ref, flow_ctx)
    except Exception:  # a Prefect without these internals: let the engine do it
        return None
    return state if return_state else ref


def _plain_task(task: Any) -> bool:
    """No option under which the engine would do more than serve the record."""
    from prefect.settings import get_current_settings
    from prefect.transactions import get_transaction

    hooks = (
        "on_completion_hooks",
        "on_failure_hooks",
        "on_running_hooks",
        "on_commit_hooks",
        "on_rollback_hooks",
    )
    from tasks.core.policy import IdentityRunName, StepCachePolicy

    return (
        isinstance(task.cache_policy, StepCachePolicy)  # not persist_result=False's NO_CACHE
        and isinstance(task.task_run_name, IdentityRunName)  # no task_run_name of the user's
        and not task.refresh_cache
        and not task.tags
        and task.cache_expiration is None
        and not any(getattr(task, name, None) for name in hooks)
        and get_transaction() is None
        and not get_current_settings().tasks.refresh_cache
    )


def _record_cached_run(
    task: Any, params: dict[str, Any], identity: Identity, ref: StepRef, flow_ctx: Any
) -> Any:
    from prefect.client.schemas.objects import StateDetails
    from prefect.logging.loggers import task_run_logger
    from prefect.settings import PREFECT_DEBUG_MODE
    from prefect.states import Completed
    from prefect.task_engine import _create_task_run_locally
    from prefect.utilities.engine import (
        emit_task_run_state_change_event,
        link_state_to_task_run_result,
    )

    task_run = _create_task_run_locally(task=task, parameters=params, flow_run_context=flow_ctx)
    task_run.name = identity.name_with_hash  # what IdentityRunName gives the engine
    state = Completed(
        name="Cached",
        data=ref,
        state_details=StateDetails(task_run_id=task_run.id, flow_run_id=task_run.flow_run_id),
    )
    task_run.state, task_run.state_id = state, state.id
    task_run.state_type, task_run.state_name = state.type, state.name
    task_run.start_time = task_run.end_time = state.timestamp
    task_run.run_count = 1
    emit_task_run_state_change_event(task_run=task_run, initial_state=None, validated_state=state)
    link_state_to_task_run_result(state, ref)
    shown = repr(state) if PREFECT_DEBUG_MODE.value() else str(state)
    task_run_logger(task_run, task=task, flow_run=flow_ctx.flow_run).info(
        f"Finished in state {shown}"
    )
    return state
