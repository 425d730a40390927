#!/usr/bin/env python
"""Does another synthetic score rank the zooms of ``fit --select scale`` as the real test does? (issue 22, point 3)

    python scripts/study_validator.py --datasets gdxray_welds --seeds 0,1,2     # ~3 min on 2 cores
    python scripts/study_validator.py --datasets gdxray_castings,mvtec_screw    # ~25 min
    python scripts/study_validator.py --datasets gdxray_castings --seeds 0,1,2 --max-train 32 \
        --output docs/validator_few32.json                                      # few clean scans; ~10 min
    python scripts/study_validator.py --saturation --datasets gdxray_castingpatches  # open air per folder
    python scripts/study_validator.py --exposure --datasets gdxray_castingpatches,gdxray_fishbones  # exposure spread
    python scripts/study_validator.py --datasets gdxray_welds,gdxray_castings --seeds 0,1,2 --objects-per-scan 8
                                                                   # 4x the objects, shipped ones only; ~45 min
    python scripts/study_validator.py --datasets gdxray_castings,gdxray_welds,mvtec_screw --seeds 0,1,2 --visible
                                                    # objects redrawn until visible (docs/validator_visible.json)
    python scripts/study_validator.py --datasets gdxray_castings --seeds 0 --soft
                                      # visible objects with soft edges (docs/validator_soft.json)
    python scripts/study_validator.py --render-only                             # the table from the JSON

For each dataset and seed it does what ``select_scale`` does (the seeded split of the clean training scans,
at most 160 of them evenly spaced as in ``benchmark_defaults.py``, each zoom fitted on the training part)
and scores every zoom four ways:

* ``shipped/pixel``: the shipped score, pixel AUROC over the shipped synthetic objects (blob, rectangle,
  patch); it reproduces the selection records of ``docs/defaults.json``;
* ``shipped/object``: the mean over objects of each object's AUROC against the clean scans' pixels, so
  a small object weighs as much as a large one (the reason AUPRO exists);
* ``cracks/pixel`` and ``cracks/object``: the same with a quarter of the objects drawn as thin meandering
  cracks (1 px to a twelfth of their box wide; a thin void or wire), defined here and not in the library.

The real test AUROC per zoom is not computed here: it is the study's (``benchmark_defaults.ZOOM_RUNS``).
Results go to ``docs/validator_variants.json``; the table is printed.

``--visible`` scores the shipped objects against ``visible/pixel`` and ``visible/object``: the same objects, except
that a draw which changes the scan by less than ``VISIBLE_MIN_CHANGE`` of its range (on average over its mask: an
object in front of material that already stops the beam, or in open air clipped at the top of the range, is not
seen by the detector either) is drawn again, up to ``VISIBLE_TRIES`` times. Results in
``docs/validator_visible.json``. ``--soft`` scores ``soft/pixel`` and ``soft/object`` instead: visible objects whose
thickness is blurred by a Gaussian of ``SOFT_SIGMA`` of their extent (the real castings defects are diffuse spots
without edges), cut where it falls under ``SOFT_CUT`` of its peak so that the mask stays exact; in
``docs/validator_soft.json``.

``--image-score`` asks the same of the image score where there is no zoom to choose (scans fitted to their own
size): on the seeded split, one fit with the whole-scan descriptor kept, the synthetic image AUROC of the shipped
rule (mean of the top patches) and of ``global`` (the scan judged whole). Results go to
``docs/validator_image_score.json``; the real test's figures are the defaults study's (``select-scale`` against
``select-scale+global``).

``--windows`` and ``--backbones`` score other choices on top of the zoom the selection chose: the intensity windows
(``docs/validator_window.json``), or the ViT against EfficientNet-Lite0 at three zooms
(``docs/validator_backbone.json``; the real test's figures are the defaults study's ``effnet-*`` rows);
``--augment`` scores no augmentation against mirrored clean scans, each fitted with its augmentation (the selection
itself fits without), in ``docs/validator_augment.json`` (real figures: ``select-scale+hflip``). With ``--objects
cutpaste`` or ``warp`` these studies place objects that change structure, not attenuation (``STRUCTURE_OBJECTS``).

    python scripts/study_validator.py --image-score --datasets gdxray_castingpatches,gdxray_fishbones --seeds 0,1,2
    python scripts/study_validator.py --image-score --datasets gdxray_castingpatches,gdxray_fishbones --seeds 0,1 \
        --object-sizes 0.15,0.8                                                 # larger objects; ~1 min each
    python scripts/study_validator.py --windows --datasets gdxray_fishbones,gdxray_castingpatches,gdxray_welds,\
mvtec_screw,gdxray_castings                                                     # three windows; ~12 min
    python scripts/study_validator.py --backbones --datasets gdxray_welds,mvtec_screw,gdxray_castings  # ~5 min
    python scripts/study_validator.py --backbones --objects warp --datasets gdxray_welds,mvtec_screw,gdxray_castings
    python scripts/study_validator.py --augment --datasets gdxray_welds,mvtec_screw,gdxray_castings,\
gdxray_castingpatches,gdxray_fishbones                                          # ~7 min
    python scripts/study_validator.py --image-score --datasets gdxray_castingpatches,gdxray_fishbones --seeds 0,1,2 \
        --objects texture --object-sizes 0.4,1                                  # porous texture regions
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
import re
import sys
import time
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rtg_anomaly import DetectorConfig  # noqa: E402
from rtg_anomaly.pipeline import selection  # noqa: E402
from rtg_anomaly.scans import threat_projection as projection  # noqa: E402
from rtg_anomaly.pipeline.detector import Detector  # noqa: E402
from rtg_anomaly.evaluation.metrics import image_auroc, pixel_auroc  # noqa: E402
from rtg_anomaly.pipeline.scale import shorter_sides  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "validator_variants.json"
IMAGE_SCORE_OUTPUT = REPO_ROOT / "docs" / "validator_image_score.json"
IMAGE_SCORES = ("patch_top_mean", "global")
CRACK_SHARE = 0.25
WINDOW_OUTPUT = REPO_ROOT / "docs" / "validator_window.json"
WINDOWS = ("dtype", "clean", "percentile")
# The zoom `--select scale` chose with the default window on the defaults study's subsample (docs/defaults.md).
WINDOW_STUDY_ZOOMS = {"gdxray_castings": (512, 322), "gdxray_welds": (512, 448), "mvtec_screw": (512, 448)}
BACKBONE_OUTPUT = REPO_ROOT / "docs" / "validator_backbone.json"
AUGMENT_OUTPUT = REPO_ROOT / "docs" / "validator_augment.json"
CNN_WEIGHTS = "tf_efficientnet_lite0.in1k_fp16.safetensors"
# EfficientNet-Lite0 zooms: 18 and 26 scan px per cell (the defaults study's `effnet-i224-nb3` and `effnet-i160-nb3`,
# whose real test figures exist), and 8 px (what `--select auto` chose on welds, docs/selection.md).
CNN_STUDY_ZOOMS = ((512, 224), (512, 160), (256, 256))
VARIANTS = ("shipped/pixel", "shipped/object", "cracks/pixel", "cracks/object", "visible/pixel", "visible/object",
            "soft/pixel", "soft/object")
VISIBLE_OUTPUT = REPO_ROOT / "docs" / "validator_visible.json"
VISIBLE_MIN_CHANGE = 0.01  # mean change over the object's mask, as a share of the scan's 0.5-99.5 percentile range
VISIBLE_TRIES = 10
SOFT_OUTPUT = REPO_ROOT / "docs" / "validator_soft.json"
SOFT_SIGMA = 0.25  # of the object's extent (the square root of its footprint's area)
SOFT_CUT = 0.1  # share of the blurred thickness's peak below which it is set to 0 (outside the mask)


def crack_profile(rng: np.random.Generator, box_h: int, box_w: int) -> np.ndarray:
    """float32 (box_h, box_w) thickness of a thin meandering line across the box (0 off the line)."""
    n = 6
    t = np.linspace(0, 1, n)
    y = t * (box_h - 1) + rng.normal(0, 0.12 * box_h, n)
    x = np.full(n, box_w / 2) + rng.normal(0, 0.2 * box_w, n)
    if rng.random() < 0.5:
        x, y = t * (box_w - 1) + rng.normal(0, 0.12 * box_w, n), np.full(n, box_h / 2) + rng.normal(0, 0.2 * box_h, n)
    points = np.stack([np.clip(x, 0, box_w - 1), np.clip(y, 0, box_h - 1)], 1).round().astype(np.int32)
    width = int(rng.integers(1, max(2, min(box_h, box_w) // 12) + 1))
    layer = np.zeros((box_h, box_w), np.uint8)
    cv2.polylines(layer, [points], False, 1, thickness=width)
    return projection._rounded_profile(layer.astype(bool), 1.0)


def project_with_cracks(scan, rng, settings=None, donor=None):
    """``project_object``, except that a quarter of the objects are cracks (sized as the library sizes objects)."""
    if rng.random() >= CRACK_SHARE:
        return projection.project_object(scan, rng, settings, donor)
    settings = settings or projection.ProjectionSettings()
    height, width = scan.shape[:2]
    short = min(height, width)
    extent = projection.draw_extent(rng, settings, short)
    box_h, box_w = int(min(np.ceil(extent), height)), int(min(np.ceil(extent), width))
    y0, x0 = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    thickness = np.zeros((height, width), np.float32)
    thickness[y0 : y0 + box_h, x0 : x0 + box_w] = crack_profile(rng, box_h, box_w)
    if not thickness.any():
        thickness[y0 + box_h // 2, x0 + box_w // 2] = 1.0
    attenuation = float(rng.uniform(settings.min_attenuation, settings.max_attenuation))
    if rng.random() < settings.void_share:
        attenuation = -attenuation
    return projection.ProjectedObject(projection.apply_attenuation(scan, thickness, attenuation), thickness > 0,
                                      thickness, attenuation, "crack")


def visible_change(scan: np.ndarray, projected: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change of ``projected`` from ``scan`` over ``mask`` (bool (H, W)), as a share of ``scan``'s
    0.5-99.5 percentile range (channels averaged)."""
    change = np.abs(projected.astype(np.float64) - scan.astype(np.float64))
    if change.ndim == 3:
        change = change.mean(axis=2)
    low, high = np.percentile(scan, [0.5, 99.5])
    return float(change[mask].mean() / max(float(high - low), 1e-9)) if mask.any() else 0.0


