"""Suspicious regions of an anomaly map: connected blobs above the pixel threshold.

An operator looks at a handful of boxes, not at a heatmap of 50 million
pixels. :func:`find_regions` turns a calibrated anomaly map and its pixel
threshold (``result.pixel_threshold``) into a ranked list of :class:`Region`
boxes, and :func:`draw_regions` draws those boxes with their rank on an
overlay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

DEFAULT_MIN_AREA = 64
"""Default smallest region kept, in image pixels (an 8 x 8 px square).

The anomaly map is computed on backbone patches (14 px or more of the scan
each) and then smoothed and upsampled, so a real finding covers at least a
few hundred pixels; what is smaller than 64 px is a sliver at the edge of the
threshold or noise, and listing it would only bury the real boxes.
Pass ``min_area=0`` (or 1) to keep every component."""


@dataclass(frozen=True)
class Region:
    """One connected area of the anomaly map above the pixel threshold.

    rank: 1 = most suspicious (highest peak), 2 = next, ...
    x, y: top-left corner of the bounding box in image pixels (x = column,
        y = row, origin at the top-left of the scan).
    width, height: bounding box size in pixels (the box covers columns
        ``x .. x + width - 1`` and rows ``y .. y + height - 1``).
    area: number of pixels of the region (above the threshold and
        8-connected), at most ``width * height``.
    peak: largest anomaly-map value inside the region (calibrated units,
        1.0 = typical clean level).
    mean: mean anomaly-map value over the region's pixels (calibrated units).
    peak_xy: (x, y) pixel of the peak (the first in raster order on ties).
    """

    rank: int
    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float
    mean: float
    peak_xy: tuple[int, int]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) in image pixels."""
        return (self.x, self.y, self.width, self.height)

    def to_dict(self) -> dict:
        """JSON-ready dict of plain Python ints and floats; bbox as ``[x, y, width, height]``."""
        return {
            "rank": int(self.rank),
            "bbox": [int(self.x), int(self.y), int(self.width), int(self.height)],
            "area": int(self.area),
            "peak": float(self.peak),
            "mean": float(self.mean),
            "peak_xy": [int(self.peak_xy[0]), int(self.peak_xy[1])],
        }


