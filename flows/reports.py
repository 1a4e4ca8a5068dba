"""What the read-only commands print: `plan`, `explain`, `status`, `show`, `gc` and `verify`
(`flows/cli.py` parses the command line and runs experiments)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from flows.planned import ArgumentError, plan_command


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_plan(
    experiment: str,
    force: list[str],
    param_pairs: Sequence[str] = (),
    only: Sequence[str] = (),
) -> int:
    from tasks.core import storage

    started = time.perf_counter()
    _, _, plan = plan_command(experiment, param_pairs, force, only=only)
    plan.check_status()
    elapsed = time.perf_counter() - started
    prefix = storage.current_prefix()
    rows = []
    for item in plan.steps.values():
        status = item.status
        if item.forced and status == "committed":
            status = "forced"
        rows.append((item.ref.name_with_hash, status, item.ref.path))  # adopted: in place
    print(_table(rows, ("STEP", "STATUS", "PATH")))
    counts: dict[str, int] = {}
    for _, status, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(rows)} steps ({summary}) under {prefix}; planned in {elapsed:.2f} s")
    return 0


def cmd_explain(
    experiment: str, step_globs: Sequence[str] = (), param_pairs: Sequence[str] = ()
) -> int:
    import fnmatch

    from tasks.core import storage
    from tasks.core.explain import blast_radius, explain_plan, show

    _, _, plan = plan_command(experiment, param_pairs)
    names = sorted({item.ref.name for item in plan.steps.values()})
    step_globs = list(step_globs) or ["*"]
    idle = [g for g in step_globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]
    if idle:
        raise ArgumentError(
            f"--step {' '.join(idle)} matches no step of the plan; its steps are: "
            + ", ".join(names)
        )
    plan.check_status()
    prefix = storage.current_prefix()
    reasons = explain_plan(plan, prefix)
    radius = blast_radius(reasons)
    for key, item in plan.steps.items():
        if not any(fnmatch.fnmatchcase(item.ref.name, g) for g in step_globs):
            continue
        reason = reasons.get(key)
        if reason is None:
            print(f"{key}: committed (cache hit)")
            continue
        if not reason.is_root:
            changed = ", ".join(
                f"{d.field}: {show(d.committed)} -> {show(d.planned)}" for d in reason.rekeyed
            )
            print(
                f"{key}: {reason.status}; only upstream changed"
                + (f" ({changed})" if changed else "")
                + f"; root: {', '.join(reason.roots)}"
            )
            continue
        print(f"{key}: {reason.status}; {_cause(reason, prefix)}")
        if reason.starts_from:
            print(f"    {reason.starts_from}")
        for difference in reason.own_changes:
            print(
                f"    {difference.field}: {show(difference.committed)} -> "
                f"{show(difference.planned)}"
            )
        for difference in reason.rekeyed:
            print(
                f"    {difference.field}: {show(difference.committed)} -> "
                f"{show(difference.planned)} (input re-keyed)"
            )
        upstream_roots = [r for r in reason.roots if r != key]
        if upstream_roots:
            print(f"    also re-keyed upstream; root: {', '.join(upstream_roots)}")
        affected = radius.get(key, [key])
        print(f"    blast radius ({len(affected)} step(s) re-run): {', '.join(affected)}")
    return 0


def _cause(reason, prefix: str) -> str:
    name = reason.name_with_hash.rsplit("-", 1)[0]
    if reason.forced:
        return "forced (--force or refresh_cache)"
    if reason.nearest is None:
        return f"root cause: no committed output named {name!r} under {prefix} (new step)"
    if reason.own_changes:
        return (
            f"root cause: {len(reason.own_changes)} hash attribute(s) changed against the "
            f"nearest committed {reason.nearest}:"
        )
    if reason.rekeyed:
        return f"root cause: an input now names another committed output (vs {reason.nearest}):"
    return f"root cause: not committed ({reason.status}); same attributes as {reason.nearest}"


def cmd_status() -> int:
    from tasks.core import storage
    from tasks.core.inventory import committed_steps

    prefix = storage.current_prefix()
    steps = committed_steps(prefix)
    rows = [(s.name_with_hash, _size(s.size_bytes), _age(s.age_seconds), s.path) for s in steps]
    if rows:
        print(_table(rows, ("STEP", "SIZE", "AGE", "PATH")))
    print(f"{len(rows)} committed steps under {prefix}")
    _print_staging(prefix)
    return 0


def _print_staging(prefix: str) -> list:
    """The attempt folders under the prefix's staging root (flows/gc.py), if any."""
    from flows.gc import staging_folders

    found = staging_folders(prefix)
    if found:
        rows = [
            (
                f.name_with_hash,
                _size(f.size_bytes),
                _age(f.age_seconds),
                "running" if f.running else "abandoned",
            )
            for f in found
        ]
        print(_table(rows, ("STAGING", "SIZE", "AGE", "STATE")))
        abandoned = [f for f in found if not f.running]
        print(
            f"{len(abandoned)} abandoned attempt folders under {prefix}/.lmflows/staging "
            f"({_size(sum(f.size_bytes for f in abandoned))}); `gc --delete` removes them"
        )
    return found


