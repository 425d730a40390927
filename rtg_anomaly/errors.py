"""The one base class of errors caused by the user's input, not by a bug.

The CLI turns these into a one-line message and exit code 2; anything else is
an unexpected failure (exit code 1).
"""


class InputError(ValueError):
    """Bad input: a missing or unreadable file, an invalid setting, an unusable bundle."""
