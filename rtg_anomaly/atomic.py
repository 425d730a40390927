"""Files and folders that appear complete or not at all, with the permissions any new file gets.

Every output (overlay, heatmap, report, metrics, triage table, model bundle) is written under a hidden
temporary name beside its destination and renamed into place, so a reader never sees half a file and a
failure leaves the previous file as it was. The temporary file or folder is created with mode 0o666 /
0o777 minus the umask, as ``open()`` and ``mkdir`` would create it: ``tempfile`` would make it private
to its owner (0o600 / 0o700), and after the rename an operator's viewer or a detection service running
as another user could not read the overlay or the model.
"""

from __future__ import annotations

import os
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
