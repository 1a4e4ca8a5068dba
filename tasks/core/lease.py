"""Lease lock: one holder per step identity across processes and machines.

Prefect's `FileSystemLockManager` fails on keys containing '/' and never releases a lock whose
holder died; its Redis manager has no heartbeat. This manager keeps a lease object inside the
step's `.lmflows` folder with holder, host, pid and expiry; the holder renews it every lease/3
seconds in a background thread; a waiter takes over a lease that expired, or at once when the
holder was a process on this host that no longer exists. Every change of the lease is
conditional: a local `flock` guard around read-modify-write (released by the kernel if its
holder dies) or a GCS generation match. Other object stores fall back to write-then-read-back,
which is not atomic (said where it happens). Fencing: `assert_held` re-reads the lease before
anything destructive or final (clearing the directory, the commit) and fails when it is gone.

Double-checked locking: `acquire_lock` looks for a valid commit record first and takes no
lease when there is one (Prefect's transaction then serves the record as `Cached`), so a
fully cached re-run writes nothing.

A step's lease also lists what the step consumes (`deps`, its inputs' `NAME-HASH`), renewals
included: `gc` keeps any output that a live lease lists (flows/gc.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import psutil

from tasks.core import storage, stores

logger = logging.getLogger("lmflows.lease")

LEASE_SECONDS_ENV = "LMFLOWS_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 90.0
_HOST = socket.gethostname()


class LeaseLostError(RuntimeError):
    """This process no longer holds the lease of a step: it must not write or commit."""


# The longest lease a setting may ask for, and so the furthest ahead a lease written by any
# lmflows process can claim to expire (plus CLOCK_SKEW_SECONDS between hosts). A lease file
# claiming more is not trusted: otherwise one planted file blocks a step forever.
MAX_LEASE_SECONDS = 86400.0
MIN_LEASE_SECONDS = 1.0  # renewal every third of it must outrun a round trip to storage
CLOCK_SKEW_SECONDS = 300.0
# A lease lists its step's inputs (a few hundred bytes each at most): room for thousands.
MAX_LEASE_FILE_BYTES = 4 << 20


class LeaseTooLargeError(ValueError):
    """A step with so many inputs that its lease would exceed what any reader accepts."""


class LeaseSettingError(ValueError):
    """LMFLOWS_LEASE_SECONDS is not a usable number of seconds."""


def lease_seconds() -> float:
    """The lease length in force; LeaseSettingError naming the variable if it is unusable."""
    raw = os.environ.get(LEASE_SECONDS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise LeaseSettingError(f"{LEASE_SECONDS_ENV}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or not MIN_LEASE_SECONDS <= value <= MAX_LEASE_SECONDS:
        raise LeaseSettingError(
            f"{LEASE_SECONDS_ENV}={raw!r} must be a number of seconds from "
            f"{MIN_LEASE_SECONDS:.0f} to {MAX_LEASE_SECONDS:.0f}"
        )
    return value


def _valid(lease: Any, where: str) -> dict[str, Any]:
    """A lease body as written by `_lease_body`, or {} (expired) with a warning."""
    if lease is None:
        return {}
    problem = None
    if not isinstance(lease, dict):
        problem = f"is a {type(lease).__name__}, not an object"
    else:
        expires = lease.get("expires_at")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            problem = f"has expires_at={str(expires)[:40]!r}, not a number"
        elif abs(expires) > 1e15:  # also keeps float() of a 400-digit int from overflowing
            problem = "claims an expiry beyond any lease lmflows writes"
        elif not math.isfinite(float(expires)):
            problem = f"has a non-finite expires_at={expires!r}"
        elif expires > time.time() + MAX_LEASE_SECONDS + CLOCK_SKEW_SECONDS:
            problem = (
                f"claims an expiry {expires - time.time():.0f} s ahead, beyond any lease "
                f"lmflows writes ({MAX_LEASE_SECONDS:.0f} s)"
            )
        elif not isinstance(lease.get("token"), str):
            problem = "has no token"
    if problem is None:
        return lease
    logger.warning("lease %s %s; treating it as expired", where, problem)
    return {}


def _process_started(pid: int) -> float | None:
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


_MY_START = _process_started(os.getpid())


def _holder_is_dead(lease: dict[str, Any]) -> bool:
    """True when the lease holder was a process on this host that is gone (or was replaced)."""
    if lease.get("host") != _HOST:
        return False
    pid = lease.get("pid")
    if not isinstance(pid, int):
        return False
    started = _process_started(pid)
    return started is None or started != lease.get("pid_started")


def is_live(lease: dict[str, Any] | None, now: float | None = None) -> bool:
    """Whether a lease (as returned by `read`, so already validated) binds anyone now."""
    if not lease:
        return False
    now = time.time() if now is None else now
    return float(lease["expires_at"]) > now and not _holder_is_dead(lease)


# --- backends: conditional read-modify-write of one small JSON object ---------------------


def _may_replace(
    current: dict[str, Any] | None, expect_token: str | None, only_if_free: bool
) -> bool:
    """A new holder may take a free lease; a holder may change only its own (by token)."""
    if only_if_free:
        return not is_live(current)
    return (current or {}).get("token") == expect_token


class _Leases:
    """The lease's compare-and-swap on the store's own primitives: `exclusive` (local disk:
    an `flock` guard) and a write conditional on the version read (gs://: the object's
    generation). A store with neither refuses leases in one line (`stores.FsspecStore`)."""

    def __init__(self, lease_path: str) -> None:
        self.store = stores.store_for(lease_path)

    def _read_with_version(self, lease_path: str) -> tuple[dict[str, Any] | None, str]:
        try:
            content, version = self.store.read_versioned(lease_path, MAX_LEASE_FILE_BYTES)
        except stores.UnreadableRecord as exc:  # a folder, a FIFO, a huge file: not ours
            logger.warning("lease %s cannot be read (%s); treating it as expired", lease_path, exc)
            return {}, ""
        # Any other error (a timeout, a refused connection) propagates: read as "expired"
        # with no version, it would make the next write unconditional and overwrite a live
        # lease of another machine (a renewal retries; a taker tries again later).
        if content is None:
            return None, version
        return _valid(_json_or_none(content), lease_path), version

    def read(self, lease_path: str) -> dict[str, Any] | None:
        return self._read_with_version(lease_path)[0]

    @contextlib.contextmanager
    def fenced(self, lease_path: str, token: str) -> Iterator[bool]:
        """Yield whether `token` holds the lease. On local disk takeovers are excluded
        meanwhile; object stores cannot exclude a takeover during the caller's write: there
        it is a check, and the window between it and the write stays (see docs/steps.md)."""
        with self._exclusive(lease_path):
            current = self.read(lease_path) or {}
            yield current.get("token") == token and float(current["expires_at"]) > time.time()

    def _exclusive(self, lease_path: str) -> contextlib.AbstractContextManager[None]:
        storage.refuse_links_below(os.path.dirname(lease_path))
        return self.store.exclusive(lease_path)

    def replace_if(
        self,
        lease_path: str,
        expect_token: str | None,
        new: dict | None,
        only_if_free: bool = False,
    ) -> bool:
        self.store.check_leases(lease_path)
        with self._exclusive(lease_path):
            current, version = self._read_with_version(lease_path)
            if not _may_replace(current, expect_token, only_if_free):
                return False
            content = None if new is None else json.dumps(new).encode()
            if not self.store.write_if_version(lease_path, content, version):
                return False
        if new is None or not self.store.round_trips:
            return True  # under `exclusive`: nobody wrote meanwhile
        # Read back: a store that ignores preconditions (some emulators) still cannot hand
        # the lease to two holders silently; one of them sees the other's token here.
        return (self.read(lease_path) or {}).get("token") == new["token"]


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return "unreadable JSON"


def _backend(lease_path: str) -> _Leases:
    return _Leases(lease_path)


# --- held leases in this process ----------------------------------------------------------


@dataclasses.dataclass
class _Held:
    path: str
    holder: str
    token: str
    seconds: float
    expires_at: float
    deps: tuple[str, ...] = ()
    lost: bool = False
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)


_HELD: dict[str, _Held] = {}
_HELD_LOCK = threading.Lock()


def _lease_body(
    holder: str, token: str, seconds: float, deps: tuple[str, ...] = ()
) -> dict[str, Any]:
    now = time.time()
    return {
        "holder": holder,
        "token": token,
        "host": _HOST,
        "pid": os.getpid(),
        "pid_started": _MY_START,
        "acquired_at": now,
        "expires_at": now + seconds,
        "deps": list(deps),  # the outputs the step reads (NAME-HASH): gc keeps them
    }


def deps_of(current: dict[str, Any] | None) -> list[str]:
    """The inputs a lease (as returned by `read`) says its step reads; [] if it lists none
    (a lease of gc, or one written before leases listed inputs)."""
    deps = (current or {}).get("deps")
    if not isinstance(deps, list):
        return []
    return [dep for dep in deps if isinstance(dep, str)]


def _renew_forever(held: _Held) -> None:
    backend = _backend(held.path)
    interval = held.seconds / 3
    while not held.stop.wait(interval):
        body = _lease_body(held.holder, held.token, held.seconds, held.deps)
        try:
            renewed = backend.replace_if(held.path, held.token, body)
        except Exception as exc:  # keep trying until the lease would have expired anyway
            logger.warning("renewing lease %s failed: %s", held.path, exc)
            if time.time() > held.expires_at:
                held.lost = True
                return
            continue
        if not renewed:
            logger.error("lease %s was taken over by another holder", held.path)
            held.lost = True
            return
        held.expires_at = body["expires_at"]


def try_acquire(lease_path: str, holder: str, deps: Iterable[str] = ()) -> bool:
    """Take the lease if it is free, expired or held by a dead local process. `deps`: the
    outputs (NAME-HASH) the step reads; the lease lists them for as long as it is held."""
    seconds = lease_seconds()
    token = uuid.uuid4().hex
    deps = tuple(deps)
    body = _lease_body(holder, token, seconds, deps)
    size = len(json.dumps(body).encode())
    if size > MAX_LEASE_FILE_BYTES:
        raise LeaseTooLargeError(
            f"lease {lease_path} would be {size} bytes with its {len(deps)} inputs listed "
            f"(at most {MAX_LEASE_FILE_BYTES}); split the step's inputs over several steps"
        )
    if not _backend(lease_path).replace_if(lease_path, None, body, only_if_free=True):
        return False
    held = _Held(lease_path, holder, token, seconds, body["expires_at"], deps)
    with _HELD_LOCK:
        _HELD[lease_path] = held
    threading.Thread(
        target=_renew_forever, args=(held,), daemon=True, name=f"lmflows-lease-{token[:6]}"
    ).start()
    return True


def release(lease_path: str, holder: str | None = None) -> None:
    with _HELD_LOCK:
        held = _HELD.get(lease_path)
        if held is None or (holder is not None and held.holder != holder):
            return
        del _HELD[lease_path]
    held.stop.set()
    if not held.lost:
        try:
            _backend(lease_path).replace_if(lease_path, held.token, None)
        except Exception as exc:  # an unreleased lease expires on its own
            logger.warning("releasing lease %s failed: %s", lease_path, exc)


def holds(lease_path: str, holder: str | None = None) -> bool:
    held = _HELD.get(lease_path)
    return held is not None and not held.lost and (holder is None or held.holder == holder)


def held_token(lease_path: str) -> tuple[str, float] | None:
    """(token, lease seconds) of a lease this process holds, for a worker that watches it."""
    held = _HELD.get(lease_path)
    return None if held is None else (held.token, held.seconds)


def expired(lease_path: str) -> bool:
    """Whether the lease this process holds is past its expiry by this machine's clock."""
    held = _HELD.get(lease_path)
    return held is None or time.time() >= held.expires_at