def project_visible(scan, rng, settings=None, donor=None, shape=lambda projected, scan: projected):
    """``shape`` (default: as drawn) of ``projection.project_object``, drawn again (up to ``VISIBLE_TRIES`` draws,
    the last kept) while the object changes the scan by less than ``VISIBLE_MIN_CHANGE`` of its range
    (``visible_change``)."""
    for _ in range(VISIBLE_TRIES):
        projected = shape(projection.project_object(scan, rng, settings, donor=donor), scan)
        if visible_change(scan, projected.scan, projected.mask) >= VISIBLE_MIN_CHANGE:
            break
    return projected


def soft_object(projected, scan: np.ndarray):
    """``projected`` (a ProjectedObject on ``scan``) with its thickness blurred by ``SOFT_SIGMA`` of its extent and
    cut under ``SOFT_CUT`` of its peak: the same attenuation, projected again; the mask is where it is > 0."""
    extent = float(np.sqrt(projected.mask.sum()))
    thickness = gaussian_filter(projected.thickness.astype(np.float64), sigma=max(1.0, SOFT_SIGMA * extent))
    thickness = np.where(thickness >= SOFT_CUT * thickness.max(), thickness / thickness.max(), 0.0).astype(np.float32)
    return projection.ProjectedObject(projection.apply_attenuation(scan, thickness, projected.attenuation),
                                      thickness > 0, thickness, projected.attenuation, projected.shape)


