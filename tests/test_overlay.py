"""Tests for the colour overlay: fixed calibrated scale, display mask, faint clean pixels."""
import numpy as np
import pytest
import torch

import rtg_anomaly.outputs.display as display
import rtg_anomaly.outputs.overlay as overlay
from rtg_anomaly.errors import InputError
from rtg_anomaly.scans.intensity import apply_window
from rtg_anomaly.outputs.overlay import (colour_lut, percentile_mask, percentile_mask_torch, render_overlay,
                                         render_overlay_torch)


def _scan(shape=(40, 50), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _grey_uint8(scan):
    return (scan * 255.0 + 0.5).astype(np.uint8)


def test_colour_lut():
    lut = colour_lut("jet")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0, 2] > 100 and lut[0, 0] == 0  # jet starts dark blue
    assert lut[-1, 0] > 100 and lut[-1, 2] == 0  # and ends dark red
    assert not np.array_equal(colour_lut("viridis"), lut)


def test_output_shape_dtype_and_mask():
    scan = _scan()
    anomaly_map = np.random.default_rng(1).uniform(0.0, 3.0, scan.shape).astype(np.float32)
    mask = np.zeros(scan.shape, dtype=bool)
    mask[10:30, 5:20] = True
    out = render_overlay(scan, anomaly_map, display_mask=mask)
    assert out.shape == scan.shape + (3,) and out.dtype == np.uint8
    grey = _grey_uint8(scan)
    outside = ~mask
    for c in range(3):
        assert np.array_equal(out[..., c][outside], grey[outside])  # untouched grey
    # inside, hot pixels are coloured (channels differ)
    hot = mask & (anomaly_map > 2.0)
    assert hot.any()
    assert np.all(out[hot].max(axis=1).astype(int) - out[hot].min(axis=1) > 20)


def test_empty_mask_gives_plain_grey():
    scan = _scan()
    out = render_overlay(scan, np.full(scan.shape, 5.0, np.float32), display_mask=np.zeros(scan.shape, bool))
    assert np.array_equal(out, np.repeat(_grey_uint8(scan)[..., None], 3, axis=2))


def test_fixed_colour_scale_not_min_max():
    scan = np.full((20, 20), 0.5, dtype=np.float32)
    quiet = np.full((20, 20), 1.0, dtype=np.float32)
    loud = np.full((20, 20), 9.0, dtype=np.float32)
    quiet[5, 5] = loud[5, 5] = 1.7
    quiet[0, 0] = 1.2  # different map ranges: 1.0..1.7 vs 1.7..9.0
    a, b = render_overlay(scan, quiet), render_overlay(scan, loud)
    assert np.array_equal(a[5, 5], b[5, 5])
    # a clean map stays cold: its maximum is not painted like an anomaly
    assert not np.array_equal(a[5, 5], b[0, 0])
    clean = np.full((20, 20), 1.0, dtype=np.float32)
    clean[3, 3] = 1.05
    c = render_overlay(scan, clean)
    assert np.abs(c.astype(int) - 128).max() <= 0.6 / 4 * 255 * 1.5  # nothing saturates


def test_clean_pixels_faint_and_uniform():
    scan = _scan()
    grey = scan * 255.0
    alpha = 0.6
    low_values = np.random.default_rng(2).uniform(0.0, 1.0, scan.shape).astype(np.float32)  # all <= low
    out = render_overlay(scan, low_values, color_range=(1.0, 2.0), alpha=alpha)
    deviation = np.abs(out.astype(np.float64) - grey[..., None])
    assert deviation.max() <= alpha / 4 * 255 + 1.0
    # how far below the low end does not matter
    assert np.array_equal(out, render_overlay(scan, np.zeros_like(low_values), alpha=alpha))
    # and the tint is weaker than for values at the top of the scale
    hot = render_overlay(scan, np.full(scan.shape, 2.0, np.float32), alpha=alpha)
    assert np.abs(hot.astype(np.float64) - grey[..., None]).mean() > 2 * deviation.mean()


def test_exact_blend_formula():
    scan = np.array([[0.2, 0.8]], dtype=np.float32)
    anomaly_map = np.array([[1.5, 3.0]], dtype=np.float32)
    lut = colour_lut("jet").astype(np.float64) / 255.0
    out = render_overlay(scan, anomaly_map, color_range=(1.0, 2.0), alpha=0.6)
    for x, level in enumerate([0.5, 1.0]):
        weight = 0.6 * (0.25 + 0.75 * level)
        colour = lut[int(level * 255 + 0.5)]
        expected = (scan[0, x] * (1 - weight) + colour * weight) * 255 + 0.5
        assert np.array_equal(out[0, x], np.floor(expected).astype(np.uint8))


