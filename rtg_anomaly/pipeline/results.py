"""What scoring a scan returns, and the errors a scan or an unfitted detector raise (plain data, no torch
work)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError
from ..methods import TileFeatures


class RawScores(NamedTuple):
    """One scan's scores in raw (uncalibrated) units.

    anomaly_map: float32 (H, W), stitched and smoothed; None when a GPU run was asked to leave it on the
        device (``device_map``).
    patch_scores: float32 (n,), the method's score of every patch whose centre lies in
        the scan (a patch in the overlap of two tiles counts once per tile).
    features: every tile's raw patch features with the mask of those inside the scan (on the device), or
        None when not kept.
    descriptor: float32 (2 * D,) whole-scan descriptor, or None when the image
        score does not use one.
    device_map, device_scan: on the GPU path, ``anomaly_map`` as it was on the device and the
        windowed scan (float32 in [0, 1], padded to a tile) the tiles were cut from; else None.
    roi: bool (H, W), the scan's region of interest (the map is 0 outside it and ``patch_scores`` hold
        only patches inside it), or None when every pixel counts.
    """

    anomaly_map: np.ndarray | None
    patch_scores: np.ndarray
    features: TileFeatures | None
    descriptor: np.ndarray | None = None
    device_map: torch.Tensor | None = None
    device_scan: torch.Tensor | None = None
    roi: np.ndarray | None = None


class NotFittedError(RuntimeError):
    """The detector was used before ``fit`` or ``load``."""


class UnusableScanError(InputError):
    """The detector cannot score this array: not a grey or RGB image of real numbers."""


class ImageTooSmallError(UnusableScanError):
    """The scan cannot hold a single backbone patch."""


class NonFiniteScanError(UnusableScanError):
    """A float scan holds NaN or infinite pixel values: no score of it would mean anything."""


@dataclass
class AnomalyResult:
    """Outcome of scoring one scan.

    heatmap: float32 (H, W), same size as the scan, calibrated units (1.0 = the
        clean level), smoothed, before any display threshold.
    score: image-level anomaly score in calibrated units (higher = more anomalous).
    anomalous: score > image_threshold.
    image_threshold, pixel_threshold: the calibrated thresholds used.
    window: raw intensity (low, high) mapped to [0, 1] for this scan.
    timings: seconds per stage (backbone, knn, stitch, smooth).
    fallback: why the scan's pixel work (tiling, stitching, smoothing) ran on the host although the
        detector runs on a GPU (the GPU ran out of memory for it), else None. The heatmap is then the
        CPU path's, which the GPU path matches to float32 rounding.
    warnings: one-line caveats about this score, e.g. a scan of another kind (dtype, grey/RGB) than
        the clean scans the model was fitted on (see ``scan_kinds``).
    roi_mask: bool (H, W), True inside the region of interest; None when nothing was masked. Outside it the
        heatmap is 0.0 (the floor of every method's raw score, divided by the clean level) and no patch
        there counts towards the score.
    roi_mode: the ROI mode the scan was scored with (``"off"``, ``"auto"``, ``"file"``).
    evidence: with the ``patch_or_global`` image score, which part set the score: ``"patches"`` (its top patch
        distances, which the heatmap shows) or ``"whole scan"`` (its feature statistics as a whole, which no
        one spot of the heatmap need show); None for the other rules.
    """

    heatmap: np.ndarray
    score: float
    anomalous: bool
    image_threshold: float
    pixel_threshold: float
    window: tuple[float, float]
    timings: dict[str, float] = field(default_factory=dict)
    fallback: str | None = None
    warnings: list[str] = field(default_factory=list)
    roi_mask: np.ndarray | None = None
    roi_mode: str = "off"
    evidence: str | None = None

    @property
    def masked_fraction(self) -> float:
        """Share of the scan's pixels outside the region of interest."""
        return 0.0 if self.roi_mask is None else float(1.0 - np.count_nonzero(self.roi_mask) / self.roi_mask.size)
