"""An experiment whose flow has a required parameter (for --param)."""

from prefect import flow

from tasks.toy import count_words


@flow
def needs_param(text: str):
    return count_words(text=text)
