"""Choose the detector's configuration from clean scans alone (``fit --select auto``).

A user has clean scans and no labelled anomalies, so the choice cannot be made on a test set. Instead:

1. A seeded share of the clean scans is set aside for validation; the rest trains each candidate.
2. Every validation scan is kept clean and also given synthetic objects (``threat_projection``:
   threat image projection, the way screening systems test operators), with exact masks.
3. Each candidate is fitted on the training part and scores the clean and the synthetic validation
   scans; its validation score is the mean of the image AUROC (clean vs synthetic) and the pixel
   AUROC (synthetic masks against every validation map).
4. The candidate with the best score wins; a later candidate must beat an earlier one by ``MARGIN``
   (candidates are ordered from today's default outwards, so a tie keeps the default).

The candidates cover what moved results most in the ablations: the *scale* at which the backbone
sees the scan (scan pixels per feature cell, from a tile size relative to the scans' own size and an
input size), the backbone (DINOv2 ViT-S block 6, EfficientNet-Lite0 stages 2+3 with 3x3 pooling),
then on the winner the PCA whitening and the intensity window, and, for free from the same scores,
the number of top patches that makes the image score.

``fit --select scale`` (the default) is the narrow form that won the rule for defaults: the configured
backbone at four zooms of the configured scale (``ZOOM_STEPS``), judged by the *pixel* AUROC of the
synthetic objects alone. Over the shared datasets the synthetic pixel AUROC ranked these zooms as the real
test AUROC did on castings and screw (it missed welds' finer zoom), while the synthetic image AUROC did not
(docs/defaults.md). Scans small enough to be refitted to their own size
(``scale.fit_scale_to_scans``) keep that fitted scale: there is nothing to choose.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..config import DEFAULT_BACKBONE, DetectorConfig
from ..errors import InputError
from ..evaluation.metrics import image_auroc, pixel_auroc
from ..scans.threat_projection import ProjectionSettings, project_object
from .scale import fit_scale_to_scans, input_multiple, shorter_sides

CNN_BACKBONE = "tf_efficientnet_lite0"
# Scan pixels per backbone pixel, from zoomed-in (today's default) to a third of the scan's resolution.
VIT_ZOOMS = (0.875, 0.5, 0.33)
CNN_ZOOMS = (1.0, 0.5, 0.33)
VIT_INPUT, VIT_PATCH, VIT_MIN_INPUT = 448, 14, 224
CNN_INPUT, CNN_STRIDE, CNN_MIN_INPUT = 256, 32, 128
TOP_PATCH_CHOICES = (1, 3, 5, 10)
# The fields a selection chooses; the user's other settings (coreset, seed, ...) are kept.
SELECTED_FIELDS = ("backbone", "weights", "layers", "neighbourhood", "tile_size", "input_size", "pca_whiten",
                   "intensity_window", "top_patches", "image_score")
MARGIN = 0.002
# --select scale: (tile, input) multipliers of the configured scale, default first. With 512 px tiles seen at
# 448 px: 16, 22 and 32 scan px per ViT cell (the last a whole castings frame in one 768 px tile), then 12
# (384 px tiles: finer cells cost about 1.8x the tiles of the default).
ZOOM_STEPS = ((1.0, 1.0), (1.0, 0.72), (1.5, 0.75), (0.75, 1.0))
SCALE_MARGIN = 0.005  # pixel AUROC a zoom tried later must gain over the best one before it
SCALE_MIN_SCANS = 6  # fewer clean scans: the configured scale is kept (2 validation scans are too few)
# A candidate's memory bank is at most this share of its clean patches, whatever the fit's bank: the bank size is
# not a chosen field, so the choice should not move with it, and the selection's fits should not cost more when
# a user asks for a larger bank (the greedy coreset's work grows with the rows it keeps).
SELECTION_CORESET_RATIO = 0.1
# The Gaussian (in patches) on a candidate's synthetic maps, whatever the fit's own map setting: the validator's
# rank correlations were measured with it (docs/defaults.md). Without it a map one cell sharper moved screw's zoom
# on the defaults study's subsample, which the map's own setting must not do.
SELECTION_SMOOTHING_SIGMA = 0.5
MAX_TRAIN_SCANS = 48
MAX_VALIDATION_SCANS = 16
OBJECTS_PER_SCAN = 2
PIXEL_BUDGET = 2_000_000  # pixels per validation map kept for the pixel AUROC (strided)


@dataclass(frozen=True)
class Candidate:
    """One configuration tried: a name and the DetectorConfig fields it sets."""

    name: str
    overrides: dict

    def config(self, base: DetectorConfig) -> DetectorConfig:
        return base.replace(**self.overrides)


@dataclass
class CandidateResult:
    """Validation figures of one candidate: AUROCs on synthetic anomalies (None when the candidate could not
    be fitted, with ``error`` saying why), the top-patch count that gave the image AUROC, seconds of fit +
    scoring."""

    name: str
    overrides: dict
    image_auroc: float | None
    pixel_auroc: float | None
    score: float | None
    top_patches: int
    seconds: float
    error: str | None = None

    def config(self, base: DetectorConfig) -> DetectorConfig:
        """``base`` with this candidate's fields and its best top-patch count: what ``fit`` then runs."""
        return base.replace(**self.overrides, top_patches=self.top_patches, image_score="patch_top_mean")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["overrides"] = {key: _jsonable(value) for key, value in self.overrides.items()}
        return out


