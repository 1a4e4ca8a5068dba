"""What a step's task run does when it executes (the life of one attempt): check the lease,
begin the attempt's place, run the body (isolated or not), write provenance and the manifest,
commit fenced; or record the failure and abandon the attempt. `decorator.py` makes the Task;
this is the function it runs."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from tasks.core import (
    artifacts,
    isolation,
    lease,
    manifest,
    outputs,
    provenance,
    records,
    storage,
    stores,
    walk,
)
from tasks.core.definition import OUTPUT_PATH, StepDefinition
from tasks.core.identity import to_plain
from tasks.core.ref import StepRef


def refs_to_paths(value: Any) -> Any:
    """What the step function receives: every StepRef replaced by its absolute path."""
    return walk.replace(value, StepRef, _path_of)


def _path_of(ref: StepRef) -> str:
    return ref.path


def make_runner(definition: StepDefinition) -> Callable[..., StepRef]:
    fn = definition.fn
    signature = definition.signature

    @functools.wraps(fn)
    def run_step(*args: Any, **kwargs: Any) -> StepRef:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        params = dict(bound.arguments)
        definition.check(params)
        identity = definition.identify_in_run(params)
        prefix = storage.current_prefix()
        lease_path = storage.lease_path(identity.name_with_hash, prefix)
        lease.assert_held(lease_path)  # never touch an output another holder owns
        if definition.isolate and not stores.store_for(prefix).other_processes:
            raise stores.ProcessLocalStoreError(
                f"step {identity.name!r} runs its body in a worker process (isolate=True), "
                f"which cannot see the prefix {prefix} (only this process can); use a local "
                "folder or gs://"
            )
        attempt = outputs.begin(
            identity.name_with_hash, prefix, resumable=definition.resumable and not _refreshing()
        )
        url = artifacts.url_of(storage.output_dir(identity.name_with_hash, prefix))
        _run_log(f"{identity.name_with_hash}: running; output {url}")
        output_token = artifacts.set_output(url)
        started = time.time()
        notes, token = provenance.collecting_notes(
            functools.partial(_log_note, attempt) if attempt.resumable else None
        )
        identity_token = provenance.set_running_identity(
            {"name": identity.name, "hash": identity.hash, "attrs": identity.attrs,
             "deps": identity.deps}
        )  # fmt: skip
        try:
            value = isolation.run_body(
                definition,
                {**refs_to_paths(params), OUTPUT_PATH: attempt.write_path},
                lease_path,
                identity.name_with_hash,
            )
            metadata = (
                {} if value is None else to_plain(value, f"return value of step {identity.name!r}")
            )
            # Fencing: a holder that lost its lease fails here, before it writes anything of
            # the framework's; the commit (StepStorage) is fenced again.
            lease.assert_held(lease_path)
            record = provenance.build(identity, fn, started, time.time(), prefix, notes)
            if attempt.resumable:
                record["attempts"] = outputs.attempts(identity.name_with_hash, prefix)
            provenance_path = storage.join(attempt.write_path, storage.PROVENANCE_FILE)
            storage.refuse_links_below(provenance_path, prefix)
            storage.write_json(provenance_path, record)
            attempt.manifest = manifest.build(attempt.write_path)
            ref = StepRef(identity.name, identity.hash, metadata=metadata)
            records.commit(attempt, ref)  # fenced; a failure fails the task, never "Completed"
            if attempt.resumable:
                outputs.clear_attempts(identity.name_with_hash, prefix)
        except BaseException as exc:
            if lease.holds(lease_path):  # a holder that lost its lease leaves no trace
                outputs.record_failure(attempt, exc, started)
                if attempt.resumable:
                    outputs.log_attempt(attempt, {"event": "failed", "error": type(exc).__name__})
            outputs.abandon(attempt)
            raise
        finally:
            provenance.reset_running_identity(identity_token)
            provenance.stop_collecting(token)
            artifacts.reset_output(output_token)
        _run_log(
            f"{identity.name_with_hash}: committed {_size_line(attempt.manifest)} at {url} "
            f"in {time.time() - started:.1f} s"
        )
        return ref

    run_step.__signature__ = signature  # type: ignore[attr-defined]
    return run_step


def _run_log(line: str) -> None:
    """A line in the task run's log (the Prefect UI and the console)."""
    try:
        from prefect import get_run_logger

        get_run_logger().info(line)
    except Exception:  # outside a run (direct calls in tests)
        pass


def _size_line(manifest: dict[str, Any] | None) -> str:
    files = (manifest or {}).get("files") or {}
    total = sum(int(entry.get("bytes", 0)) for entry in files.values())
    return f"{len(files)} files, {total / 1e6:.1f} MB"


def _log_note(attempt: outputs.Attempt, values: dict[str, Any]) -> None:
    outputs.log_attempt(attempt, {"event": "note", "notes": values})


def _refreshing() -> bool:
    """Whether this task run was asked to recompute (`--force`): never resume then."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return bool(ctx is not None and getattr(ctx.task, "refresh_cache", False))
