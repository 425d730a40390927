"""The operator's overlay (display.py), pixel by pixel: flagged pixels warm, the rest the scan's own."""

from __future__ import annotations

import numpy as np
import pytest

from rtg_anomaly.outputs.display import (ALERT_COLOUR, DisplayStyle, colour_lut, display_levels, display_scale,
                                         render_display)
from rtg_anomaly.errors import InputError

THRESHOLD = 1.3
RANGE = (1.0, 1.6)


def _scene(value_at_spot: float, size: int = 64, spot: int = 16):
    """A mid-grey scan whose map is 0.8 everywhere but a square of ``value_at_spot``."""
    scan = np.full((size, size), 0.5, np.float32)
    heatmap = np.full((size, size), 0.8, np.float32)
    heatmap[24:24 + spot, 24:24 + spot] = value_at_spot
    return scan, heatmap


def _render(scan, heatmap, **style):
    return render_display(scan, heatmap, THRESHOLD, DisplayStyle(**style), color_range=RANGE)


def _is_warm(rgb) -> bool:
    red, green, blue = (int(c) for c in rgb)
    return red > blue + 60 and red >= green


@pytest.mark.parametrize("cmap", ["jet", "turbo", "inferno", "hot", "viridis"])
def test_a_pixel_at_the_threshold_takes_the_warm_end(cmap):
    scan, heatmap = _scene(THRESHOLD)
    picture = _render(scan, heatmap, cmap=cmap, outline=False, alpha_min=1.0, alpha_max=1.0)
    lut = colour_lut(cmap)
    expected = lut[int(DisplayStyle.warm_from * 255 + 0.5)]
    np.testing.assert_array_equal(picture[30, 30], expected)  # opaque: exactly the map's colour at warm_from
    if cmap in ("jet", "turbo", "hot"):
        assert _is_warm(picture[30, 30])


def test_the_default_colours_of_flagged_pixels_are_warm_from_threshold_to_top():
    for value in (THRESHOLD, 1.4, 1.6, 5.0):
        scan, heatmap = _scene(value)
        picture = _render(scan, heatmap, outline=False, alpha_min=1.0, alpha_max=1.0)
        assert _is_warm(picture[30, 30]), (value, picture[30, 30])


