from prefect import flow


@flow
def one():
    return 1


@flow
def two():
    return 2
