"""An experiment whose import fails."""

import no_such_pkg  # noqa: F401
from prefect import flow


@flow
def failing():
    pass
