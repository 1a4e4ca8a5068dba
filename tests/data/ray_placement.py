"""Steps asking Ray for a custom resource (tests/test_ray.py starts Ray with TPU: 1)."""

import os

from tasks.core import flow
from tests.helpers import steps

TPU_WANTED = int(os.environ.get("LMFLOWS_TEST_TPUS", "1"))


@flow
def ray_placement():
    on_tpu = steps.nap.with_resources({"num_cpus": 0.5, "resources": {"TPU": TPU_WANTED}})
    return on_tpu("tpu", 0.1)
