#!/usr/bin/env python
"""Instead of choosing one zoom, average several? (issue 22: a default that needs no choice)

    python scripts/study_zoom_ensemble.py                                  # full sets, ~25 min on 2 cores
    python scripts/study_zoom_ensemble.py --max-train 160 --max-per-class 40 \
        --output docs/zoom_ensemble_subsample.json                         # the defaults study's subsample
    python scripts/study_zoom_ensemble.py --render-only                    # the page again from the JSON

For each dataset where ``fit --select scale`` has zooms to choose from (castings, welds, screw; the other two
are fitted to their own size), the default detector is fitted once per zoom (``--zooms``: scan pixels per ViT
cell, 16 the library's default) with no selection, and scores the test set. Each zoom's figures are those of
``rtg-anomaly evaluate --select off --tile-size T --input-size I``; an ensemble of zooms averages the members'
*calibrated* image scores (each is its own clean scans' unit, so no member dominates) and calibrated maps.
Maps are kept at a quarter of the scan's side (area-averaged) for the pixel AUROC. Results go to
``docs/zoom_ensemble.json`` and ``.md``. The page gives an ensemble's cost as backbone work: the pixels its
members push through the backbone per scan pixel, over the 16 px detector's (exact, unlike the fit and detect
times also kept in the JSON, which each zoom's first scans' warm-up and a busy CPU move).
"""

from __future__ import annotations

import argparse
import itertools
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
from study_pages import generated_by, new_cache, page_text, parse_page_args, save_cache  # noqa: E402
from rtg_anomaly import DetectorConfig
from rtg_anomaly.pipeline import selection  # noqa: E402
from rtg_anomaly.pipeline.detector import Detector  # noqa: E402
from rtg_anomaly.evaluation.mvtec import load_mask, load_mvtec_folder, subsample_items  # noqa: E402
from rtg_anomaly.evaluation.metrics import image_auroc, pixel_auroc  # noqa: E402

DATASETS = ("gdxray_castings", "gdxray_welds", "mvtec_screw")
# scan px per ViT cell -> (tile, input size): the zooms `--select scale` tries on large scans (12, 16, 22, 32)
ZOOMS = {round(c.overrides["tile_size"] * 14 / c.overrides["input_size"]): (c.overrides["tile_size"],
                                                                              c.overrides["input_size"])
         for c in selection.zoom_candidates(DetectorConfig(), [100_000])}
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "zoom_ensemble.json"
MAP_SHRINK = 4


