"""Colour overlay of an anomaly map on its scan, on a fixed calibrated colour scale.

``render_overlay`` and ``percentile_mask`` are the numpy versions (CPU); the ``*_torch``
twins compute the same pixels with torch on a device, for the GPU path. The overlay that the
``detect`` command writes is ``display.render_display``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backbone.transfer import to_host
from ..errors import InputError
from ..scans.intensity import apply_window, apply_window_torch, to_device_float
from .display import colour_lut, run_in_row_chunks

DEFAULT_COLOR_RANGE = (1.0, 2.0)
_ROWS_PER_CHUNK = 512


_PERCENTILE_SAMPLE = 2_000_000


def percentile_mask(anomaly_map: np.ndarray, percentile: float, within: np.ndarray | None = None) -> np.ndarray:
    """Pixels at or above the ``percentile``-th percentile of this map: bool (H, W).

    The level is taken over a regular subsample of at most ~2 million pixels. within: bool (H, W) region of
    interest: the level is taken over its pixels only, and no pixel outside it is in the mask.
    """
    _check_percentile(percentile)
    flat = anomaly_map.reshape(-1) if within is None else anomaly_map[within]
    if flat.size == 0:
        return np.zeros(anomaly_map.shape, dtype=bool)
    step = max(1, flat.size // _PERCENTILE_SAMPLE)
    level = np.percentile(flat[::step], percentile)
    mask = anomaly_map >= level
    return mask if within is None else mask & within


def percentile_mask_torch(anomaly_map: torch.Tensor, percentile: float,
                          within: torch.Tensor | None = None) -> torch.Tensor:
    """``percentile_mask`` of a (H, W) float32 tensor, on its device: the same subsample and
    numpy's linear interpolation in float32, so the same level and the same mask.
    within: bool (H, W) tensor on the same device, as ``percentile_mask``'s."""
    _check_percentile(percentile)
    flat = anomaly_map.reshape(-1) if within is None else anomaly_map[within]
    if flat.numel() == 0:
        return torch.zeros_like(anomaly_map, dtype=torch.bool)
    ordered = torch.sort(flat[:: max(1, flat.numel() // _PERCENTILE_SAMPLE)]).values
    position = percentile / 100.0 * (ordered.numel() - 1)
    below = int(np.floor(position))
    fraction = position - below
    low, high = ordered[below], ordered[min(below + 1, ordered.numel() - 1)]
    gap = high - low
    level = low + gap * float(np.float32(fraction)) if fraction < 0.5 else high - gap * float(np.float32(1.0 - fraction))
    mask = anomaly_map >= level
    return mask if within is None else mask & within


def _check_percentile(percentile: float) -> None:
    if not 0.0 <= percentile <= 100.0:
        raise InputError("threshold percentile must be between 0 and 100")


def _check_style(color_range: tuple[float, float], alpha: float) -> tuple[float, float]:
    """``color_range`` as (low, high) when it and ``alpha`` are usable, else InputError."""
    low, high = color_range
    if not high > low:
        raise InputError("color range must be (low, high) with high > low")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be between 0 and 1, got {alpha}")
    return low, high


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
    low, high = _check_style(color_range, alpha)
    lut = colour_lut(cmap)
    out = np.empty(anomaly_map.shape + (3,), dtype=np.uint8)

    def render_rows(rows: slice) -> None:
        grey = scan[rows] if window is None else apply_window(scan[rows], *window)
        base = grey[..., None] if grey.ndim == 2 else grey
        level = np.clip((anomaly_map[rows] - low) / (high - low), 0.0, 1.0)
        colour = lut[(level * 255.0 + 0.5).astype(np.uint8)].astype(np.float32) / 255.0
        weight = alpha * (0.25 + 0.75 * level)
        if display_mask is not None:
            weight = weight * display_mask[rows]
        weight = weight[..., None]
        out[rows] = np.clip((base * (1.0 - weight) + colour * weight) * 255.0 + 0.5, 0, 255).astype(np.uint8)

    run_in_row_chunks(anomaly_map.shape[0], render_rows, _ROWS_PER_CHUNK)
    return out


def render_overlay_torch(scan: np.ndarray | torch.Tensor, anomaly_map: torch.Tensor,
                         display_mask: torch.Tensor | None = None,
                         color_range: tuple[float, float] = DEFAULT_COLOR_RANGE, alpha: float = 0.6,
                         cmap: str = "jet", window: tuple[float, float] | None = None,
                         rows_per_chunk: int = 2048) -> np.ndarray:
    """``render_overlay`` computed with torch on ``anomaly_map``'s device (the same float32 formula).

    scan: numpy (H, W) or (H, W, 3), uploaded in row chunks of ``rows_per_chunk``; or a float32
        tensor of that shape on ``anomaly_map``'s device (read, never modified).
    anomaly_map: (H, W) float32 tensor; display_mask: bool (H, W) tensor on the same device or None.
    Returns uint8 (H, W, 3) RGB as a numpy array.
    """
    low, high = _check_style(color_range, alpha)
    device = anomaly_map.device
    lut = torch.from_numpy(colour_lut(cmap)).to(device).to(torch.float32) / 255.0
    out = torch.empty(anomaly_map.shape + (3,), dtype=torch.uint8, device=device)
    # A 0-d tensor divisor divides as numpy does; a Python scalar becomes a float32 reciprocal multiply on CUDA.
    span = torch.tensor(np.float32(high - low), device=device)
    for r0 in range(0, anomaly_map.shape[0], rows_per_chunk):
        rows = slice(r0, r0 + rows_per_chunk)
        if isinstance(scan, torch.Tensor):
            grey = scan[rows].float() if window is None else scan[rows].to(torch.float32, copy=True)
        else:
            grey = to_device_float(scan[rows], device)
        if window is not None:
            grey = apply_window_torch(grey, *window)
        base = grey[..., None] if grey.ndim == 2 else grey
        level = ((anomaly_map[rows] - low) / span).clamp_(0.0, 1.0)
        colour = lut[(level * 255.0 + 0.5).to(torch.uint8).long()]
        weight = alpha * (0.25 + 0.75 * level)
        if display_mask is not None:
            weight = weight * display_mask[rows]
        weight = weight[..., None]
        out[rows] = ((base * (1.0 - weight) + colour * weight) * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)
    return to_host(out)
