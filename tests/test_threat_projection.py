"""Synthetic objects projected into clean scans: deterministic, physical, exact masks."""

from __future__ import annotations

import numpy as np
import pytest

from rtg_anomaly.scans.synthetic import make_vehicle_scan
from rtg_anomaly.scans.threat_projection import SHAPES, ProjectionSettings, apply_attenuation, project_object


@pytest.fixture(scope="module")
def scan16() -> np.ndarray:
    return make_vehicle_scan(seed=5, height=160, length=400)[0]


def test_vehicle_scan_is_16_bit(scan16):
    assert scan16.dtype == np.uint16 and scan16.ndim == 2


@pytest.mark.parametrize("shape", SHAPES)
def test_same_seed_same_object(scan16, shape):
    settings = ProjectionSettings(shapes=(shape,))
    first = project_object(scan16, np.random.default_rng(7), settings)
    second = project_object(scan16, np.random.default_rng(7), settings)
    assert np.array_equal(first.scan, second.scan) and np.array_equal(first.mask, second.mask)
    third = project_object(scan16, np.random.default_rng(8), settings)
    assert not np.array_equal(first.mask, third.mask)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_mask_is_exactly_where_the_scan_changed_and_the_factor_is_beer_lambert(scan16, shape, seed):
    settings = ProjectionSettings(shapes=(shape,))
    obj = project_object(scan16, np.random.default_rng(seed), settings)
    assert obj.scan.dtype == scan16.dtype and obj.scan.shape == scan16.shape and obj.shape == shape
    # Outside the footprint every pixel keeps its exact value.
    assert np.array_equal(obj.scan[~obj.mask], scan16[~obj.mask])
    assert obj.mask.any() and np.array_equal(obj.mask, obj.thickness > 0)
    assert obj.thickness.min() >= 0 and obj.thickness.max() <= 1
    # Inside: I' = I * exp(-mu t), to the rounding of 16-bit counts (and clipped at the top of the range).
    inside = obj.mask & (scan16 > 100)
    expected = scan16[inside] * np.exp(-obj.attenuation * obj.thickness[inside].astype(np.float64))
    assert np.abs(obj.scan[inside].astype(np.float64) - np.minimum(expected, 65535)).max() <= 0.5 + 1e-9
    # An added object darkens (less transmission); a void brightens.
    diff = obj.scan[obj.mask].astype(np.int64) - scan16[obj.mask]
    assert (diff <= 0).all() if obj.attenuation > 0 else (diff >= 0).all()


def test_sizes_follow_the_settings(scan16):
    settings = ProjectionSettings(min_size=0.1, max_size=0.2, shapes=("rectangle",))
    rng = np.random.default_rng(0)
    for _ in range(10):
        obj = project_object(scan16, rng, settings)
        rows, cols = np.nonzero(obj.mask)
        extent = max(np.ptp(rows), np.ptp(cols)) + 1
        assert extent <= 0.2 * 160 + 2
        assert 0.03 <= abs(obj.attenuation) <= 0.3


def test_eight_bit_rgb_and_float_scans():
    rng = np.random.default_rng(1)
    grey = rng.integers(50, 250, size=(64, 80), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    obj = project_object(rgb, np.random.default_rng(3))
    assert obj.scan.dtype == np.uint8 and obj.scan.shape == rgb.shape
    # Every channel gets the same factor: a grey RGB scan stays grey.
    assert np.array_equal(obj.scan[..., 0], obj.scan[..., 2])
    floats = grey.astype(np.float32) / 255
    fobj = project_object(floats, np.random.default_rng(3))
    assert fobj.scan.dtype == np.float32
    assert np.array_equal(fobj.mask, project_object(grey, np.random.default_rng(3)).mask)


def test_attenuation_saturates_instead_of_wrapping():
    scan = np.full((20, 20), 65000, np.uint16)
    thickness = np.zeros((20, 20), np.float32)
    thickness[5:10, 5:10] = 1.0
    out = apply_attenuation(scan, thickness, -1.0)  # a void: brighter than the dtype allows
    assert out[7, 7] == 65535 and out[0, 0] == 65000


def test_tiny_scans_still_get_an_object():
    crop = np.full((32, 32), 120, np.uint8)
    obj = project_object(crop, np.random.default_rng(0), ProjectionSettings(min_pixels=6))
    assert obj.mask.sum() >= 1


@pytest.mark.parametrize("bad", [dict(min_size=0), dict(min_size=0.3, max_size=0.2), dict(min_attenuation=0),
                                 dict(void_share=2), dict(shapes=("star",)), dict(min_pixels=1)])
def test_settings_are_checked(bad):
    with pytest.raises(ValueError):
        ProjectionSettings(**bad)
