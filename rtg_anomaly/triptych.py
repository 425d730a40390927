"""Triptych of one scored scan, for reports and reviews: original | thresholded mask | heat overlay,
side by side, with a caption (file, score, decision, thresholds) underneath."""

from __future__ import annotations

import numpy as np

from .intensity import apply_window
from .legend import text_strip
from .display import ALERT_COLOUR, draw_outline

SUSPECT_COLOUR = (255, 80, 80)
CLEAN_COLOUR = (120, 220, 120)


def windowed_rgb(scan: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """The scan as the operator sees it: uint8 (H, W, 3), raw values (a 16-bit scan, say) mapped to
    0..255 through ``window`` (raw low, high); None: the scan is already float in [0, 1]."""
    grey = apply_window(scan, *window) if window is not None else np.clip(np.asarray(scan, np.float32), 0.0, 1.0)
    pixels = (grey * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def mask_panel(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """uint8 (H, W, 3): the pixels at or above the calibrated pixel threshold in white on black, ringed
    in the alert colour as on the overlay."""
    hot = anomaly_map >= np.float32(pixel_threshold)
    panel = np.zeros(anomaly_map.shape + (3,), np.uint8)
    panel[hot] = 255
    if hot.any():
        draw_outline(panel, hot, ALERT_COLOUR)
    return panel


def caption_lines(name: str, score: float, anomalous: bool, image_threshold: float, pixel_threshold: float,
                  n_regions: int) -> list[str]:
    """The caption's two lines: file and decision; thresholds and regions."""
    decision = "SUSPECT" if anomalous else "clean"
    return [f"{name}   score {score:.3f} {'>' if anomalous else '<='} threshold {image_threshold:.3f}   {decision}",
            f"original | pixels above the pixel threshold {pixel_threshold:.3f} ({n_regions} region"
            f"{'' if n_regions == 1 else 's'}) | overlay"]


def compose_triptych(original: np.ndarray, mask: np.ndarray, overlay: np.ndarray, lines: list[str],
                     anomalous: bool) -> np.ndarray:
    """Three uint8 (H, W, 3) panels side by side, a gap between them, and ``lines`` of caption below:
    uint8 (H + caption, 3 W + 2 gaps, 3). The first caption line is red for a suspect scan, green else."""
    height, width = original.shape[:2]
    gap = max(4, width // 100)
    total = 3 * width + 2 * gap
    row = np.full((height, total, 3), 24, np.uint8)
    for i, panel in enumerate((original, mask, overlay)):
        row[:, i * (width + gap):i * (width + gap) + width] = panel
    line_height = int(np.clip(round(total * 0.012), 12, 64))
    colours = [SUSPECT_COLOUR if anomalous else CLEAN_COLOUR] + [(220, 220, 220)] * (len(lines) - 1)
    return np.vstack([row, text_strip(lines, total, line_height, colours=colours)])


def render_triptych(scan: np.ndarray, overlay: np.ndarray, anomaly_map: np.ndarray, name: str, score: float,
                    anomalous: bool, image_threshold: float, pixel_threshold: float, n_regions: int,
                    window: tuple[float, float] | None) -> np.ndarray:
    """Triptych of a scored scan: uint8 RGB (see ``compose_triptych``).

    scan: (H, W) or (H, W, 3) raw values; window: raw (low, high) shown as black..white (the detector's
    window of this scan, ``AnomalyResult.window``). overlay: uint8 (H, W, 3), the overlay as written.
    anomaly_map: float32 (H, W), calibrated units.
    """
    lines = caption_lines(name, score, anomalous, image_threshold, pixel_threshold, n_regions)
    return compose_triptych(windowed_rgb(scan, window), mask_panel(anomaly_map, pixel_threshold), overlay, lines,
                            anomalous)
