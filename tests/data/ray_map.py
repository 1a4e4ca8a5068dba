"""`.map()` of a step asking Ray for a custom resource: each mapped call gets it."""

from tasks.core import flow
from tests.helpers import steps


@flow
def ray_map():
    on_tpu = steps.nap.with_resources({"num_cpus": 0.5, "resources": {"TPU": 1}})
    futures = on_tpu.map(["map-a", "map-b"], 0.5)
    return [future.result() for future in futures]