def project_soft(scan, rng, settings=None, donor=None):
    """``project_visible`` of ``soft_object``s: the softened object must be the visible one."""
    return project_visible(scan, rng, settings, donor, shape=soft_object)


def texture_object(scan: np.ndarray, rng: np.random.Generator, settings: projection.ProjectionSettings):
    """A porous region: fine-grained material (or voids) over a soft ellipse spanning ``settings``' sizes of the
    scan's shorter side, the grain smoothed by 0.6-2 px (the upper half of band-limited noise), peak ``mu * t``
    ``settings``' attenuations, half of them voids. The synthetic counterpart of a defect that changes the
    texture of much of a small crop rather than adding one object. Returns (scan, mask)."""
    from scipy.ndimage import gaussian_filter

    height, width = scan.shape[:2]
    extent = rng.uniform(settings.min_size, settings.max_size) * min(height, width)
    aspect = float(np.exp(rng.uniform(np.log(0.5), 0.0)))
    box_h, box_w = int(min(height, max(4, np.ceil(extent)))), int(min(width, max(4, np.ceil(extent * aspect))))
    if rng.random() < 0.5:
        box_h, box_w = min(height, box_w), min(width, box_h)
    y0, x0 = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    yy, xx = np.mgrid[0:box_h, 0:box_w]
    radius = ((yy - (box_h - 1) / 2) / (box_h / 2)) ** 2 + ((xx - (box_w - 1) / 2) / (box_w / 2)) ** 2
    footprint = np.clip((1 - radius) * 3, 0, 1)
    grain = gaussian_filter(rng.normal(size=(box_h, box_w)), rng.uniform(0.6, 2.0))
    grain = np.clip((grain - grain.mean()) / (grain.std() + 1e-9), 0, None)
    thickness = np.zeros((height, width), np.float32)
    thickness[y0 : y0 + box_h, x0 : x0 + box_w] = grain / (grain.max() + 1e-9) * footprint
    attenuation = rng.uniform(settings.min_attenuation, settings.max_attenuation) * (-1 if rng.random() < 0.5 else 1)
    return projection.apply_attenuation(scan, thickness, attenuation), thickness > 0


def texture_validation_set(scans, seed: int, settings: projection.ProjectionSettings) -> list:
    """``selection.synthetic_validation_set``'s layout (``OBJECTS_PER_SCAN`` per scan, the same seeded stream)
    with ``texture_object``s."""
    rng = np.random.default_rng([seed, 0x7e5])
    return [texture_object(scan, rng, settings) for scan in scans for _ in range(selection.OBJECTS_PER_SCAN)]


def _object_box(scan: np.ndarray, rng: np.random.Generator, settings: projection.ProjectionSettings):
    """(top, left, side, alpha): a square box sized as ``project_object`` sizes objects (at least 4 px) and a float
    (side, side) soft-edged disc in it (1 inside, falling to 0 over a quarter of the side)."""
    height, width = scan.shape[:2]
    short = min(height, width)
    side = int(max(4, np.ceil(projection.draw_extent(rng, settings, short))))
    alpha = projection._rounded_profile(projection._ellipse(side, side) > 0, 0.25 * side)
    return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side, alpha


def _visible(scan: np.ndarray, out: np.ndarray, mask: np.ndarray, share: float) -> bool:
    """Whether the object changed its footprint by at least ``share`` of the scan's 1-99 percentile range on
    average (a structure moved over a flat region changes nothing and would be a label without an anomaly)."""
    low, high = np.percentile(scan, [1, 99])
    change = np.abs(out.astype(np.float64) - scan.astype(np.float64))[mask].mean()
    return bool(mask.any() and change >= share * max(high - low, 1e-6))


