"""Tests for blending per-tile patch maps into one seamless map (small maps only)."""
import cv2
import numpy as np
import pytest
import torch

from rtg_anomaly.pipeline.stitching import (DeviceMapStitcher, MapStitcher, _reflect_indices, blend_window,
                                            gaussian_smooth, gaussian_smooth_torch, upsample_patch_map)
from rtg_anomaly.scans.tiling import tile_grid

# (height, width, tile, stride, patch size in px); sizes are >= tile (the detector pads smaller scans)
GRIDS = [
    (64, 64, 64, 48, 8),
    (200, 300, 64, 48, 8),
    (130, 250, 64, 64, 8),     # no overlap
    (256, 256, 128, 96, 16),
    (100, 333, 64, 32, 8),     # irregular last tile
    (97, 65, 32, 7, 4),        # heavy overlap
]


def _stitch(height, width, tile, stride, patch, fn):
    stitcher = MapStitcher(height, width, tile, stride)
    n = tile // patch
    for y0, x0 in tile_grid(height, width, tile, stride):
        ys = y0 + (np.arange(n) + 0.5) * patch - 0.5  # pixel coordinates of the patch centres
        xs = x0 + (np.arange(n) + 0.5) * patch - 0.5
        stitcher.add(int(y0), int(x0), fn(ys[:, None], xs[None, :]).astype(np.float32))
    return stitcher.result()


