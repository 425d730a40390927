"""The one base class of errors caused by the user's input, not by a bug, and the one-line form of any error.

The CLI turns these into a one-line message and exit code 2; anything else is
an unexpected failure (exit code 1).
"""

import contextlib
import logging


class InputError(ValueError):
    """Bad input: a missing or unreadable file, an invalid setting, an unusable bundle."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error's message (its type name when the message is empty): library
    errors wrapped into one-line messages often carry several lines."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def quiet_logger(name: str | None = None):
    """Raise a logger (``None``: the root logger) to ERROR for the duration: libraries that log advice or
    failed retries to stderr would otherwise add lines to our one-line errors."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)