def cmd_show(name_with_hash: str) -> int:
    import json

    from tasks.core import storage
    from tasks.core.identity import split_name_with_hash
    from tasks.core.inventory import NotCommittedError, describe

    try:
        split_name_with_hash(name_with_hash)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None
    try:
        description = describe(name_with_hash, storage.current_prefix())
    except NotCommittedError as exc:
        print(f"lmflows: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(description, indent=2, sort_keys=True))
    return 0


def cmd_gc(delete: bool) -> int:
    from flows.gc import delete as delete_output
    from flows.gc import delete_staging, reachable_outputs, unreachable
    from tasks.core import storage

    prefix = storage.current_prefix()
    reach = reachable_outputs()
    for name, error in reach.failures.items():
        print(
            f"lmflows: warning: experiment {name} could not be planned ({error}); "
            "its outputs are listed as unreachable",
            file=sys.stderr,
        )
    if delete and reach.failures:
        raise ArgumentError(
            "gc --delete refused: experiments that cannot be planned "
            f"({', '.join(reach.failures)}) might reach the outputs listed; fix them first"
        )
    staging = [f for f in _print_staging(prefix) if not f.running]
    found = unreachable(reach, prefix)
    rows = [(s.name_with_hash, _size(s.size_bytes), _age(s.age_seconds)) for s in found]
    if rows:
        print(_table(rows, ("UNREACHABLE", "SIZE", "AGE")))
    total = sum(s.size_bytes for s in found)
    print(
        f"{len(found)} committed outputs under {prefix} that no experiment reaches ({_size(total)})"
    )
    if not delete:
        if found or staging:
            print("nothing deleted; run again with --delete to delete them")
        return 0
    for folder in staging:
        if delete_staging(folder.name_with_hash, prefix):
            print(f"deleted the abandoned attempt folder of {folder.name_with_hash}")
        else:
            print(f"kept the attempt folder of {folder.name_with_hash}: a run holds its lease")
    skipped = []
    for item in found:
        outcome = delete_output(item.name_with_hash, prefix)
        if not outcome.deleted:
            skipped.append(item.name_with_hash)
        print(outcome.line)
    print(f"deleted {len(found) - len(skipped)} outputs, kept {len(skipped)} in use")
    return 0


def cmd_verify(experiment: str | None, param_pairs: Sequence[str]) -> int:
    from flows.verify import verify
    from tasks.core import storage

    prefix = storage.current_prefix()
    names = None
    if experiment is not None:
        _, _, plan = plan_command(experiment, param_pairs)
        names = list(plan.steps)
    verdicts = verify(prefix, names)
    damaged = [v for v in verdicts if v.problems]
    for verdict in verdicts:
        if verdict.problems:
            print(f"DAMAGED {verdict.name_with_hash}: {'; '.join(verdict.problems)}")
        else:
            print(f"ok      {verdict.name_with_hash}")
    print(f"{len(verdicts)} committed outputs checked under {prefix}: {len(damaged)} damaged")
    return 1 if damaged else 0


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
