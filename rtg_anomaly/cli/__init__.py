"""Command line: ``rtg-anomaly fit | detect | calibrate | evaluate | export``, a thin layer over the library API.

One module per command (``fit``, ``detect``, ``calibrate``, ``evaluate``, ``export``), the flags in ``parser``,
flags turned into library objects in ``options``, output-path checks in ``checks``, and ``main`` in ``app``.
Exit codes (``exit_codes``): 0 success, 2 bad usage or bad input (one-line message on stderr), 1 unexpected
failure, 130 interrupted.
"""

from .app import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
