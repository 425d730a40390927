"""Tests for rtg_anomaly.outputs.regions (small synthetic maps: fast)."""
import json

import numpy as np
import pytest

from rtg_anomaly.errors import InputError
from rtg_anomaly.outputs.regions import (DEFAULT_MIN_AREA, Region, default_thickness, draw_regions, find_regions,
                                         label_box)

THRESHOLD = 1.5


def blob_map():
    """(120, 200) float32 map at 1.0 with three squares and a one-pixel speck above THRESHOLD."""
    m = np.ones((120, 200), np.float32)
    m[10:30, 20:40] = 2.0          # A: 20x20, peak 4.0 at (x=25, y=12)
    m[12, 25] = 4.0
    m[50:60, 100:110] = 3.0        # B: 10x10, flat 3.0 (peak at its top-left)
    m[80:112, 150:190] = 2.5       # C: 40x32, flat 2.5
    m[5, 190] = 9.0                # speck: the highest value, one pixel
    m[70:80, 10:20] = THRESHOLD    # exactly at the threshold: not "above"
    return m


def test_blobs_bboxes_areas_peaks_means_and_order():
    regions = find_regions(blob_map(), THRESHOLD, min_area=2)
    assert [r.rank for r in regions] == [1, 2, 3]
    a, b, c = regions
    assert (a.x, a.y, a.width, a.height, a.area) == (20, 10, 20, 20, 400)
    assert a.peak == 4.0 and a.peak_xy == (25, 12)
    assert a.mean == pytest.approx((399 * 2.0 + 4.0) / 400)
    assert (b.bbox, b.area, b.peak, b.mean, b.peak_xy) == ((100, 50, 10, 10), 100, 3.0, 3.0, (100, 50))
    assert (c.bbox, c.area, c.peak, c.mean, c.peak_xy) == ((150, 80, 40, 32), 1280, 2.5, 2.5, (150, 80))
    assert all(isinstance(r, Region) for r in regions)


def test_speck_kept_without_min_area_and_ranked_first():
    regions = find_regions(blob_map(), THRESHOLD, min_area=0)
    assert len(regions) == 4
    speck = regions[0]
    assert (speck.bbox, speck.area, speck.peak, speck.peak_xy) == ((190, 5, 1, 1), 1, 9.0, (190, 5))
    assert [r.rank for r in regions] == [1, 2, 3, 4]


def test_default_min_area_drops_speck():
    assert DEFAULT_MIN_AREA == 64
    regions = find_regions(blob_map(), THRESHOLD)
    assert [r.bbox for r in regions] == [(20, 10, 20, 20), (100, 50, 10, 10), (150, 80, 40, 32)]
    # min_area is inclusive: a 100 px region survives min_area=100, not 101
    assert len(find_regions(blob_map(), THRESHOLD, min_area=100)) == 3
    assert len(find_regions(blob_map(), THRESHOLD, min_area=101)) == 2


def test_nothing_above_threshold_gives_empty_list():
    m = blob_map()
    assert find_regions(m, 100.0) == []
    assert find_regions(np.ones((30, 40), np.float32), 1.0, min_area=0) == []  # strictly above
    assert find_regions(np.full((8, 8), np.nan, np.float32), 0.0, min_area=0) == []


def test_diagonal_pixels_join_into_one_region():
    m = np.zeros((10, 10), np.float32)
    for i in range(5):
        m[2 + i, 3 + i] = 1.0 + i   # a diagonal line, touching only at corners
    regions = find_regions(m, 0.5, min_area=0)
    assert len(regions) == 1
    r = regions[0]
    assert (r.bbox, r.area, r.peak, r.peak_xy) == ((3, 2, 5, 5), 5, 5.0, (7, 6))
    assert r.mean == pytest.approx(3.0)


def test_ties_ranked_by_area_then_position():
    m = np.zeros((40, 40), np.float32)
    m[2:4, 2:4] = 2.0      # small, first in raster order
    m[20:30, 20:30] = 2.0  # same peak, larger
    m[2:4, 30:32] = 2.0    # same peak and area as the first, later in raster order
    regions = find_regions(m, 1.0, min_area=0)
    assert [r.bbox for r in regions] == [(20, 20, 10, 10), (2, 2, 2, 2), (30, 2, 2, 2)]


def test_max_regions():
    m = blob_map()
    assert [r.bbox for r in find_regions(m, THRESHOLD, max_regions=2)] == [(20, 10, 20, 20), (100, 50, 10, 10)]
    assert find_regions(m, THRESHOLD, max_regions=0) == []
    assert len(find_regions(m, THRESHOLD, max_regions=50)) == 3
    with pytest.raises(InputError):
        find_regions(m, THRESHOLD, max_regions=-1)


def test_bad_inputs():
    with pytest.raises(InputError):
        find_regions(np.ones((2, 3, 4), np.float32), 1.0)
    with pytest.raises(InputError):
        find_regions(np.ones((4, 4), np.float32), float("nan"))
    with pytest.raises(InputError):
        find_regions(np.ones((4, 4), np.float32), 1.0, min_area=-1)


def test_other_dtypes():
    m = (blob_map() * 10).astype(np.uint16)
    regions = find_regions(m, THRESHOLD * 10)
    assert [r.bbox for r in regions] == [(20, 10, 20, 20), (100, 50, 10, 10), (150, 80, 40, 32)]
    assert isinstance(regions[0].peak, float) and regions[0].peak == 40.0