@dataclass
class Selection:
    """Outcome of ``select_config`` or ``select_scale``: the chosen config and the record stored in the bundle
    (``to_dict``: everything but the wall-clock times, which ``summary`` prints)."""

    config: DetectorConfig
    chosen: str
    candidates: list[CandidateResult]
    n_train_scans: int
    n_validation_scans: int
    n_synthetic_scans: int
    settings: ProjectionSettings
    seed: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    mode: str = "auto"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "chosen": self.chosen,
                "chosen_fields": {name: _jsonable(getattr(self.config, name)) for name in SELECTED_FIELDS},
                # no wall-clock times: the same clean scans must give the same bundle bytes
                "candidates": [{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in self.candidates],
                "n_train_scans": self.n_train_scans, "n_validation_scans": self.n_validation_scans,
                "n_synthetic_scans": self.n_synthetic_scans, "synthesis": self.settings.to_dict(),
                "margin": SCALE_MARGIN if self.mode == "scale" else MARGIN, "seed": self.seed, "notes": list(self.notes)}

    def summary(self) -> str:
        """One line per candidate, best marked, for the fit summary."""
        lines = []
        for result in self.candidates:
            mark = "*" if result.name == self.chosen else " "
            if result.error:
                lines.append(f" {mark} {result.name:<22} skipped: {result.error}")
            else:
                lines.append(f" {mark} {result.name:<22} image {result.image_auroc:.3f}  pixel {result.pixel_auroc:.3f}  "
                             f"score {result.score:.3f}  top {result.top_patches:<2}  {result.seconds:.0f} s")
        return "\n".join(lines)


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def scale_candidates(shorter_side: int, cnn_weights: str | None = None) -> list[Candidate]:
    """Backbone x scale candidates for scans whose shorter side is ``shorter_side`` px.

    A candidate's tile covers ``input / zoom`` scan pixels, at most the shorter side (a small scan is one
    tile, seen whole); its input is the tile times the zoom, rounded to the backbone's patch, and at
    least a minimum so that even a 32 px crop gives a grid of 16 cells. Candidates that come out equal
    are tried once. ``cnn_weights``: a weights file for EfficientNet-Lite0 (None: bundled or hub).
    """
    candidates, seen = [], set()
    families = (
        ("vit", VIT_ZOOMS, VIT_INPUT, VIT_PATCH, VIT_MIN_INPUT,
         {"backbone": DEFAULT_BACKBONE, "weights": None, "layers": (6,), "neighbourhood": 1}),
        ("cnn", CNN_ZOOMS, CNN_INPUT, CNN_STRIDE, CNN_MIN_INPUT,
         {"backbone": CNN_BACKBONE, "weights": cnn_weights, "layers": (2, 3), "neighbourhood": 3}),
    )
    for family, zooms, nominal_input, multiple, min_input, fields in families:
        for zoom in zooms:
            tile = int(min(round(nominal_input / zoom), shorter_side))
            size = int(round(tile * zoom / multiple)) * multiple
            size = int(min(nominal_input, max(min_input, size)))
            key = (family, tile, size)
            if key in seen:
                continue
            seen.add(key)
            cell = tile / (size / (VIT_PATCH if family == "vit" else 8))
            candidates.append(Candidate(f"{family}-t{tile}-i{size} ({cell:.0f} px/cell)",
                                        dict(fields, tile_size=tile, input_size=size)))
    return candidates