@pytest.mark.parametrize("height,width,tile,stride,patch", GRIDS)
@pytest.mark.parametrize("value", [0.0, 1.0, 3.7])
def test_constant_map_stays_constant(height, width, tile, stride, patch, value):
    result = _stitch(height, width, tile, stride, patch, lambda y, x: np.full(np.broadcast(y, x).shape, value))
    assert result.shape == (height, width) and result.dtype == np.float32
    assert np.allclose(result, value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("height,width,tile,stride,patch", [g for g in GRIDS if g[3] < g[2]])
def test_linear_ramp_reproduced_without_seams(height, width, tile, stride, patch):
    a, b, c = 0.01, 0.004, 1.0

    def ramp(y, x):
        return a * y + b * x + c

    result = _stitch(height, width, tile, stride, patch, ramp)
    yy, xx = np.mgrid[:height, :width]
    error = np.abs(result - ramp(yy, xx))
    m = patch // 2  # bilinear upsampling cannot extrapolate beyond the outer patch centres
    assert error.max() <= m * (a + b) + 1e-4
    assert error[m:-m, m:-m].max() < 0.01
    # no jump at tile borders: neighbouring pixels differ by about the gradient only
    # (without blending the clamped tile edges would jump by ~patch * gradient)
    assert np.abs(np.diff(result, axis=0)).max() <= 1.5 * a
    assert np.abs(np.diff(result, axis=1)).max() <= 1.5 * b


def test_overlapping_tiles_are_averaged_not_summed():
    # two tiles along x overlap by 32 px; left tile says 1, right tile says 3
    stitcher = MapStitcher(64, 96, 64, 32)
    stitcher.add(0, 0, np.full((4, 4), 1.0, np.float32))
    stitcher.add(0, 32, np.full((4, 4), 3.0, np.float32))
    result = stitcher.result()
    assert np.allclose(result[:, :32], 1.0, atol=1e-5)
    assert np.allclose(result[:, 64:], 3.0, atol=1e-5)
    overlap = result[10, 32:64]
    assert np.all(overlap >= 1.0 - 1e-5) and np.all(overlap <= 3.0 + 1e-5)
    assert np.all(np.diff(overlap) >= -1e-6)  # cross-fades monotonically
    assert abs(overlap[15] + overlap[16] - 4.0) < 1e-4  # symmetric cross-fade


@pytest.mark.parametrize("tile,ramp", [(64, 16), (64, 1), (32, 0), (16, 8), (128, 32), (10, 50)])
def test_blend_window_properties(tile, ramp):
    w = blend_window(tile, ramp)
    assert w.shape == (tile,) and w.dtype == np.float64
    assert np.all(w > 0) and np.all(w <= 1.0)
    assert np.allclose(w, w[::-1])  # symmetric
    half = w[: (tile + 1) // 2]
    assert np.all(np.diff(half) >= 0)  # rises towards the middle
    r = max(ramp, 1)
    if tile >= 2 * r:
        assert np.all(w[r:-r] == 1.0)  # flat middle
        assert np.allclose(w[:r], (np.arange(r) + 0.5) / r)  # linear ramp
    assert w[0] == pytest.approx(max(0.5 / r, 1e-3))  # edge pixel: half a pixel from the edge


def test_blend_window_edges_small_but_positive():
    w = blend_window(64, 16)
    assert w[0] == pytest.approx(0.5 / 16)
    assert w[31] == 1.0 and w[32] == 1.0


def test_upsample_patch_map_centres_aligned():
    patch_map = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float64)
    up = upsample_patch_map(patch_map, 8)
    assert up.shape == (8, 8) and up.dtype == np.float32
    assert np.allclose(up[:, :2], 0.0) and np.allclose(up[:, -2:], 1.0)  # clamped beyond the centres
    assert np.allclose(up[:, ::-1] + up, 1.0)  # symmetric about the middle
    assert np.allclose(up, up[0])  # constant along rows


@pytest.mark.parametrize("sigma", [0, 0.0, -1.0])
def test_gaussian_smooth_zero_sigma_is_identity(sigma):
    anomaly_map = np.random.default_rng(0).random((20, 30), dtype=np.float32)
    out = gaussian_smooth(anomaly_map, sigma)
    assert out is anomaly_map


@pytest.mark.parametrize("sigma", [0.5, 2.0, 7.0])
def test_gaussian_smooth_constant_and_shape(sigma):
    constant = np.full((40, 25), 2.5, dtype=np.float32)
    out = gaussian_smooth(constant.copy(), sigma)
    assert out.shape == constant.shape and out.dtype == np.float32
    assert np.allclose(out, 2.5, atol=1e-5)
    assert out.mean() == pytest.approx(2.5, abs=1e-5)


def test_gaussian_smooth_works_in_place_on_contiguous_float32():
    anomaly_map = np.random.default_rng(2).random((30, 20), dtype=np.float32)
    expected = cv2.GaussianBlur(anomaly_map.copy(), (0, 0), sigmaX=1.5, sigmaY=1.5, borderType=cv2.BORDER_REFLECT)
    out = gaussian_smooth(anomaly_map, 1.5)
    assert np.allclose(out, expected, atol=1e-6)
    assert np.shares_memory(out, anomaly_map)  # documented: no second full-size array


def test_gaussian_smooth_blurs_impulse_symmetrically():
    impulse = np.zeros((41, 41), dtype=np.float32)
    impulse[20, 20] = 1.0
    out = gaussian_smooth(impulse, 2.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-4)  # mass preserved away from the border
    assert out[20, 20] == out.max() and out[20, 20] < 0.1
    assert np.allclose(out, out[::-1]) and np.allclose(out, out.T)
    noise = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    noise_std = float(noise.std())
    assert gaussian_smooth(noise, 2.0).std() < 0.5 * noise_std


# --- the torch twins used on the GPU, run here on CPU tensors -------------------------------------------
@pytest.mark.parametrize("height,width,tile,stride,patch", GRIDS)
def test_device_stitcher_matches_cpu_stitcher(height, width, tile, stride, patch):
    origins = tile_grid(height, width, tile, stride)
    maps = np.random.default_rng(height).random((len(origins), tile // patch, tile // patch), dtype=np.float32)
    cpu = MapStitcher(height, width, tile, stride)
    cpu.add_batch(origins, maps)
    device = DeviceMapStitcher(height, width, tile, stride, "cpu")
    y, x = origins[0]
    device.add(int(y), int(x), maps[0])  # one tile, as MapStitcher.add
    device.add_batch(origins[1:], torch.from_numpy(maps[1:]))
    result = device.result()
    assert isinstance(result, torch.Tensor) and result.dtype == torch.float32 and result.shape == (height, width)
    np.testing.assert_allclose(result.numpy(), cpu.result(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(200, 300), (64, 64), (5, 40)])
@pytest.mark.parametrize("sigma", [0.0, 0.5, 2.0, 8.0, 25.0])  # 25 px: the border pad exceeds small maps
def test_gaussian_smooth_torch_matches_opencv(shape, sigma):
    anomaly_map = np.random.default_rng(1).random(shape, dtype=np.float32)
    expected = gaussian_smooth(anomaly_map.copy(), sigma)
    result = gaussian_smooth_torch(torch.from_numpy(anomaly_map), sigma)
    assert result.shape == shape and result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("length,pad", [(10, 3), (4, 9), (1, 2)])
def test_reflect_indices_follow_opencv_border_reflect(length, pad):
    values = np.arange(length, dtype=np.float32)[None, :]
    expected = cv2.copyMakeBorder(values, 0, 0, pad, pad, cv2.BORDER_REFLECT)[0]
    np.testing.assert_array_equal(values[0, _reflect_indices(length, pad)], expected)