def test_opacity_grows_with_value():
    scan = np.full((1, 11), 0.5, dtype=np.float32)
    values = np.linspace(1.0, 2.0, 11, dtype=np.float32)[None]
    out = render_overlay(scan, values).astype(np.float64)
    deviation = np.abs(out[0] - 127.5).sum(axis=1)
    assert deviation[-1] > deviation[0] and deviation[5] > deviation[0]


def test_chunking_does_not_change_result(monkeypatch):
    scan = _scan((23, 9))
    anomaly_map = np.random.default_rng(3).uniform(0.5, 2.5, scan.shape).astype(np.float32)
    mask = np.random.default_rng(4).random(scan.shape) > 0.3
    whole = render_overlay(scan, anomaly_map, display_mask=mask)
    monkeypatch.setattr(overlay, "_ROWS_PER_CHUNK", 4)
    assert np.array_equal(render_overlay(scan, anomaly_map, display_mask=mask), whole)


def test_raw_scan_with_window_equals_prewindowed():
    raw = np.random.default_rng(5).integers(1000, 40000, (30, 20), dtype=np.uint16)
    anomaly_map = np.random.default_rng(6).uniform(0.5, 2.5, raw.shape).astype(np.float32)
    window = (2000.0, 38000.0)
    expected = render_overlay(apply_window(raw, *window), anomaly_map)
    assert np.array_equal(render_overlay(raw, anomaly_map, window=window), expected)


def test_colour_scan_base():
    scan = np.zeros((6, 7, 3), dtype=np.float32)
    scan[..., 0] = 1.0  # red scan
    out = render_overlay(scan, np.zeros((6, 7), np.float32), display_mask=np.zeros((6, 7), bool))
    assert np.all(out[..., 0] == 255) and np.all(out[..., 1:] == 0)


@pytest.mark.parametrize("color_range", [(2.0, 1.0), (1.0, 1.0), (float("nan"), 2.0)])
def test_invalid_colour_range(color_range):
    with pytest.raises(InputError):
        render_overlay(_scan((4, 4)), np.ones((4, 4), np.float32), color_range=color_range)


@pytest.mark.parametrize("render", ["numpy", "torch"])
@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_zero_one_is_refused(render, alpha):
    """An opacity below 0 or above 1 extrapolates the blend: colours that mean nothing."""
    anomaly_map = np.ones((4, 4), np.float32)
    with pytest.raises(InputError, match="alpha must be between 0 and 1"):
        if render == "numpy":
            render_overlay(_scan((4, 4)), anomaly_map, alpha=alpha)
        else:
            render_overlay_torch(_scan((4, 4)), torch.from_numpy(anomaly_map), alpha=alpha)


@pytest.mark.parametrize("percentile", [50.0, 90.0, 99.0, 99.9])
def test_percentile_mask_fraction(percentile):
    anomaly_map = np.random.default_rng(7).random((200, 300), dtype=np.float32)
    mask = percentile_mask(anomaly_map, percentile)
    assert mask.dtype == bool and mask.shape == anomaly_map.shape
    assert abs(mask.mean() - (1 - percentile / 100)) < 0.002
    # the kept pixels are the highest ones
    assert anomaly_map[mask].min() >= anomaly_map[~mask].max()


def test_percentile_mask_extremes():
    anomaly_map = np.random.default_rng(8).random((10, 10), dtype=np.float32)
    assert percentile_mask(anomaly_map, 0.0).all()
    top = percentile_mask(anomaly_map, 100.0)
    assert top.sum() == 1 and anomaly_map[top][0] == anomaly_map.max()


@pytest.mark.parametrize("percentile", [-1.0, 100.5, float("nan")])
def test_percentile_mask_invalid(percentile):
    with pytest.raises(InputError):
        percentile_mask(np.zeros((4, 4), np.float32), percentile)


# --- the torch twins used on the GPU, run here on CPU tensors -------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_percentile_mask_torch_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    anomaly_map = (rng.random((int(rng.integers(1, 120)), int(rng.integers(1, 120)))) * 3).astype(np.float32)
    percentile = float(rng.choice([0.0, 100.0, rng.random() * 100]))
    mask = percentile_mask_torch(torch.from_numpy(anomaly_map), percentile)
    assert mask.dtype == torch.bool
    np.testing.assert_array_equal(mask.numpy(), percentile_mask(anomaly_map, percentile))


