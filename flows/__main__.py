import gc
import sys

from flows.cli import main

if __name__ == "__main__":  # guarded: spawned worker processes import this module too
    code = main()
    # The process ends now: spare it the collector's passes over every object Prefect,
    # pydantic and the experiment created (~0.4 s of interpreter shutdown for `run toy`).
    # Exit handlers (Prefect's event delivery) still run; std streams are still flushed.
    gc.freeze()
    sys.exit(code)
