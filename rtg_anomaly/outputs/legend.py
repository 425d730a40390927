"""Text and the colour-scale legend drawn into pictures (overlays, triptychs) with OpenCV's own font.

OpenCV's Hershey fonts have ASCII glyphs only: other characters are drawn as ``?`` (the file name in a
caption is then still recognisable, and the HTML page carries the exact name).
"""

from __future__ import annotations

import cv2
import numpy as np

from .display import DisplayStyle, colour_lut, display_levels

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def ascii_text(text: str) -> str:
    """``text`` with every character OpenCV cannot draw replaced by ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def text_scale(height: int) -> tuple[float, int]:
    """(font scale, stroke in px) for a line of text about ``height`` pixels tall."""
    scale = max(0.3, height / 30.0)
    return scale, max(1, round(scale * 1.6))


def put_line(picture: np.ndarray, text: str, origin: tuple[int, int], height: int,
             colour: tuple[int, int, int] = (255, 255, 255)) -> int:
    """Draw one line of ``text`` on ``picture`` (uint8 (H, W, 3), in place) with its baseline's left end at
    ``origin`` (x, y); returns the drawn width in pixels."""
    scale, stroke = text_scale(height)
    text = ascii_text(text)
    cv2.putText(picture, text, origin, _FONT, scale, colour, stroke, cv2.LINE_AA)
    return cv2.getTextSize(text, _FONT, scale, stroke)[0][0]


def text_strip(lines: list[str], width: int, line_height: int, background=(24, 24, 24),
               colours: list[tuple[int, int, int]] | None = None) -> np.ndarray:
    """A uint8 (h, width, 3) strip with ``lines`` of text, one under the other, left-aligned."""
    pad = max(4, line_height // 3)
    strip = np.empty((pad + len(lines) * (line_height + pad), width, 3), np.uint8)
    strip[:] = background
    for i, line in enumerate(lines):
        colour = colours[i] if colours else (255, 255, 255)
        put_line(strip, line, (pad, pad + (i + 1) * line_height + i * pad - line_height // 6), line_height, colour)
    return strip


def colorbar_strip(width: int, scale: tuple[float, float, float], style: DisplayStyle,
                   calibrated_only: bool) -> np.ndarray:
    """Legend of the overlay's colour scale: uint8 (h, width, 3).

    scale: (low, pixel threshold, high) in calibrated units (``overlay.display_scale``); the bar shows the
    colours of the values it is labelled with, at full opacity. calibrated_only: only the warm part (from
    the threshold up) is ever drawn, so only it is shown.
    """
    low, threshold, high = scale
    bar_height = int(np.clip(round(width * 0.015), 10, 60))
    line = int(np.clip(round(width * 0.012), 12, 48))
    pad = max(4, line // 3)
    margin = max(8, width // 50)
    start = threshold if calibrated_only else low
    values = np.linspace(start, high, max(2, width - 2 * margin), dtype=np.float32)
    hot = values >= np.float32(threshold)
    levels = display_levels(values, hot, scale, style)
    colours = colour_lut(style.cmap)[(levels * 255.0 + 0.5).astype(np.uint8)]
    strip = np.empty((pad * 3 + bar_height + line * 2, width, 3), np.uint8)
    strip[:] = (24, 24, 24)
    strip[pad:pad + bar_height, margin:margin + values.size] = colours[None]
    ticks = [(start, f"{start:.2f}"), (high, f"{high:.2f}+")]
    if not calibrated_only and threshold > low:
        ticks.insert(1, (threshold, f"{threshold:.2f} threshold"))
    else:
        ticks[0] = (start, f"{start:.2f} threshold")
    baseline = pad * 2 + bar_height + line
    for value, label in ticks:
        x = margin + int(round((value - start) / max(high - start, 1e-12) * (values.size - 1)))
        cv2.line(strip, (x, pad), (x, pad + bar_height + pad // 2), (255, 255, 255), 1)
        scale_, stroke = text_scale(line)
        text_width = cv2.getTextSize(ascii_text(label), _FONT, scale_, stroke)[0][0]
        put_line(strip, label, (int(np.clip(x - text_width // 2, 2, width - text_width - 2)), baseline), line)
    put_line(strip, "anomaly map, calibrated units (1.0 = clean level)", (margin, baseline + line + pad // 2),
             int(line * 0.8), (190, 190, 190))
    return strip
