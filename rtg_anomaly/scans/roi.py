"""Region of interest: which pixels of a scan are the object, and which patches of the tile grid count.

In a transmission X-ray, open air lets the beam through untouched: it is the brightest part of the scan,
a flat near-saturated plateau around (and sometimes between the parts of) the object. ``auto_roi`` finds
that plateau by intensity and morphology and keeps everything else; ``load_roi_mask`` reads a fixed mask
(a lane's geometry). Patches outside the ROI are kept out of what a method learns and out of the score
(``patch_inside_fraction``, ``PATCH_INSIDE_FRACTION``).

No torch import: the command line checks a mask file before anything heavy loads.
"""

from __future__ import annotations

import os
import numpy as np

from ..errors import InputError

ROI_MODES = ("off", "auto", "file")
PATCH_INSIDE_FRACTION = 0.5
"""A patch counts when at least this share of its footprint (its cell of the tile, in scan pixels) lies
inside the ROI: the patch then mostly sees the object."""

# auto_roi works on a copy whose longer side is at most this many pixels: the plateau is large by nature.
_WORK_SIDE = 512
_BINS = 256
_PEAK_FROM = 0.75      # the open-air peak lies in the brightest quarter of the scan's range
_FOOT_HEIGHT = 0.1     # the peak's foot: where the histogram falls to this share of the peak's height
_MAX_PEAK_WIDTH = 0.1  # open air is flat: its peak's foot lies within this share of the range
_MIN_BACKGROUND = 0.02  # a bright area under 2 % of the scan is no background: mask nothing
_MAX_BACKGROUND = 0.95  # nor one that leaves under 5 % of the scan as the object
_MIN_SIDE = 64         # a scan smaller than this a side is a crop: too few pixels to tell air from object
_MIN_COMPONENT = 0.01  # bright areas under 1 % of the scan enclosed by the object stay in the ROI (holes)


def auto_roi(image: np.ndarray) -> np.ndarray | None:
    """The object against open air: bool (H, W), True inside; None when the scan shows no clear open air.

    image: (H, W) or (H, W, 3) raw values of any dtype (8-bit, 16-bit, float); RGB is averaged.

    The rule, on a copy downsampled to at most 512 px a side and scaled to [0, 1] between its 0.5th and
    99.9th percentiles: the open-air level is the highest peak of the (smoothed) histogram within the
    brightest quarter; open air is every pixel above the peak's foot on its dark side. The bright area is then
    opened (specks of bright object texture go), bright components under 1 % of the scan are given back to
    the object (holes), and the ROI is dilated by 1 % of the scan's side so the object's edge stays inside.
    No background is found (None) when the scan is under 64 px a side, its range is flat, the bright peak is
    not narrow (its dark-side foot, where the histogram falls to a tenth of the peak, lies more than a tenth
    of the range below it: open air is flat, a bright object such as a weld seam is not), or open air would
    cover under 2 % or over 95 % of the scan.
    """
    import cv2

    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2, dtype=np.float32)
    height, width = grey.shape
    if min(height, width) < _MIN_SIDE:
        return None
    scale = min(1.0, _WORK_SIDE / max(height, width))
    small = grey if scale == 1.0 else cv2.resize(
        grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    low, high = np.percentile(small, [0.5, 99.9])
    if not high - low > 1e-6 * max(1.0, abs(float(high))):
        return None
    level = np.clip((small - low) / (high - low), 0.0, 1.0)
    # Integer scans over a narrow range fill only every few bins: one bin per grey level at most.
    bins = _BINS if grey.dtype.kind == "f" and np.asarray(image).dtype.kind == "f" else int(
        np.clip(round(float(high - low)) + 1, 16, _BINS))
    threshold = _open_air_level(level, bins)
    if threshold is None:
        return None
    bright = (level >= threshold).astype(np.uint8)
    side = min(small.shape)
    radius = max(1, round(0.01 * side))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, disc)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    large = np.zeros(count, dtype=bool)
    large[1:] = stats[1:, cv2.CC_STAT_AREA] >= _MIN_COMPONENT * bright.size
    inside = (~large[labels]).astype(np.uint8)
    inside = cv2.dilate(inside, disc)
    background = 1.0 - np.count_nonzero(inside) / inside.size
    if not _MIN_BACKGROUND <= background <= _MAX_BACKGROUND:
        return None
    if scale != 1.0:
        inside = cv2.resize(inside, (width, height), interpolation=cv2.INTER_NEAREST)
    return inside.astype(bool)