def refinement_candidates(best: Candidate, base: DetectorConfig, bit_depths: set[str]) -> list[Candidate]:
    """Single changes tried on the best scale candidate: half-whitened PCA, and (for 8-bit scans) a
    per-scan percentile window instead of the full 8-bit range."""
    out = []
    if base.pca_whiten != 0.5:
        out.append(Candidate(best.name + " +whiten0.5", dict(best.overrides, pca_whiten=0.5)))
    if base.intensity_window == "auto" and bit_depths == {"uint8"}:
        out.append(Candidate(best.name + " +percentile", dict(best.overrides, intensity_window="percentile")))
    return out


def synthetic_validation_set(scans: Sequence[np.ndarray], donors: Sequence[np.ndarray], seed: int,
                             settings: ProjectionSettings, objects_per_scan: int = OBJECTS_PER_SCAN):
    """Clean scans with synthetic objects: a list of (scan, mask) pairs, ``objects_per_scan`` per scan,
    each with its own object; the ``patch`` shape borrows texture from ``donors`` (seeded choice)."""
    rng = np.random.default_rng([seed, 0x7e5])
    out = []
    for scan in scans:
        for _ in range(objects_per_scan):
            donor = donors[int(rng.integers(len(donors)))] if donors else None
            projected = project_object(scan, rng, settings, donor=donor)
            out.append((projected.scan, projected.mask))
    return out


def _read_all(items: Sequence, on_bad_image) -> list[np.ndarray]:
    from ..scans.io import load_image

    out = []
    for item in items:
        try:
            out.append(load_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item))
        except InputError as exc:
            if on_bad_image is None:
                raise
            on_bad_image(item, exc)
    return out


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) indices for selection."""
    order = np.random.default_rng([seed, 0x5e1]).permutation(n)
    n_validation = int(min(MAX_VALIDATION_SCANS, max(2, round(0.25 * n))))
    validation = np.sort(order[:n_validation])
    train = np.sort(order[n_validation:][:MAX_TRAIN_SCANS])
    return train, validation


def _validation_scans(items: Sequence, seed: int, on_bad_image) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training, validation) scans of a selection: the seeded ``_split`` of ``items``, read. Only these are
    read: a large archive is never held in memory."""
    train_index, validation_index = _split(len(items), seed)
    return (_read_all([items[i] for i in train_index], on_bad_image),
            _read_all([items[i] for i in validation_index], on_bad_image))


def _evaluate_all(candidates: Sequence[Candidate], base: DetectorConfig, train, clean, synthetic, device,
                  runtime: str, score_by: str, progress: Callable[[str], None] | None) -> list[CandidateResult]:
    """``evaluate_candidate`` for each candidate in order, a progress line after each."""
    results = []
    for candidate in candidates:
        result = evaluate_candidate(candidate, base, train, clean, synthetic, device, runtime, score_by)
        results.append(result)
        if progress is not None:
            scores = (f"synthetic pixel AUROC {result.pixel_auroc:.3f}" if score_by == "pixel" else
                      f"image {result.image_auroc:.3f}, pixel {result.pixel_auroc:.3f}") if not result.error else ""
            progress(f"select: {result.name}: " + (f"skipped ({result.error})" if result.error else
                     f"{scores}, {result.seconds:.0f} s"))
    return results


