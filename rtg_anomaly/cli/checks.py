"""Checks on output paths made before any work, so that a refused run writes nothing."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


def check_model_destination(folder: Path) -> None:
    """Before any work: the bundle can be written at ``folder`` without replacing anything but a bundle."""
    from ..bundle import check_bundle_destination

    check_writable_folder(folder)
    check_bundle_destination(folder)


def check_writable_folder(folder: Path) -> None:
    """InputError unless files can be written in ``folder`` (or it can be created): checked before any work."""
    from ..atomic import name_problem, output_problem
    from ..scans.io import missing_folder_reason

    problem = name_problem(folder)
    if problem:
        raise InputError(f"cannot write to {folder}: {problem}")
    parent = folder.resolve().parent
    if not parent.is_dir():
        raise InputError(f"cannot write to {folder}: {missing_folder_reason(parent)}")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"cannot write to {folder}: it is a file")
    # A bundle or a metrics folder is written beside itself and renamed: its parent must take new files.
    problem = output_problem(folder.resolve()) or (folder.is_dir() and output_problem(folder / "probe"))
    if problem:
        raise InputError(f"cannot write to {folder}: {problem}")


def check_output_folder(folder: Path, flag: str, new_folders: list[Path]) -> bool:
    """InputError unless ``folder`` is a folder or can be created as one (in an existing folder or in one of
    ``new_folders``, which are created first, in order); True when it is still to be created."""
    from ..atomic import output_problem
    from ..scans.io import missing_folder_reason

    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {folder} must be a folder when --input is a folder")
    parent = folder.resolve().parent
    to_be_created = parent in {new.resolve() for new in new_folders}
    if not parent.is_dir() and not to_be_created:
        raise InputError(f"cannot write {folder}: {missing_folder_reason(parent)}")
    if not to_be_created:  # a folder inside a new one is as writable as that one, checked before
        problem = output_problem(folder / "probe") if folder.is_dir() else output_problem(folder)
        if problem:
            raise InputError(f"cannot write {folder}: {problem}")
    return not folder.exists()


def check_names_fit(folder: Path, names: list[str]) -> None:
    """InputError when one of the files a folder run will write in ``folder`` has a name longer than its
    file system allows (a heatmap adds ``.npy`` to a scan's name), before the first scan."""
    existing = next((part for part in (folder, *folder.resolve().parents) if part.is_dir()), Path("/"))
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    too_long = next((name for name in names if len(os.fsencode(name)) > limit), None)
    if too_long:
        raise InputError(f"cannot write {folder / too_long}: the name is longer than the {limit} bytes "
                         "the file system allows")


def same_path(a: Path | str, b: Path | str) -> bool:
    """Whether two paths name the same file or folder: through links and ``..`` when both exist, else by
    their resolved names (one of them is still to be written)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