def test_pixels_below_the_threshold_are_the_scans_own_in_calibrated_mode():
    rng = np.random.default_rng(0)
    scan = rng.random((80, 90), dtype=np.float32)
    heatmap = rng.uniform(0.5, 2.0, (80, 90)).astype(np.float32)
    picture = render_display(scan, heatmap, THRESHOLD, DisplayStyle(blur=3.0, gamma=0.5, clip_quantile=0.9),
                             color_range=RANGE)
    below = heatmap < THRESHOLD
    own = (scan * 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(picture[below], np.repeat(own[below][:, None], 3, axis=1))
    assert not np.array_equal(picture[~below], np.repeat(own[~below][:, None], 3, axis=1))


def test_a_clean_map_leaves_the_scan_uncoloured():
    scan, heatmap = _scene(1.29)
    picture = _render(scan, heatmap)
    assert (picture == 128).all()


def test_raw_16bit_scan_is_shown_through_its_window():
    raw = np.full((32, 32), 3000, np.uint16)
    heatmap = np.zeros((32, 32), np.float32)
    picture = render_display(raw, heatmap, THRESHOLD, DisplayStyle(), color_range=RANGE, window=(1000.0, 5000.0))
    assert (picture == 128).all()


def test_the_scale_never_depends_on_the_scans_own_maximum():
    # The same value gets the same colour whether the scan's peak is just above it or far above it.
    scan, mild = _scene(1.45)
    strong = mild.copy()
    strong[0:4, 0:4] = 50.0
    a = _render(scan, mild, outline=False)
    b = _render(scan, strong, outline=False)
    np.testing.assert_array_equal(a[30, 30], b[30, 30])
    np.testing.assert_array_equal(a[10:, 10:], b[10:, 10:])


def test_outline_rings_flagged_pixels_inside_the_region_in_the_alert_colour():
    scan, heatmap = _scene(1.5, spot=20)
    picture = _render(scan, heatmap)
    assert tuple(picture[24, 34]) == ALERT_COLOUR  # top edge of the flagged square
    assert tuple(picture[34, 34]) != ALERT_COLOUR  # its middle is filled, not ringed
    assert (picture[:23] == 128).all() and (picture[:, :23] == 128).all()  # nothing outside it changes
    plain = _render(scan, heatmap, outline=False)
    assert not (plain == np.array(ALERT_COLOUR, np.uint8)).all(axis=2).any()


def test_opacity_grows_from_alpha_min_to_alpha_max():
    style = DisplayStyle(alpha_min=0.1, alpha_max=0.9, outline=False)
    scan = np.zeros((4, 4), np.float32)  # black: the blend is the colour times the opacity
    lut = colour_lut("jet").astype(np.float64)
    for value, level in ((THRESHOLD, style.warm_from), (RANGE[1], 1.0)):
        heatmap = np.full((4, 4), value, np.float32)
        picture = render_display(scan, heatmap, THRESHOLD, style, color_range=RANGE)
        alpha = 0.1 + 0.8 * level
        expected = np.clip(lut[int(level * 255 + 0.5)] * alpha + 0.5, 0, 255).astype(np.uint8)
        np.testing.assert_allclose(picture[0, 0], expected, atol=1)


def test_percentile_mask_colours_cold_pixels_below_the_threshold():
    scan, heatmap = _scene(1.5)
    mask = np.ones_like(heatmap, bool)
    picture = render_display(scan, heatmap, THRESHOLD, DisplayStyle(outline=False, alpha_min=1.0, alpha_max=1.0),
                             display_mask=mask, color_range=(0.5, 1.6))
    assert picture[0, 0, 2] > picture[0, 0, 0]  # 0.8: in the cold part, blue
    assert _is_warm(picture[30, 30])


def test_levels_split_at_the_threshold_and_gamma_bends_each_part():
    style = DisplayStyle()
    scale = display_scale(THRESHOLD, RANGE)
    values = np.array([0.0, 1.0, 1.15, np.nextafter(np.float32(THRESHOLD), 0), THRESHOLD, 1.45, 1.6, 9.0], np.float32)
    levels = display_levels(values, values >= np.float32(THRESHOLD), scale, style)
    assert levels[0] == 0.0 and levels[1] == 0.0
    assert levels[3] == pytest.approx(style.cold_to, abs=1e-5) and levels[3] < style.warm_from <= levels[4]
    assert levels[4] == pytest.approx(style.warm_from) and levels[6] == pytest.approx(1.0) and levels[7] == 1.0
    bent = display_levels(values, values >= np.float32(THRESHOLD), scale, DisplayStyle(gamma=0.5))
    assert bent[5] > levels[5] and bent[4] == pytest.approx(levels[4]) and bent[6] == pytest.approx(levels[6])


def test_blur_and_clip_never_move_a_pixel_across_the_threshold():
    scan, heatmap = _scene(1.35, spot=2)  # a 2-pixel speck: blurring alone would sink it below the threshold
    heatmap[50, 50] = 30.0
    for style in (DisplayStyle(blur=4.0, outline=False), DisplayStyle(clip_quantile=0.5, outline=False)):
        picture = render_display(scan, heatmap, THRESHOLD, style, color_range=RANGE)
        assert _is_warm(picture[24, 24]) and _is_warm(picture[50, 50])
        assert (picture[heatmap < THRESHOLD] == 128).all()


def test_blur_and_clip_leave_the_map_alone():
    scan, heatmap = _scene(1.5)
    before = heatmap.copy()
    _render(scan, heatmap, blur=3.0, clip_quantile=0.5)
    np.testing.assert_array_equal(heatmap, before)


def test_rendering_is_deterministic_and_chunk_independent(monkeypatch):
    from rtg_anomaly.outputs import display

    rng = np.random.default_rng(1)
    scan = rng.random((300, 70), dtype=np.float32)
    heatmap = rng.uniform(0.5, 2.0, (300, 70)).astype(np.float32)
    whole = render_display(scan, heatmap, THRESHOLD, DisplayStyle(), color_range=RANGE)
    monkeypatch.setattr(display, "_ROWS_PER_CHUNK", 7)
    np.testing.assert_array_equal(render_display(scan, heatmap, THRESHOLD, DisplayStyle(), color_range=RANGE), whole)


@pytest.mark.parametrize("changes,message", [
    (dict(cmap="no_such_map"), "unknown colour map 'no_such_map'"),
    (dict(alpha_min=-0.1), "--alpha-min must be between 0 and 1"),
    (dict(alpha_max=1.5), "--alpha-max must be between 0 and 1"),
    (dict(alpha_min=0.8, alpha_max=0.5), "must not exceed --alpha-max"),
    (dict(gamma=0.0), "--gamma must be a positive number"),
    (dict(gamma=float("nan")), "--gamma must be a positive number"),
    (dict(clip_quantile=0.0), "--clip-quantile must be in (0, 1]"),
    (dict(clip_quantile=1.5), "--clip-quantile must be in (0, 1]"),
    (dict(blur=-1.0), "--blur must be a sigma"),
    (dict(blur=float("inf")), "--blur must be a sigma"),
    (dict(color_range=(2.0, 1.0)), "--color-range needs LOW < HIGH"),
    (dict(cold_to=0.9), "cold_to must be in (0, warm_from]"),
])
def test_bad_style_values_are_one_line_errors(changes, message):
    with pytest.raises(InputError) as error:
        DisplayStyle(**changes).check()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_colour_map_names_where_to_find_valid_ones():
    with pytest.raises(InputError, match="matplotlib.colormaps"):
        DisplayStyle(cmap="Jett").check()


def test_a_scale_starting_above_the_threshold_gets_a_mirrored_cold_part():
    assert display_scale(0.97, (1.0, 1.5)) == pytest.approx((0.44, 0.97, 1.5))
    assert display_scale(1.3, (1.0, 1.6)) == pytest.approx((1.0, 1.3, 1.6))
    low, threshold, high = display_scale(2.0, (1.0, 1.5))  # HIGH below the threshold: a sliver of warm part
    assert high > threshold and low < threshold


@pytest.mark.parametrize("kind", ["float", "uint16", "rgb"])
@pytest.mark.parametrize("percentile_mode", [False, True])
@pytest.mark.parametrize("style", [DisplayStyle(), DisplayStyle(cmap="turbo", alpha_min=0.1, alpha_max=0.9,
                                                                 blur=2.0, clip_quantile=0.95, outline=False)])
def test_render_display_torch_equals_numpy_on_cpu_tensors(kind, percentile_mode, style):
    from rtg_anomaly.outputs.display_torch import render_display_torch

    rng = np.random.default_rng(7)
    heatmap = rng.uniform(0.5, 2.0, (150, 90)).astype(np.float32)
    window = None
    if kind == "float":
        scan = rng.random((150, 90), dtype=np.float32)
    elif kind == "uint16":
        scan, window = rng.integers(0, 65535, (150, 90), dtype=np.uint16), (1000.0, 60000.0)
    else:
        scan = rng.random((150, 90, 3), dtype=np.float32)
    mask = heatmap > np.quantile(heatmap, 0.5) if percentile_mode else None
    expected = render_display(scan, heatmap, THRESHOLD, style, display_mask=mask, color_range=RANGE, window=window)
    got = render_display_torch(scan, heatmap, THRESHOLD, style, "cpu", display_mask=mask, color_range=RANGE,
                               window=window, rows_per_chunk=64)
    np.testing.assert_array_equal(got, expected)


def test_render_display_torch_with_gamma_is_within_one_step():
    from rtg_anomaly.outputs.display_torch import render_display_torch

    rng = np.random.default_rng(8)
    heatmap = rng.uniform(0.5, 2.0, (64, 64)).astype(np.float32)
    scan = rng.random((64, 64), dtype=np.float32)
    style = DisplayStyle(gamma=0.5)
    expected = render_display(scan, heatmap, THRESHOLD, style, color_range=RANGE).astype(int)
    got = render_display_torch(scan, heatmap, THRESHOLD, style, "cpu", color_range=RANGE).astype(int)
    assert np.abs(got - expected).max() <= 3  # a float32 pow may round one LUT step apart


@pytest.mark.parametrize("spot", [(0, 0), (30, 50), (75, 95)])
def test_outline_of_the_flagged_box_equals_eroding_the_whole_scan(spot):
    import cv2

    from rtg_anomaly.outputs.display import draw_outline

    mask = np.zeros((80, 100), bool)
    y, x = spot
    mask[max(y - 6, 0):y + 6, max(x - 9, 0):x + 9] = True
    mask[40:43, 10:12] = True
    picture = np.zeros((80, 100, 3), np.uint8)
    draw_outline(picture, mask, thickness=3)
    inside = mask.astype(np.uint8)
    core = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    expected = np.zeros_like(picture)
    expected[inside > core] = ALERT_COLOUR
    np.testing.assert_array_equal(picture, expected)
