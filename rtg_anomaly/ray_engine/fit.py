"""``fit --engine ray``: Ray actors compute each clean scan's backbone features and its coreset rows for the
memory-bank pool (and score the held-out scans); the driver pools them in input order, fits the PCA,
runs the final coreset pass and calibrates with the in-process code (``Detector._conclude_fit``).

Why the bundle is the in-process one, byte for byte: every random choice of a PatchCore fit is seeded
by the view's place in the fit (``config.seed + view index``: the PCA rows, the per-scan subsample and
coreset; ``seed + scan index``: the calibration pixel sample), not by state carried from one scan to
the next. A worker is told that place with each scan and computes exactly what ``learn`` would
(``PatchCore.pool_part``); the driver adds the parts in input order (``absorb``). The place of a scan
assumes the scans before it were readable; when one was not, the few scans already handed out with a
wrong place are computed again. The PCA, the final coreset pass and the calibration run on the driver
as in-process, on the driver's device (a GPU there and a CPU in the in-process run would differ in
float rounding).

The driver's memory is the in-process fit's (docs/performance.md, section 4): the pool, capped by
``max_bank_size``, the PCA rows, at most ``PCA_SAMPLE_TOTAL``, and a window of per-scan parts in flight.
"""

from __future__ import annotations

import collections
import os
import time
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from .dispatch import OrderedMap
from .workers import driver_folder, enter_driver_folder, exit_hook, maybe_exit, start_actors, worker_count

# Methods whose fit splits into independent per-scan parts merged in order (``pool_part`` / ``absorb``).
RAY_METHODS = ("patchcore",)


class ScanParts(NamedTuple):
    """What a worker sends back for one clean scan.

    view_index: the fit's index of the scan's first view the parts were computed for.
    kind: ``scan_kinds.scan_kind`` of the scan.
    parts: one PoolPart per view learned (empty when the scan only calibrates).
    descriptors: one float32 (E,) descriptor per view for the global image score, else Nones.
    statistics: a held-out scan's (image score, map score or None, map maximum, pixel sample), else None.
    """

    view_index: int
    kind: str
    parts: list
    descriptors: list
    statistics: tuple | None


# The leave-one-out round's model carries the bank rows' sources under this name, beside the method's arrays.
BANK_SOURCES = "_bank_sources"


class FitWorker:
    """One Ray actor of a fit: a backbone, a PatchCore with the fit's plan (for ``pool_part``), and for the
    held-out scans the first round's fitted state, fetched once per round."""

    def __init__(self, config: dict, device: str, runtime: str, plan: tuple[int, int],
                 clean_window: tuple[float, float] | None = None, folder: tuple[str, bool] | None = None,
                 hook: str | None = None):
        from ..config import DetectorConfig
        from ..pipeline.detector import Detector
        from ..methods import FitPlan, create_method

        config = DetectorConfig.from_dict(config)
        self.detector = Detector(config, device=device, runtime=runtime)
        self.detector.clean_window_ = None if clean_window is None else tuple(clean_window)  # the driver's
        self.learner = create_method(config)
        self.learner.begin(FitPlan(*plan))
        self.hook, self.scans_done, self.model_token = hook, 0, None
        self.error: InputError | None = None
        try:
            enter_driver_folder(folder)
        except InputError as exc:
            self.error = exc

    def train(self, item, view_index: int) -> ScanParts | InputError:
        """A training scan: the PoolPart (with PCA rows) and descriptor of each of its views."""
        from ..scans.augment import augmented_views
        from ..scans.scan_kinds import scan_kind

        detector = self._start_scan()
        try:
            image = detector.load_scan(item)
        except InputError as exc:
            return exc
        parts, descriptors = [], []
        for offset, view in enumerate([image, *augmented_views(image, detector.config.augment)]):
            tiles, _ = detector._with_host_fallback(lambda: detector.tile_features(view))
            self._add(parts, descriptors, tiles, view_index + offset, True)
        return ScanParts(view_index, scan_kind(image), parts, descriptors, None)

    def calibrate(self, item, view_index: int, scan_index: int, model: tuple, learn: bool,
                  leave_out: tuple[int, int] | None = None) -> ScanParts | InputError:
        """A held-out scan scored with the first round's ``model`` ((token, [object ref of its arrays])):
        its calibration statistics and, with ``learn``, its views' PoolParts (no PCA rows). With
        ``leave_out`` (start, stop): a training scan scored without the bank rows of those learned views
        (the model then carries its rows' sources)."""
        from ..scans.augment import augmented_views
        from ..scans.scan_kinds import scan_kind

        detector = self._start_scan()
        self._use_model(model)
        try:
            image = detector.load_scan(item)
        except InputError as exc:
            return exc
        if leave_out is None:
            raw, _ = detector._with_host_fallback(lambda: detector._raw_scores(image, keep_features=learn))
        else:
            with detector.method_.leave_out(range(*leave_out)):
                raw, _ = detector._with_host_fallback(lambda: detector._raw_scores(image))
        parts, descriptors = [], []
        if learn:  # as Detector._clean_statistics learns: the scored view's features, then the augmented views
            self._add(parts, descriptors, raw.features, view_index, False, raw.descriptor)
            for offset, view in enumerate(augmented_views(image, detector.config.augment), start=1):
                tiles, _ = detector._with_host_fallback(lambda: detector.tile_features(view))
                self._add(parts, descriptors, tiles, view_index + offset, False)
        return ScanParts(view_index, scan_kind(image), parts, descriptors,
                         detector._clean_scan_statistics(raw, scan_index))

    def _start_scan(self):
        if self.error is not None:
            raise self.error
        maybe_exit(self.hook, self.scans_done)
        self.scans_done += 1
        return self.detector

    def _add(self, parts: list, descriptors: list, tiles, view_index: int, sample_for_pca: bool,
             descriptor=None) -> None:
        from ..methods.descriptor import scan_descriptor

        parts.append(self.learner.pool_part(tiles.features, tiles.valid, view_index, sample_for_pca))
        if self.detector._uses_descriptors:
            descriptors.append(scan_descriptor(tiles.features[tiles.valid]) if descriptor is None else descriptor)
        else:
            descriptors.append(None)

    def _use_model(self, model: tuple) -> None:
        import ray

        from ..methods import GlobalDescriptor, method_class

        token, (ref,) = model
        if token == self.model_token:
            return
        # Writable copies: the object store's arrays are read-only views, which torch warns about.
        arrays, detector = {name: np.array(array) for name, array in ray.get(ref).items()}, self.detector
        sources = arrays.pop(BANK_SOURCES, None)
        feature_dim = detector.extractor.feature_dim
        detector.method_ = method_class(detector.config.method, detector.config).from_arrays(detector.config, arrays, feature_dim)
        if sources is not None:
            detector.method_.use_bank_sources(sources)
        detector.global_ = GlobalDescriptor.from_arrays(arrays, feature_dim) if detector._uses_descriptors else None
        self.model_token = token