def candidate_config(candidate: Candidate, base: DetectorConfig) -> DetectorConfig:
    """``candidate``'s config as a selection fits it: no augmentation, no calibration pass (a candidate is judged
    on uncalibrated scores, ``Detector.raw_scores``: its patch scores and map), so the image score is the top
    patches' (a whole-scan rule would need held-out scans), a memory bank of at most
    ``SELECTION_CORESET_RATIO`` of the clean patches (an absolute ``memory_bank_size`` is kept), and maps
    smoothed by ``SELECTION_SMOOTHING_SIGMA``."""
    return candidate.config(base).replace(calibration="holdout", holdout_fraction=0.0, augment=(),
                                          image_score="patch_top_mean", smoothing_sigma=SELECTION_SMOOTHING_SIGMA,
                                          coreset_ratio=min(base.coreset_ratio, SELECTION_CORESET_RATIO))


def fit_candidate(candidate: Candidate, base: DetectorConfig, train: Sequence[np.ndarray], device="auto",
                  runtime: str = "auto"):
    """``candidate``'s Detector fitted on the ``train`` scans with ``candidate_config``."""
    from .detector import Detector

    return Detector(candidate_config(candidate, base), device=device, runtime=runtime).fit(list(train))


def evaluate_candidate(candidate: Candidate, base: DetectorConfig, train: Sequence[np.ndarray],
                       clean: Sequence[np.ndarray], synthetic: Sequence[tuple[np.ndarray, np.ndarray]],
                       device, runtime: str, score_by: str = "mean") -> CandidateResult:
    """Fit ``candidate`` on ``train`` and score the validation scans; errors of the candidate (weights
    not available, scans too small for it) are recorded, not raised.

    score_by: ``"mean"``: the score is the mean of the best image AUROC over ``TOP_PATCH_CHOICES`` and the
    pixel AUROC; ``"pixel"``: the pixel AUROC alone, the image AUROC reported at ``base.top_patches``."""
    started = time.perf_counter()
    try:
        detector = fit_candidate(candidate, base, train, device, runtime)
        clean_raw = [detector.raw_scores(scan) for scan in clean]
        synthetic_raw = [detector.raw_scores(scan) for scan, _ in synthetic]
    except InputError as exc:
        return CandidateResult(candidate.name, candidate.overrides, None, None, None, base.top_patches,
                               time.perf_counter() - started, error=str(exc))
    labels = np.r_[np.zeros(len(clean_raw)), np.ones(len(synthetic_raw))]
    best_image, best_top = -1.0, base.top_patches
    for top in TOP_PATCH_CHOICES if score_by == "mean" else (base.top_patches,):
        scores = [_top_mean(raw.patch_scores, top) for raw in clean_raw + synthetic_raw]
        value = image_auroc(labels, scores)
        if value > best_image + 1e-9 or (abs(value - best_image) <= 1e-9 and top == base.top_patches):
            best_image, best_top = value, top
    maps = [raw.anomaly_map for raw in clean_raw + synthetic_raw]
    masks = [np.zeros(m.shape, bool) for m in maps[: len(clean_raw)]] + [mask for _, mask in synthetic]
    stride = max(1, int(np.sqrt(max(m.size for m in maps) / PIXEL_BUDGET)))
    pixel = pixel_auroc(masks, maps, stride=stride)
    score = pixel if score_by == "pixel" else 0.5 * (best_image + pixel)
    return CandidateResult(candidate.name, candidate.overrides, best_image, pixel, score, best_top,
                           time.perf_counter() - started)


def _top_mean(values: np.ndarray, top: int) -> float:
    top = min(top, values.size)
    return float(np.partition(values, values.size - top)[-top:].mean())


