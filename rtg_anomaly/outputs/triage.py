"""Folder triage: a CSV with one line per scan, and sorting scans into clean/ and suspect/.

The CSV (columns :data:`TRIAGE_COLUMNS`) is what an operator opens in a
spreadsheet after running a folder: which scans are suspect, how strongly,
how many regions, where the top one is, and which scans failed and why.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..atomic import replacing

DECISIONS = ("suspect", "clean", "error")
SORTED_DECISIONS = ("suspect", "clean")
SORT_MODES = ("copy", "link", "symlink")

TRIAGE_COLUMNS = ("path", "score", "decision", "n_regions", "top_region", "error")
"""Columns of the triage CSV, in order.

path: the scan's path as given. score: image anomaly score (calibrated units,
empty for errors). decision: ``suspect``, ``clean`` or ``error``.
n_regions: number of suspicious regions (empty for errors). top_region:
bounding box of the rank-1 region as ``x y w h`` in image pixels (empty when
there is none). error: one-line message for ``error`` rows, else empty."""

_MAX_SUFFIX = 100_000
# errno values of os.link failures where a copy is the right fallback.
_LINK_FALLBACK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES,
                         getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)}


def format_bbox(bbox) -> str:
    """``"x y w h"`` of a bounding box given as a Region (anything with ``.bbox``), a 4-sequence, a string or None."""
    if bbox is None:
        return ""
    if isinstance(bbox, str):
        return bbox.strip()
    bbox = getattr(bbox, "bbox", bbox)
    values = [int(v) for v in bbox]
    if len(values) != 4:
        raise ValueError(f"a bounding box needs 4 values (x, y, w, h), got {values}")
    return " ".join(str(v) for v in values)


def _format_cell(column: str, value) -> str:
    if value is None:
        return ""
    if column == "top_region":
        return format_bbox(value)
    if column == "error":
        return " ".join(str(value).split())  # one line: no newlines inside the cell
    if isinstance(value, float):
        return repr(float(value)) if value == value else ""  # shortest exact round trip; NaN -> empty
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _format_cell(column, value.item())
    return str(value)


def triage_row(path, score: float | None = None, decision: str | None = None, regions: Sequence = (),
               error: str | BaseException | None = None) -> dict:
    """One CSV row (a dict keyed by :data:`TRIAGE_COLUMNS`) for a scan.

    With ``error`` the decision is ``error`` and score, n_regions and
    top_region stay empty; otherwise ``decision`` must be ``suspect`` or
    ``clean``. ``regions``: ranked regions (e.g. from
    :func:`rtg_anomaly.outputs.regions.find_regions`); the first one is the top region.
    """
    if error is not None:
        message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        return {"path": str(path), "score": None, "decision": "error", "n_regions": None,
                "top_region": None, "error": message or "error"}
    if decision not in SORTED_DECISIONS:
        raise ValueError(f"decision must be one of {SORTED_DECISIONS} for a scored scan, got {decision!r}")
    regions = list(regions)
    return {"path": str(path), "score": None if score is None else float(score), "decision": decision,
            "n_regions": len(regions), "top_region": regions[0] if regions else None, "error": None}


def write_triage_csv(path, rows: Iterable[Mapping]) -> Path:
    """Write the triage CSV atomically; returns its path.

    rows: one mapping per scan with keys from :data:`TRIAGE_COLUMNS`
        (missing keys and None give empty cells; an unknown key or decision
        is a ValueError). ``top_region`` may be a Region, ``(x, y, w, h)``
        or an ``"x y w h"`` string. Floats are written in Python's shortest
        exact form, so ``float(cell)`` gives the same value back.

    The file is written to a temporary name in the same folder and moved over
    ``path`` with :func:`os.replace`, so a reader never sees half a file and
    a failure leaves the previous file (if any) in place. UTF-8, header line
    first, ``\\r\\n`` line ends (the csv module's default, which spreadsheets
    read).
    """
    path = Path(path)
    table = []
    for number, row in enumerate(rows, start=1):
        unknown = set(row) - set(TRIAGE_COLUMNS)
        if unknown:
            raise ValueError(f"triage row {number} has unknown columns {sorted(unknown)}")
        decision = row.get("decision")
        if decision not in DECISIONS:
            raise ValueError(f"triage row {number}: decision must be one of {DECISIONS}, got {decision!r}")
        table.append({column: _format_cell(column, row.get(column)) for column in TRIAGE_COLUMNS})

    with replacing(path, durable=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRIAGE_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    return path


def _candidates(folder: Path, name: str):
    yield folder / name
    stem, suffix = os.path.splitext(name)
    for number in range(1, _MAX_SUFFIX):
        yield folder / f"{stem}_{number}{suffix}"
    raise FileExistsError(f"no free name for {name} in {folder} after {_MAX_SUFFIX} tries")


def _same_content(a: Path, b: Path) -> bool:
    import filecmp

    try:
        return os.path.samefile(a, b) or (b.is_file() and not b.is_symlink() and filecmp.cmp(a, b, shallow=False))
    except OSError:
        return False


def _copy_exclusive(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest``, which must not exist yet (FileExistsError otherwise)."""
    with open(source, "rb") as src, open(dest, "xb") as dst:
        try:
            shutil.copyfileobj(src, dst, 1 << 20)
        except BaseException:
            dst.close()
            os.unlink(dest)
            raise
    shutil.copystat(source, dest)


def sort_into(folder, scan_path, decision: str, mode: str = "copy") -> Path | None:
    """Put a scan into ``folder/clean/`` or ``folder/suspect/``; returns where it went.

    folder: triage output folder; ``clean/`` and ``suspect/`` are created in
        it as needed.
    scan_path: the scan file (left in place).
    decision: ``suspect`` or ``clean``; ``error`` is not sorted and returns None.
    mode: ``copy`` (a full copy, timestamps kept), ``link`` (hard link, no
        extra space; falls back to a copy across devices or where the file
        system has no hard links) or ``symlink`` (symbolic link to the
        scan's absolute path).

    An existing file is never overwritten: if the name is taken by a
    different file, ``name_1.ext``, ``name_2.ext``, ... is used instead
    (names are claimed atomically, so parallel workers don't collide). If it
    is taken by this very scan (the same file, a link to it, or an identical
    copy from an earlier run), that path is returned and nothing is added.
    """
    if decision == "error":
        return None
    if decision not in SORTED_DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    if mode not in SORT_MODES:
        raise ValueError(f"sort mode must be one of {SORT_MODES}, got {mode!r}")
    source = Path(scan_path)
    if not source.is_file():
        raise FileNotFoundError(f"scan {source} is not a file")
    target_dir = Path(folder) / decision
    target_dir.mkdir(parents=True, exist_ok=True)

    for dest in _candidates(target_dir, source.name):
        if os.path.lexists(dest):
            if _same_content(source, dest):
                return dest
            continue
        try:
            if mode == "symlink":
                os.symlink(os.path.abspath(source), dest)
            elif mode == "link":
                try:
                    os.link(source, dest)
                except FileExistsError:
                    raise
                except OSError as exc:
                    if exc.errno not in _LINK_FALLBACK_ERRNOS:
                        raise
                    _copy_exclusive(source, dest)
            else:
                _copy_exclusive(source, dest)
        except FileExistsError:  # claimed by someone else in between: look again
            if _same_content(source, dest):
                return dest
            continue
        return dest
    raise AssertionError("unreachable")  # _candidates raises when it runs out
