"""Whether a scan is fed to the backbone the way the model's clean scans were.

A model learns what clean scans look like after their intensity window. An 8-bit scan is windowed
by its dtype's range and a 16-bit one by its own percentiles (``intensity_window="auto"``), and grey
and colour scans give the backbone different inputs. A scan of another kind than the clean scans
(the raw 16-bit file where the model saw 8-bit exports, say) is then scored against the wrong
normality: its score means little, and nothing else would tell the operator why.
"""

from __future__ import annotations

import numpy as np

from .intensity import resolved_window


def scan_kind(image: np.ndarray) -> str:
    """A short description of a scan, e.g. ``"uint16 grey"`` or ``"uint8 RGB"``."""
    return f"{image.dtype.name} {'grey' if image.ndim == 2 else 'RGB'}"


def _mapping(kind: str, window: str) -> tuple[str, str]:
    """What decides the backbone's input for scans of ``kind``: channels, and the window (with the dtype's
    range when the window is the dtype's range). Kinds with equal mappings are comparable."""
    dtype_name, channels = kind.split(" ", 1)
    dtype = np.dtype(dtype_name)
    resolved = resolved_window(dtype, window)
    if resolved == "percentile":
        return channels, "percentile"
    if resolved == "clean":  # one raw range learned from the clean scans: comparable in their dtype only
        return channels, f"clean {dtype.name}"
    high = np.iinfo(dtype).max if dtype.kind in "ui" else 1.0
    return channels, f"0..{high}"


def _describe(kinds: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items(), key=lambda item: (-item[1], item[0])))


def kind_mismatch(kind: str, fitted_kinds: dict[str, int], window: str) -> str | None:
    """A one-line warning when scans of ``kind`` are fed to the backbone unlike every kind of clean scan
    the model was fitted on (``fitted_kinds``: kind -> number of scans; empty for models that predate
    this record), else None."""
    if not fitted_kinds:
        return None
    if any(_mapping(kind, window) == _mapping(fitted, window) for fitted in fitted_kinds):
        return None
    return (f"{kind} scan, but the model was fitted on {_describe(fitted_kinds)} scans: they reach the "
            f"backbone differently (intensity window or channels), so its score is not comparable to theirs")


def mixed_kinds(kinds: dict[str, int], window: str) -> str | None:
    """A one-line warning when clean scans (``kinds``: kind -> number) reach the backbone in more than one
    way, so that the model's normality mixes them, else None."""
    if len({_mapping(kind, window) for kind in kinds}) <= 1:
        return None
    return (f"the clean scans are of kinds that reach the backbone differently (intensity window or channels): "
            f"{_describe(kinds)}; fit one model per kind")
