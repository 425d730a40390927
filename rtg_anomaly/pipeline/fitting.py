"""How a Detector learns from clean scans: ``CleanFitting.fit`` and its steps.

A fit reads the clean scans once: it fits the scale to them (``scale_to_scans``), resolves ``image_score="auto"``,
learns the clean intensity window (``intensity_window="clean"``), splits off held-out scans, lets the method
learn every training scan's tile features, scores the held-out scans (or, with ``calibration="leave_one_out"``,
training scans each without their own rows), lets those join the model, and calibrates on their statistics.
The Ray engine (``ray_engine/fit.py``) runs the same steps with the backbone work spread over workers.

``CleanFitting`` is a part of ``Detector`` (its base class) kept in its own module: it uses the detector's
scan, backbone and scoring methods (``load_scan``, ``scan_roi``, ``tile_features``, ``_raw_scores``, ...).
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np

from ..config import (CLEAN_WINDOW_MAX_SCANS, FUSED_RULE, FUSION_MIN_CALIBRATION_SCANS, LEAVE_ONE_OUT_MAX_SCANS,
                      MAP_SCORE_RULE)
from ..errors import InputError
from ..methods import FitPlan, GlobalDescriptor, PatchMethod, TileFeatures, create_method, method_class
from ..methods.descriptor import scan_descriptor
from ..methods.memory_bank import random_rows
from ..scans.augment import augmented_views
from ..scans.intensity import clean_window
from ..scans.io import page_count
from ..scans.scan_kinds import mixed_kinds, scan_kind
from .calibration import DEFAULT_FALSE_ALARM_RATE, ThresholdRule, calibrate, check_false_alarm_rate
from .results import RawScores
from .scale import fit_scale_to_scans, shorter_sides

if TYPE_CHECKING:
    from .detector import Detector

CALIBRATION_PIXELS_PER_SCAN = 20_000


def holdout_count(holdout_fraction: float, n_images: int) -> int:
    """How many of ``n_images`` clean scans a held-out calibration sets aside at ``holdout_fraction``."""
    if not (holdout_fraction > 0 and n_images >= 2):
        return 0
    # At least two held-out scans when there are three or more: one scan alone sets no spread.
    wanted = max(2, int(round(holdout_fraction * n_images)))
    return min(n_images - 1, wanted, max(1, n_images // 2))


class CleanStatistics(NamedTuple):
    """Raw statistics of clean scans, the input of a calibration.

    image_scores, map_maxima: float (n,) over the n readable scans.
    map_scores: float (n,) top-patch map scores, only when the image score has
        its own unit (``global``); else None.
    pixel_samples: float (m,) map values sampled from the scans.
    """

    image_scores: np.ndarray
    map_scores: np.ndarray | None
    map_maxima: np.ndarray
    pixel_samples: np.ndarray


class CleanFitting:
    """``Detector.fit`` and the steps it is made of (see the module's docstring)."""

    def fit(self, images: Sequence, progress: bool = False,
            on_bad_image: Callable[[object, Exception], None] | None = None,
            false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
            threshold_rule: ThresholdRule | None = None) -> "Detector":
        """Learn normality from clean scans.

        images: paths or arrays ((H, W) or (H, W, 3), any dtype) of clean scans.
        Calibration (``config.calibration``): by default a seeded share (``holdout_fraction``) is held out,
        scored against the model built from the others, then joins it; with ``"leave_one_out"`` (methods
        that can leave a scan out) every scan trains and up to ``LEAVE_ONE_OUT_MAX_SCANS`` of them are scored
        again, each against the model without its own rows (``_leave_one_out_statistics``).
        on_bad_image: called with (item, error) for an unreadable image, which is
            then skipped; without it the error propagates.
        false_alarm_rate: share of clean scans the calibrated thresholds may flag.
        threshold_rule: how thresholds follow from the clean scores (default: the false-alarm rate).
        With ``config.scale_to_scans``, ``config`` first gets the tile and input size fitted to the clean
        scans' size (``scale.fit_scale_to_scans``; recorded in ``fit_info_["scale"]``).
        Returns self.
        """
        from tqdm import tqdm

        check_false_alarm_rate(false_alarm_rate)  # before hours of backbone work, not after
        images = list(images)
        if not images:
            raise InputError("no clean images to fit on")
        scale = self._fit_scale(images)
        self._count_multi_page(images)
        self._resolve_image_score(scale, len(images))
        config = self.config
        self.clean_window_ = self._fit_clean_window(images)
        train_items, holdout_items = self._holdout_split(images)

        started = time.perf_counter()
        n_views = 1 + len(config.augment)
        method = create_method(config)
        method.show_progress = progress
        method.begin(FitPlan(training_views=len(train_items) * n_views, all_views=len(images) * n_views))
        global_score = GlobalDescriptor() if self._uses_descriptors else None
        n_train, kinds, counts = 0, collections.Counter(), {"patches": 0}
        learned = []  # the training scans read, in learning order (scan j learned views j*n_views ...)
        bar = tqdm(total=len(images), unit="scan", desc="fit", disable=not progress, leave=False)
        for item in train_items:
            image = self._read(item, on_bad_image)
            bar.update(1)
            if image is None:
                continue
            learned.append(item)
            kinds[scan_kind(image)] += 1
            roi = self.scan_roi(image, item)
            view_rois = [roi, *self._view_rois(image, roi, config.augment)]
            # One view in memory at a time: a copy of a large scan per augmentation would add up.
            for view_index, view in enumerate(itertools.chain([image], augmented_views(image, config.augment))):
                tiles, _ = self._with_host_fallback(lambda: self.tile_features(view, view_rois[view_index]))
                self._learn(method, global_score, tiles, counts)
                if view_index == 0 and method.auxiliary_views:
                    method.learn_auxiliary("upright", *tiles)
                    extra_rois = self._view_rois(image, roi, method.auxiliary_views)
                    for name, extra, extra_roi in zip(method.auxiliary_views,
                                                      augmented_views(image, method.auxiliary_views), extra_rois):
                        extra_tiles, _ = self._with_host_fallback(lambda: self.tile_features(extra, extra_roi))
                        method.learn_auxiliary(name, *extra_tiles)
            n_train += 1
            bar.set_postfix(method.progress_postfix() or {"patches": counts["patches"]})
        if n_train == 0:
            bar.close()
            raise InputError("none of the clean images could be read")

        self._adopt_learned(method, global_score)

        if self._leaves_scans_out:
            bar.close()
            stats = self._leave_one_out_statistics(learned, n_views, progress)
        else:
            stats = self._clean_statistics(holdout_items, on_bad_image, bar=bar, learn_counts=counts, kinds=kinds)
            bar.close()
        if not len(stats.image_scores) and not self._uses_descriptors:
            # Too few clean scans to hold any out: calibrate on training scans (optimistic).
            stats = None
        return self._conclude_fit(stats, lambda: self._clean_statistics(train_items[:10], lambda *_: None),
                                  n_train, n_views, kinds, counts, false_alarm_rate, threshold_rule, started, scale)

    def _adopt_learned(self, method: PatchMethod, global_score: GlobalDescriptor | None) -> None:
        """The method (and global score) that learned the training scans finish and become the fitted state,
        with the digest of the backbone whose features they learned."""
        method.finish(self.extractor.device)
        if global_score is not None:
            global_score.finish()
        self.method_, self.global_ = method, global_score
        self.backbone_digest_ = self.extractor.digest

    @property
    def _leaves_scans_out(self) -> bool:
        """Whether this fit calibrates leave-one-scan-out (else on held-out scans): asked for, and the method
        can leave a scan out; the whole-scan descriptor scores keep a held-out set (their bank is per scan)."""
        config = self.config
        return (config.calibration == "leave_one_out" and method_class(config.method, config).can_leave_out
                and not self._uses_descriptors)

    def _leave_one_out_statistics(self, learned: Sequence, n_views: int, progress: bool = False) -> CleanStatistics:
        """Clean statistics of the training scans ``learned`` (in learning order, ``n_views`` views each), each
        scored against the fitted method without its own views: a seeded sample of at most
        ``LEAVE_ONE_OUT_MAX_SCANS``, none when fewer than two scans were learned (nothing would be left)."""
        from tqdm import tqdm

        chosen = self._leave_one_out_choice(len(learned))
        if not chosen:
            return CleanStatistics(np.zeros(0), None, np.zeros(0), np.zeros(0, np.float32))
        bar = tqdm(total=len(chosen), unit="scan", desc="calibrate", disable=not progress, leave=False)
        try:
            return self._clean_statistics([learned[j] for j in chosen], None, bar=bar,
                                          leave_out=[range(j * n_views, (j + 1) * n_views) for j in chosen])
        finally:
            bar.close()

    def _leave_one_out_choice(self, n_learned: int) -> list[int]:
        """Learning-order places of the training scans the leave-one-out pass scores: a seeded sample of at most
        ``LEAVE_ONE_OUT_MAX_SCANS``, ascending; none when fewer than two scans were learned."""
        if n_learned < 2:
            return []
        order = np.random.default_rng(self.config.seed).permutation(n_learned)
        return sorted(int(j) for j in order[:LEAVE_ONE_OUT_MAX_SCANS])

    def _holdout_split(self, images: list) -> tuple[list, list]:
        """(training items, held-out items) of a fit on ``images``, each in input order: a seeded share
        ``holdout_fraction`` is held out to calibrate."""
        config = self.config
        order = np.random.default_rng(config.seed).permutation(len(images))
        n_holdout = 0 if self._leaves_scans_out else holdout_count(config.holdout_fraction, len(images))
        if self._uses_descriptors and n_holdout == 0:
            # A training scan's descriptor is in the bank (distance 0): it cannot calibrate this score.
            raise InputError(f"the {config.image_score} image score calibrates on held-out clean scans: "
                             "give at least 2 clean scans and a holdout fraction above 0")
        return [images[i] for i in sorted(order[n_holdout:])], [images[i] for i in sorted(order[:n_holdout])]

    def _resolve_image_score(self, scale: dict, n_images: int) -> None:
        """Replace ``image_score="auto"`` in ``config`` by the rule it stands for on these clean scans (``scale``:
        what ``_fit_scale`` decided; ``n_images``: how many clean scans the fit was given), and keep the
        decision for ``fit_info_["image_score"]``. Another rule is kept as configured."""
        config = self.config
        if config.image_score != "auto":
            self._image_score_choice = {"rule": config.image_score, "why": "configured"}
            return
        n_holdout = holdout_count(config.holdout_fraction, n_images)  # a descriptor rule always holds out
        if config.method != "patchcore":
            rule, why = MAP_SCORE_RULE, f"auto: the whole-scan score joins patchcore only, not {config.method}"
        elif not scale.get("fitted_to_scans"):
            rule, why = MAP_SCORE_RULE, "auto: scans larger than half a tile are judged by their top patches"
        elif n_holdout < FUSION_MIN_CALIBRATION_SCANS:
            rule, why = MAP_SCORE_RULE, (f"auto: {n_holdout} held-out clean scans, under the "
                                         f"{FUSION_MIN_CALIBRATION_SCANS} the fusion needs")
        else:
            rule, why = FUSED_RULE, "auto: scans fitted whole into one tile are judged by patches and as a whole"
        self.config = config.replace(image_score=rule)
        self._image_score_choice = {"rule": rule, "why": why}

    def _conclude_fit(self, stats: CleanStatistics | None, training_statistics: Callable[[], CleanStatistics],
                      n_train: int, n_views: int, kinds: collections.Counter, counts: dict,
                      false_alarm_rate: float, threshold_rule: ThresholdRule | None, started: float,
                      scale: dict) -> "Detector":
        """After the held-out scans were scored and learned (``stats``; None when no scan was held out):
        rebuild the fitted state with them, calibrate and record the fit. ``training_statistics``: the
        (optimistic) statistics of training scans, for a fit without held-out scans; ``scale``: what
        ``_fit_scale`` decided."""
        method, global_score, config = self.method_, self.global_, self.config
        n_calibration = 0 if stats is None else len(stats.image_scores)
        leave_one_out = self._leaves_scans_out
        if n_calibration:
            if not leave_one_out:  # the held-out scans, scored, now join the model
                method.finish(self.extractor.device)
                if global_score is not None:
                    global_score.finish()
        elif self._uses_descriptors:
            raise InputError("none of the held-out clean scans could be read to calibrate the global image score")
        else:
            stats = training_statistics()
        if config.image_score == FUSED_RULE:
            stats = self._fuse_statistics(stats)
        calibration = calibrate(stats.image_scores, stats.map_maxima, stats.pixel_samples, false_alarm_rate,
                                map_scores=stats.map_scores, rule=threshold_rule)
        if not n_calibration:
            calibration.warnings.append("fewer than two clean scans: calibrated on training scans (optimistic)"
                                        if leave_one_out else
                                        "no clean scan was held out: calibrated on training scans (optimistic)")
        mixed = mixed_kinds(kinds, config.intensity_window)
        if mixed:
            calibration.warnings.append(mixed)
        if self._multi_page_scans:
            calibration.warnings.append(f"{self._multi_page_scans} clean scan file(s) hold several images (pages): "
                                        "only the first page of each was learned")
        self.calibration_ = calibration
        mode = ("leave_one_out" if leave_one_out else "holdout") if n_calibration else "training"
        # Held out scans are learned after calibration, left-out ones before: both count once in n_train_scans.
        self.fit_info_ = {"n_train_scans": n_train, "n_calibration_scans": n_calibration, "calibration": mode,
                          "n_views_per_scan": n_views, "patches_seen": counts["patches"], "scale": scale,
                          "image_score": self._image_score_choice,
                          **method.fit_info(),
                          "scan_kinds": dict(sorted(kinds.items())),
                          "seconds": time.perf_counter() - started}
        return self

    def _fuse_statistics(self, stats: CleanStatistics) -> CleanStatistics:
        """Fit the ``patch_or_global`` fusion to the held-out scans of ``stats`` (whose image scores are then the
        descriptor distances, ``_clean_scan_statistics``) and return them with their fused image scores."""
        if stats.image_scores.size < 2:
            raise InputError("the patch_or_global image score needs at least 2 readable held-out clean scans")
        self.global_.fit_fusion(stats.map_scores, stats.image_scores)
        fused = np.array([self.global_.fused(patch, distance)
                          for patch, distance in zip(stats.map_scores, stats.image_scores)])
        return stats._replace(image_scores=fused)

    def _count_multi_page(self, images: Sequence) -> None:
        """Count the clean scans given as files that hold several images (``page_count``): the fit learns only
        their first page, and its calibration warns of it (``_conclude_fit``). Headers only, nothing decoded."""
        self._multi_page_scans = sum(1 for item in images
                                     if isinstance(item, (str, os.PathLike)) and page_count(item) > 1)

    def _fit_clean_window(self, images: Sequence) -> tuple[float, float] | None:
        """With ``intensity_window="clean"``, the clean window (``intensity.clean_window``) of up to
        ``CLEAN_WINDOW_MAX_SCANS`` clean scans evenly spaced over ``images``, else None. Unreadable scans are
        passed over here: the fit's own read reports them."""
        config = self.config
        if config.intensity_window != "clean":
            return None
        chosen = np.unique(np.linspace(0, len(images) - 1, min(len(images), CLEAN_WINDOW_MAX_SCANS)).round())
        scans = (self._read(images[int(i)], lambda *_: None) for i in chosen)
        limits = clean_window((scan for scan in scans if scan is not None), config.window_percentiles)
        if limits is None:
            raise InputError("none of the clean images could be read to learn the clean intensity window")
        return limits

    def _fit_scale(self, images: Sequence) -> dict:
        """Fit the tile and input size to the clean scans (when ``scale_to_scans``); the backbone is made
        again for a new input size. Returns what was decided, for ``fit_info_``."""
        config = self.config
        record = {"tile_size": config.tile_size, "input_size": config.input_size, "fitted_to_scans": False}
        if not config.scale_to_scans:
            return record
        fitted = fit_scale_to_scans(config, shorter_sides(images))
        if fitted != config:
            self.config, self._extractor = fitted, None
            record.update(tile_size=fitted.tile_size, input_size=fitted.input_size, fitted_to_scans=True,
                          configured=[config.tile_size, config.input_size], median_shorter_side=fitted.tile_size)
        return record

    @staticmethod
    def _learn(method: PatchMethod, global_score: GlobalDescriptor | None, tiles: TileFeatures, counts: dict,
               descriptor: np.ndarray | None = None) -> None:
        """One clean view's tile features join the method (and its descriptor the global score:
        ``descriptor`` when the caller has it, else computed from the patches inside the scan)."""
        method.learn(tiles.features, tiles.valid)
        counts["patches"] += int(tiles.valid.sum())
        if global_score is not None:
            global_score.learn(scan_descriptor(tiles.features[tiles.valid]) if descriptor is None else descriptor)

    def _clean_statistics(self, items: Sequence, on_bad_image, bar=None, learn_counts: dict | None = None,
                          kinds: collections.Counter | None = None,
                          leave_out: Sequence[range] | None = None) -> CleanStatistics:
        """Raw clean-scan statistics for calibration, over the readable scans.

        With ``leave_out`` (one range of learned view indices per item), each scan is scored inside
        ``method_.leave_out`` of its range: against the model without its own views.

        With ``learn_counts`` (a fit's counters), each scan and its augmented views are also learned by the
        method (and the global score), after being scored: held-out scans join the model once ``finish``
        runs again. With ``kinds``, each readable scan's ``scan_kind`` is counted in it.
        """
        scores, map_scores, maxima, samples = [], [], [], []
        learn = learn_counts is not None
        for position, item in enumerate(items):
            image = self._read(item, on_bad_image)
            if bar is not None:
                bar.update(1)
            if image is None:
                continue
            if kinds is not None:
                kinds[scan_kind(image)] += 1
            roi = self.scan_roi(image, item)
            if leave_out is None:
                raw, _ = self._with_host_fallback(lambda: self._raw_scores(image, keep_features=learn, roi=roi))
            else:
                with self.method_.leave_out(leave_out[position]):
                    raw, _ = self._with_host_fallback(lambda: self._raw_scores(image, roi=roi))
            if learn:
                self._learn(self.method_, self.global_, raw.features, learn_counts, raw.descriptor)
                views = augmented_views(image, self.config.augment)
                for view, view_roi in zip(views, self._view_rois(image, roi, self.config.augment)):
                    tiles, _ = self._with_host_fallback(lambda: self.tile_features(view, view_roi))
                    self._learn(self.method_, self.global_, tiles, learn_counts)
            score, map_score, maximum, sample = self._clean_scan_statistics(raw, len(samples), roi)
            scores.append(score)
            map_scores.append(map_score)
            maxima.append(maximum)
            samples.append(sample)
        pixel_samples = np.concatenate(samples) if samples else np.zeros(0, np.float32)
        return CleanStatistics(np.array(scores), np.array(map_scores) if self._uses_descriptors else None,
                               np.array(maxima), pixel_samples)

    def _clean_scan_statistics(self, raw: RawScores, scan_index: int, roi: np.ndarray | None = None
                               ) -> tuple[float, float | None, float, np.ndarray]:
        """One clean scan's part of ``CleanStatistics``: (image score, map score or None, map maximum, pixel
        sample), ``scan_index`` the scan's place among the readable ones (it seeds the pixel sample), ``roi``
        the scan's (H, W) bool region of interest or None."""
        map_score = self._image_score(raw, MAP_SCORE_RULE) if self._uses_descriptors else None
        # Pixels outside the ROI hold the floor 0, not a clean score: they would pull the pixel threshold down.
        values = raw.anomaly_map.reshape(-1) if roi is None else raw.anomaly_map[roi]
        rows = random_rows(values.size, CALIBRATION_PIXELS_PER_SCAN, self.config.seed + scan_index)
        # Before the fusion is fitted (a fit's held-out scans) its two parts are kept: the map score and this.
        unfused = self.config.image_score == FUSED_RULE and self.global_.fusion_ is None
        return (self._image_score(raw, "global" if unfused else None), map_score, float(raw.anomaly_map.max()),
                values[rows])

    def _read(self, item, on_bad_image) -> np.ndarray | None:
        try:
            return self.load_scan(item)
        except InputError as exc:
            if on_bad_image is None:
                raise
            on_bad_image(item, exc)
            return None
