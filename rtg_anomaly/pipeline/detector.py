"""The library API: fit a detector on clean scans, score new scans, save and load it.

    detector = Detector(DetectorConfig()).fit(paths)
    result = detector.score("scan.bmp")        # AnomalyResult: heatmap, score, anomalous
    detector.save("model_artifacts/default")
    detector = Detector.load("model_artifacts/default", device="cuda")
"""

from __future__ import annotations

import collections
import math
import os
import time
import weakref
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence, TypeVar

import numpy as np
import torch

from ..backbone.features import FeatureExtractor, resolve_device
from ..backbone.graph_export import StoredGraph
from ..backbone.transfer import to_host
from ..bundle import save_bundle
from ..config import DESCRIPTOR_RULES, FUSED_RULE, MAP_SCORE_RULE, DetectorConfig
from ..errors import InputError, first_line
from ..methods import TileFeatures
from ..methods.descriptor import DescriptorAccumulator
from ..outputs.display import DisplayStyle, render_display
from ..outputs.display_torch import render_display_torch
from ..outputs.overlay import percentile_mask, percentile_mask_torch, render_overlay, render_overlay_torch
from ..scans.augment import augmented_views
from ..scans.intensity import apply_window, apply_window_torch, to_device_float, window_limits
from ..scans.io import load_image, page_count
from ..scans.roi import PATCH_INSIDE_FRACTION, auto_roi, fixed_roi, patch_inside_fraction
from ..scans.scan_kinds import kind_mismatch, scan_kind
from ..scans.tiling import extract_tiles, pad_to_tile, tile_grid
from .calibration import DEFAULT_FALSE_ALARM_RATE, Calibration, ThresholdRule, calibrate, check_false_alarm_rate
from .results import (AnomalyResult, ImageTooSmallError, NonFiniteScanError, NotFittedError, RawScores,
                      UnusableScanError)
from .fitting import CleanFitting
from .stitching import DeviceMapStitcher, MapStitcher, gaussian_smooth, gaussian_smooth_torch

T = TypeVar("T")


class _DeviceCopies(NamedTuple):
    """What ``Detector.score`` leaves on the device for ``Detector.overlay`` of the same scan and
    result, so the overlay uploads neither again: weak references to both, the calibrated
    heatmap (H, W) float32 (bit for bit ``result.heatmap``) and the windowed scan (padded)."""

    image: weakref.ref
    result: weakref.ref
    heatmap: torch.Tensor
    scan: torch.Tensor


