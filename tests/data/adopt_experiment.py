"""An experiment that adopts the folder `--param path=...` and reads it in place
(tests/test_adopt.py): the flow of tests/helpers/adopted.py, defined here for the CLI."""

from tasks.core import flow
from tests.helpers.adopted import adopt_then_read


@flow(name="adopt-experiment")
def adopt_experiment(path: str, name: str = "fixture") -> dict:
    return adopt_then_read(path, name)
