"""Tests for intensity windowing of raw detector values into [0, 1]."""
import numpy as np
import pytest

import torch

from rtg_anomaly.scans.intensity import (apply_window, apply_window_torch, normalise_intensity, to_device_float,
                                         window_limits)


def test_auto_uint8_uses_dtype_range():
    image = np.array([[10, 20], [30, 40]], dtype=np.uint8)  # narrow band: still the full 0..255
    assert window_limits(image) == (0.0, 255.0)
    out = normalise_intensity(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.allclose(out, image / 255.0)


def test_auto_uint16_uses_percentiles():
    rng = np.random.default_rng(0)
    image = rng.integers(20_000, 30_001, (100, 100), dtype=np.uint16)
    low, high = window_limits(image)
    expected = np.percentile(image, (0.5, 99.5))
    assert (low, high) == pytest.approx(tuple(expected))
    assert 20_000 < low < 20_200 and 29_800 < high < 30_000
    out = normalise_intensity(image)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    # about 0.5 % of pixels clipped at each end
    assert 0.002 < np.mean(out == 0.0) < 0.01 and 0.002 < np.mean(out == 1.0) < 0.01
    # a dtype window would have squeezed the scan into a narrow band
    dtype_out = normalise_intensity(image, window="dtype")
    assert dtype_out.max() - dtype_out.min() < 0.2


def test_auto_is_exposure_invariant_for_16bit():
    rng = np.random.default_rng(1)
    image = rng.integers(1000, 5000, (50, 60)).astype(np.uint16)
    brighter = (image.astype(np.int64) * 2 + 3000).astype(np.uint16)  # gain and offset change
    assert np.allclose(normalise_intensity(image), normalise_intensity(brighter), atol=1e-5)


def test_dtype_window():
    assert window_limits(np.zeros((2, 2), np.uint16), "dtype") == (0.0, 65535.0)
    assert window_limits(np.zeros((2, 2), np.uint8), "dtype") == (0.0, 255.0)
    assert window_limits(np.zeros((2, 2), np.float32), "dtype") == (0.0, 1.0)
    image = np.array([0, 65535, 32768], dtype=np.uint16)
    assert np.allclose(normalise_intensity(image, "dtype"), [0.0, 1.0, 32768 / 65535])


def test_float_auto_is_percentile_and_custom_percentiles():
    image = np.linspace(-3.0, 7.0, 1001).astype(np.float32)
    low, high = window_limits(image)  # float: not 8-bit -> percentile window
    assert low == pytest.approx(-2.95, abs=1e-3) and high == pytest.approx(6.95, abs=1e-3)
    low, high = window_limits(image, "percentile", percentiles=(10.0, 90.0))
    assert low == pytest.approx(-2.0, abs=1e-3) and high == pytest.approx(6.0, abs=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_constant_image_does_not_divide_by_zero(dtype):
    image = np.full((10, 10), 7, dtype=dtype)
    low, high = window_limits(image, "percentile")
    assert high > low
    out = normalise_intensity(image, "percentile")
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))


def test_apply_window_clips_and_keeps_shape():
    values = np.array([[-10.0, 0.0, 50.0], [100.0, 200.0, np.float64(1e9)]])
    out = apply_window(values, 0.0, 100.0)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert np.allclose(out, [[0.0, 0.0, 0.5], [1.0, 1.0, 1.0]])


def test_colour_image_shape_kept():
    image = np.random.default_rng(2).integers(0, 65535, (8, 9, 3), dtype=np.uint16)
    out = normalise_intensity(image)
    assert out.shape == (8, 9, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_large_scan_percentile_subsampled_but_close():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 60000, (1100, 1000), dtype=np.uint16)  # > 1 Mpx: subsampled
    low, high = window_limits(image)
    exact = np.percentile(image, (0.5, 99.5))
    assert abs(low - exact[0]) < 200 and abs(high - exact[1]) < 200


def test_non_contiguous_input():
    image = np.random.default_rng(4).integers(0, 65535, (40, 30), dtype=np.uint16)
    view = image.T[::2]
    assert np.allclose(normalise_intensity(view), normalise_intensity(np.ascontiguousarray(view)))


def test_unknown_window():
    with pytest.raises(ValueError):
        window_limits(np.zeros((2, 2), np.uint8), "linear")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("shape", [(30, 40), (12, 9, 3)])
def test_device_window_equals_numpy_window(dtype, shape):
    rng = np.random.default_rng(0)
    scale = 255 if dtype == np.uint8 else 30000
    values = (rng.random(shape) * scale).astype(dtype)
    if dtype == np.uint16:
        values[0, 0] = 65535  # above int16: must not wrap negative on the way to the device
    low, high = window_limits(values, "percentile")
    on_device = to_device_float(values, "cpu")
    assert on_device.dtype == torch.float32 and tuple(on_device.shape) == shape
    np.testing.assert_array_equal(on_device.numpy(), values.astype(np.float32))
    np.testing.assert_array_equal(apply_window_torch(on_device, low, high).numpy(), apply_window(values, low, high))
