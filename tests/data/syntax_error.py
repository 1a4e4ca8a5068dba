"""An experiment with a syntax error."""

from prefect import flow


@flow
def broken(:
    pass
