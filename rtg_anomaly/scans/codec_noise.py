"""Keeping image codecs' own messages off stderr while they decode a scan.

libpng, libjpeg and libtiff print warnings and errors about a damaged file (``libpng warning: ...``,
``Corrupt JPEG data: ...``, ``Fax3SetupState: ...``) straight to the process's stderr, file descriptor 2,
from C, under Pillow and OpenCV alike, and OpenCV logs its own complaints; the CLI's contract is one line
of its own per error. While any decode runs, descriptor 2 is pointed at a scratch file whose content is
dropped afterwards, and OpenCV's log is silenced. Both are process-wide and scans decode in several threads
at once, so the first decoder in sets this up and the last one out undoes it. Python's own ``sys.stderr``
(warnings, progress, this package's messages from other threads) is pointed at the real stderr meanwhile,
so nothing of ours is lost; only what C code writes to descriptor 2 during a decode is.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_lock = threading.Lock()
_depth = 0


@dataclass
class _Saved:
    stderr_copy: int  # a descriptor of the real stderr
    scratch: object  # where descriptor 2 points meanwhile
    opencv_level: int
    python_stderr: object | None  # sys.stderr before, when it wrote to descriptor 2; else None
    replacement: object | None  # what sys.stderr is meanwhile


_saved: _Saved | None = None


@contextmanager
def quiet_codecs() -> Iterator[None]:
    """Run the block with C-level writes to stderr dropped (re-entrant, thread-safe)."""
    _enter()
    try:
        yield
    finally:
        _leave()


def _enter() -> None:
    global _depth, _saved
    with _lock:
        _depth += 1
        if _depth > 1:
            return
        import cv2

        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _flush(sys.stderr)
        try:
            stderr_copy = os.dup(2)
        except OSError:  # no descriptor 2 at all (a daemon): nothing to keep clean
            _saved = _Saved(-1, None, level, None, None)
            return
        scratch = tempfile.TemporaryFile()
        os.dup2(scratch.fileno(), 2)
        python_stderr = replacement = None
        if _writes_to_descriptor_2(sys.stderr):
            python_stderr = sys.stderr
            replacement = io.TextIOWrapper(io.FileIO(os.dup(stderr_copy), "w"), line_buffering=True,
                                           write_through=True, encoding=getattr(python_stderr, "encoding", None),
                                           errors=getattr(python_stderr, "errors", None) or "backslashreplace")
            sys.stderr = replacement
        _saved = _Saved(stderr_copy, scratch, level, python_stderr, replacement)


def _leave() -> None:
    global _depth, _saved
    with _lock:
        _depth -= 1
        if _depth > 0:
            return
        import cv2

        saved, _saved = _saved, None
        cv2.utils.logging.setLogLevel(saved.opencv_level)
        if saved.scratch is None:
            return
        if saved.replacement is not None:
            _flush(saved.replacement)
            if sys.stderr is saved.replacement:  # unless someone else replaced it meanwhile
                sys.stderr = saved.python_stderr
            saved.replacement.close()
        os.dup2(saved.stderr_copy, 2)
        os.close(saved.stderr_copy)
        saved.scratch.close()


def _writes_to_descriptor_2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # pytest's capture, a StringIO
        return False


def _flush(stream) -> None:
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):  # no stderr, or a closed one
        pass
