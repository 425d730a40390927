"""``main``: parse, run the command, turn every failure into a one-line message and an exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
import warnings

from ..errors import InputError, first_line
from .exit_codes import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED
from .parser import build_parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager or batch scheduler stopping the run), handled exactly like Ctrl-C: a
    folder run keeps the report and CSV of the scans it finished, with "complete": false."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs, SIGTERM raises ``Terminated`` in the main thread (Python's default would
    end the process at once, leaving no report); the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0)
    try:
        with warnings.catch_warnings(), _sigterm_as_interrupt():
            # Pillow warns about damaged metadata before the decode fails or succeeds; either way the
            # outcome is reported in one line, so its two-line warning is noise here.
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            return args.handler(args)
    except InputError as exc:
        print(f"rtg-anomaly: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(f"rtg-anomaly: interrupted{' (SIGTERM)' if isinstance(exc, Terminated) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an environment failure: one line, details on request
        if os.environ.get("RTG_ANOMALY_DEBUG"):
            traceback.print_exc()
        message = first_line(exc) if str(exc).strip() else ""
        print(f"rtg-anomaly: unexpected error: {type(exc).__name__}: {message} "
              "(set RTG_ANOMALY_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