def select_config(items: Sequence, base: DetectorConfig | None = None, device="auto", runtime: str = "auto",
                  settings: ProjectionSettings | None = None, progress: Callable[[str], None] | None = None,
                  on_bad_image: Callable[[object, Exception], None] | None = None,
                  cnn_weights: str | None = None, candidates: Sequence[Candidate] | None = None) -> Selection:
    """Pick the configuration that best separates synthetic anomalies in held-out clean scans.

    items: paths or arrays of clean scans (at least 4 readable ones).
    base: the settings kept (coreset size, k, seed, ...); the fields in ``SELECTED_FIELDS`` are chosen.
    progress: called with a line of text after each candidate.
    candidates: the first-stage candidates (default: ``scale_candidates`` for these scans); the
        refinements of ``refinement_candidates`` are tried on the best of them either way.
    Returns a Selection; ``selection.config`` is ``base`` with the winner's fields.
    """
    base = base or DetectorConfig()
    settings = settings or ProjectionSettings()
    started = time.perf_counter()
    items = list(items)
    if len(items) < 4:
        raise InputError(f"--select auto needs at least 4 clean scans (got {len(items)}); "
                         "pass --select off to fit with the given settings")
    train, clean = _validation_scans(items, base.seed, on_bad_image)
    if len(train) < 2 or len(clean) < 2:
        raise InputError("--select auto could not read enough clean scans; pass --select off")
    synthetic = synthetic_validation_set(clean, train, base.seed, settings)
    scans = train + clean
    shorter = int(np.percentile([min(s.shape[:2]) for s in scans], 10))
    depths = {str(s.dtype) for s in scans}

    def run(candidates: list[Candidate]) -> list[CandidateResult]:
        return _evaluate_all(candidates, base, train, clean, synthetic, device, runtime, "mean", progress)

    stage_one = list(candidates) if candidates is not None else scale_candidates(shorter, cnn_weights)
    results = run(stage_one)
    best = _best(results)
    if best is None:
        raise InputError("no candidate configuration could be fitted: " + "; ".join(r.error or "" for r in results))
    best_candidate = next(c for c in stage_one if c.name == best.name)
    results += run(refinement_candidates(best_candidate, base, depths))
    best = _best(results)
    config = best.config(base)
    notes = [f"scans' 10th-percentile shorter side {shorter} px"]
    return Selection(config, best.name, results, len(train), len(clean), len(synthetic), settings, base.seed,
                     time.perf_counter() - started, notes)


def _best(results: list[CandidateResult], margin: float = MARGIN) -> CandidateResult | None:
    """Highest score; a later candidate must beat the best earlier one by ``margin``."""
    best = None
    for result in results:
        if result.error:
            continue
        if best is None or result.score > best.score + margin:
            best = result
    return best


def zoom_candidates(base: DetectorConfig, shorter_sides: Sequence[int]) -> list[Candidate]:
    """The configured backbone at the ``ZOOM_STEPS`` of ``base``'s scale, for scans with these shorter sides.

    Empty when ``base`` has no input size or the scans are small enough to be refitted to their own size
    (``fit_scale_to_scans``: the fit would replace any tile tried here). A step whose tile the fit would
    refit, or that comes out equal to an earlier one, is left out, so what is validated is what is fitted.
    Names give the scan pixels per feature cell (for the ViT patch or a CNN's stride 8, as
    ``scale_candidates`` names them).
    """
    if base.input_size is None or fit_scale_to_scans(base, shorter_sides) != base:
        return []
    multiple = input_multiple(base.backbone)
    cell = multiple if multiple != 32 else 8
    candidates, seen = [], set()
    for tile_step, input_step in ZOOM_STEPS:
        tile = int(round(base.tile_size * tile_step))
        size = max(multiple, int(round(base.input_size * input_step / multiple)) * multiple)
        trial = base.replace(tile_size=tile, input_size=size)
        if (tile, size) in seen or fit_scale_to_scans(trial, shorter_sides) != trial:
            continue
        seen.add((tile, size))
        candidates.append(Candidate(f"t{tile}-i{size} ({tile * cell / size:.0f} px/cell)",
                                    {"tile_size": tile, "input_size": size}))
    return candidates


