"""The operator's overlay, as ``detect`` writes it: a fixed calibrated colour scale whose warm end starts at
the calibrated pixel threshold, so a flagged region stands out and a clean scan stays its own grey.

Display only: nothing here changes the heatmap, the scores or the regions. No torch import, so the command
line can build its flags (and check their values) before anything heavy loads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

DEFAULT_COLOR_RANGE = (1.0, 2.0)
_ROWS_PER_CHUNK = 512


def run_in_row_chunks(height: int, render_rows, rows_per_chunk: int = _ROWS_PER_CHUNK) -> None:
    """Call ``render_rows(rows)`` for consecutive row slices of ``rows_per_chunk`` covering ``height`` rows,
    on every core: numpy releases the GIL inside its operations, so row chunks render in parallel."""
    chunks = [slice(r0, r0 + rows_per_chunk) for r0 in range(0, height, rows_per_chunk)]
    workers = min(len(chunks), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(render_rows, chunks))
    else:
        for rows in chunks:
            render_rows(rows)
_QUANTILE_SAMPLE = 2_000_000
ALERT_COLOUR = (255, 0, 255)
"""(R, G, B) of the outline around pixels above the calibrated pixel threshold: magenta, a colour that
neither an X-ray's greys nor the warm end of the usual colour maps contain."""


