"""Keeping image codecs' own messages off stderr while they decode a scan.

libpng prints ``libpng warning: ...`` / ``libpng error: ...`` straight to the process's stderr (file
descriptor 2) from C, and OpenCV logs its own complaints; the CLI's contract is one line of its own per
error. Both are process-wide, and scans decode in several threads at once, so the first decoder in
redirects descriptor 2 into a temporary file and silences OpenCV's log, and the last one out restores
both and writes back every captured line that is not a codec's (a warning another thread printed
meanwhile arrives a moment late, but it arrives).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CODEC_PREFIXES = (b"libpng warning:", b"libpng error:")

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, object, int] | None = None  # (copy of descriptor 2, capture file, OpenCV log level)


@contextmanager
def quiet_codecs() -> Iterator[None]:
    """Run the block with codec messages on stderr captured and dropped (re-entrant, thread-safe)."""
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
        _flush_python_stderr()
        capture = tempfile.TemporaryFile()
        try:
            saved_fd = os.dup(2)
        except OSError:  # no descriptor 2 at all (a daemon): nothing to keep clean
            capture.close()
            _saved = (-1, None, level)
            return
        os.dup2(capture.fileno(), 2)
        _saved = (saved_fd, capture, level)


def _leave() -> None:
    global _depth, _saved
    with _lock:
        _depth -= 1
        if _depth > 0:
            return
        import cv2

        saved_fd, capture, level = _saved
        _saved = None
        cv2.utils.logging.setLogLevel(level)
        if capture is None:
            return
        _flush_python_stderr()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        with capture:
            capture.seek(0)
            kept = b"".join(line for line in capture.read().splitlines(keepends=True)
                            if not line.startswith(CODEC_PREFIXES))
        if kept:
            os.write(2, kept)


def _flush_python_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr, or a closed one
        pass