def zoom_judging_config(base: DetectorConfig) -> DetectorConfig:
    """``base`` as ``select_scale`` fits its zooms: a ViT with the deepest of ``base.layers`` alone (the fit itself
    keeps every block); ``candidate_config`` then applies the pins every candidate shares.

    The deepest block sets what a cell means, and the validator's rank correlations were measured with block 6
    alone: with blocks 4 and 6 side by side the zooms' synthetic scores came within the margin of each other and
    the choice moved on castings and screw (docs/defaults.md). A CNN keeps its stages: the earlier one also sets
    its finer feature grid."""
    if input_multiple(base.backbone) == 32:
        return base
    return base.replace(layers=(max(base.layers),))


def select_scale(items: Sequence, base: DetectorConfig | None = None, device="auto", runtime: str = "auto",
                 settings: ProjectionSettings | None = None, progress: Callable[[str], None] | None = None,
                 on_bad_image: Callable[[object, Exception], None] | None = None) -> Selection:
    """Choose the zoom (tile and input size) of ``base`` from clean scans alone (``fit --select scale``).

    items: paths or arrays of clean scans. The seeded split, the synthetic objects and the fits are those of
    ``select_config``; the candidates are ``zoom_candidates``, fitted as ``zoom_judging_config`` says, and the
    score is the synthetic pixel AUROC (a zoom tried later must gain ``SCALE_MARGIN``). With fewer than
    ``SCALE_MIN_SCANS`` scans, a method other than PatchCore, or a single candidate, nothing is fitted and
    ``base`` is returned, the reason in ``notes``. The scans' sizes come from their headers, the same sizes the
    fit refits by; only the sampled scans are decoded, and none when there is no choice. Returns a Selection with
    ``mode == "scale"``.
    """
    base = base or DetectorConfig()
    settings = settings or ProjectionSettings()
    started = time.perf_counter()
    items = list(items)

    def kept(note: str, n_train: int = 0, n_validation: int = 0) -> Selection:
        return Selection(base, "configured", [], n_train, n_validation, 0, settings, base.seed,
                         time.perf_counter() - started, [note], mode="scale")

    if base.method != "patchcore":
        return kept(f"scale kept: the zoom is validated for patchcore, not {base.method}")
    if len(items) < SCALE_MIN_SCANS:
        return kept(f"scale kept: {len(items)} clean scans, under the {SCALE_MIN_SCANS} a choice needs")
    # The sizes the fit itself refits by (every scan's header), known before a single scan is decoded.
    sides = shorter_sides(items)
    candidates = zoom_candidates(base, sides)
    if len(candidates) < 2:
        return kept("scale kept: the scans are fitted to their own size" if not candidates
                    else "scale kept: one zoom fits these scans")
    train, clean = _validation_scans(items, base.seed, on_bad_image)
    if len(train) < 2 or len(clean) < 2:
        return kept("scale kept: too few readable clean scans", len(train), len(clean))
    synthetic = synthetic_validation_set(clean, train, base.seed, settings)
    results = _evaluate_all(candidates, zoom_judging_config(base), train, clean, synthetic, device, runtime, "pixel",
                            progress)
    best = _best(results, SCALE_MARGIN)
    if best is None:
        return kept("scale kept: no zoom could be fitted: " + "; ".join(r.error or "" for r in results),
                    len(train), len(clean))
    config = base.replace(**best.overrides)
    return Selection(config, best.name, results, len(train), len(clean), len(synthetic), settings, base.seed,
                     time.perf_counter() - started, [f"scans' median shorter side {int(np.median(sides))} px"],
                     mode="scale")