@dataclass(frozen=True)
class DisplayStyle:
    """How an anomaly map is shown over its scan; display only, never the heatmap file or the scores.

    The colour scale is fixed by the calibration, never by the scan: calibrated values from ``low`` to the
    pixel threshold fill the colour map's cold part ``[0, cold_to]``, and from the threshold to ``high``
    its warm part ``[warm_from, 1]``. So whatever the colour map, a pixel at or above the threshold is drawn
    in its warm end, and in calibrated mode nothing else is coloured; the colours between ``cold_to`` and
    ``warm_from`` are skipped, so that in percentile mode crossing the threshold is a visible step.

    cmap: matplotlib colour map name.
    color_range: calibrated (low, high) at the bottom and top of the scale; None: the calibration's.
    alpha_min, alpha_max: opacity at the bottom and top of the scale (linear in between).
    gamma: power applied to the position within each part of the scale (< 1 lifts weak responses).
    clip_quantile: values above this quantile of the scan's map are shown at it (1.0: off). Floored at
        the pixel threshold, so it only cools the hottest pixels and never moves one across the threshold.
    blur: Gaussian sigma in scan pixels of a display copy of the map (0: off); which pixels are coloured
        and which are warm still follows the unblurred map.
    outline: draw the outline of the pixels at or above the threshold in ``ALERT_COLOUR``.
    warm_from: position in the colour map (0..1) where the pixel threshold sits.
    cold_to: position in the colour map of values just under the threshold (at most ``warm_from``).
    """

    cmap: str = "jet"
    color_range: tuple[float, float] | None = None
    alpha_min: float = 0.25
    alpha_max: float = 0.6
    gamma: float = 1.0
    clip_quantile: float = 1.0
    blur: float = 0.0
    outline: bool = True
    warm_from: float = 0.65
    cold_to: float = 0.5

    def check(self) -> "DisplayStyle":
        """This style if every value is usable, else InputError (one line, naming the flag)."""
        check_colormap(self.cmap)
        if self.color_range is not None and not self.color_range[1] > self.color_range[0]:
            raise InputError("--color-range needs LOW < HIGH")
        for name, value in (("--alpha-min", self.alpha_min), ("--alpha-max", self.alpha_max)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be between 0 and 1, got {value}")
        if self.alpha_min > self.alpha_max:
            raise InputError(f"--alpha-min ({self.alpha_min}) must not exceed --alpha-max ({self.alpha_max})")
        if not (np.isfinite(self.gamma) and self.gamma > 0.0):
            raise InputError(f"--gamma must be a positive number, got {self.gamma}")
        if not 0.0 < self.clip_quantile <= 1.0:
            raise InputError(f"--clip-quantile must be in (0, 1], got {self.clip_quantile}")
        if not (np.isfinite(self.blur) and self.blur >= 0.0):
            raise InputError(f"--blur must be a sigma in pixels >= 0, got {self.blur}")
        if not 0.0 < self.warm_from < 1.0:
            raise InputError(f"warm_from must be between 0 and 1, got {self.warm_from}")
        if not 0.0 < self.cold_to <= self.warm_from:
            raise InputError(f"cold_to must be in (0, warm_from], got {self.cold_to}")
        return self


def check_colormap(name: str) -> None:
    """InputError unless ``name`` is a matplotlib colour map."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise InputError(f"unknown colour map {name!r}: use a matplotlib name such as jet, turbo, inferno or hot "
                         "(all of them: python -c \"import matplotlib; print(sorted(matplotlib.colormaps))\")")


def display_scale(pixel_threshold: float, color_range: tuple[float, float]) -> tuple[float, float, float]:
    """(low, threshold, high) of the fixed colour scale, calibrated units.

    high is kept above the threshold (a ``color_range`` topping out below it would leave no warm part).
    A low at or above the threshold (the demo's pixel threshold, 0.97, lies under the clean level 1.0)
    would leave no cold part for percentile mode: the cold part then reaches as far below the threshold
    as the warm part above it.
    """
    low, high = color_range
    threshold = float(pixel_threshold)
    high = max(float(high), threshold + 1e-6)
    low = float(low) if low < threshold else threshold - (high - threshold)
    return low, threshold, high


def display_levels(values: np.ndarray, hot: np.ndarray, scale: tuple[float, float, float],
                   style: DisplayStyle) -> np.ndarray:
    """Position in the colour map (float32, 0..1) of display ``values`` (calibrated units).

    hot: bool, the pixels at or above the threshold in the unblurred map: those land in
    ``[warm_from, 1]`` whatever their display value, the others in ``[0, cold_to]`` (below ``warm_from``).
    """
    low, threshold, high = scale
    warm = np.clip((values - threshold) / np.float32(high - threshold), 0.0, 1.0)
    cold = np.clip((values - low) / np.float32(threshold - low), 0.0, 1.0) if threshold > low else np.zeros_like(values)
    if style.gamma != 1.0:
        warm, cold = warm ** np.float32(style.gamma), cold ** np.float32(style.gamma)
    below_top = np.float32(np.nextafter(np.float32(style.warm_from), np.float32(0.0)))
    cold_level = np.minimum(cold * np.float32(style.cold_to), below_top)
    warm_level = np.float32(style.warm_from) + warm * np.float32(1.0 - style.warm_from)
    return np.where(hot, warm_level, cold_level).astype(np.float32)


def display_map(anomaly_map: np.ndarray, pixel_threshold: float, style: DisplayStyle) -> np.ndarray:
    """The map as shown: float32 (H, W), blurred and clipped per ``style``. ``anomaly_map`` is never
    modified (the heatmap file and the scores never see the display's changes); without blur or clip it is
    returned as it is, uncopied."""
    if style.blur == 0.0 and style.clip_quantile == 1.0:
        return np.asarray(anomaly_map, dtype=np.float32)
    shown = np.array(anomaly_map, dtype=np.float32, copy=True)
    if style.blur > 0.0:
        import cv2

        shown = cv2.GaussianBlur(shown, (0, 0), sigmaX=float(style.blur), borderType=cv2.BORDER_REFLECT)
    if style.clip_quantile < 1.0:
        step = max(1, shown.size // _QUANTILE_SAMPLE)
        ceiling = max(float(np.quantile(shown.reshape(-1)[::step], style.clip_quantile)), float(pixel_threshold))
        np.minimum(shown, np.float32(ceiling), out=shown)
    return shown


def render_display(scan: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float, style: DisplayStyle,
                   display_mask: np.ndarray | None = None, color_range: tuple[float, float] = DEFAULT_COLOR_RANGE,
                   window: tuple[float, float] | None = None) -> np.ndarray:
    """The operator's overlay: uint8 (H, W, 3) RGB.

    scan: (H, W) or (H, W, 3), float in [0, 1], or raw values with ``window`` (raw (low, high) -> [0, 1]).
    anomaly_map: (H, W) float32, calibrated units (1.0 = clean level); never modified.
    pixel_threshold: calibrated pixel threshold; pixels at or above it are warm (and outlined).
    display_mask: bool (H, W) of the pixels to colour (None: those at or above the threshold, the
        calibrated mode); pixels outside it keep the scan's own grey exactly.
    color_range: (low, high) of the scale when ``style.color_range`` is None (the calibration's).
    """
    from ..scans.intensity import apply_window

    style.check()
    scale = display_scale(pixel_threshold, style.color_range or color_range)
    hot = anomaly_map >= np.float32(pixel_threshold)
    mask = hot if display_mask is None else display_mask
    shown = display_map(anomaly_map, pixel_threshold, style)
    lut = colour_lut(style.cmap).astype(np.float32) / 255.0
    out = np.empty(anomaly_map.shape + (3,), dtype=np.uint8)
    alpha_min, alpha_span = np.float32(style.alpha_min), np.float32(style.alpha_max - style.alpha_min)

    def render_rows(rows: slice) -> None:
        grey = scan[rows] if window is None else apply_window(scan[rows], *window)
        base = (grey[..., None] if grey.ndim == 2 else grey).astype(np.float32)
        if not mask[rows].any():  # nothing coloured here (most rows in calibrated mode): the blend with weight 0
            out[rows] = np.clip(base * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return
        level = display_levels(shown[rows], hot[rows], scale, style)
        colour = lut[(level * 255.0 + 0.5).astype(np.uint8)]
        weight = ((alpha_min + alpha_span * level) * mask[rows])[..., None]
        out[rows] = np.clip((base * (1.0 - weight) + colour * weight) * 255.0 + 0.5, 0, 255).astype(np.uint8)

    run_in_row_chunks(anomaly_map.shape[0], render_rows, _ROWS_PER_CHUNK)
    if style.outline and hot.any():
        draw_outline(out, hot)
    return out


def draw_outline(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = ALERT_COLOUR,
                 thickness: int | None = None) -> None:
    """Paint the inner border of ``mask`` (bool (H, W)) on ``picture`` (uint8 (H, W, 3)) in place.

    The border lies inside the mask (its pixels within ``thickness`` of the outside), so every pixel
    outside the mask keeps its value: below the threshold, the scan stays its own. A region thinner than
    twice the border is painted whole. thickness: pixels (None: 1 px per 250 px of the scan's shorter side,
    at least 2).
    """
    import cv2

    if thickness is None:
        thickness = max(2, round(min(mask.shape) / 250))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return
    # Only the flagged area's bounding box, widened by more than the border, is eroded: the same border
    # as eroding the whole scan, at the cost of the area instead of the scan.
    margin = thickness + 1
    box = (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1), slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))
    inside = mask[box].astype(np.uint8)
    core = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * thickness + 1,) * 2))
    picture[box][inside > core] = colour


def colour_lut(cmap: str = "jet") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
