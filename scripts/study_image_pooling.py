#!/usr/bin/env python
"""Should a scan's score pool a larger neighbourhood? (issue 22: the lead on how much each score pools)

    python scripts/study_image_pooling.py                 # full sets, ~25 min on 2 cores
    python scripts/study_image_pooling.py --render-only   # the page again from the JSON

The brief's lead names two scales: scan pixels per feature cell (what ``--select scale`` chooses) and how much
neighbourhood each score pools. Pooling the patch *features* (``--neighbourhood 3``) lost in the defaults study
(docs/defaults.md, ``nb3``). This study pools the *scores* instead: one fit per dataset at the zoom the shipped
selection keeps there (castings 22 scan px per cell, welds and screw 16, the crops and fish fitted to their own
size; docs/benchmarks.md), then each test scan's image score taken several ways from the same scoring pass:

- ``top K``: the mean of the K highest raw patch distances (K = 5 ships as ``patch_top_mean``);
- ``map max``: the maximum of the stitched map (already smoothed with sigma 0.5 cells);
- ``map max, sigma S``: the maximum after a further Gaussian of S cells (S = 1, 2, 3): a defect two or three
  cells wide keeps its level, an isolated high patch of a clean scan is averaged down;
- ``shipped``: where the fit resolved ``--image-score auto`` to ``patch_or_global`` (scans fitted into one
  tile), the shipped score, for reference.

Raw (uncalibrated) scores: each variant's AUROC is what it would give, the threshold aside. Results go to
``docs/image_pooling.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT))

import benchmark_quality as bq  # noqa: E402
from benchmark_defaults import machine  # noqa: E402
from study_pages import generated_by, measure_rows, new_cache, page_text, parse_page_args  # noqa: E402
from rtg_anomaly import DetectorConfig  # noqa: E402
from rtg_anomaly.evaluation.metrics import image_auroc  # noqa: E402
from rtg_anomaly.evaluation.mvtec import load_mvtec_folder  # noqa: E402
from rtg_anomaly.pipeline.detector import Detector  # noqa: E402

# The zoom the shipped `--select scale` keeps on each set (docs/benchmarks.md); {} keeps the library's sizes.
ZOOM_KEPT = {"gdxray_castings": {"tile_size": 512, "input_size": 322}, "gdxray_welds": {},
             "gdxray_castingpatches": {}, "gdxray_fishbones": {}, "mvtec_screw": {}}
TOP_PATCHES = (1, 3, 5, 10, 20)
SIGMAS_CELLS = (1.0, 2.0, 3.0)
# The map's Gaussian (cells) this study ran with, the default then; pinned so that a rerun reproduces it.
MAP_SIGMA_CELLS = 0.5
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "image_pooling.json"


def variant_scores(detector: Detector, raw) -> dict[str, float]:
    """Every image score of one scan's ``RawScores`` (raw units), by variant name."""
    patches = np.sort(raw.patch_scores)[::-1]
    anomaly_map = raw.anomaly_map.astype(np.float32)
    cell = detector.config.tile_size / detector.extractor.grid[0]  # scan pixels per feature cell
    scores = {f"top {k}": float(patches[:k].mean()) for k in TOP_PATCHES}
    scores["map max"] = float(anomaly_map.max())
    for sigma in SIGMAS_CELLS:
        scores[f"map max, sigma {sigma:g}"] = float(cv2.GaussianBlur(anomaly_map, (0, 0), sigma * cell).max())
    if detector.config.image_score == "patch_or_global":
        scores["shipped"] = float(detector._image_score(raw))
    return scores


def study_dataset(dataset_dir: Path) -> dict:
    """Fit at the kept zoom, score the test set; each variant's image AUROC and the run's facts."""
    eval_set = load_mvtec_folder(dataset_dir)
    started = time.perf_counter()
    config = DetectorConfig(smoothing_sigma=MAP_SIGMA_CELLS, **ZOOM_KEPT[dataset_dir.name])
    detector = Detector(config, device="cpu").fit(eval_set.train_paths)
    fit_seconds = time.perf_counter() - started
    rows = [variant_scores(detector, detector.raw_scores(item.path)) for item in eval_set.test_items]
    labels = [item.label for item in eval_set.test_items]
    return {"tile_size": detector.config.tile_size, "input_size": detector.config.input_size,
            "cell_px": round(detector.config.tile_size / detector.extractor.grid[0], 1),
            "image_score": detector.config.image_score, "n_train": len(eval_set.train_paths), "n_test": len(labels),
            "fit_s": round(fit_seconds, 1),
            "auroc": {name: image_auroc(labels, [row[name] for row in rows]) for name in rows[0]}}


def render(cache: dict) -> str:
    lines = ["# Pooling the score over a larger neighbourhood", "",
             generated_by("study_image_pooling", cache) + " Full sets.", "",
             "One fit per dataset at the zoom the shipped selection keeps there, no per-dataset flags; each test "
             "scan's image score taken several ways from the same scoring pass (raw units). *top K*: the mean of "
             "the K highest patch distances (*top 5* ships); *map max*: the maximum of the stitched map (smoothed "
             f"with sigma {MAP_SIGMA_CELLS:g} cells, the default when this ran); *sigma S*: its maximum after a "
             "further Gaussian of S feature cells; "
             "*shipped*: the shipped `patch_or_global` score where `auto` resolves to it. Bold: the best variant "
             "of the dataset.", ""]
    datasets = list(cache["datasets"])
    variants = list(dict.fromkeys(name for run in cache["datasets"].values() for name in run["auroc"]))
    lines += ["| variant | " + " | ".join(datasets) + " | mean |", "|---|" + "---|" * (len(datasets) + 1)]
    best = {d: max(run["auroc"].values()) for d, run in cache["datasets"].items()}
    for name in variants:
        cells, values = [], []
        for dataset in datasets:
            value = cache["datasets"][dataset]["auroc"].get(name)
            if value is None:
                cells.append("–")
                continue
            values.append(value)
            cells.append(f"**{value:.3f}**" if value == best[dataset] else f"{value:.3f}")
        mean = f"{np.mean(values):.3f}" if len(values) == len(datasets) else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    lines += ["", "The fits: " + "; ".join(
        f"{d} {run['tile_size']} px tiles at {run['input_size']} px ({run['cell_px']:g} scan px per cell), "
        f"{run['n_train']} clean / {run['n_test']} test scans, image score {run['image_score']}"
        for d, run in cache["datasets"].items()) + "."]
    return page_text(lines, cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(ZOOM_KEPT))
    args = parse_page_args(parser, argv, DEFAULT_OUTPUT, render)
    if args is None:
        return 0
    output = Path(args.output)
    root, _ = bq._data_root(args.data_root)
    unknown = set(args.datasets.split(",")) - set(ZOOM_KEPT)
    if unknown:
        parser.error(f"--datasets: unknown {', '.join(sorted(unknown))} (choose from {', '.join(ZOOM_KEPT)})")
    flags = "" if args.datasets == ",".join(ZOOM_KEPT) else f" --datasets {args.datasets}"
    cache = new_cache(output, machine(), flags=flags, datasets={})
    jobs = [(dataset, lambda dataset=dataset: study_dataset(root / dataset)) for dataset in args.datasets.split(",")]
    measure_rows(output, cache, "datasets", jobs,
                 lambda row: json.dumps({k: round(v, 4) for k, v in row["auroc"].items()}), render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
