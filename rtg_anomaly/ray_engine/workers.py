"""Starting a set of Ray actors for a run: how many, with which resources, restarted when they die."""

from __future__ import annotations

import os

from .dispatch import ACTOR_RESTARTS

# A test hook: "N:MARKER" makes the first worker to claim the file MARKER (created exclusively) end its
# process abruptly (os._exit) on its Nth scan, as a crashed or pre-empted node would; read on the driver
# and handed to the workers, so that it reaches workers of an already running Ray.
EXIT_HOOK_VARIABLE = "RTG_ANOMALY_RAY_TEST_EXIT"


def exit_hook() -> str | None:
    return os.environ.get(EXIT_HOOK_VARIABLE) or None


def maybe_exit(hook: str | None, scans_done: int) -> None:
    """End this process now when ``hook`` (``"N:MARKER"``, see EXIT_HOOK_VARIABLE) says so."""
    if not hook:
        return
    count, _, marker = hook.partition(":")
    if scans_done + 1 != int(count):
        return
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return  # another worker (or this one before its restart) died already
    os._exit(1)


def driver_folder(paths) -> tuple[str, bool]:
    """(the driver's working folder, whether any of ``paths`` is relative to it): workers work from that
    folder where their node has it (relative weights in a config, too), and must have it for relative paths."""
    return os.getcwd(), any(not os.path.isabs(path) for path in paths if path is not None)


def enter_driver_folder(folder: tuple[str, bool] | None) -> None:
    """In a worker: resolve relative paths as the driver does, from its working folder (``driver_folder``);
    InputError when a relative path needs it and this node does not have it."""
    from ..errors import InputError

    if folder is None:
        return
    path, needed = folder
    if os.path.isdir(path):
        os.chdir(path)
    elif needed:
        raise InputError(f"the Ray worker on {os.uname().nodename} cannot see the driver's working folder {path}: "
                         "give absolute paths on storage every node sees")


def worker_count(ray, workers: int | None, gpus_per_worker: float, n_items: int) -> int:
    """``workers`` or, by default, as many as the cluster has GPUs (with ``gpus_per_worker`` > 0) or CPUs
    for, at least 1 and at most ``n_items``."""
    if workers is None:
        resources = ray.cluster_resources()
        workers = int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker > 0 else int(resources.get("CPU", 1))
    return max(1, min(workers, n_items))


def start_actors(ray, cls, count: int, gpus_per_worker: float, *init_args) -> list:
    """``count`` actors of the plain class ``cls``, one CPU each (and ``gpus_per_worker`` GPUs), each
    restarted up to ACTOR_RESTARTS times with its calls in flight retried."""
    remote = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=ACTOR_RESTARTS,
                        max_task_retries=ACTOR_RESTARTS)(cls)
    return [remote.remote(*init_args) for _ in range(count)]


def unwrap(exc: BaseException) -> BaseException:
    """The worker's own exception inside a Ray task error (its message without Ray's traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
