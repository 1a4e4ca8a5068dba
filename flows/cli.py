"""`python -m flows`: run, plan and inspect experiments."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

USAGE_EPILOG = """examples:
  python -m flows run demo                 run experiments/demo.py end to end
  python -m flows plan demo                what would run, what is committed; writes nothing
  python -m flows run demo --force 'train/*'   re-execute matching steps only
  python -m flows explain demo              why each step misses the cache
  python -m flows status --prefix gs://bucket/lm
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run and inspect lmflows experiments.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--prefix",
            help="where outputs live (any fsspec URL); "
            "default: $LMFLOWS_PREFIX or ~/.lmflows/outputs",
        )

    run = sub.add_parser("run", help="run an experiment's flow")
    run.add_argument("experiment", help="module under experiments/ or path to a .py file")
    run.add_argument("--dry-run", action="store_true", help="same as `plan`")
    run.add_argument(
        "--force",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="re-execute steps whose name matches (fnmatch)",
    )
    run.add_argument(
        "--runner",
        choices=["threads", "ray"],
        default="threads",
        help="threads: Prefect's thread pool (default); ray: prefect-ray's RayTaskRunner",
    )
    run.add_argument(
        "--ray-address",
        default=None,
        help="existing Ray cluster (e.g. ray://head:10001); default: start a local Ray",
    )
    run.add_argument(
        "--server",
        choices=["auto", "ephemeral"],
        default="auto",
        help="auto: reuse or start a local Prefect server (default); "
        "ephemeral: Prefect's temporary per-process server",
    )
    add_common(run)

    plan = sub.add_parser("plan", help="show what a run would do; runs and writes nothing")
    plan.add_argument("experiment")
    plan.add_argument("--force", nargs="+", default=[], metavar="GLOB")
    add_common(plan)

    explain = sub.add_parser(
        "explain", help="why steps miss the cache: diff against the nearest committed output"
    )
    explain.add_argument("experiment")
    explain.add_argument(
        "--step", default="*", metavar="GLOB", help="only steps whose name matches (fnmatch)"
    )
    add_common(explain)

    status = sub.add_parser("status", help="committed steps under a prefix")
    add_common(status)
    return parser


def _apply_prefix(prefix: str | None) -> str:
    from tasks.core import storage

    if prefix is not None:
        os.environ[storage.PREFIX_ENV] = storage.normalize_prefix(prefix)
    return storage.current_prefix()


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_plan(experiment: str, force: list[str]) -> int:
    from flows.loader import load_flow
    from tasks.core import planning, set_force, storage

    flow = load_flow(experiment)
    set_force(force)
    started = time.perf_counter()
    with planning.planning() as plan:
        flow.fn()
    plan.check_status()
    elapsed = time.perf_counter() - started
    prefix = storage.current_prefix()
    rows = []
    for item in plan.steps.values():
        status = item.status
        if item.forced and status == "committed":
            status = "forced"
        rows.append(
            (item.ref.name_with_hash, status, storage.join(prefix, item.ref.name_with_hash))
        )
    print(_table(rows, ("STEP", "STATUS", "PATH")))
    counts: dict[str, int] = {}
    for _, status, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(rows)} steps ({summary}) under {prefix}; planned in {elapsed:.2f} s")
    return 0


def cmd_explain(experiment: str, step_glob: str) -> int:
    import fnmatch

    from flows.loader import load_flow
    from tasks.core import planning, storage
    from tasks.core.explain import explain, show

    flow = load_flow(experiment)
    with planning.planning() as plan:
        flow.fn()
    plan.check_status()
    prefix = storage.current_prefix()
    for item in plan.steps.values():
        if not fnmatch.fnmatchcase(item.ref.name, step_glob):
            continue
        if item.status == "committed":
            print(f"{item.ref.name_with_hash}: committed (cache hit)")
            continue
        result = explain(item.ref.name, item.ref.hash, item.attrs, prefix)
        if result.nearest is None:
            print(
                f"{item.ref.name_with_hash}: {item.status}; no committed output named "
                f"{item.ref.name!r} under {prefix}"
            )
            continue
        print(
            f"{item.ref.name_with_hash}: {item.status}; nearest committed "
            f"{result.nearest} differs in {len(result.differences)} field(s):"
        )
        for difference in result.differences:
            print(
                f"    {difference.field}: {show(difference.committed)} -> "
                f"{show(difference.planned)}"
            )
    return 0