def test_to_dict_is_plain_json():
    region = find_regions(blob_map(), THRESHOLD)[0]
    d = region.to_dict()
    assert d == {"rank": 1, "bbox": [20, 10, 20, 20], "area": 400, "peak": 4.0,
                 "mean": pytest.approx(2.005), "peak_xy": [25, 12]}
    assert all(type(v) is int for v in d["bbox"] + d["peak_xy"] + [d["rank"], d["area"]])
    assert type(d["peak"]) is float and type(d["mean"]) is float
    assert json.loads(json.dumps(d))["bbox"] == [20, 10, 20, 20]
    with pytest.raises(Exception):
        region.rank = 2  # frozen


def test_many_components_vectorised():
    m = np.zeros((600, 900), np.float32)
    m[1::4, 1::4] = 2.0            # 150 x 225 isolated 1-pixel components
    m[1::4, 1::4] += np.arange(150 * 225, dtype=np.float32).reshape(150, 225) * 1e-3
    regions = find_regions(m, 1.0, min_area=0)
    assert len(regions) == 150 * 225
    assert regions[0].peak_xy == (1 + 4 * 224, 1 + 4 * 149)
    peaks = np.array([r.peak for r in regions])
    assert np.all(np.diff(peaks) <= 0)


# ---------------------------------------------------------------- drawing

def _outline(shape, x, y, w, h, t):
    """bool mask of a rectangle outline of thickness t (cv2 grows a thick line by about t/2 + 1 on each side)."""
    mask = np.zeros(shape[:2], bool)
    half = 0 if t == 1 else (t + 1) // 2
    outer = np.zeros_like(mask)
    outer[max(y - half, 0):y + h + half, max(x - half, 0):x + w + half] = True
    inner = np.zeros_like(mask)
    inner[y + half + 1:y + h - half - 1, x + half + 1:x + w - half - 1] = True
    mask[outer & ~inner] = True
    return mask


def test_draw_regions_outline_only_and_input_untouched():
    img = np.full((120, 200, 3), 40, np.uint8)
    before = img.copy()
    region = Region(rank=1, x=60, y=50, width=40, height=30, area=1200, peak=3.0, mean=2.0, peak_xy=(70, 60))
    out = draw_regions(img, [region], colour=(255, 0, 0), thickness=1)
    assert np.array_equal(img, before)                       # input not modified
    assert out.shape == img.shape and out.dtype == np.uint8 and out is not img
    # every pixel of the 1-px outline is the colour
    ring = _outline(img.shape, 60, 50, 40, 30, 1)
    assert np.all(out[ring] == (255, 0, 0))
    # inside of the box and far away unchanged
    assert np.array_equal(out[52:78, 62:98], img[52:78, 62:98])
    assert np.array_equal(out[:, 110:], img[:, 110:])
    assert np.array_equal(out[90:], img[90:])
    # the label sits above the box's top-left corner
    left, top, right, bottom = label_box(region, img.shape, 1)
    assert bottom < 50 and left == 60
    changed = np.any(out != img, axis=2)
    assert changed[top:bottom + 1, left:right + 1].any()
    assert not changed[~ring & ~_box_mask(img.shape, label_box(region, img.shape, 1))].any()


def _box_mask(shape, box):
    left, top, right, bottom = box
    mask = np.zeros(shape[:2], bool)
    mask[top:bottom + 1, left:right + 1] = True
    return mask


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_rank_label_inside_image_at_corners(corner):
    h, w = 90, 140
    img = np.zeros((h, w, 3), np.uint8)
    if corner == "top-left":
        region = Region(rank=7, x=0, y=0, width=20, height=15, area=300, peak=2.0, mean=2.0, peak_xy=(0, 0))
    else:
        region = Region(rank=7, x=w - 3, y=h - 3, width=3, height=3, area=9, peak=2.0, mean=2.0, peak_xy=(w - 1, h - 1))
    for thickness in (1, 3):
        out = draw_regions(img, [region], thickness=thickness)
        left, top, right, bottom = label_box(region, img.shape, thickness)
        assert 0 <= left <= right < w and 0 <= top <= bottom < h
        text = np.any(out != 0, axis=2) & ~_outline(img.shape, *region.bbox, thickness)
        assert text.sum() >= 10                                   # the digit was drawn, visibly
        assert text[top:bottom + 1, left:right + 1].sum() >= 10


def test_draw_regions_defaults_and_validation():
    img = np.zeros((2000, 3000, 3), np.uint8)
    assert default_thickness(img.shape) == 5
    assert default_thickness((100, 100, 3)) == 1
    region = Region(rank=1, x=100, y=200, width=300, height=300, area=90000, peak=2.0, mean=2.0, peak_xy=(150, 250))
    out = draw_regions(img, [region])
    assert np.all(out[200:300, 100] == 255)                  # a default-thickness (5 px) line
    assert np.all(out[250, 98:103] == 255)
    assert not out[300:450, 150:350].any()
    assert np.array_equal(draw_regions(img[:10, :10], []), img[:10, :10])
    with pytest.raises(InputError):
        draw_regions(np.zeros((10, 10), np.uint8), [region])
    with pytest.raises(InputError):
        draw_regions(np.zeros((10, 10, 3), np.float32), [region])
