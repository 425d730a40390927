"""Triptych and legend pictures: layout, windowing of raw scans, caption colours."""

from __future__ import annotations

import numpy as np

from rtg_anomaly.outputs.display import ALERT_COLOUR, DisplayStyle, display_scale
from rtg_anomaly.outputs.legend import ascii_text, colorbar_strip
from rtg_anomaly.outputs.triptych import SUSPECT_COLOUR, caption_lines, mask_panel, render_triptych, windowed_rgb


def test_windowed_rgb_maps_a_16bit_window_to_black_and_white():
    raw = np.array([[1000, 3000, 5000, 65535]], np.uint16)
    rgb = windowed_rgb(raw, (1000.0, 5000.0))
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert list(rgb[0, :, 0]) == [0, 128, 255, 255]


def test_mask_panel_is_white_where_the_map_reaches_the_threshold():
    heatmap = np.zeros((40, 40), np.float32)
    heatmap[10:30, 10:30] = 2.0
    panel = mask_panel(heatmap, 1.5)
    assert (panel[:10] == 0).all() and (panel[20, 20] == 255).all()
    assert tuple(panel[10, 20]) == ALERT_COLOUR


def test_triptych_layout_and_caption():
    raw = np.full((60, 80), 2000, np.uint16)
    heatmap = np.zeros((60, 80), np.float32)
    heatmap[20:40, 20:40] = 2.0
    overlay = np.full((60, 80, 3), 7, np.uint8)
    picture = render_triptych(raw, overlay, heatmap, "scan.png", 2.5, True, 1.2, 1.5, 1, (0.0, 4000.0))
    gap = 4
    assert picture.dtype == np.uint8 and picture.shape[1] == 3 * 80 + 2 * gap and picture.shape[0] > 60
    assert (picture[:60, :80] == 128).all()  # the windowed original
    assert (picture[:60, 2 * (80 + gap):] == 7).all()  # the overlay as given
    caption = picture[60:]
    assert (caption == np.array(SUSPECT_COLOUR, np.uint8)).all(axis=-1).any()  # the decision line is red


def test_a_reconstruction_becomes_the_second_of_four_panels():
    raw = np.full((60, 80), 2000, np.uint16)
    heatmap = np.zeros((60, 80), np.float32)
    overlay = np.full((60, 80, 3), 7, np.uint8)
    drawn = np.full((60, 80), 0.25, np.float32)  # on the scan's window already: [0, 1]
    picture = render_triptych(raw, overlay, heatmap, "scan.png", 0.5, False, 1.2, 1.5, 0, (0.0, 4000.0),
                              reconstruction=drawn)
    gap = 4
    assert picture.shape[1] == 4 * 80 + 3 * gap
    assert (picture[:60, :80] == 128).all() and (picture[:60, 80 + gap:2 * 80 + gap] == 64).all()
    assert (picture[:60, 3 * (80 + gap):] == 7).all()
    assert "reconstruction" in caption_lines("a.png", 0.5, False, 1.2, 1.5, 0, reconstruction=True)[1]


def test_caption_states_file_score_decision_and_thresholds():
    first, second = caption_lines("a.png", 2.5, True, 1.2, 1.5, 2)
    assert "a.png" in first and "2.500" in first and "1.200" in first and "SUSPECT" in first
    assert "1.500" in second and "2 regions" in second
    assert "clean" in caption_lines("b.png", 1.0, False, 1.2, 1.5, 1)[0]


def test_ascii_text_replaces_what_opencv_cannot_draw():
    assert ascii_text("scan-é<1>.png") == "scan-?<1>.png"


def test_colorbar_shows_the_warm_part_only_in_calibrated_mode():
    style = DisplayStyle()
    scale = display_scale(1.3, (1.0, 1.6))
    calibrated = colorbar_strip(400, scale, style, calibrated_only=True)
    full = colorbar_strip(400, scale, style, calibrated_only=False)
    assert calibrated.shape[1] == 400 and calibrated.dtype == np.uint8
    bar = calibrated[8]  # a row through the bar
    left = bar[12]
    assert left[0] > left[2]  # starts warm
    assert full[8][12][2] > full[8][12][0]  # the full bar starts cold (blue)