def cmd_run(
    experiment: str,
    force: list[str],
    server: str,
    runner: str = "threads",
    ray_address: str | None = None,
) -> int:
    from flows.loader import load_flow
    from flows.server import ensure_server, ui_url
    from tasks.core import set_force, storage

    prefix = storage.current_prefix()
    flow = load_flow(experiment)
    set_force(force)
    check_arguments(flow)
    _check_writable(prefix)
    api_url = ensure_server(server)
    if runner == "ray":
        from flows.runners import ray_task_runner

        if api_url is None:
            print(
                "lmflows: warning: Ray without a Prefect server: every worker starts its own "
                "temporary server (~18 s a task)",
                file=sys.stderr,
            )
        else:
            os.environ["PREFECT_API_URL"] = api_url  # passed to the Ray workers
        flow = flow.with_options(task_runner=ray_task_runner(ray_address))
    if api_url:
        print(f"lmflows: watch it in the Prefect UI: {ui_url(api_url)}/runs")
    state = _run_flow(flow, api_url)
    flow_run_id = state.state_details.flow_run_id
    if api_url and flow_run_id:
        print(f"lmflows: flow run {ui_url(api_url)}/runs/flow-run/{flow_run_id}")
    print(f"lmflows: {flow.name} finished {state.type.value.lower()} (outputs under {prefix})")
    return 0 if state.is_completed() else 1


class ArgumentError(ValueError):
    """A step argument that cannot work, found by planning before anything ran."""


def check_arguments(flow) -> None:
    """Plan the whole flow first (milliseconds: identities only) so that every step's
    argument checks run before the first step executes."""
    from tasks.core import planning

    try:
        with planning.planning():
            flow.fn()
    except (ValueError, TypeError) as exc:
        raise ArgumentError(str(exc)) from exc


def _run_flow(flow, api_url: str | None):
    """Run the flow against `api_url` (settings are read at import, so override them)."""
    if not api_url:
        return flow(return_state=True)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return flow(return_state=True)


def _check_writable(prefix: str) -> None:
    from tasks.core import storage

    fs, path = storage.filesystem(prefix)
    try:
        fs.makedirs(path, exist_ok=True)
    except Exception as exc:
        raise storage.PrefixError(f"prefix {prefix} is not writable: {exc}") from exc


def cmd_status() -> int:
    from tasks.core import storage
    from tasks.core.inventory import committed_steps

    prefix = storage.current_prefix()
    steps = committed_steps(prefix)
    rows = [(s.name_with_hash, _size(s.size_bytes), _age(s.age_seconds), s.path) for s in steps]
    if rows:
        print(_table(rows, ("STEP", "SIZE", "AGE", "PATH")))
    print(f"{len(rows)} committed steps under {prefix}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from flows.loader import ExperimentError
    from tasks.core.storage import PrefixError

    try:
        _apply_prefix(args.prefix)
        if args.command == "status":
            return cmd_status()
        if args.command == "explain":
            return cmd_explain(args.experiment, args.step)
        if args.command == "plan" or args.dry_run:
            return cmd_plan(args.experiment, args.force)
        return cmd_run(args.experiment, args.force, args.server, args.runner, args.ray_address)
    except (ExperimentError, PrefixError, ArgumentError) as exc:
        print(f"lmflows: error: {exc}", file=sys.stderr)
        return 2
