"""Colour overlay of an anomaly map on its scan, on a fixed calibrated colour scale."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .intensity import apply_window

DEFAULT_COLOR_RANGE = (1.0, 2.0)
_ROWS_PER_CHUNK = 512


def colour_lut(cmap: str = "jet") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def percentile_mask(anomaly_map: np.ndarray, percentile: float) -> np.ndarray:
    """Pixels at or above the ``percentile``-th percentile of this map: bool (H, W)."""
    if not 0.0 <= percentile <= 100.0:
        raise InputError("threshold percentile must be between 0 and 100")
    flat = anomaly_map.reshape(-1)
    step = max(1, flat.size // 2_000_000)
    level = np.percentile(flat[::step], percentile)
    return anomaly_map >= level


def render_overlay(scan: np.ndarray, anomaly_map: np.ndarray, display_mask: np.ndarray | None = None,
                   color_range: tuple[float, float] = DEFAULT_COLOR_RANGE, alpha: float = 0.6,
                   cmap: str = "jet", window: tuple[float, float] | None = None) -> np.ndarray:
    """Blend a colour-coded anomaly map over a scan.

    scan: (H, W) or (H, W, 3) scan, float in [0, 1], or raw values with ``window``.
    window: raw (low, high) mapped to [0, 1], applied chunk by chunk so a
        scan-sized float copy of a raw scan is never made.
    anomaly_map: (H, W) float32 in calibrated units (1.0 = clean level).
    display_mask: bool (H, W); pixels outside it stay uncoloured (None: all).
    color_range: calibrated values mapped to the bottom and top of the colour
        map. The scale is the same for every scan, never min-max per image, so
        a clean scan stays cold and faint and a real anomaly saturates.
    alpha: opacity at the top of the scale; it ramps from alpha/4 at the bottom,
        so weak responses barely tint the scan.
    Returns uint8 (H, W, 3) RGB. Rendered in row chunks to bound memory.
    """
    low, high = color_range
    if not high > low:
        raise InputError("color range must be (low, high) with high > low")
    lut = colour_lut(cmap)
    out = np.empty(anomaly_map.shape + (3,), dtype=np.uint8)
    for r0 in range(0, anomaly_map.shape[0], _ROWS_PER_CHUNK):
        rows = slice(r0, r0 + _ROWS_PER_CHUNK)
        grey = scan[rows] if window is None else apply_window(scan[rows], *window)
        base = np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey
        level = np.clip((anomaly_map[rows] - low) / (high - low), 0.0, 1.0)
        colour = lut[(level * 255.0 + 0.5).astype(np.uint8)].astype(np.float32) / 255.0
        weight = alpha * (0.25 + 0.75 * level)
        if display_mask is not None:
            weight = weight * display_mask[rows]
        weight = weight[..., None]
        out[rows] = np.clip((base * (1.0 - weight) + colour * weight) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out
