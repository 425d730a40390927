"""Synthetic anomalies for clean scans: objects projected into the scan as an X-ray sees them.

Screening systems test their operators with *threat image projection*: an object's X-ray image is
merged into a clean scan. We do the same to make labelled anomalies out of clean scans alone, so that
``fit --select auto`` can compare configurations without a single real anomaly.

Physics: the detector measures transmitted intensity ``I = I0 * exp(-sum mu * t)``. An object of
attenuation coefficient ``mu`` and thickness ``t(x, y)`` placed in the beam multiplies the measured
intensity by ``exp(-mu * t(x, y))`` over its footprint and leaves every other pixel untouched. A void
(a pore, a hollowed-out panel) removes material: the factor is ``exp(+mu * t)``. The factor applies to
the scan's raw values (8-bit, 16-bit or float), in its own intensity domain, before any windowing.

Shapes, each with a thickness profile that is zero outside its footprint (so the mask is exact):
  blob       an irregular lump (smoothed noise inside an ellipse), thickest in its middle;
  rectangle  a rotated plate or box of even thickness with slightly soft edges;
  patch      material whose thickness follows the texture of another clean scan (or of a distant part
             of the same scan) inside an elliptical footprint: structured, not trivially uniform.
Sizes are drawn relative to the scan's shorter side, contrasts from faint (a few per cent of the
signal) to plain, so that the task is neither trivial nor hopeless.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

SHAPES = ("blob", "rectangle", "patch")


@dataclass(frozen=True)
class ProjectionSettings:
    """How synthetic objects are drawn. Sizes are fractions of the scan's shorter side.

    min_size, max_size: the object's longer extent, drawn log-uniformly between them.
    min_pixels: the smallest extent in pixels whatever the scan size.
    min_attenuation, max_attenuation: peak ``mu * t`` (natural log of the intensity ratio), drawn
        uniformly: 0.05 changes the signal by 5 %, 0.5 by 39 %.
    void_share: probability that the object removes material (the factor is ``exp(+mu * t)``).
    shapes: the shapes drawn from, uniformly.
    """

    min_size: float = 0.03
    max_size: float = 0.15
    min_pixels: int = 5
    min_attenuation: float = 0.03
    max_attenuation: float = 0.3
    void_share: float = 0.3
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", tuple(self.shapes))
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError("sizes must satisfy 0 < min_size <= max_size <= 1")
        if not 0 < self.min_attenuation <= self.max_attenuation:
            raise ValueError("attenuations must satisfy 0 < min_attenuation <= max_attenuation")
        if not 0 <= self.void_share <= 1:
            raise ValueError("void_share must be in [0, 1]")
        if not self.shapes or any(shape not in SHAPES for shape in self.shapes):
            raise ValueError(f"shapes must be drawn from {SHAPES}")
        if self.min_pixels < 2:
            raise ValueError("min_pixels must be >= 2")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shapes"] = list(self.shapes)
        return out


@dataclass(frozen=True)
class ProjectedObject:
    """One synthetic anomaly.

    scan: the scan with the object, same shape and dtype as the input.
    mask: bool (H, W), True exactly where the object lies (``thickness > 0``).
    thickness: float32 (H, W) in [0, 1], the object's relative thickness (0 outside the mask).
    attenuation: the peak ``mu * t``; negative for a void.
    shape: one of ``SHAPES``.
    """

    scan: np.ndarray
    mask: np.ndarray
    thickness: np.ndarray
    attenuation: float
    shape: str


def project_object(scan: np.ndarray, rng: np.random.Generator, settings: ProjectionSettings | None = None,
                   donor: np.ndarray | None = None) -> ProjectedObject:
    """Project one synthetic object into a copy of ``scan``.

    scan: (H, W) or (H, W, 3), uint8, uint16 or float; never modified.
    rng: the only source of randomness (seeded by the caller).
    donor: a clean scan whose texture the ``patch`` shape borrows (default: ``scan`` itself, from
        another place).
    Integer scans are rounded and clipped to their dtype's range; float scans stay float32.
    """
    settings = settings or ProjectionSettings()
    height, width = scan.shape[:2]
    short = min(height, width)
    shape = settings.shapes[int(rng.integers(len(settings.shapes)))]
    extent = draw_extent(rng, settings, short)
    aspect = float(np.exp(rng.uniform(np.log(0.4), np.log(1.0))))
    size_y, size_x = (extent, extent * aspect) if rng.random() < 0.5 else (extent * aspect, extent)
    size_y, size_x = max(2.0, min(size_y, height)), max(2.0, min(size_x, width))
    box_h, box_w = int(np.ceil(size_y)), int(np.ceil(size_x))
    # The bounding box of the object lies inside the scan.
    y0 = int(rng.integers(0, height - box_h + 1))
    x0 = int(rng.integers(0, width - box_w + 1))
    angle = float(rng.uniform(0, np.pi))
    if shape == "blob":
        local = _blob(rng, box_h, box_w)
    elif shape == "rectangle":
        local = _rectangle(rng, box_h, box_w, angle)
    else:
        local = _textured(rng, box_h, box_w, scan if donor is None else donor, (y0, x0) if donor is None else None)
    thickness = np.zeros((height, width), np.float32)
    thickness[y0 : y0 + box_h, x0 : x0 + box_w] = local
    if not thickness.any():  # a degenerate draw: fall back to the filled box centre
        thickness[y0 + box_h // 2, x0 + box_w // 2] = 1.0
    attenuation = float(rng.uniform(settings.min_attenuation, settings.max_attenuation))
    if rng.random() < settings.void_share:
        attenuation = -attenuation
    return ProjectedObject(apply_attenuation(scan, thickness, attenuation), thickness > 0, thickness,
                           attenuation, shape)


def draw_extent(rng: np.random.Generator, settings: ProjectionSettings, short: int) -> float:
    """An object's longer extent in pixels: log-uniform between ``settings``' sizes times the scan's shorter side
    ``short`` (px), kept within [min(``min_pixels``, short), short]. One draw from ``rng``."""
    extent = float(np.exp(rng.uniform(np.log(settings.min_size), np.log(settings.max_size)))) * short
    return float(np.clip(extent, min(settings.min_pixels, short), short))


def apply_attenuation(scan: np.ndarray, thickness: np.ndarray, attenuation: float) -> np.ndarray:
    """``scan * exp(-attenuation * thickness)`` (per pixel, every channel), in the scan's dtype.

    Pixels where ``thickness == 0`` keep their exact value.
    """
    factor = np.exp(-attenuation * thickness.astype(np.float64))
    if scan.ndim == 3:
        factor = factor[:, :, None]
    inside = thickness > 0
    out = scan.copy()
    changed = scan[inside].astype(np.float64) * factor[inside]
    if np.issubdtype(scan.dtype, np.integer):
        info = np.iinfo(scan.dtype)
        changed = np.clip(np.rint(changed), info.min, info.max)
    out[inside] = changed.astype(scan.dtype)
    return out


def _ellipse(box_h: int, box_w: int) -> np.ndarray:
    """float (h, w): 1 at the centre of the inscribed ellipse, 0 on its edge, negative outside."""
    yy = (np.arange(box_h) + 0.5 - box_h / 2) / (box_h / 2)
    xx = (np.arange(box_w) + 0.5 - box_w / 2) / (box_w / 2)
    return 1.0 - (yy[:, None] ** 2 + xx[None, :] ** 2)


def _rounded_profile(footprint: np.ndarray, softness: float) -> np.ndarray:
    """float32 thickness in (0, 1] on ``footprint`` (0 elsewhere), rising over ``softness`` px from its edge."""
    if not footprint.any():
        return footprint.astype(np.float32)
    padded = np.pad(footprint.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    return np.where(footprint, np.minimum(1.0, distance / max(softness, 1.0)), 0.0).astype(np.float32)


def _blob(rng: np.random.Generator, box_h: int, box_w: int) -> np.ndarray:
    noise = gaussian_filter(rng.standard_normal((box_h, box_w)), sigma=max(1.0, min(box_h, box_w) / 6))
    noise = noise / (np.abs(noise).max() + 1e-12)
    footprint = (_ellipse(box_h, box_w) + 0.35 * noise) > 0.15
    return _rounded_profile(footprint, 0.35 * min(box_h, box_w))


def _rectangle(rng: np.random.Generator, box_h: int, box_w: int, angle: float) -> np.ndarray:
    # A rotated rectangle inscribed in the box: its half-sides fit the box whatever the angle.
    cos, sin = abs(np.cos(angle)), abs(np.sin(angle))
    fill = float(rng.uniform(0.6, 0.95))
    half_a = fill * min(box_w / 2 / max(cos, 1e-6), box_h / 2 / max(sin, 1e-6)) if sin > 1e-6 else fill * box_w / 2
    half_b = fill * min(box_w / 2 / max(sin, 1e-6), box_h / 2 / max(cos, 1e-6)) if cos > 1e-6 else fill * box_h / 2
    half_a, half_b = max(half_a, 1.0), max(half_b * float(rng.uniform(0.3, 1.0)), 1.0)
    centre = np.array([box_w / 2, box_h / 2])
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    corners = [centre + sa * half_a * direction + sb * half_b * normal for sa, sb in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    layer = np.zeros((box_h, box_w), np.uint8)
    cv2.fillPoly(layer, [np.round(np.array(corners) - 0.5).astype(np.int32)], 1)
    return _rounded_profile(layer.astype(bool), 1.5)


def _textured(rng: np.random.Generator, box_h: int, box_w: int, donor: np.ndarray,
              avoid: tuple[int, int] | None) -> np.ndarray:
    """Thickness from a donor crop's texture; ``avoid`` is where the object goes when the donor is the scan."""
    grey = donor.astype(np.float64).mean(axis=2) if donor.ndim == 3 else donor.astype(np.float64)
    dh, dw = grey.shape
    crop_h, crop_w = min(box_h, dh), min(box_w, dw)
    sy, sx = int(rng.integers(0, dh - crop_h + 1)), int(rng.integers(0, dw - crop_w + 1))
    if avoid is not None and abs(sy - avoid[0]) < box_h and abs(sx - avoid[1]) < box_w:
        # Borrowed from elsewhere in the same scan, not from the spot the object covers.
        sx = (sx + dw // 2) % (dw - crop_w + 1)
    crop = cv2.resize(grey[sy : sy + crop_h, sx : sx + crop_w], (box_w, box_h), interpolation=cv2.INTER_LINEAR)
    low, high = np.percentile(crop, [2, 98])
    texture = np.clip((crop - low) / (high - low), 0, 1) if high > low else np.ones_like(crop)
    # Dense where the donor was dark (it attenuated there): thickness follows 1 - normalised intensity.
    texture = 0.3 + 0.7 * (1.0 - texture)
    footprint = _ellipse(box_h, box_w) > 0
    return (_rounded_profile(footprint, 0.2 * min(box_h, box_w)) * texture).astype(np.float32)