def score_zoom(dataset_dir: Path, zoom: int, max_train: int | None, max_per_class: int | None) -> dict:
    """Fit the default detector at one zoom and score the test set: calibrated scores (float (n,)), labels, maps
    and masks at 1/MAP_SHRINK of the side, seconds of fit and of detection."""
    eval_set = load_mvtec_folder(dataset_dir)
    train = bq.evenly_spaced(eval_set.train_paths, max_train)
    items = subsample_items(eval_set.test_items, max_per_class)
    tile, size = ZOOMS[zoom]
    started = time.perf_counter()
    detector = Detector(DetectorConfig(tile_size=tile, input_size=size), device="cpu").fit(train)
    fit_seconds = time.perf_counter() - started
    scores, labels, maps, masks, detect_seconds = [], [], [], [], 0.0
    for item in items:
        started = time.perf_counter()
        result = detector.score(item.path)
        detect_seconds += time.perf_counter() - started
        height, width = result.heatmap.shape
        shrunk = (max(1, width // MAP_SHRINK), max(1, height // MAP_SHRINK))
        mask = load_mask(item.mask_path, (height, width)) if item.mask_path else np.zeros((height, width), bool)
        scores.append(result.score)
        labels.append(item.label)
        maps.append(cv2.resize(result.heatmap, shrunk, interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(mask.astype(np.uint8), shrunk, interpolation=cv2.INTER_NEAREST) > 0)
    return {"scores": np.array(scores), "labels": np.array(labels), "maps": maps, "masks": masks,
            "n_train": len(train), "fit_s": fit_seconds, "detect_ms": 1000 * detect_seconds / max(1, len(items))}


def ensemble_rows(runs: dict[int, dict]) -> list[dict]:
    """Every combination of the zooms in ``runs`` (one zoom alone included): image AUROC of the mean calibrated
    score, pixel AUROC of the mean calibrated map (None without masks), summed fit and detect cost."""
    labels, masks = runs[next(iter(runs))]["labels"], runs[next(iter(runs))]["masks"]
    has_masks = any(mask.any() for mask in masks)
    rows = []
    for size in range(1, len(runs) + 1):
        for combo in itertools.combinations(sorted(runs), size):
            scores = np.mean([runs[z]["scores"] for z in combo], axis=0)
            pixel = None
            if has_masks:
                maps = [np.mean([runs[z]["maps"][i] for z in combo], axis=0) for i in range(len(labels))]
                pixel = pixel_auroc(masks, maps)
            rows.append({"zooms": list(combo), "image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel,
                         "fit_s": sum(runs[z]["fit_s"] for z in combo),
                         "detect_ms": sum(runs[z]["detect_ms"] for z in combo)})
    return rows


def backbone_work(zooms) -> float:
    """Pixels through the backbone per scan pixel of these zooms together, over the 16 px/cell detector's."""
    def work(zoom):
        tile, size = ZOOMS[zoom]
        return (size / tile) ** 2
    return sum(work(z) for z in zooms) / work(16)


def render(cache: dict) -> str:
    lines = ["# Several zooms averaged instead of one chosen", "",
             generated_by("study_zoom_ensemble", cache), "",
             "Each dataset where `fit --select scale` chooses a zoom, with the default detector at fixed zooms (no "
             "selection; scan pixels per ViT cell) and every average of them: the members' calibrated image scores "
             "and maps averaged. *Backbone work*: the pixels the members push through the backbone per scan pixel, "
             "over the 16 px detector's (detect time follows it; an average needs no zoom selection at fit time). "
             + cache["subsample"], ""]
    zooms = sorted({tuple(r["zooms"]) for rows in cache["datasets"].values() for r in rows}, key=lambda z: (len(z), z))
    datasets = list(cache["datasets"])
    lines += ["| zooms (px/cell) | " + " | ".join(datasets) + " | mean image | backbone work |",
              "|---|" + "---|" * (len(datasets) + 2)]
    for combo in zooms:
        cells, images = [], []
        for dataset in datasets:
            rows = cache["datasets"][dataset]
            row = next((r for r in rows if tuple(r["zooms"]) == combo), None)
            if row is None:
                cells.append("–")
                continue
            images.append(row["image_auroc"])
            cells.append(f"{row['image_auroc']:.3f}" + (f" ({row['pixel_auroc']:.3f})" if row["pixel_auroc"] else ""))
        mean = f"{np.mean(images):.3f}" if len(images) == len(datasets) else "–"
        lines.append(f"| {' + '.join(str(z) for z in combo)} | " + " | ".join(cells)
                     + f" | {mean} | {backbone_work(combo):.2f}× |")
    lines += ["", "Image AUROC (pixel AUROC in brackets where the dataset has masks, from maps at a quarter of the "
              "scan's side)."]
    return page_text(lines, cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--zooms", default="16,12,22", help="scan px per ViT cell, from " + str(sorted(ZOOMS)))
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-per-class", type=int, default=None)
    args = parse_page_args(parser, argv, DEFAULT_OUTPUT, render)
    if args is None:
        return 0
    output = Path(args.output)
    root, _ = bq._data_root(args.data_root)
    zooms = [int(z) for z in args.zooms.split(",")]
    if any(z not in ZOOMS for z in zooms):
        parser.error(f"--zooms must be drawn from {sorted(ZOOMS)}")
    flags = "".join(f" {flag} {value}" for flag, value, default in (
        ("--datasets", args.datasets, ",".join(DATASETS)), ("--zooms", args.zooms, "16,12,22"),
        ("--max-train", args.max_train, None), ("--max-per-class", args.max_per_class, None)) if value != default)
    subsample = ("Full sets." if args.max_train is None and args.max_per_class is None else
                 f"Subsampled as the defaults study (`--max-train {args.max_train}`, `--max-per-class "
                 f"{args.max_per_class}`, evenly spaced).")
    cache = new_cache(output, machine(), flags=flags, subsample=subsample, datasets={})
    for dataset in args.datasets.split(","):
        runs = {}
        for zoom in zooms:
            runs[zoom] = score_zoom(root / dataset, zoom, args.max_train, args.max_per_class)
            print(f"{dataset} {zoom} px/cell: image AUROC {image_auroc(runs[zoom]['labels'], runs[zoom]['scores']):.4f}"
                  f" (fit {runs[zoom]['fit_s']:.0f} s, detect {runs[zoom]['detect_ms']:.0f} ms/image)", flush=True)
        cache["datasets"][dataset] = ensemble_rows(runs)
        save_cache(output, cache)
    output.with_suffix(".md").write_text(render(cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