class Detector(CleanFitting):
    """The detection pipeline over tiled scans (sklearn-style estimator), around one detection method.

    The pipeline reads and windows scans, cuts tiles, runs the backbone, keeps the patches inside the
    scan, stitches and smooths the method's patch scores into a map, calibrates, and draws overlays; the
    method (``config.method``, see ``methods/``) learns from clean patch features and scores patches.
    ``fit`` and its steps are ``CleanFitting``'s (``fitting.py``).

    Parameters are stored by ``__init__`` (``runtime``: ``"auto"``, ``"torch"``
    or ``"openvino"``, what executes the backbone; see FeatureExtractor and
    ``extractor.runtime`` for what ``"auto"`` chose); learned
    state ends in ``_`` and is set by ``fit`` or ``load``:
      method_: the fitted PatchMethod (PatchCore: ``method_.pca_``, ``method_.memory_bank_``);
      global_: the fitted GlobalDescriptor (an ``image_score`` of ``DESCRIPTOR_RULES``, else None);
      calibration_: Calibration;
      clean_window_: the raw (low, high) the clean scans use (``intensity.clean_window``) with
      ``intensity_window="clean"``, else None;
      backbone_digest_: sha256 of the backbone weights the method was fitted with;
      selection_: the record of ``selection.select_config`` (candidates and their validation scores) when
      the config was chosen from clean scans (``fit --select auto``), else None; set by the caller.
    """

    def __init__(self, config: DetectorConfig | None = None, device: str | torch.device = "auto",
                 runtime: str = "auto"):
        self.config = config or DetectorConfig()
        self.device = device
        self.runtime = runtime
        self._extractor: FeatureExtractor | None = None
        self._device_copies: _DeviceCopies | None = None  # the last scored scan's, GPU path only
        self._pixel_work_on_host = False  # set while a scan too large for the GPU is retried on the host
        self.selection_: dict | None = None
        self.clean_window_: tuple[float, float] | None = None
        self.roi_mask: np.ndarray | None = None  # bool (H, W): the fixed ROI when config.roi == "file"
        self.graph_: StoredGraph | None = None  # the bundle's exported backbone graph (graph_export.py)
        self._image_score_choice: dict | None = None  # set by _resolve_image_score, recorded by _conclude_fit
        self._multi_page_scans = 0  # set by _count_multi_page, warned of by _conclude_fit

    # ------------------------------------------------------------------ backbone
    @property
    def extractor(self) -> FeatureExtractor:
        """The frozen backbone, created on first use."""
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.config, resolve_device(str(self.device)), self.runtime, self.graph_)
        return self._extractor

    def device_scan(self, image: np.ndarray, window: tuple[float, float]) -> torch.Tensor | None:
        """When pixel work runs on the GPU: the scan padded to a tile and windowed on the device, float32
        (H', W') or (H', W', 3) in [0, 1]; else None (tiles are then cut and windowed on the host)."""
        return self._device_scan(image, window) if self._on_gpu else None

    def _device_scan(self, image: np.ndarray, window: tuple[float, float]) -> torch.Tensor:
        return apply_window_torch(to_device_float(pad_to_tile(image, self.config.tile_size), self.extractor.device),
                                  *window)

    def patch_features(self, image: np.ndarray, timings: dict | None = None,
                       window: tuple[float, float] | None = None, device_scan: torch.Tensor | None = None):
        """Yield ``(origins, features)`` per batch of tiles of a scan (array (H, W) or (H, W, 3)).

        origins: int (B, 2) tile corners (y, x) in the padded scan.
        features: float32 tensor (B, h, w, D) on the device; patches whose centre lies in the padding are
            included (``valid_patches`` says which).
        window: the scan's intensity window (default ``window_limits(image)``).
        device_scan: ``device_scan(image, window)`` if the caller has it already.
        timings: when a dict, the backbone's seconds are added under ``"backbone"``.
        """
        config, tile = self.config, self.config.tile_size
        padded = pad_to_tile(image, tile)
        low, high = window or self.window_limits(image)
        origins = tile_grid(padded.shape[0], padded.shape[1], tile, config.stride)
        on_gpu = self._on_gpu
        if on_gpu:  # the scan crosses to the device once; tiles are cut and windowed there
            scan = device_scan if device_scan is not None else self._device_scan(image, (low, high))
        for start in range(0, len(origins), config.batch_size):
            batch = origins[start : start + config.batch_size]
            if on_gpu:
                tiles = torch.stack([scan[y : y + tile, x : x + tile] for y, x in batch.tolist()])
            else:
                tiles = apply_window(extract_tiles(padded, batch, tile), low, high)
            t0 = time.perf_counter()
            features = self.extractor.embed(tiles)
            if timings is not None:
                _synchronise(features)
                timings["backbone"] = timings.get("backbone", 0.0) + time.perf_counter() - t0
            yield batch, features

    @property
    def _compute_device(self) -> torch.device:
        """The resolved device, without building the backbone when it is not loaded yet."""
        return self._extractor.device if self._extractor is not None else resolve_device(str(self.device))

    @property
    def _on_gpu(self) -> bool:
        """Pixel work (tiling, stitching, smoothing, overlay) runs on the device, not with numpy."""
        return self._compute_device.type == "cuda" and not self._pixel_work_on_host

    def _with_host_fallback(self, compute: Callable[[], T]) -> tuple[T, str | None]:
        """``compute()`` with the pixel work on the GPU; if the GPU runs out of memory, ``compute()`` again
        with the pixel work on the host (the backbone and kNN stay on the GPU; the result is the CPU
        path's). Returns (its value, why it fell back or None)."""
        if not self._on_gpu:
            return compute(), None
        try:
            return compute(), None
        except torch.cuda.OutOfMemoryError as exc:
            reason = first_line(exc)
        # Out of the except block, so the traceback no longer holds the failed attempt's tensors.
        self._release_device_memory()
        self._pixel_work_on_host = True
        try:
            value = compute()
        finally:
            self._pixel_work_on_host = False
        return value, f"the GPU ran out of memory for this scan's pixel work, so it ran on the host ({reason})"

    def _release_device_memory(self) -> None:
        """Drop the last scan's device copies and hand cached GPU memory back, after an out-of-memory error."""
        self._device_copies = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def valid_patches(self, origins: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
        """bool (B, h, w): patches of tiles at ``origins`` (int (B, 2)) whose centre lies inside a scan of
        ``image_shape`` (height, width) pixels."""
        h, w = self.extractor.grid
        step_y, step_x = self.config.tile_size / h, self.config.tile_size / w
        centres_y = origins[:, 0, None] + (np.arange(h) + 0.5) * step_y  # (B, h)
        centres_x = origins[:, 1, None] + (np.arange(w) + 0.5) * step_x  # (B, w)
        return (centres_y[:, :, None] < image_shape[0]) & (centres_x[:, None, :] < image_shape[1])

    def roi_patches(self, origins: np.ndarray, roi: np.ndarray) -> np.ndarray:
        """bool (B, h, w): patches of tiles at ``origins`` of which at least ``PATCH_INSIDE_FRACTION`` of the
        footprint lies inside ``roi`` (bool (H, W), the scan's region of interest)."""
        return patch_inside_fraction(roi, origins, self.config.tile_size, self.extractor.grid) >= PATCH_INSIDE_FRACTION

    def scan_roi(self, image: np.ndarray, source=None) -> np.ndarray | None:
        """The region of interest of a scan under ``config.roi``: bool (H, W), or None when every pixel counts.

        ``"auto"``: ``roi.auto_roi`` (None when the scan shows no clear open air, or when its ROI would keep
        no patch); ``"file"``: ``roi_mask``, which must be the scan's size (else InputError naming ``source``)
        and keep at least one patch.
        """
        mode = self.config.roi
        if mode == "off":
            return None
        if mode == "auto":
            roi = auto_roi(image)
        else:
            if self.roi_mask is None:
                raise InputError("the ROI mode is 'file' but no ROI mask was given (--roi FILE)")
            roi = fixed_roi(self.roi_mask, image.shape[:2], "the ROI mask" if source is None
                            else f"the ROI mask for {_name(source)}")
        if roi is None or roi.all():
            return None
        tile = self.config.tile_size
        padded = pad_to_tile(np.empty(image.shape[:2], np.uint8), tile).shape
        origins = tile_grid(padded[0], padded[1], tile, self.config.stride)
        if not (self.roi_patches(origins, roi) & self.valid_patches(origins, image.shape[:2])).any():
            if mode == "auto":
                return None
            raise InputError(f"the ROI mask leaves no patch of {_name(source)} inside: at least "
                             f"{PATCH_INSIDE_FRACTION:.0%} of a patch's footprint must be inside the mask")
        return roi

    def scan_features(self, image: np.ndarray) -> torch.Tensor:
        """All patch features of a scan (array) whose centre lies inside it: float32 (n, D) on the device."""
        tiles = self.tile_features(image)
        return tiles.features[tiles.valid]

    def tile_features(self, image: np.ndarray, roi: np.ndarray | None = None) -> TileFeatures:
        """Every tile's patch features of a scan (array), with the mask of patches inside it (on the device);
        with ``roi`` (bool (H, W)), only patches inside the region of interest count as inside."""
        features, valid = [], []
        for origins, batch in self.patch_features(image):
            features.append(batch)
            inside = self.valid_patches(origins, image.shape[:2])
            if roi is not None:
                inside &= self.roi_patches(origins, roi)
            valid.append(torch.from_numpy(inside).to(batch.device))
        return TileFeatures(torch.cat(features), torch.cat(valid))

    def _view_rois(self, image: np.ndarray, roi: np.ndarray | None, names) -> list[np.ndarray | None]:
        """The ROI of each augmented view ``names`` of ``image``: the scan's ROI transformed like the view."""
        if roi is None:
            return [None] * len(names)
        return [view.astype(bool) for view in augmented_views(roi.astype(np.uint8), names)]

    # ------------------------------------------------------------------ reading scans (fit: fitting.py)
    def _check_usable(self, image: np.ndarray, item) -> None:
        h, w = self.extractor.grid
        min_side = int(math.ceil(self.config.tile_size / min(h, w)))
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise UnusableScanError(f"{_name(item)}: expected a grey or RGB image, got shape {image.shape}")
        if image.dtype.kind not in "uif":  # bool, complex, object, strings: no intensities to window
            raise UnusableScanError(f"{_name(item)}: expected integer or float pixel values, got dtype {image.dtype}")
        if min(image.shape[:2]) < min_side:
            raise ImageTooSmallError(
                f"{_name(item)}: image of {image.shape[1]}x{image.shape[0]} px is too small; "
                f"one backbone patch covers {min_side} px at tile size {self.config.tile_size}"
            )
        if image.dtype.kind == "f":
            # A NaN pixel turns the intensity window, every feature and the score into NaN, and a NaN
            # score compares as "not above the threshold": the scan would be reported clean.
            n_bad = int(np.count_nonzero(~np.isfinite(image)))
            if n_bad:
                raise NonFiniteScanError(f"{_name(item)}: {n_bad} pixel value(s) are NaN or infinite; "
                                         "a scan needs finite values")

    # ------------------------------------------------------------------ scoring
    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` or ``load`` has run (score, overlay, calibrate and save need it)."""
        return getattr(self, "method_", None) is not None and hasattr(self, "calibration_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("this Detector is not fitted yet: call fit() or Detector.load() first")

    def window_limits(self, image: np.ndarray) -> tuple[float, float]:
        """Raw intensity (low, high) of ``image`` mapped to [0, 1] before the backbone (``intensity.py``)."""
        return window_limits(image, self.config.intensity_window, self.config.window_percentiles, self.clean_window_)

    def _raw_scores(self, image: np.ndarray, keep_features: bool = False, timings: dict | None = None,
                    window: tuple[float, float] | None = None, host_map: bool = True,
                    roi: np.ndarray | None = None) -> RawScores:
        """Smoothed anomaly map and patch scores of a scan, in raw (uncalibrated) units.

        With keep_features, the scan's valid raw patch features are kept too. Without host_map, a GPU
        run leaves the map on the device only (``anomaly_map`` is None, ``device_map`` holds it).
        roi: bool (H, W) region of interest (``scan_roi``): patches outside it are not scored (their map
        value is 0, the floor of every method's raw score) and the map is 0 outside it.
        """
        config = self.config
        padded_shape = (max(image.shape[0], config.tile_size), max(image.shape[1], config.tile_size))
        device, on_gpu = self.extractor.device, self._on_gpu
        window = window or self.window_limits(image)
        device_scan = self._device_scan(image, window) if on_gpu else None
        stitcher = (DeviceMapStitcher(*padded_shape, config.tile_size, config.stride, device) if on_gpu
                    else MapStitcher(*padded_shape, config.tile_size, config.stride))
        self.method_.prepare(device, self.extractor.runtime)
        kept, kept_valid, patch_scores = [], [], []
        accumulator = DescriptorAccumulator() if self._uses_descriptors else None
        for origins, features in self.patch_features(image, timings, window, device_scan):
            valid = self.valid_patches(origins, image.shape[:2])
            masked = None
            if roi is not None:
                inside = valid & self.roi_patches(origins, roi)
                masked = torch.from_numpy(valid & ~inside).to(device)  # in the scan, outside the ROI
                valid = inside
            valid_on_device = torch.from_numpy(valid).to(device)
            if keep_features:
                kept.append(features)
                kept_valid.append(valid_on_device)
            if accumulator is not None:
                accumulator.add(features[valid_on_device])
            t0 = time.perf_counter()
            scores = self.method_.score(features, valid_on_device)
            if masked is not None:
                scores = scores.masked_fill(masked, 0.0)
            if on_gpu:  # scores stay on the device until the map is finished
                if timings is not None:
                    _synchronise(scores)
                patch_scores.append(scores[valid_on_device])
            else:
                scores = scores.cpu().numpy()
                patch_scores.append(scores[valid])
            t1 = time.perf_counter()
            stitcher.add_batch(origins, scores)
            if timings is not None:
                if on_gpu:
                    _synchronise(scores)
                timings["knn"] = timings.get("knn", 0.0) + t1 - t0
                timings["stitch"] = timings.get("stitch", 0.0) + time.perf_counter() - t1
        t0 = time.perf_counter()
        anomaly_map = stitcher.result()[: image.shape[0], : image.shape[1]]
        device_map = None
        if on_gpu:
            device_map = gaussian_smooth_torch(anomaly_map, self.smoothing_pixels)
            if roi is not None:
                device_map = device_map.masked_fill(~torch.from_numpy(roi).to(device), 0.0)
            anomaly_map = to_host(device_map) if host_map else None
            patch_scores = [torch.cat(patch_scores).cpu().numpy()]
        else:
            anomaly_map = gaussian_smooth(np.ascontiguousarray(anomaly_map), self.smoothing_pixels)
            if roi is not None:
                anomaly_map[~roi] = 0.0
        if timings is not None:
            timings["smooth"] = time.perf_counter() - t0
        kept = TileFeatures(torch.cat(kept), torch.cat(kept_valid)) if keep_features else None
        return RawScores(anomaly_map, np.concatenate(patch_scores), kept,
                          accumulator.descriptor() if accumulator is not None else None, device_map, device_scan, roi)

    @property
    def smoothing_pixels(self) -> float:
        """Gaussian sigma of the map in scan pixels (config sigma is in patches)."""
        return self.config.smoothing_sigma * self.config.tile_size / self.extractor.grid[0]

    @property
    def _uses_descriptors(self) -> bool:
        return self.config.image_score in DESCRIPTOR_RULES

    def _image_score(self, raw: RawScores, rule: str | None = None) -> float:
        """The scan's raw image score under ``rule`` (default ``config.image_score``)."""
        rule = rule or self.config.image_score
        if rule == "global":
            return self.global_.distance(raw.descriptor)
        if rule == FUSED_RULE:
            return self.global_.fused(*self._fusion_parts(raw))
        if rule == "scan_centroid":
            return self.global_.centroid_distance(raw.descriptor)
        if rule == "max":
            return float(raw.anomaly_map.max())
        if rule == "patch_top_mean":
            values, n_top = raw.patch_scores, self.config.top_patches
        else:  # top_mean
            values = raw.anomaly_map.reshape(-1)
            n_top = max(1, int(round(self.config.top_fraction * values.size)))
        n_top = min(n_top, values.size)
        return float(np.partition(values, values.size - n_top)[-n_top:].mean())

    def _fusion_parts(self, raw: RawScores) -> tuple[float, float]:
        """The two raw parts ``patch_or_global`` joins: (top-patch score, whole-scan descriptor distance)."""
        return self._image_score(raw, MAP_SCORE_RULE), self.global_.distance(raw.descriptor)

    def load_scan(self, item, source=None) -> np.ndarray:
        """Read and check one scan (path or array) as the detector sees it; an error names ``source``
        when given (the path an array was read from), else ``item``."""
        image = load_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
        return self.check_scan(image, item if source is None else source)

    def check_scan(self, image: np.ndarray, source=None) -> np.ndarray:
        """``image`` if this detector can score it (grey or RGB, integer or float, at least one patch a
        side, finite values), else an UnusableScanError (ImageTooSmallError, NonFiniteScanError) naming
        ``source`` (a path, or None for an array)."""
        self._check_usable(image, source)
        return image

    def score(self, image, timings: dict | None = None, source=None) -> AnomalyResult:
        """Anomaly map and score of one scan (path or array (H, W) / (H, W, 3)).

        Pass a dict as ``timings`` to have the seconds per stage added to it, and the path an array was
        read from as ``source`` to have an UnusableScanError name it.
        On a GPU, the scan's windowed copy and the heatmap stay on the device until the next ``score``
        (about 8 bytes per pixel of grey scan), so that ``overlay`` of the same array and result
        uploads neither again.
        """
        self._check_fitted()
        self._device_copies = None  # free the previous scan's device copies first
        item, image = image, self.load_scan(image, source)
        stage_times = {} if timings is None else timings
        window = self.window_limits(image)
        roi = self.scan_roi(image, item if source is None else source)
        # The default rules need only the patch scores (or the descriptor): on a GPU the raw map then stays
        # there, and only the calibrated heatmap comes back (one download of the map, not two).
        host_map = self.config.image_score not in ("patch_top_mean", *DESCRIPTOR_RULES)
        raw, fallback = self._with_host_fallback(
            lambda: self._raw_scores(image, timings=stage_times, window=window, host_map=host_map, roi=roi))
        anomaly_map = raw.anomaly_map
        if self.config.image_score == FUSED_RULE:  # the same score as _image_score, and which part set it
            raw_score, evidence = self.global_.fused_with_part(*self._fusion_parts(raw))
        else:
            raw_score, evidence = self._image_score(raw), None
        calibration = self.calibration_
        clean_level = np.float32(calibration.clean_level)
        if raw.device_map is not None:
            # Before the in-place division below: on a CPU "device" anomaly_map shares raw.device_map's memory.
            # A 0-d tensor divisor, not a Python scalar: torch would multiply by a float32 reciprocal
            # instead, and the device heatmap would differ from result.heatmap in the last bit.
            device_heatmap = raw.device_map / torch.tensor(clean_level, device=raw.device_map.device)
        if anomaly_map is None:
            anomaly_map = to_host(device_heatmap)
        else:
            anomaly_map /= clean_level
        score = raw_score / calibration.image_unit
        mismatch = self._kind_mismatch(scan_kind(image))
        anomalous = bool(score > calibration.image_threshold)
        warnings = [mismatch] if mismatch else []
        origin = item if source is None else source
        pages = page_count(origin) if isinstance(origin, (str, os.PathLike)) else 1
        if pages > 1:
            warnings.append(f"the file holds {pages} images (pages); only the first was scored")
        if anomalous and evidence == "whole scan":
            warnings.append("flagged as a whole (its feature statistics), not by one spot: the heatmap may show "
                            "no region above the pixel threshold")
        result = AnomalyResult(
            heatmap=anomaly_map, score=float(score), anomalous=anomalous,
            image_threshold=calibration.image_threshold, pixel_threshold=calibration.pixel_threshold,
            window=window, timings=stage_times, fallback=fallback, warnings=warnings,
            roi_mask=roi, roi_mode=self.config.roi, evidence=evidence,
        )
        if raw.device_map is not None:
            self._device_copies = _DeviceCopies(weakref.ref(image), weakref.ref(result), device_heatmap,
                                                raw.device_scan)
        return result

    @property
    def can_reconstruct(self) -> bool:
        """Whether the fitted method draws what a clean scan looks like (``reconstruct``)."""
        return hasattr(self.method_, "reconstruct")

    def reconstruct(self, image, source=None) -> np.ndarray:
        """What a clean scan would look like here, as the method draws it: float32 (H, W) in [0, 1] on the
        detector's intensity window of the scan (``AnomalyResult.window``), tiles blended where they
        overlap. Only for a method that reconstructs pixels (``can_reconstruct``); InputError otherwise."""
        self._check_fitted()
        if not self.can_reconstruct:
            raise InputError(f"the {self.config.method} method (target {self.config.recon_target}) does not "
                             "draw scans: only reconstruction --target pixels does")
        image = self.load_scan(image, source)
        config = self.config
        padded_shape = (max(image.shape[0], config.tile_size), max(image.shape[1], config.tile_size))
        stitcher = MapStitcher(*padded_shape, config.tile_size, config.stride)
        device = self.extractor.device
        for origins, features in self.patch_features(image):
            valid = torch.from_numpy(self.valid_patches(origins, image.shape[:2])).to(device)
            drawn = self.method_.reconstruct(features, valid)[:, 0]  # (B, S, S) at the input size
            stitcher.add_batch(origins, drawn.float().cpu().numpy())  # resized to the tile, blended
        return np.clip(stitcher.result()[: image.shape[0], : image.shape[1]], 0.0, 1.0)

    def raw_scores(self, image, source=None) -> RawScores:
        """A scan's smoothed map and patch scores in raw (uncalibrated) units, as ``score`` has them before
        calibration (for model selection and studies). image: path or array; host arrays only (no device
        copies or features are kept)."""
        self._check_fitted()
        item, image = image, self.load_scan(image, source)
        roi = self.scan_roi(image, item if source is None else source)
        raw, _ = self._with_host_fallback(lambda: self._raw_scores(image, roi=roi))
        return raw._replace(device_map=None, device_scan=None)

    def _kind_mismatch(self, kind: str) -> str | None:
        """``scan_kinds.kind_mismatch`` of scans of ``kind`` against the clean scans this model was fitted on."""
        return kind_mismatch(kind, self.fit_info_.get("scan_kinds", {}), self.config.intensity_window)

    def overlay(self, image: np.ndarray, result: AnomalyResult, threshold: str = "percentile",
                percentile: float = 90.0, color_range: tuple[float, float] | None = None,
                alpha: float = 0.6, style: DisplayStyle | str | None = None) -> np.ndarray:
        """uint8 (H, W, 3) colour overlay of ``result`` on ``image``: by default the operator display that
        ``detect`` writes (``display.render_display``).

        threshold: ``"percentile"`` colours pixels at or above the ``percentile``-th
        percentile of this scan's map (inside its region of interest); ``"calibrated"`` colours only
        pixels at or above the calibrated pixel threshold (a clean scan stays uncoloured).
        color_range: calibrated (low, high) of the colour scale (default: the calibration's,
        ``Calibration.color_range``); never the scan's own maximum.
        style: a ``display.DisplayStyle`` (None: ``DisplayStyle()``, detect's defaults): pixels at or above
        the pixel threshold in the colour map's warm end and outlined, opacity growing with the score. The
        string ``"legacy"`` draws the look of versions before 0.2 (one cold-to-hot scale over the coloured
        pixels, constant opacity ``alpha``, which only that look uses).
        """
        self._check_fitted()
        color_range = color_range or self.calibration_.color_range
        if threshold not in ("percentile", "calibrated"):
            raise InputError(f"unknown threshold mode {threshold!r}")
        if np.shape(image)[:2] != result.heatmap.shape:
            raise InputError(f"the image ({'x'.join(map(str, np.shape(image)[:2]))}) is not the scan this result "
                             f"was scored on ({'x'.join(map(str, result.heatmap.shape))}, height x width)")
        if style == "legacy":
            return self._legacy_overlay(image, result, threshold, percentile, color_range, alpha)
        if style is None:
            style = DisplayStyle()
        if not isinstance(style, DisplayStyle):
            raise InputError(f"style must be a DisplayStyle, None or 'legacy', got {style!r}")
        style.check()
        picture = self.display_on_device(image, result, threshold, percentile, style, color_range)
        if picture is not None:
            return picture
        # Percentile mode colours the top of the map inside the ROI; calibrated mode (None) what is at or above
        # the pixel threshold, which the heatmap's 0 outside the ROI never reaches.
        display_mask = (percentile_mask(result.heatmap, percentile, within=result.roi_mask)
                        if threshold == "percentile" else None)
        return render_display(image, result.heatmap, result.pixel_threshold, style, display_mask=display_mask,
                              color_range=color_range, window=result.window)

    def display_on_device(self, image: np.ndarray, result: AnomalyResult, threshold: str, percentile: float,
                          style: DisplayStyle, color_range: tuple[float, float]) -> np.ndarray | None:
        """``overlay``'s operator display blended on the GPU: uint8 (H, W, 3), the same pixels as the host's
        ``render_display`` (to a float32 rounding step). None where it is not drawn there: pixel work on the
        host, a result that fell back to the host, or the GPU out of memory (its copies are freed then).

        For the scan and result ``score`` just returned, the windowed scan and the heatmap already on the
        device are used and the percentile mask is taken there: no upload, no host pass over the map.
        """
        if not self._on_gpu or result.fallback is not None:
            return None
        copies, device = self._device_copies, self._compute_device
        try:
            if copies is not None and copies.image() is image and copies.result() is result:
                height, width = image.shape[:2]
                scan, device_map, window = copies.scan[:height, :width], copies.heatmap, None
                within = None if result.roi_mask is None else torch.from_numpy(result.roi_mask).to(device)
                display_mask = (percentile_mask_torch(device_map, percentile, within=within)
                                if threshold == "percentile" else None)
            else:
                scan, device_map, window = image, None, result.window
                display_mask = (percentile_mask(result.heatmap, percentile, within=result.roi_mask)
                                if threshold == "percentile" else None)
            return render_display_torch(scan, result.heatmap, result.pixel_threshold, style, device,
                                        display_mask=display_mask, color_range=color_range, window=window,
                                        device_map=device_map)
        except torch.cuda.OutOfMemoryError:
            self._release_device_memory()
            return None

    def _legacy_overlay(self, image: np.ndarray, result: AnomalyResult, threshold: str, percentile: float,
                        color_range: tuple[float, float], alpha: float) -> np.ndarray:
        """``overlay(style="legacy")``: one colour scale over the coloured pixels, constant opacity."""
        if self._on_gpu and result.fallback is None and result.roi_mask is None:
            try:
                return self._overlay_on_device(image, result, threshold, percentile, color_range, alpha)
            except torch.cuda.OutOfMemoryError:
                pass  # rendered on the host below, as on the CPU
            self._release_device_memory()
        # With a region of interest (host path only), the percentile is the ROI's and nothing outside is coloured.
        mask = (percentile_mask(result.heatmap, percentile, within=result.roi_mask) if threshold == "percentile"
                else result.heatmap > result.pixel_threshold)
        return render_overlay(image, result.heatmap, mask, color_range=color_range, alpha=alpha, window=result.window)

    def _overlay_on_device(self, image: np.ndarray, result: AnomalyResult, threshold: str, percentile: float,
                           color_range: tuple[float, float], alpha: float) -> np.ndarray:
        copies = self._device_copies
        if copies is not None and copies.image() is image and copies.result() is result:
            heatmap, height, width = copies.heatmap, *image.shape[:2]
            scan, window = copies.scan[:height, :width], None  # already on the device and windowed
        else:
            heatmap, scan, window = torch.from_numpy(result.heatmap).to(self._compute_device), image, result.window
        mask = (percentile_mask_torch(heatmap, percentile) if threshold == "percentile"
                else heatmap > result.pixel_threshold)
        return render_overlay_torch(scan, heatmap, mask, color_range=color_range, alpha=alpha, window=window)

    # ------------------------------------------------------------------ calibration
    def calibrate(self, images: Iterable, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
                  on_bad_image: Callable[[object, Exception], None] | None = None,
                  threshold_rule: ThresholdRule | None = None) -> Calibration:
        """Re-derive the thresholds from extra clean scans, keeping the calibrated unit.

        threshold_rule: default: the rule the model was calibrated with.
        Sets and returns ``calibration_``.
        """
        self._check_fitted()
        check_false_alarm_rate(false_alarm_rate)
        kinds = collections.Counter()
        stats = self._clean_statistics(list(images), on_bad_image, kinds=kinds)
        if not stats.image_scores.size:
            raise InputError("no clean scan could be read to calibrate on")
        calibration = calibrate(stats.image_scores, stats.map_maxima, stats.pixel_samples, false_alarm_rate,
                                clean_level=self.calibration_.clean_level, map_scores=stats.map_scores,
                                image_level=self.calibration_.image_level,
                                rule=threshold_rule or self.calibration_.rule)
        for kind, count in sorted(kinds.items()):
            mismatch = self._kind_mismatch(kind)
            if mismatch:
                calibration.warnings.append(f"{count} calibration scan(s): {mismatch}")
        self.calibration_ = calibration
        return self.calibration_

    # ------------------------------------------------------------------ export
    def clean_tiles(self, images: Sequence, limit: int, seed: int = 0) -> np.ndarray:
        """Tiles of clean scans as an exported graph takes them: float32 (N, 3, S, S) in [0, 1], cut and
        windowed as scoring does, N <= ``limit`` drawn at random (``seed``) from every scan's tiles.
        Scans that cannot be read are skipped; InputError when none gives a tile."""
        rng = np.random.default_rng(seed)
        config, per_scan = self.config, max(1, math.ceil(2 * limit / max(1, len(images))))
        chosen = []
        for item in images:
            try:
                image = load_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
            except InputError:
                continue
            padded = pad_to_tile(image, config.tile_size)
            origins = tile_grid(padded.shape[0], padded.shape[1], config.tile_size, config.stride)
            origins = origins[np.sort(rng.permutation(len(origins))[:per_scan])]
            tiles = apply_window(extract_tiles(padded, origins, config.tile_size), *self.window_limits(image))
            chosen.append(self.extractor.graph_input(tiles).cpu().numpy())
        if not chosen:
            raise InputError("no clean scan could be read to calibrate the int8 graph on")
        tiles = np.concatenate(chosen)
        return np.ascontiguousarray(tiles[np.sort(rng.permutation(len(tiles))[:limit])], np.float32)

    def export_graph(self, fmt: str, precision: str, clean_images: Sequence = (), calibration_tiles: int = 64):
        """Export the backbone's feature graph into ``graph_`` (saved with the bundle by ``save``).

        fmt: ``"onnx"`` or ``"openvino"``; precision ``"fp32"``, ``"fp16"``, ``"bf16"`` (OpenVINO only) or ``"int8"`` (int8 is
        calibrated on at most ``calibration_tiles`` tiles of ``clean_images``). The backbone must run on the
        CPU with torch. Returns the StoredGraph.
        """
        from ..backbone.graph_export import export_graph

        self._check_fitted()
        tiles = self.clean_tiles(list(clean_images), calibration_tiles) if precision == "int8" else None
        self.graph_ = export_graph(self.extractor, fmt, precision, tiles)
        return self.graph_

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the fitted model as a bundle folder (atomic; see bundle.py and detector_bundle.py)."""
        from .detector_bundle import bundle_contents

        self._check_fitted()
        return save_bundle(folder, *bundle_contents(self))

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "auto", runtime: str = "auto") -> "Detector":
        """Load a bundle and its backbone (run by ``runtime``, see FeatureExtractor); refuses a bundle built on
        other backbone weights (detector_bundle.py)."""
        from .detector_bundle import restore_detector

        return restore_detector(cls, folder, device, runtime)


def _synchronise(tensor: torch.Tensor) -> None:
    if tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)


def _name(item) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else "image"