def cutpaste_object(scan: np.ndarray, rng: np.random.Generator, settings: projection.ProjectionSettings,
                    tries: int = 20):
    """A soft-edged disc of the scan itself, cut elsewhere, turned by a multiple of 90 degrees and maybe mirrored,
    pasted over the box (CutPaste): the intensities are the scan's own, the structure is out of place. Redrawn
    (up to ``tries``) until it changes its footprint by 5 % of the scan's range. Returns (scan, mask)."""
    for _ in range(tries):
        y0, x0, side, alpha = _object_box(scan, rng, settings)
        sy, sx = int(rng.integers(0, scan.shape[0] - side + 1)), int(rng.integers(0, scan.shape[1] - side + 1))
        piece = np.rot90(scan[sy : sy + side, sx : sx + side], int(rng.integers(4))).astype(np.float64)
        if rng.random() < 0.5:
            piece = piece[:, ::-1]
        out = blend(scan, piece, alpha, y0, x0)
        mask = np.zeros(scan.shape[:2], bool)
        mask[y0 : y0 + side, x0 : x0 + side] = alpha > 0.5
        if _visible(scan, out, mask, 0.05):
            break
    return out, mask


def warp_object(scan: np.ndarray, rng: np.random.Generator, settings: projection.ProjectionSettings,
                tries: int = 20):
    """A smooth local displacement of the scan over a soft-edged disc, up to 10-30 % of its side: material bent
    or shifted, no material added. Redrawn (up to ``tries``) until it changes its footprint by 3 % of the scan's
    range. Returns (scan, mask)."""
    from scipy.ndimage import gaussian_filter

    height, width = scan.shape[:2]
    for _ in range(tries):
        y0, x0, side, alpha = _object_box(scan, rng, settings)
        amplitude = rng.uniform(0.1, 0.3) * side
        map_x, map_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        for grid in (map_x, map_y):
            field = gaussian_filter(rng.standard_normal((side, side)), max(1.0, side / 4))
            grid[y0 : y0 + side, x0 : x0 + side] += (field / (np.abs(field).max() + 1e-12) * amplitude * alpha)
        out = cv2.remap(scan, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((height, width), bool)
        mask[y0 : y0 + side, x0 : x0 + side] = alpha > 0.5
        if _visible(scan, out, mask, 0.03):
            break
    return out, mask


def blend(scan: np.ndarray, piece: np.ndarray, alpha: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """``scan`` with ``piece`` blended in at (y0, x0) by ``alpha`` (2-D scans), in the scan's dtype."""
    side_y, side_x = alpha.shape
    out = scan.astype(np.float64)
    out[y0 : y0 + side_y, x0 : x0 + side_x] = alpha * piece + (1 - alpha) * out[y0 : y0 + side_y, x0 : x0 + side_x]
    if np.issubdtype(scan.dtype, np.integer):
        info = np.iinfo(scan.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(scan.dtype)


STRUCTURE_OBJECTS = {"cutpaste": cutpaste_object, "warp": warp_object}


def structure_validation_set(scans, seed: int, settings: projection.ProjectionSettings, kind: str) -> list:
    """``selection.synthetic_validation_set``'s layout (``OBJECTS_PER_SCAN`` per scan) with ``kind`` objects
    (``STRUCTURE_OBJECTS``), from their own seeded stream."""
    rng = np.random.default_rng([seed, 0x57])
    return [STRUCTURE_OBJECTS[kind](scan, rng, settings) for scan in scans for _ in range(selection.OBJECTS_PER_SCAN)]


def object_auroc(clean_maps: list[np.ndarray], maps: list[np.ndarray], masks: list[np.ndarray], stride: int) -> float:
    """Mean over objects of P(object pixel > clean pixel) (ties half): clean pixels every ``stride``-th row and
    column of the clean maps, every pixel of each object's mask."""
    negatives = np.sort(np.concatenate([m[::stride, ::stride].ravel() for m in clean_maps]))
    values = []
    for anomaly_map, mask in zip(maps, masks):
        positives = anomaly_map[mask]
        below = np.searchsorted(negatives, positives, side="left")
        equal = np.searchsorted(negatives, positives, side="right") - below
        values.append(float(((below + 0.5 * equal) / negatives.size).mean()))
    return float(np.mean(values))


def evenly_spaced(items: list, n: int) -> list:
    if n >= len(items):
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))]


