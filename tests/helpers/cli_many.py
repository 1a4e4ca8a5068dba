"""`python -m tests.helpers.cli_many '[ARGV, ...]'`: several `python -m flows` commands in one
process (one interpreter start instead of one per command, ~1 s each), each one's exit code,
stdout and stderr printed as one JSON list. An item may also be `{"argv": [...], "env": {...}}`:
those variables are set for that command only, and each command's changes to the environment
(`--prefix`) are undone after it. Signal handlers and settings are the command line's own."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback


def main() -> None:
    from flows.cli import main as cli

    results = []
    for item in json.loads(sys.argv[1]):
        argv, env = (item["argv"], item.get("env", {})) if isinstance(item, dict) else (item, {})
        saved_env = dict(os.environ)  # restored whole: --prefix and --max-concurrent set it too
        os.environ.update(env)
        out = io.StringIO()
        # stderr at the descriptor: logging handlers hold the original stream object.
        with tempfile.TemporaryFile() as err, contextlib.redirect_stdout(out):
            saved = os.dup(2)
            sys.stderr.flush()
            os.dup2(err.fileno(), 2)
            try:
                code = cli(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
            except BaseException:  # noqa: BLE001 - what a user would have seen
                sys.stderr.write(traceback.format_exc())
                code = 1
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                os.environ.clear()
                os.environ.update(saved_env)
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        results.append({"argv": argv, "returncode": code, "stdout": out.getvalue(),
                        "stderr": stderr})  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
