"""Output directories: clearing what a dead attempt left, and recording failures."""

from __future__ import annotations

import os
import shutil
import time
import traceback

from tasks.core import storage


def clear_output(out: str) -> None:
    """Remove everything in an output directory except the lease files.

    Called only by the lease holder, before the step function runs, so no half-written file
    of an earlier attempt can be mixed into the new output.
    """
    keep = {storage.join(out, k) for k in storage.KEEP_ON_CLEAR}
    if storage.is_local(out):
        os.makedirs(out, exist_ok=True)
        for entry in os.scandir(out):
            if entry.name == storage.META_DIR and entry.is_dir(follow_symlinks=False):
                for meta in os.scandir(entry.path):
                    if meta.path not in keep:
                        _remove_local(meta.path)
            else:
                _remove_local(entry.path)
        return
    fs, fs_path = storage.filesystem(out)
    protocol = out.split("://", 1)[0]
    doomed = [p for p in fs.find(fs_path) if f"{protocol}://{p}" not in keep]
    if doomed:
        fs.rm(doomed)


def _remove_local(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def record_failure(out: str, exc: BaseException, started: float) -> None:
    """Best-effort `failed.json` so that `plan` can say 'failed'. Never masks the error."""
    try:
        storage.write_json(
            storage.join(out, storage.FAILED_FILE),
            {
                "error": type(exc).__name__,
                "message": str(exc)[:2000],
                "traceback": traceback.format_exception_only(type(exc), exc)[-1][:2000],
                "started_at": started,
                "failed_at": time.time(),
            },
        )
    except Exception:
        pass
