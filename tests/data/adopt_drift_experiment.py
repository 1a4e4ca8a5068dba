"""tests/test_attack_17.py: the adopted folder changes between `plan` and the run that follows
in the same process (here the body itself rewrites a file once it is no longer planned, as
another process could at that moment)."""

import os

from tasks.core import flow, planning
from tests.helpers.adopted import adopt_then_read


@flow(name="adopt-drift")
def adopt_drift(path: str) -> dict:
    if planning.active_plan() is None:
        with open(os.path.join(path, "a.txt"), "w") as handle:
            handle.write("HELLO\n")  # same size, other content
    return adopt_then_read(path)