def study(dataset: str, data_root: Path, seed: int, max_train: int,
          objects_per_scan: int = selection.OBJECTS_PER_SCAN, visible: bool = False, soft: bool = False) -> dict:
    """Every zoom's four scores on the seeded split (``VARIANTS``); with another ``objects_per_scan`` than the
    selection's, the shipped objects alone (``shipped/pixel``, ``shipped/object``), that many per validation scan;
    with ``visible``, the shipped objects and the same redrawn until visible (``visible/...``, ``project_visible``);
    with ``soft``, the shipped objects and visible soft ones (``soft/...``, ``project_soft``)."""
    items = evenly_spaced(sorted((data_root / dataset / "train" / "good").iterdir()), max_train)
    base = DetectorConfig(seed=seed)
    train, clean = selection._validation_scans(items, seed, None)
    settings = projection.ProjectionSettings()
    synthetic = {"shipped": selection.synthetic_validation_set(clean, train, seed, settings, objects_per_scan)}
    other = ({"visible": project_visible} if visible else {"soft": project_soft} if soft else
             {"cracks": project_with_cracks} if objects_per_scan == selection.OBJECTS_PER_SCAN else {})
    for name, projector in other.items():
        shipped_projection = selection.project_object
        selection.project_object = projector
        try:
            synthetic[name] = selection.synthetic_validation_set(clean, train, seed, settings, objects_per_scan)
        finally:
            selection.project_object = shipped_projection
    for name, objects in synthetic.items():
        changes = [visible_change(scan, out, mask) for scan, (out, mask) in
                   zip((scan for scan in clean for _ in range(objects_per_scan)), objects)]
        print(f"{dataset} seed {seed}: {name} objects changing the scan by less than {VISIBLE_MIN_CHANGE:.0%} of its "
              f"range: {np.mean(np.array(changes) < VISIBLE_MIN_CHANGE):.0%} of {len(changes)}", flush=True)
    rows = {}
    for candidate in selection.zoom_candidates(base, shorter_sides(items)):
        started = time.perf_counter()
        detector = selection.fit_candidate(candidate, base, train, device="cpu")
        clean_maps = [detector.raw_scores(scan).anomaly_map for scan in clean]
        row = {}
        for name, objects in synthetic.items():
            maps = [detector.raw_scores(scan).anomaly_map for scan, _ in objects]
            masks = [mask for _, mask in objects]
            stride = max(1, int(np.sqrt(max(m.size for m in clean_maps + maps) / selection.PIXEL_BUDGET)))
            row[f"{name}/pixel"] = pixel_auroc([np.zeros(m.shape, bool) for m in clean_maps] + masks,
                                               clean_maps + maps, stride=stride)
            row[f"{name}/object"] = object_auroc(clean_maps, maps, masks, stride)
        rows[candidate.name] = row
        print(f"{dataset} seed {seed} ({len(train)} train, {len(clean)} validation scans) {candidate.name}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in row.items()) + f" ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return rows


def image_score_study(dataset: str, data_root: Path, seed: int, max_train: int,
                      settings: projection.ProjectionSettings | None = None, objects: str = "shipped") -> dict:
    """Synthetic image AUROC of each of ``IMAGE_SCORES`` on ``select_scale``'s seeded split of the dataset's clean
    scans (objects drawn with ``settings``, default the shipped ones; ``objects="texture"``: ``texture_object``s
    instead), from one fit at the scale the fit picks; with the split's sizes, the objects' kind and size range
    and that scale."""
    settings = settings or projection.ProjectionSettings()
    items = evenly_spaced(sorted((data_root / dataset / "train" / "good").iterdir()), max_train)
    base = DetectorConfig(seed=seed)
    train, clean = selection._validation_scans(items, seed, None)
    synthetic = (texture_validation_set(clean, seed, settings) if objects == "texture" else
                 selection.synthetic_validation_set(clean, train, seed, settings))
    # The global score calibrates on held-out scans, so a fifth is held out; they join the bank after scoring.
    config = base.replace(image_score="global", calibration="holdout", holdout_fraction=0.2, augment=())
    detector = Detector(config, device="cpu").fit(list(train))
    raws = [detector.raw_scores(scan) for scan in clean] + [detector.raw_scores(scan) for scan, _ in synthetic]
    labels = np.r_[np.zeros(len(clean)), np.ones(len(synthetic))]
    scores = {"patch_top_mean": [selection._top_mean(raw.patch_scores, base.top_patches) for raw in raws],
              "global": [detector.global_.distance(raw.descriptor) for raw in raws]}
    row = {name: image_auroc(labels, scores[name]) for name in IMAGE_SCORES}
    row.update(n_train=len(train), n_validation=len(clean), n_objects=len(synthetic),
               object_sizes=[settings.min_size, settings.max_size], objects=objects,
               tile_size=detector.config.tile_size, input_size=detector.config.input_size)
    print(f"{dataset} seed {seed}: " + ", ".join(f"{name} {row[name]:.4f}" for name in IMAGE_SCORES), flush=True)
    return row


def choice_study(dataset: str, data_root: Path, seed: int, max_train: int, candidates: list,
                 keep_augment: bool = False, objects: str = "shipped") -> dict:
    """Synthetic image and pixel AUROC of each ``selection.Candidate`` on ``select_scale``'s seeded split and shipped
    objects, scored as ``select_scale`` scores a zoom, on top of the zoom the selection chose on the dataset with the
    defaults (``WINDOW_STUDY_ZOOMS``; the scans' own size elsewhere); ``keep_augment``: fit each candidate with its
    ``augment`` (``fit_keeping_augment``); ``objects``: "shipped" or one of ``STRUCTURE_OBJECTS``. Returns
    {candidate name: {"image", "pixel"}, "zoom": that zoom}."""
    items = evenly_spaced(sorted((data_root / dataset / "train" / "good").iterdir()), max_train)
    base = DetectorConfig(seed=seed)
    if dataset in WINDOW_STUDY_ZOOMS:
        base = base.replace(tile_size=WINDOW_STUDY_ZOOMS[dataset][0], input_size=WINDOW_STUDY_ZOOMS[dataset][1])
    train, clean = selection._validation_scans(items, seed, None)
    settings = projection.ProjectionSettings()
    synthetic = (selection.synthetic_validation_set(clean, train, seed, settings) if objects == "shipped" else
                 structure_validation_set(clean, seed, settings, objects))
    kept = mock.patch.object(selection, "fit_candidate", fit_keeping_augment) if keep_augment else nullcontext()
    with kept:
        results = selection._evaluate_all(candidates, base, train, clean, synthetic, "cpu", "auto", "pixel", None)
    failed = [f"{r.name}: {r.error}" for r in results if r.error]
    if failed:
        raise SystemExit(f"{dataset}: " + "; ".join(failed))
    row = {r.name: {"image": r.image_auroc, "pixel": r.pixel_auroc} for r in results}
    row["zoom"] = f"t{base.tile_size}-i{base.input_size}" if dataset in WINDOW_STUDY_ZOOMS else "fitted to the scans"
    print(f"{dataset} seed {seed}: " + ", ".join(f"{c.name} pixel {row[c.name]['pixel']:.4f}" for c in candidates),
          flush=True)
    return row


def window_candidates() -> list:
    """One candidate per ``WINDOWS`` entry (``intensity_window``)."""
    return [selection.Candidate(window, {"intensity_window": window}) for window in WINDOWS]


def backbone_candidates(weights_dir: Path) -> list:
    """The default ViT at the study's zoom, then EfficientNet-Lite0 (blocks 2+3, 3x3 pooling, the peer's) at each of
    ``CNN_STUDY_ZOOMS``, its offline weights from ``weights_dir``."""
    cnn = {"backbone": selection.CNN_BACKBONE, "weights": str(weights_dir / CNN_WEIGHTS), "layers": (2, 3),
           "neighbourhood": 3}
    return [selection.Candidate("vit", {})] + [
        selection.Candidate(f"cnn-t{tile}-i{size}", dict(cnn, tile_size=tile, input_size=size))
        for tile, size in CNN_STUDY_ZOOMS]


AUGMENTS = ("none", "hflip")


def augment_candidates() -> list:
    """No augmentation (what the selection fits) and mirrored copies of the clean scans (``--augment hflip``)."""
    return [selection.Candidate("none", {"augment": ()}), selection.Candidate("hflip", {"augment": ("hflip",)})]


def fit_keeping_augment(candidate, base, train, device="auto", runtime="auto"):
    """``selection.fit_candidate`` with the candidate's ``augment`` kept (the selection always fits without)."""
    config = selection.candidate_config(candidate, base).replace(augment=candidate.config(base).augment)
    return Detector(config, device=device, runtime=runtime).fit(list(train))


def render_choices(results: dict, names: tuple[str, ...]) -> str:
    """Markdown table of ``choice_study`` results keyed "dataset/seed[/objects]", one column per candidate in
    ``names``; bold: the candidate the pixel score keeps."""
    lines = ["| dataset | seed | objects | zoom | " + " | ".join(f"`{n}`: synthetic image / pixel AUROC" for n in names)
             + " |", "|---|---|---|---|" + "---|" * len(names)]
    for key in sorted(results):
        dataset, seed, *objects = key.split("/")
        row = results[key]
        best = max(names, key=lambda n: row[n]["pixel"])
        cells = [f"{row[n]['image']:.3f} / " + (f"**{row[n]['pixel']:.3f}**" if n == best else f"{row[n]['pixel']:.3f}")
                 for n in names]
        lines.append(f"| {dataset} | {seed} | {objects[0] if objects else 'shipped'} | {row['zoom']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def saturated_shares(dataset_dir: Path, level: int = 250, min_share: float = 0.1) -> dict[str, tuple[int, float]]:
    """Per folder of an MVTec-layout dataset (``train/good``, ``test/<kind>``): (scans, share of them with more
    than ``min_share`` of their pixels at ``level`` or above, open air in an 8-bit radiograph)."""
    from rtg_anomaly.scans.io import list_images, load_image

    out = {}
    for folder in [dataset_dir / "train" / "good", *sorted(p for p in (dataset_dir / "test").iterdir() if p.is_dir())]:
        paths = list_images(folder)
        shares = [float((np.asarray(load_image(path)) >= level).mean()) for path in paths]
        out[str(folder.relative_to(dataset_dir))] = (len(paths), float(np.mean([v > min_share for v in shares])))
    return out


def exposure_spread(dataset_dir: Path, scans: int = 60) -> float:
    """Coefficient of variation (std / mean) over up to ``scans`` evenly spaced clean training scans of each scan's
    0.5-99.5 percentile range (grey values; colour scans averaged over channels): how much exposure varies."""
    from rtg_anomaly.scans.io import list_images, load_image

    spans = []
    for path in evenly_spaced(list_images(dataset_dir / "train" / "good"), scans):
        image = np.asarray(load_image(path), np.float64)
        low, high = np.percentile(image if image.ndim == 2 else image.mean(-1), [0.5, 99.5])
        spans.append(high - low)
    return float(np.std(spans) / np.mean(spans))


def render_image_score(results: dict) -> str:
    """Markdown table of ``image_score_study`` results keyed "dataset/seed/min-max" (object sizes as fractions
    of the scan's shorter side); bold: the higher score."""
    lines = ["| dataset | seed | objects: sizes | fitted scale | validation scans / objects | synthetic image AUROC: "
             "top patches | whole scan (`global`) |", "|---|---|---|---|---|---|---|"]
    for key in sorted(results):
        dataset, seed = key.split("/")[:2]
        row = results[key]
        low, high = row["object_sizes"]
        best = max(IMAGE_SCORES, key=lambda name: row[name])
        cells = [f"**{row[n]:.3f}**" if n == best else f"{row[n]:.3f}" for n in IMAGE_SCORES]
        lines.append(f"| {dataset} | {seed} | {row.get('objects', 'shipped')}: {low:g}–{high:g} | t{row['tile_size']}-i{row['input_size']} | "
                     f"{row['n_validation']} / {row['n_objects']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def trial_order(rows: dict) -> list[str]:
    """The zoom names in the order ``select_scale`` tries them (``ZOOM_STEPS``: 16, 22, 32, then 12 scan px per
    cell with the default scale); the JSON keeps them sorted by name."""
    order = [16, 22, 32, 12]
    return sorted(rows, key=lambda name: order.index(int(re.search(r"\((\d+) px/cell\)", name).group(1))))


def chosen(rows: dict, variant: str) -> str:
    """The zoom ``select_scale``'s rule would keep by ``variant``: tried in order, a later one must gain
    ``SCALE_MARGIN`` over the best before it."""
    best_name, best = None, None
    for name in trial_order(rows):
        row = rows[name]
        if best is None or row[variant] > best + selection.SCALE_MARGIN:
            best_name, best = name, row[variant]
    return best_name


def scored_variants(results: dict) -> tuple[str, ...]:
    """The ``VARIANTS`` every zoom of every run in ``results`` has (a run with more objects per scan has the
    shipped objects' alone)."""
    rows = [row for run in results.values() for row in run.values()]
    return tuple(v for v in VARIANTS if all(v in row for row in rows))


def pooled(results: dict) -> dict[str, tuple[list[str], dict]]:
    """dataset -> (its seeds, zoom -> variant -> mean over those seeds), for datasets run with two seeds or more:
    what a selection that pools several seeded splits would see."""
    seeds: dict[str, list[str]] = {}
    for key in sorted(results):
        dataset, seed = key.rsplit("/", 1)
        seeds.setdefault(dataset, []).append(seed)
    out = {}
    for dataset, names in seeds.items():
        if len(names) < 2:
            continue
        runs = [results[f"{dataset}/{seed}"] for seed in names]
        zooms = [zoom for zoom in runs[0] if all(zoom in run for run in runs)]
        variants = scored_variants(dict(zip(names, runs)))
        out[dataset] = (names, {zoom: {v: float(np.mean([run[zoom][v] for run in runs])) for v in variants}
                                for zoom in zooms})
    return out


def _zoom_rows(dataset: str, seeds: str, rows: dict, variants: tuple[str, ...]) -> list[str]:
    """Table rows of one dataset's zooms in trial order, each score bold where the selection rule keeps it."""
    picks = {variant: chosen(rows, variant) for variant in variants}
    return [f"| {dataset} | {seeds} | {name} | "
            + " | ".join(f"**{rows[name][v]:.3f}**" if picks[v] == name else f"{rows[name][v]:.3f}" for v in variants)
            + " |" for name in trial_order(rows)]


def render(results: dict) -> str:
    variants = scored_variants(results)
    lines = ["| dataset | seed | zoom | " + " | ".join(variants) + " |", "|---|---|---|" + "---|" * len(variants)]
    for key in sorted(results):
        dataset, seed = key.rsplit("/", 1)
        lines += _zoom_rows(dataset, seed, results[key], variants)
    lines += ["", "Rows in the order the zooms are tried. Bold: the zoom the selection rule would keep by that score "
              "(a zoom tried later must gain 0.005 over the best before it)."]
    pools = pooled(results)
    if pools:
        lines += ["", "Pooled over the seeds (each zoom's score averaged over the seeded splits, then the same rule):",
                  "", "| dataset | seeds | zoom | " + " | ".join(variants) + " |",
                  "|---|---|---|" + "---|" * len(variants)]
        for dataset, (names, rows) in pools.items():
            lines += _zoom_rows(dataset, ",".join(names), rows, variants)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="gdxray_welds,gdxray_castings,mvtec_screw")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--data-root", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--max-train", type=int, default=160)
    parser.add_argument("--output", default=None, help="default: docs/validator_variants.json, or "
                        "docs/validator_image_score.json with --image-score")
    parser.add_argument("--image-score", action="store_true",
                        help="compare the image scores (top patches, whole scan) instead of the zoom scores")
    parser.add_argument("--object-sizes", default=None, metavar="MIN,MAX",
                        help="with --image-score: the objects' size range as fractions of the scan's shorter side "
                             "(default: the shipped ProjectionSettings)")
    parser.add_argument("--objects", choices=("shipped", "texture", *STRUCTURE_OBJECTS), default="shipped",
                        help="the shipped objects; with --image-score porous texture regions (texture_object); "
                             "with --windows/--backbones/--augment cutpaste or warp (STRUCTURE_OBJECTS)")
    parser.add_argument("--windows", action="store_true",
                        help="compare the intensity windows (dtype, clean) by the selection's synthetic score")
    parser.add_argument("--backbones", action="store_true",
                        help="compare the ViT at the chosen zoom with EfficientNet-Lite0 at three zooms by the "
                             "selection's synthetic score (datasets with a zoom choice only)")
    parser.add_argument("--augment", action="store_true",
                        help="compare no augmentation with --augment hflip by the selection's synthetic score")
    parser.add_argument("--saturation", action="store_true",
                        help="print each folder's share of scans more than 10 %% open air (>= 250) and stop")
    parser.add_argument("--exposure", action="store_true",
                        help="print each dataset's exposure spread over its clean scans (exposure_spread) and stop")
    parser.add_argument("--objects-per-scan", type=int, default=selection.OBJECTS_PER_SCAN,
                        help="synthetic copies of each validation scan, one object each (default: the selection's "
                             f"{selection.OBJECTS_PER_SCAN}); another count scores the shipped objects alone, into "
                             "docs/validator_objects<N>.json")
    redrawn = parser.add_mutually_exclusive_group()
    redrawn.add_argument("--visible", action="store_true",
                         help="score the shipped objects and the same redrawn until the detector would see them "
                              "(project_visible), into docs/validator_visible.json")
    redrawn.add_argument("--soft", action="store_true",
                         help="score the shipped objects and visible ones with soft edges (project_soft), into "
                              "docs/validator_soft.json")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if args.exposure:
        for dataset in args.datasets.split(","):
            print(f"{dataset}: exposure spread {exposure_spread(Path(args.data_root) / dataset):.2f}")
        return 0
    if args.saturation:
        for dataset in args.datasets.split(","):
            for folder, (n, share) in saturated_shares(Path(args.data_root) / dataset).items():
                print(f"{dataset} {folder}: {n} scans, {100 * share:.0f} % more than 10 % open air")
        return 0
    settings = projection.ProjectionSettings()
    if args.object_sizes:
        low, high = (float(v) for v in args.object_sizes.split(","))
        settings = projection.ProjectionSettings(min_size=low, max_size=high)
    output = Path(args.output or (WINDOW_OUTPUT if args.windows else BACKBONE_OUTPUT if args.backbones else
                                  AUGMENT_OUTPUT if args.augment else
                                  IMAGE_SCORE_OUTPUT if args.image_score else VISIBLE_OUTPUT if args.visible else
                                  SOFT_OUTPUT if args.soft else
                                  DEFAULT_OUTPUT if args.objects_per_scan == selection.OBJECTS_PER_SCAN else
                                  DEFAULT_OUTPUT.with_name(f"validator_objects{args.objects_per_scan}.json")))
    results = json.loads(output.read_text()) if output.is_file() else {}
    if not args.render_only:
        for dataset in args.datasets.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                if args.backbones and dataset not in WINDOW_STUDY_ZOOMS:
                    parser.error(f"--backbones: {dataset} has no zoom choice (its scans are fitted to their size)")
                if args.windows or args.backbones or args.augment:
                    if args.objects == "texture":
                        parser.error("--objects texture goes with --image-score")
                    candidates = (window_candidates() if args.windows else augment_candidates() if args.augment else
                                  backbone_candidates(Path(args.data_root).parent / "weights"))
                    key = f"{dataset}/{seed}" + (f"/{args.objects}" if args.objects != "shipped" else "")
                    results[key] = choice_study(dataset, Path(args.data_root), seed, args.max_train, candidates,
                                                keep_augment=args.augment, objects=args.objects)
                elif args.image_score:
                    if args.objects in STRUCTURE_OBJECTS:
                        parser.error(f"--objects {args.objects} goes with --windows, --backbones or --augment")
                    key = f"{dataset}/{seed}/{settings.min_size:g}-{settings.max_size:g}"
                    if args.objects != "shipped":
                        key += f"/{args.objects}"
                    results[key] = image_score_study(dataset, Path(args.data_root), seed, args.max_train, settings,
                                                     args.objects)
                else:
                    results[f"{dataset}/{seed}"] = study(dataset, Path(args.data_root), seed, args.max_train,
                                                         args.objects_per_scan, visible=args.visible, soft=args.soft)
                output.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if args.windows or args.backbones or args.augment:
        names = (WINDOWS if args.windows else AUGMENTS if args.augment else
                 tuple(c.name for c in backbone_candidates(Path("."))))
        print(render_choices(results, names))
    else:
        print((render_image_score if args.image_score else render)(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