def find_regions(anomaly_map: np.ndarray, threshold: float, min_area: int = DEFAULT_MIN_AREA,
                 max_regions: int | None = None) -> list[Region]:
    """Connected regions of ``anomaly_map`` strictly above ``threshold``, most suspicious first.

    anomaly_map: (H, W) real array (float32 as the detector gives it), in
        calibrated units (1.0 = typical clean level). NaN pixels count as
        below the threshold.
    threshold: calibrated level; pixels with a value ``> threshold`` belong
        to regions (normally ``result.pixel_threshold``).
    min_area: components with fewer pixels than this are dropped (0 or 1
        keeps all). Default :data:`DEFAULT_MIN_AREA` (64 px).
    max_regions: keep at most this many regions after ranking (None = all).

    Components use 8-connectivity (diagonal neighbours join). Ranking: peak
    value descending, then area descending, then the peak's raster position.
    Per-component peak, mean and peak position are computed in one vectorised
    pass over the labelled pixels, so a 4000 x 12000 map with thousands of
    components takes well under a few seconds.

    Returns a list of :class:`Region` with ranks 1..n.
    """
    import cv2

    values = np.asarray(anomaly_map)
    if values.ndim != 2 or values.size == 0:
        raise InputError(f"anomaly map must be a non-empty 2-D array (H, W), got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise InputError(f"anomaly map must hold real numbers, got dtype {values.dtype}")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise InputError("region threshold must be a number, got NaN")
    min_area = int(min_area)
    if min_area < 0:
        raise InputError(f"min_area must be >= 0, got {min_area}")
    if max_regions is not None:
        max_regions = int(max_regions)
        if max_regions < 0:
            raise InputError(f"max_regions must be >= 0 or None, got {max_regions}")
        if max_regions == 0:
            return []

    mask = (values > threshold).view(np.uint8)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    if n_labels <= 1:
        return []

    # Foreground pixels only: their flat index (raster order), label and value.
    flat_index = np.flatnonzero(mask)
    pixel_label = labels.reshape(-1)[flat_index]
    pixel_value = values.reshape(-1)[flat_index]
    del labels

    if not np.issubdtype(pixel_value.dtype, np.floating):
        pixel_value = pixel_value.astype(np.float64)  # integer maps: -inf start value below
    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    peak = np.full(n_labels, -np.inf, dtype=pixel_value.dtype)
    np.maximum.at(peak, pixel_label, pixel_value)
    total = np.bincount(pixel_label, weights=pixel_value, minlength=n_labels)  # float64 sums
    # Peak position: the first pixel in raster order that equals its component's peak.
    at_peak = pixel_value == peak[pixel_label]
    peak_index = np.full(n_labels, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(peak_index, pixel_label[at_peak], flat_index[at_peak].astype(np.int64))

    keep = np.flatnonzero(area >= max(min_area, 1))
    keep = keep[keep != 0]  # label 0 is the background
    if keep.size == 0:
        return []
    order = np.lexsort((peak_index[keep], -area[keep], -peak[keep]))
    keep = keep[order]
    if max_regions is not None:
        keep = keep[:max_regions]

    width = values.shape[1]
    regions = []
    for rank, label in enumerate(keep.tolist(), start=1):
        py, px = divmod(int(peak_index[label]), width)
        regions.append(Region(
            rank=rank,
            x=int(stats[label, cv2.CC_STAT_LEFT]), y=int(stats[label, cv2.CC_STAT_TOP]),
            width=int(stats[label, cv2.CC_STAT_WIDTH]), height=int(stats[label, cv2.CC_STAT_HEIGHT]),
            area=int(area[label]), peak=float(peak[label]), mean=float(total[label] / area[label]),
            peak_xy=(px, py),
        ))
    return regions


def default_thickness(shape: tuple[int, ...]) -> int:
    """Box line thickness in pixels for an image of ``shape`` (H, W[, C]): about 1/400 of the short side, >= 1."""
    return max(1, int(round(min(shape[0], shape[1]) / 400.0)))


def _font_metrics(thickness: int) -> tuple[float, int]:
    """(font scale, text stroke) of the rank label for a box line ``thickness`` px wide."""
    scale = max(0.4, 0.45 * thickness)
    return scale, max(1, int(round(scale * 1.5)))


def label_box(region: Region, image_shape: tuple[int, ...], thickness: int) -> tuple[int, int, int, int]:
    """Where the rank label of ``region`` goes: (left, top, right, bottom) pixels of the text, inclusive.

    Above the box's top-left corner when there is room, otherwise just inside
    the box under its top edge; always shifted to lie fully in the image.
    """
    import cv2

    height, width = image_shape[0], image_shape[1]
    scale, stroke = _font_metrics(thickness)
    (text_w, text_h), baseline = cv2.getTextSize(str(region.rank), cv2.FONT_HERSHEY_SIMPLEX, scale, stroke)
    box_h = text_h + baseline + stroke  # stroke: room for the thick glyph edges
    box_w = text_w + stroke
    gap = thickness + 1
    top = region.y - gap - box_h
    if top < 0:
        top = region.y + gap
    left = region.x
    left = min(max(left, 0), max(width - box_w, 0))
    top = min(max(top, 0), max(height - box_h, 0))
    return left, top, min(left + box_w, width) - 1, min(top + box_h, height) - 1


def draw_regions(overlay_rgb: np.ndarray, regions: list[Region], colour: tuple[int, int, int] = (255, 255, 255),
                 thickness: int | None = None) -> np.ndarray:
    """Rectangles and rank numbers of ``regions`` drawn on a copy of ``overlay_rgb``.

    overlay_rgb: (H, W, 3) uint8 image (e.g. the heatmap overlay); not modified.
    regions: as returned by :func:`find_regions` (boxes in the same pixels).
    colour: (R, G, B) 0..255 of the boxes and labels (channel order of the
        image). Labels get a thin contrasting halo so they stay legible.
    thickness: box line width in pixels (None: scaled to the image, see
        :func:`default_thickness`).

    Returns a new (H, W, 3) uint8 array.
    """
    import cv2

    image = np.asarray(overlay_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"draw_regions needs a (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    out = np.array(image, dtype=np.uint8, order="C", copy=True)
    if thickness is None:
        thickness = default_thickness(out.shape)
    thickness = int(thickness)
    if thickness < 1:
        raise InputError(f"thickness must be >= 1, got {thickness}")
    colour = tuple(int(c) for c in colour)
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise InputError(f"colour must be three values 0..255, got {colour}")
    halo = (0, 0, 0) if sum(colour) >= 3 * 128 else (255, 255, 255)
    scale, stroke = _font_metrics(thickness)

    for region in regions:
        x0, y0 = int(region.x), int(region.y)
        x1, y1 = x0 + int(region.width) - 1, y0 + int(region.height) - 1
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness, lineType=cv2.LINE_8)
        left, top, _, bottom = label_box(region, out.shape, thickness)
        (_, _), baseline = cv2.getTextSize(str(region.rank), cv2.FONT_HERSHEY_SIMPLEX, scale, stroke)
        origin = (left + stroke // 2, bottom - baseline - stroke // 2)
        text = str(region.rank)
        if stroke > 1:
            cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, halo, stroke + 2, cv2.LINE_AA)
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, stroke, cv2.LINE_AA)
    return out
