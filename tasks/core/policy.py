"""The Prefect side of a step: its cache policy (key = identity) and its lease lock manager."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.locking.protocol import LockManager

from tasks.core import lease, records, storage, stores
from tasks.core.definition import StepDefinition


def _lease_path_of(key: str) -> str | None:
    """The lease of a commit key; None for other keys (Prefect's failure records)."""
    name_with_hash = storage.name_with_hash_of_key(key)
    if name_with_hash is None:
        return None
    return storage.lease_path(name_with_hash)


def _refreshing() -> bool:
    """Whether the task run taking the lock was asked to overwrite (--force, refresh_cache):
    then an existing commit must not short-circuit the lease. Read from the run's own task,
    so it holds on a Ray worker too."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return bool(ctx is not None and getattr(ctx.task, "refresh_cache", False))


WAIT_REPORT_SECONDS = 60.0


class MissingInputError(ValueError):
    """An input of a step that is about to run is no longer committed (gc deleted it)."""


class LeaseLockManager(LockManager):
    """Prefect `LockManager` over `tasks.core.lease` (see that module for the semantics)."""

    poll_seconds: float = 0.2
    max_poll_seconds: float = 2.0

    def _poll(
        self, done: Callable[[], bool], timeout: float | None, lease_path: str | None = None
    ) -> bool:
        """Call `done` with growing pauses until it is true (True) or `timeout` passes;
        while waiting on a lease, say whose and until when, at least once a minute."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.poll_seconds
        next_report = time.monotonic()
        while not done():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if lease_path is not None and now >= next_report:
                _report_wait(lease_path)
                next_report = now + WAIT_REPORT_SECONDS
            time.sleep(delay)
            delay = min(delay * 1.5, self.max_poll_seconds)
        return True

    def _committed(self, key: str) -> bool:
        name_with_hash = storage.name_with_hash_of_key(key)
        return name_with_hash is not None and records.read_commit(name_with_hash) is not None

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        lease_path = _lease_path_of(key)
        if lease_path is None:
            raise ValueError(f"{key!r} is not an lmflows commit key")
        if lease.holds(lease_path, holder):
            return True
        deps = _step_deps(key)
        refreshing = _refreshing()

        def take() -> bool:
            return lease.try_acquire(lease_path, holder, deps)

        # Double-checked: a committed step needs no lease (Prefect will serve it Cached);
        # --force takes the lease whatever is committed.
        done = take if refreshing else (lambda: self._committed(key) or take())
        if not self._poll(done, acquire_timeout, lease_path):
            return False
        if deps and lease.holds(lease_path, holder) and (refreshing or not self._committed(key)):
            try:
                self._check_inputs(key, deps, acquire_timeout)
            except BaseException:
                # Prefect's transaction never started: nobody else would release the lease.
                lease.release(lease_path, holder)
                raise
        return True

    def _check_inputs(self, key: str, deps: list[str], timeout: float | None) -> None:
        """With this step's lease (listing `deps`) taken and its body not started: every
        input must still be committed, else MissingInputError.

        This closes the race with `gc` (flows/gc.py `delete`): gc removes an output's commit
        record under that output's lease, *then* scans the live leases for one listing it,
        and restores the record if it finds one. This step wrote its lease *before* reading
        its inputs' records here. So either gc's scan sees this lease (and keeps the input),
        or this check sees the record gone; while gc still holds the input's lease the
        record may come back, so wait for that lease to be free and look again."""
        prefix = storage.current_prefix()
        for dep in _uncommitted(deps, prefix):
            dep_lease = storage.lease_path(dep, prefix)
            missing: list[str] = []

            def settled(dep: str = dep, dep_lease: str = dep_lease, missing=missing) -> bool:
                if records.read_commit(dep, prefix, remember=False) is not None:
                    return True
                if lease.is_live(lease.read(dep_lease)):
                    return False  # gc deciding, or a run re-committing it: wait
                # put back before it let go?
                if records.read_commit(dep, prefix, remember=False) is None:
                    missing.append(dep)
                return True

            if not self._poll(settled, timeout, dep_lease) or missing:
                raise _missing_input(dep, key)

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        from prefect.utilities.asyncutils import run_sync_in_worker_thread

        return await run_sync_in_worker_thread(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout
        )

    def release_lock(self, key: str, holder: str) -> None:
        # Prefect calls this after commits it took no lock for: a no-op then.
        lease_path = _lease_path_of(key)
        if lease_path is not None:
            lease.release(lease_path, holder)

    def is_locked(self, key: str) -> bool:
        lease_path = _lease_path_of(key)
        return lease_path is not None and lease.is_live(lease.read(lease_path))

    def is_lock_holder(self, key: str, holder: str) -> bool:
        lease_path = _lease_path_of(key)
        return lease_path is not None and lease.holds(lease_path, holder)

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return self._poll(lambda: not self.is_locked(key) or self._committed(key), timeout)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        from prefect.utilities.asyncutils import run_sync_in_worker_thread

        return await run_sync_in_worker_thread(self.wait_for_lock, key, timeout)


def _uncommitted(deps: list[str], prefix: str, workers: int = 32) -> list[str]:
    """The inputs without a valid commit record now; remote prefixes are read in parallel
    (a step over many inputs must not pay one round trip after another)."""
    if not stores.store_for(prefix).round_trips or len(deps) < 2:
        return [dep for dep in deps if records.read_commit(dep, prefix, remember=False) is None]
    with ThreadPoolExecutor(max_workers=min(workers, len(deps))) as pool:
        found = list(pool.map(lambda dep: records.read_commit(dep, prefix, remember=False), deps))
    return [dep for dep, ref in zip(deps, found) if ref is None]


def _missing_input(dep: str, key: str) -> MissingInputError:
    step = storage.name_with_hash_of_key(key)
    return MissingInputError(
        f"input {dep} of step {step} is no longer committed (deleted by gc?); "
        "run again to recompute it"
    )


# Commit key -> the inputs (NAME-HASH) of the step whose identity produced it, noted by the
# cache policy when it computes the key (just before Prefect takes the lease). Bounded.
_DEPS: collections.OrderedDict[str, tuple[str, ...]] = collections.OrderedDict()
_DEPS_SIZE = 4096
_DEPS_LOCK = threading.Lock()


def _note_deps(key: str, deps: tuple[str, ...] | list[str]) -> None:
    with _DEPS_LOCK:
        _DEPS[key] = tuple(deps)
        _DEPS.move_to_end(key)
        while len(_DEPS) > _DEPS_SIZE:
            _DEPS.popitem(last=False)


def _step_deps(key: str) -> list[str]:
    """The inputs (NAME-HASH, sorted) of the step taking the lease of `key`, as its cache
    policy noted them; [] for keys it never computed (gc's own leases)."""
    with _DEPS_LOCK:
        return list(_DEPS.get(key, ()))


def _report_wait(lease_path: str) -> None:
    current = lease.read(lease_path) or {}
    if not lease.is_live(current):
        return
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(current["expires_at"])))
    message = (
        f"waiting for {lease_path}: held by {current.get('holder')!r} on host "
        f"{current.get('host')!r} (pid {current.get('pid')!r}) until {until} unless renewed"
    )
    try:
        from prefect.logging import get_run_logger

        get_run_logger().info(message)
    except Exception:
        logging.getLogger("lmflows.lease").warning(message)


@dataclasses.dataclass
class StepCachePolicy(CachePolicy):
    """Cache key = the step identity's commit path, relative to the prefix (docs/design.md §3, §4).

    Identity never depends on the prefix, so the same key is found in any bucket.
    """

    definition: StepDefinition | None = None

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        assert self.definition is not None
        try:
            identity = self.definition.identify_in_run(inputs)
        except (ValueError, TypeError):
            # Bad arguments that arrived through futures: no key, so no lease and no cache;
            # the step body checks the same arguments first and fails the run with the
            # error. (Raising here would only make Prefect log it and run uncached.)
            return None
        key = storage.commit_key(identity.name_with_hash)
        _note_deps(key, identity.deps)
        return key


class IdentityRunName:
    """Names each task run after its identity (``toy/square-0fde9076ed``) in the Prefect UI."""

    def __init__(self, definition: StepDefinition) -> None:
        self.definition = definition

    def __call__(self, parameters: dict[str, Any]) -> str:
        try:
            return self.definition.identify_in_run(parameters).name_with_hash
        except Exception:
            return self.definition.name_template
