"""Importing Ray with a one-line error when it is missing, and joining or starting a Ray cluster for one run."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from ..errors import InputError

RAY_INSTALL_HINT = "pip install 'rtg-anomaly[ray]'"


def import_ray():
    """The ``ray`` module, or InputError (exit code 2 in the CLI) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--engine ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[object]:
    """Yield the ``ray`` module connected to a cluster for the length of a run.

    address: a cluster to join (``ray://host:10001`` or ``host:6379``); default the ``RAY_ADDRESS``
        environment variable; without either, a local Ray is started for the run (all of this
        machine's CPUs and GPUs, no dashboard) and shut down after it. A Ray already initialised in
        this process (a user's program, a test) is used as it is and left running.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot {'join the Ray cluster at ' + address if address else 'start a local Ray'}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    try:
        yield ray
    finally:
        ray.shutdown()
