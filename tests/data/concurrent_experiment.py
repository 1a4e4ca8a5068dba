"""Three independent naps and a consumer, in an `lmflows.flow` (concurrent steps)."""

import os

from tasks.core import flow
from tests.helpers import steps

SECONDS = float(os.environ.get("LMFLOWS_TEST_NAP", "3"))


@flow
def concurrent_experiment(seconds: float = SECONDS):
    naps = [steps.nap(label, seconds) for label in ("a", "b", "c")]
    return steps.consume(naps)