def _open_air_level(level: np.ndarray, bins: int = _BINS) -> float | None:
    """The [0, 1] level above which pixels are open air, or None without a narrow bright peak.

    level: the downsampled scan scaled to [0, 1]; bins: histogram bins over [0, 1]."""
    counts, _ = np.histogram(level, bins=bins, range=(0.0, 1.0))
    smooth = np.convolve(counts.astype(np.float64), _gaussian_kernel(1.0), mode="same")
    first = int(_PEAK_FROM * bins)
    peak = first + int(np.argmax(smooth[first:]))
    if smooth[peak] <= 0.0:
        return None
    low_enough = np.flatnonzero(smooth[:peak] <= _FOOT_HEIGHT * smooth[peak])
    if low_enough.size == 0:
        return None
    foot = int(low_enough[-1])  # the peak's foot on its dark side
    if (peak - foot) / bins > _MAX_PEAK_WIDTH:
        return None
    return (foot + 1) / bins


def _gaussian_kernel(sigma: float) -> np.ndarray:
    offsets = np.arange(-3 * int(np.ceil(sigma)), 3 * int(np.ceil(sigma)) + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def load_roi_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image (any format ``io.load_image`` reads; nonzero = inside, RGB: any channel nonzero) as
    bool (H, W). InputError when it cannot be read or has nothing inside."""
    from .io import load_image

    mask = np.asarray(load_image(path))
    mask = mask.any(axis=2) if mask.ndim == 3 else mask != 0
    if not mask.any():
        raise InputError(f"ROI mask {path} has no pixel inside (all zero)")
    return mask


def fixed_roi(mask: np.ndarray, shape: tuple[int, int], source: str = "the ROI mask") -> np.ndarray:
    """``mask`` (bool (H, W)) for a scan of ``shape`` (height, width); InputError when the sizes differ."""
    if tuple(mask.shape[:2]) != tuple(shape[:2]):
        raise InputError(f"{source} is {mask.shape[1]}x{mask.shape[0]} px but the scan is "
                         f"{shape[1]}x{shape[0]} px (width x height); a ROI mask must be the scan's size")
    return mask


def patch_inside_fraction(roi: np.ndarray, origins: np.ndarray, tile_size: int,
                          grid: tuple[int, int]) -> np.ndarray:
    """float32 (B, h, w): share of each patch's footprint inside ``roi`` (bool (H, W)).

    origins: int (B, 2) tile corners (y, x) in the padded scan; a patch of an h x w grid covers
    ``tile_size / h`` x ``tile_size / w`` scan pixels (rounded to whole pixels), and pixels in the padding
    count as outside.
    """
    height, width = roi.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(roi, axis=0, dtype=np.int64), axis=1)
    h, w = grid
    edges_y = np.round(np.arange(h + 1) * (tile_size / h)).astype(np.int64)
    edges_x = np.round(np.arange(w + 1) * (tile_size / w)).astype(np.int64)
    y0 = origins[:, 0, None] + edges_y[None, :-1]  # (B, h)
    y1 = origins[:, 0, None] + edges_y[None, 1:]
    x0 = origins[:, 1, None] + edges_x[None, :-1]  # (B, w)
    x1 = origins[:, 1, None] + edges_x[None, 1:]
    area = ((y1 - y0)[:, :, None] * (x1 - x0)[:, None, :]).astype(np.float32)
    y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    inside = (integral[y1[:, :, None], x1[:, None, :]] - integral[y0[:, :, None], x1[:, None, :]]
              - integral[y1[:, :, None], x0[:, None, :]] + integral[y0[:, :, None], x0[:, None, :]])
    return inside.astype(np.float32) / np.maximum(area, 1.0)
