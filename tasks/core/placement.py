"""Placing steps on a Ray cluster: refuse what cannot work, report what waits.

Two things go wrong silently on Ray without this module: a step asking for resources no node
has stays pending forever ("No available node types can fulfill resource request" appears
only in Ray's own logs), and on a cluster of several machines a local-disk prefix leaves each
worker writing to its own disk, so consumers on other nodes find nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from tasks.core import storage, stores

INFEASIBLE_TIMEOUT_ENV = "LMFLOWS_RAY_INFEASIBLE_TIMEOUT"
# Long enough for an autoscaler to add a TPU or GPU host; after it, the step is cancelled.
DEFAULT_INFEASIBLE_TIMEOUT = 900.0
REPORT_EVERY = 60.0

logger = logging.getLogger("lmflows.placement")


class PlacementError(ValueError):
    """A step that cannot be placed on the Ray cluster as configured."""


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def request_of(options: dict[str, Any]) -> dict[str, float]:
    """Ray remote options as the resource amounts a node must offer."""
    request: dict[str, float] = {"CPU": float(options.get("num_cpus", 1) or 0)}
    if options.get("num_gpus"):
        request["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        request["memory"] = float(options["memory"])
    for name, amount in (options.get("resources") or {}).items():
        request[name] = float(amount)
    return {k: v for k, v in request.items() if v > 0}


def fits(request: dict[str, float], offered: dict[str, float]) -> bool:
    return all(offered.get(name, 0.0) >= amount for name, amount in request.items())


def describe_offer(nodes: list[dict[str, Any]]) -> str:
    shown = []
    for node in nodes:
        resources = {
            k: v
            for k, v in node.get("Resources", {}).items()
            if not k.startswith("node:") and k not in ("object_store_memory", "memory")
        }
        shown.append(f"{node.get('NodeManagerAddress', '?')} {_fmt(resources)}")
    return "; ".join(shown) or "no alive node"


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


_CHECKED_PREFIX: set[str] = set()


def check_cluster() -> None:
    """Before a step goes to Ray: refuse a local prefix on a multi-node cluster (one line)."""
    prefix = storage.current_prefix()
    if prefix in _CHECKED_PREFIX:
        return
    nodes = _alive_nodes()
    if not stores.store_for(prefix).shared and len(nodes) > 1:
        raise PlacementError(
            f"the Ray cluster has {len(nodes)} nodes but the prefix {prefix} is not shared "
            "storage (a local folder): workers on other machines could not see each other's "
            "outputs; use shared storage (--prefix gs://BUCKET/path)"
        )
    _CHECKED_PREFIX.add(prefix)


def watch(name: str, options: dict[str, Any], future: Any) -> None:
    """After a step went to Ray: if no node offers what it asks for, say so at once (the
    flow's log), again every minute, and cancel it when the timeout passes."""
    request = request_of(options)
    nodes = _alive_nodes()
    if any(fits(request, node.get("Resources", {})) for node in nodes):
        return
    timeout = infeasible_timeout()
    _log(
        f"step {name} waits for Ray resources {_fmt(request)}; the cluster offers: "
        f"{describe_offer(nodes)} (cancelled after {timeout:g}s, {INFEASIBLE_TIMEOUT_ENV})"
    )
    threading.Thread(
        target=_watch_infeasible,
        args=(name, request, future, timeout, time.monotonic()),
        daemon=True,
    ).start()


def infeasible_timeout() -> float:
    raw = os.environ.get(INFEASIBLE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_INFEASIBLE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise PlacementError(f"{INFEASIBLE_TIMEOUT_ENV}={raw!r}: need a positive number of seconds")
    return value


def _watch_infeasible(
    name: str, request: dict[str, float], future: Any, timeout: float, since: float
) -> None:
    """Repeat the report while no node fits; when the timeout passes, cancel the step."""
    import ray

    ref = future.wrapped_future
    while True:
        ready, _ = ray.wait([ref], timeout=min(REPORT_EVERY, timeout))
        if ready:
            return
        try:
            nodes = _alive_nodes()
        except Exception:
            return  # Ray is gone: the flow ended
        if any(fits(request, node.get("Resources", {})) for node in nodes):
            return
        waited = time.monotonic() - since
        if waited >= timeout:
            _log(
                f"step {name}: no Ray node offered {_fmt(request)} in {waited:.0f}s; "
                f"cancelled. The cluster offers: {describe_offer(nodes)}",
                level=logging.ERROR,
            )
            try:
                ray.cancel(ref, force=True)
            except Exception as exc:
                logger.warning("could not cancel %s: %s", name, exc)
            return
        _log(f"step {name} still waits for Ray resources {_fmt(request)} ({waited:.0f}s)")


def _log(line: str, level: int = logging.WARNING) -> None:
    try:
        from prefect import get_run_logger

        get_run_logger().log(level, line)
    except Exception:
        logger.log(level, line)
