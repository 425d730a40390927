"""Files and folders that appear complete or not at all, with the permissions any new file gets.

Every output (overlay, heatmap, report, metrics, triage table, model bundle) is written under a hidden
temporary name beside its destination and renamed into place, so a reader never sees half a file and a
failure leaves the previous file as it was. The temporary file or folder is created with mode 0o666 /
0o777 minus the umask, as ``open()`` and ``mkdir`` would create it: ``tempfile`` would make it private
to its owner (0o600 / 0o700), and after the rename an operator's viewer or a detection service running
as another user could not read the overlay or the model.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _hidden_sibling(path: Path, tag: str) -> Path:
    """A unique hidden name in ``path``'s folder, ending in ``path``'s suffix (Pillow and matplotlib look
    at it). At most 40 characters longer than the suffix: any name the folder allows has a sibling."""
    return path.with_name(f".{path.stem[:12]}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix[:16]}")


@contextmanager
def replacing(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``path`` for the caller to write; when the block ends
    without an error it replaces ``path`` (``os.replace``), else it is removed and ``path`` is untouched.

    durable: flush the file to disk before the rename (for small records that must survive a crash).
    """
    path = Path(path)
    tmp = _hidden_sibling(path, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see ``replacing``)."""
    with replacing(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def staging_folder(destination: str | os.PathLike) -> Path:
    """A new, empty hidden folder beside ``destination`` (whose parent must exist), to be filled and
    renamed onto it; created with mode 0o777 minus the umask."""
    folder = _hidden_sibling(Path(destination), "tmp")
    os.mkdir(folder, 0o777)
    return folder


def output_problem(path: str | os.PathLike) -> str | None:
    """Why a new file or folder could not be created at ``path`` (whose parent folder exists), or None.

    Checked before any work, so that a run that cannot write its output is refused at once instead of
    failing after minutes of scoring: a name longer than the file system allows, and a folder that
    refuses new files (read-only, or a read-only file system, which even root cannot write). The
    second is tried, not guessed from permission bits: a hidden probe file is created and removed.
    """
    path = Path(path)
    problem = name_problem(path)
    if problem:
        return problem
    probe = _hidden_sibling(path, "probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        return f"folder {path.parent} does not accept new files ({exc.strerror or type(exc).__name__})"
    probe.unlink(missing_ok=True)
    return None


def name_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be created because one of its names is too long for the file system, or None.

    Checked before anything else looks at the path: ``Path.exists()`` itself raises on such a name.
    """
    path = Path(path)
    existing = next((part for part in path.absolute().parents if _is_dir(part)), Path("/"))
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    too_long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if too_long is not None:
        return f"the name {too_long[:24]}... is longer than the {limit} bytes the file system allows"
    return None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long, a loop of links
        return False


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False,
    with nothing changed, where the system or the file system cannot. A folder replaced this way is
    never missing, not even for the instant between two renames, so a reader always finds one of the two."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc before 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(error, os.strerror(error), os.fspath(second))
