"""Triptych of one scored scan, for reports and reviews: original | thresholded mask | heat overlay,
side by side, with a caption (file, score, decision, thresholds) underneath. A method that draws clean
scans (pixel reconstruction) adds its drawing after the original: what a normal one looks like here."""

from __future__ import annotations

import numpy as np

from ..scans.intensity import apply_window
from .display import ALERT_COLOUR, draw_outline
from .legend import text_strip

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
                  n_regions: int, reconstruction: bool = False) -> list[str]:
    """The caption's two lines: file and decision; the panels, thresholds and regions."""
    decision = "SUSPECT" if anomalous else "clean"
    drawn = "what a clean scan looks like here (reconstruction) | " if reconstruction else ""
    return [f"{name}   score {score:.3f} {'>' if anomalous else '<='} threshold {image_threshold:.3f}   {decision}",
            f"original | {drawn}pixels above the pixel threshold {pixel_threshold:.3f} ({n_regions} region"
            f"{'' if n_regions == 1 else 's'}) | overlay"]


def compose_triptych(original: np.ndarray, mask: np.ndarray, overlay: np.ndarray, lines: list[str],
                     anomalous: bool, reconstruction: np.ndarray | None = None) -> np.ndarray:
    """Three uint8 (H, W, 3) panels side by side (four with ``reconstruction``, after the original), a gap
    between them, and ``lines`` of caption below: uint8 (H + caption, n W + (n - 1) gaps, 3). The first
    caption line is red for a suspect scan, green else."""
    height, width = original.shape[:2]
    panels = (original, mask, overlay) if reconstruction is None else (original, reconstruction, mask, overlay)
    gap = max(4, width // 100)
    total = len(panels) * width + (len(panels) - 1) * gap
    row = np.full((height, total, 3), 24, np.uint8)
    for i, panel in enumerate(panels):
        row[:, i * (width + gap):i * (width + gap) + width] = panel
    line_height = int(np.clip(round(total * 0.012), 12, 64))
    colours = [SUSPECT_COLOUR if anomalous else CLEAN_COLOUR] + [(220, 220, 220)] * (len(lines) - 1)
    return np.vstack([row, text_strip(lines, total, line_height, colours=colours)])


def render_triptych(scan: np.ndarray, overlay: np.ndarray, anomaly_map: np.ndarray, name: str, score: float,
                    anomalous: bool, image_threshold: float, pixel_threshold: float, n_regions: int,
                    window: tuple[float, float] | None, reconstruction: np.ndarray | None = None) -> np.ndarray:
    """Triptych of a scored scan: uint8 RGB (see ``compose_triptych``).

    scan: (H, W) or (H, W, 3) raw values; window: raw (low, high) shown as black..white (the detector's
    window of this scan, ``AnomalyResult.window``). overlay: uint8 (H, W, 3), the overlay as written.
    anomaly_map: float32 (H, W), calibrated units. reconstruction: float32 (H, W) in [0, 1] on the same
    window (``Detector.reconstruct``), shown after the original when given.
    """
    lines = caption_lines(name, score, anomalous, image_threshold, pixel_threshold, n_regions,
                          reconstruction is not None)
    drawn = None if reconstruction is None else windowed_rgb(reconstruction, None)
    return compose_triptych(windowed_rgb(scan, window), mask_panel(anomaly_map, pixel_threshold), overlay, lines,
                            anomalous, drawn)