def test_percentile_mask_torch_subsamples_large_maps_like_numpy(monkeypatch):
    monkeypatch.setattr(overlay, "_PERCENTILE_SAMPLE", 1000)
    anomaly_map = np.random.default_rng(3).random((97, 103), dtype=np.float32)
    np.testing.assert_array_equal(percentile_mask_torch(torch.from_numpy(anomaly_map), 90.0).numpy(),
                                  percentile_mask(anomaly_map, 90.0))


@pytest.mark.parametrize("seed", range(10))
def test_percentile_mask_torch_within_a_region_equals_numpy(seed, monkeypatch):
    """The level taken over the region's pixels only (subsampled as numpy subsamples them), nothing outside
    it in the mask; an empty region gives an empty mask."""
    monkeypatch.setattr(overlay, "_PERCENTILE_SAMPLE", 500)
    rng = np.random.default_rng(seed)
    anomaly_map = (rng.random((int(rng.integers(1, 90)), int(rng.integers(1, 90)))) * 3).astype(np.float32)
    within = rng.random(anomaly_map.shape) < rng.choice([0.0, 0.3, 1.0])
    percentile = float(rng.choice([0.0, 100.0, rng.random() * 100]))
    mask = percentile_mask_torch(torch.from_numpy(anomaly_map), percentile, within=torch.from_numpy(within))
    expected = percentile_mask(anomaly_map, percentile, within=within)
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert not (mask.numpy() & ~within).any()


@pytest.mark.parametrize("kind", ["float grey", "raw uint16 with window", "colour"])
@pytest.mark.parametrize("masked", [False, True])
def test_render_overlay_torch_equals_numpy(kind, masked):
    rng = np.random.default_rng(7)
    anomaly_map = (rng.random((37, 45)) * 2.5).astype(np.float32)
    window = None
    if kind == "float grey":
        scan = _scan((37, 45))
    elif kind == "colour":
        scan = _scan((37, 45, 3))
    else:
        scan, window = (rng.random((37, 45)) * 60000).astype(np.uint16), (1000.0, 50000.0)
    mask = percentile_mask(anomaly_map, 60.0) if masked else None
    expected = render_overlay(scan, anomaly_map, mask, color_range=(1.0, 2.0), alpha=0.6, window=window)
    result = render_overlay_torch(scan, torch.from_numpy(anomaly_map), None if mask is None else torch.from_numpy(mask),
                                  color_range=(1.0, 2.0), alpha=0.6, window=window, rows_per_chunk=16)
    assert result.dtype == np.uint8 and result.shape == (37, 45, 3)
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("window", [None, (1000.0, 50000.0)])
def test_render_overlay_torch_takes_a_scan_already_on_the_device(window):
    """A float32 tensor scan renders as the numpy scan does, with or without a window, and is left unchanged."""
    rng = np.random.default_rng(8)
    anomaly_map = (rng.random((37, 45)) * 2.5).astype(np.float32)
    scan = (rng.random((37, 45)) * 60000).astype(np.float32) if window else _scan((37, 45))
    tensor = torch.from_numpy(scan.copy())
    result = render_overlay_torch(tensor, torch.from_numpy(anomaly_map), window=window, rows_per_chunk=16)
    np.testing.assert_array_equal(result, render_overlay(scan, anomaly_map, window=window))
    np.testing.assert_array_equal(tensor.numpy(), scan)


def test_render_overlay_torch_invalid_colour_range():
    with pytest.raises(InputError, match="color range"):
        render_overlay_torch(_scan((4, 4)), torch.ones(4, 4), color_range=(2.0, 1.0))


def test_render_overlay_parallel_chunks_equal_serial(monkeypatch):
    scan, anomaly_map = _scan((100, 30)), (np.random.default_rng(2).random((100, 30)) * 3).astype(np.float32)
    monkeypatch.setattr(overlay, "_ROWS_PER_CHUNK", 7)
    parallel = render_overlay(scan, anomaly_map)
    monkeypatch.setattr(display.os, "cpu_count", lambda: 1)  # run_in_row_chunks decides the workers
    np.testing.assert_array_equal(render_overlay(scan, anomaly_map), parallel)
