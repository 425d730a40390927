"""``display.render_display`` computed with torch on a device (the GPU path of ``detect``'s overlay).

The same float32 formula as the numpy version, step by step, so on CPU tensors the pixels are identical
(tested); on CUDA they may differ by a rounding step. The alert ring and any blur or clip of the display
map are done on the host, as in ``display.py``, before or after the device part.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backbone.transfer import to_host
from ..scans.intensity import apply_window_torch, to_device_float
from .display import DEFAULT_COLOR_RANGE, DisplayStyle, colour_lut, display_map, display_scale, draw_outline


def _levels(values: torch.Tensor, hot: torch.Tensor, scale: tuple[float, float, float],
            style: DisplayStyle) -> torch.Tensor:
    """``display.display_levels`` of a float32 tensor (same operations, in float32)."""
    low, threshold, high = scale
    device = values.device
    # 0-d tensor divisors divide as numpy does; a Python scalar becomes a reciprocal multiply on CUDA.
    def part(start: float, end: float) -> torch.Tensor:
        span = torch.tensor(np.float32(end - start), device=device)
        return ((values - float(np.float32(start))) / span).clamp_(0.0, 1.0)

    warm = part(threshold, high)
    if threshold > low:
        cold = part(low, threshold)
    else:
        cold = torch.zeros_like(values)
    if style.gamma != 1.0:
        exponent = torch.tensor(np.float32(style.gamma), device=device)
        warm, cold = warm.pow(exponent), cold.pow(exponent)
    warm_from = float(np.float32(style.warm_from))
    below_top = float(np.nextafter(np.float32(style.warm_from), np.float32(0.0)))
    cold_level = torch.clamp_max(cold * float(np.float32(style.cold_to)), below_top)
    warm_level = warm * float(np.float32(1.0 - style.warm_from)) + warm_from
    return torch.where(hot, warm_level, cold_level)


def render_display_torch(scan: np.ndarray | torch.Tensor, anomaly_map: np.ndarray, pixel_threshold: float,
                         style: DisplayStyle, device: torch.device | str,
                         display_mask: np.ndarray | torch.Tensor | None = None,
                         color_range: tuple[float, float] = DEFAULT_COLOR_RANGE,
                         window: tuple[float, float] | None = None, rows_per_chunk: int = 2048,
                         device_map: torch.Tensor | None = None) -> np.ndarray:
    """``display.render_display`` with the blending on ``device``: uint8 (H, W, 3) RGB numpy array.

    scan: numpy (H, W) or (H, W, 3), raw with ``window`` or float in [0, 1], uploaded in row chunks; or a
        float32 tensor on ``device`` already in [0, 1] (``window`` None), which nothing uploads again.
    anomaly_map: numpy float32 (H, W), calibrated units (host copy; the heatmap the report describes).
    display_mask: bool (H, W), numpy or a tensor on ``device``, or None (calibrated mode: the pixels at or
        above the threshold).
    device_map: ``anomaly_map``'s float32 copy on ``device``, bit for bit, if the caller has it (not uploaded
        again then).
    """
    style.check()
    device = torch.device(device)
    scale = display_scale(pixel_threshold, style.color_range or color_range)
    threshold = np.float32(pixel_threshold)
    shown = display_map(anomaly_map, pixel_threshold, style)
    lut = torch.from_numpy(colour_lut(style.cmap)).to(device).to(torch.float32) / 255.0
    out = torch.empty(anomaly_map.shape + (3,), dtype=torch.uint8, device=device)
    alpha_min, alpha_span = float(np.float32(style.alpha_min)), float(np.float32(style.alpha_max - style.alpha_min))

    def rows_of(values, rows: slice) -> torch.Tensor:
        if isinstance(values, torch.Tensor):
            return values[rows]
        return torch.from_numpy(np.ascontiguousarray(values[rows])).to(device)

    for r0 in range(0, anomaly_map.shape[0], rows_per_chunk):
        rows = slice(r0, r0 + rows_per_chunk)
        if isinstance(scan, torch.Tensor):
            grey = scan[rows]
        else:
            grey = to_device_float(scan[rows], device)
            if window is not None:
                grey = apply_window_torch(grey, *window)
        base = grey[..., None] if grey.ndim == 2 else grey
        raw = rows_of(anomaly_map if device_map is None else device_map, rows)
        hot = raw >= float(threshold)
        values = raw if shown is anomaly_map else rows_of(shown, rows)
        level = _levels(values, hot, scale, style)
        colour = lut[(level * 255.0 + 0.5).to(torch.uint8).long()]
        mask = hot if display_mask is None else rows_of(display_mask, rows)
        weight = ((level * alpha_span + alpha_min) * mask)[..., None]
        out[rows] = ((base * (1.0 - weight) + colour * weight) * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)
    picture = to_host(out)
    if style.outline:
        flagged = anomaly_map >= threshold
        if flagged.any():
            draw_outline(picture, flagged)
    return picture