def check_ray_fit(config) -> None:
    """InputError (one line) for a DetectorConfig that the Ray fit cannot reproduce byte for byte."""
    if config.method not in RAY_METHODS:
        raise InputError(f"--engine ray fits {', '.join(RAY_METHODS)} only: the {config.method} fit does not split "
                         "into independent per-scan parts; fit it with --engine inprocess")
    if config.roi != "off":
        raise InputError("--engine ray fits with --roi off only (its workers do not mask the clean scans); "
                         "fit a ROI model with --engine inprocess")


def fit_on_ray(ray, detector, images, workers: int | None = None, gpus_per_worker: float = 0.0,
               progress: bool = False, on_bad_image=None, false_alarm_rate: float | None = None,
               threshold_rule=None):
    """Fit ``detector`` (an unfitted Detector: its config, device and runtime) on clean scans with Ray
    actors, as ``Detector.fit`` does in-process (same arguments, same fitted state); returns it.

    ray: the connected ``ray`` module; images: paths every worker can read (shared storage on a cluster);
    workers: actors to start (default: one per CPU of the cluster, or per ``gpus_per_worker`` GPUs).
    InputError for a method other than PatchCore (its fit does not split into per-scan parts).
    """
    from tqdm import tqdm

    from ..pipeline.calibration import DEFAULT_FALSE_ALARM_RATE, check_false_alarm_rate
    from ..pipeline.fitting import CleanStatistics
    from ..methods import FitPlan, GlobalDescriptor, create_method

    check_ray_fit(detector.config)
    false_alarm_rate = DEFAULT_FALSE_ALARM_RATE if false_alarm_rate is None else false_alarm_rate
    check_false_alarm_rate(false_alarm_rate)
    images = list(images)
    if not images:
        raise InputError("no clean images to fit on")
    scale = detector._fit_scale(images)  # before the workers start: they build the backbone from the config
    detector._count_multi_page(images)
    detector._resolve_image_score(scale, len(images))
    config = detector.config
    detector.clean_window_ = detector._fit_clean_window(images)  # and window every scan by it
    train_items, holdout_items = detector._holdout_split(images)
    started = time.perf_counter()
    n_views = 1 + len(config.augment)
    plan = FitPlan(training_views=len(train_items) * n_views, all_views=len(images) * n_views)
    method = create_method(config)
    method.begin(plan)
    global_score = GlobalDescriptor() if detector._uses_descriptors else None
    count = worker_count(ray, workers, gpus_per_worker, len(images))
    actors = start_actors(ray, FitWorker, count, gpus_per_worker, config.to_dict(), str(detector.device),
                          detector.runtime, (plan.training_views, plan.all_views), detector.clean_window_,
                          driver_folder([item for item in images if isinstance(item, (str, os.PathLike))]),
                          exit_hook())
    kinds, counts = collections.Counter(), {"patches": 0}
    bar = tqdm(total=len(images), unit="scan", desc="fit", disable=not progress, leave=False)

    def learn(scan: ScanParts) -> None:
        kinds[scan.kind] += 1
        for part, descriptor in zip(scan.parts, scan.descriptors):
            method.absorb(part)
            counts["patches"] += part.n_patches
            if global_score is not None:
                global_score.learn(descriptor)

    try:
        n_train, unreadable = 0, set()

        def skip(item, error) -> None:
            unreadable.add(id(item))
            on_bad_image(item, error)

        for scan in _in_order(ray, actors, "train", train_items, lambda item, k: (item, k * n_views),
                              None if on_bad_image is None else skip, bar):
            learn(scan)
            n_train += 1
            bar.set_postfix(method.progress_postfix())
        learned = [item for item in train_items if id(item) not in unreadable]  # readable ones, in learning order
        if n_train == 0:
            raise InputError("none of the clean images could be read")
        detector._adopt_learned(method, global_score)
        arrays = dict(method.to_arrays())
        if global_score is not None:
            arrays.update(global_score.to_arrays())
        model = ("first-round", [ray.put(arrays)])

        def statistics(items, learn_them: bool, on_bad, call_args=None, progress_bar=None) -> CleanStatistics:
            """Calibration statistics of ``items`` scored by the workers: by default the first round's model
            scores them as scans after the training ones (held-out scans, learned with ``learn_them``)."""
            first_view = n_train * n_views
            columns = ([], [], [], [])
            call_args = call_args or (lambda item, k: (item, first_view + k * n_views, k, model, learn_them))
            for scan in _in_order(ray, actors, "calibrate", items, call_args, on_bad,
                                  bar if learn_them else progress_bar):
                if learn_them:
                    learn(scan)
                for column, value in zip(columns, scan.statistics):
                    column.append(value)
            scores, map_scores, maxima, samples = columns
            return CleanStatistics(np.array(scores), np.array(map_scores) if global_score is not None else None,
                                   np.array(maxima), np.concatenate(samples) if samples else np.zeros(0, np.float32))

        if detector._leaves_scans_out:
            # The workers score the chosen training scans, each without its own bank rows: the model they
            # fetch carries the rows' sources.
            chosen = detector._leave_one_out_choice(len(learned))
            loo_model = ("leave-one-out", [ray.put({**arrays, BANK_SOURCES: method.bank_sources})])
            bar.close()
            loo_bar = tqdm(total=len(chosen), unit="scan", desc="calibrate", disable=not progress, leave=False)
            try:
                stats = statistics([learned[j] for j in chosen], False, None, progress_bar=loo_bar,
                                   call_args=lambda item, k: (item, chosen[k] * n_views, k, loo_model, False,
                                                              (chosen[k] * n_views, (chosen[k] + 1) * n_views)))
            finally:
                loo_bar.close()
        else:
            stats = statistics(holdout_items, True, on_bad_image)
        if not len(stats.image_scores) and global_score is None:
            stats = None  # too few clean scans to hold any out: calibrate on training scans (optimistic)
        return detector._conclude_fit(stats, lambda: statistics(train_items[:10], False, lambda *_: None), n_train,
                                      n_views, kinds, counts, false_alarm_rate, threshold_rule, started,
                                      scale)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)


def _in_order(ray, actors: list, method: str, items: list, call_args, on_bad_image, bar):
    """Yield the ScanParts of the readable ``items`` in input order; ``call_args(item, k)``: the call's
    arguments for an item with ``k`` readable items before it. An unreadable item goes to
    ``on_bad_image(item, error)`` (raised without it); an item handed out before an earlier one turned out
    unreadable is computed again with its true ``k``."""
    unreadable = [0]  # found so far, all before the first unfinished item
    results = OrderedMap(actors, method, len(items), lambda i: call_args(items[i], i - unreadable[0]))
    readable = 0
    for index, result in results:
        if bar is not None:
            bar.update(1)
        while not isinstance(result, InputError) and result.view_index != call_args(items[index], readable)[1]:
            result = ray.get(getattr(results.any_actor(), method).remote(*call_args(items[index], readable)))
        if isinstance(result, InputError):
            if on_bad_image is None:
                raise result
            on_bad_image(items[index], result)
            unreadable[0] += 1
            continue
        readable += 1
        yield result