def assert_held_in_storage(lease_path: str) -> None:
    """LeaseLostError unless storage still names this process's token (expired or not: a
    paused holder that nobody replaced renews and goes on)."""
    held = _HELD.get(lease_path)
    if held is None or held.lost:
        raise LeaseLostError(f"lease {lease_path} was lost")
    current = _backend(lease_path).read(lease_path) or {}
    if current.get("token") != held.token:
        held.lost = True
        raise LeaseLostError(f"lease {lease_path} was taken over by {current.get('holder')!r}")


def assert_held(lease_path: str) -> None:
    """Fencing: raise LeaseLostError unless this process still holds the lease."""
    held = _HELD.get(lease_path)
    if held is None:
        raise LeaseLostError(f"no lease held for {lease_path}; refusing to write")
    if held.lost or time.time() >= held.expires_at:
        held.lost = True
        raise LeaseLostError(f"lease {lease_path} expired or was taken over; refusing to write")
    current = _backend(lease_path).read(lease_path) or {}
    if current.get("token") != held.token:
        held.lost = True
        raise LeaseLostError(
            f"lease {lease_path} now belongs to {current.get('holder')!r} "
            f"(host {current.get('host')!r}, pid {current.get('pid')!r}); refusing to write"
        )


def read(lease_path: str) -> dict[str, Any] | None:
    """The lease at `lease_path`: None if absent, {} if malformed or untrusted (= expired)."""
    return _backend(lease_path).read(lease_path)


@contextlib.contextmanager
def fenced(lease_path: str) -> Iterator[None]:
    """Run the body only while this process holds the lease: LeaseLostError otherwise. On
    local disk no takeover can happen during the body (it runs under the lease guard)."""
    held = _HELD.get(lease_path)
    if held is None or held.lost or time.time() >= held.expires_at:
        if held is not None:
            held.lost = True
        raise LeaseLostError(f"lease {lease_path} expired or was taken over; refusing to commit")
    with _backend(lease_path).fenced(lease_path, held.token) as ours:
        if not ours:
            held.lost = True
            raise LeaseLostError(f"lease {lease_path} was taken over; refusing to commit")
        yield
