#!/usr/bin/env python
"""Can the zoom selection tell when it cannot tell? A bootstrap over its own validation scans (issue 22).

    python scripts/study_selection_confidence.py                          # castings and welds, seeds 0-2; ~15 min
    python scripts/study_selection_confidence.py --datasets mvtec_screw   # ~8 min; the page holds both runs
    python scripts/study_selection_confidence.py --render-only

``fit --select scale`` keeps a later zoom when its synthetic pixel AUROC beats the best before it by 0.005, and
over three seeds it chose 22, 12 and 16 px on castings (docs/defaults.md). This study asks whether the selection
could have known that its choice was noise, from the same fits and no more: for each dataset and seed it does
what ``select_scale`` does (the seeded split, the synthetic objects, every zoom fitted on the training part) and
then resamples the validation scans with replacement (each with its objects; ``--boots`` draws, seeded), scoring
every zoom's pixel AUROC on each draw. Reported per zoom: the pixel AUROC on all validation scans (maps
area-averaged to a quarter of their side, so it differs slightly from the selection's) and the share of draws in
which the zoom beats the default (16 px) by the selection's margin. A cautious rule would move off the default
only when that share is high (``CONFIDENT``). Results go to ``docs/selection_confidence.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT))

import benchmark_quality as bq  # noqa: E402
from benchmark_defaults import machine  # noqa: E402
from study_pages import page_text, parse_page_args  # noqa: E402
from study_validator import evenly_spaced  # noqa: E402
from rtg_anomaly import DetectorConfig
from rtg_anomaly.pipeline import selection  # noqa: E402
from rtg_anomaly.evaluation.metrics import pixel_auroc  # noqa: E402
from rtg_anomaly.pipeline.scale import shorter_sides  # noqa: E402
from rtg_anomaly.scans.threat_projection import ProjectionSettings  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "selection_confidence.json"
CONFIDENT = 0.9  # share of draws a later zoom must win for a cautious rule to move off the default
SHRINK = 4


def _shrink(values: np.ndarray, mask: bool) -> np.ndarray:
    size = (max(1, values.shape[1] // SHRINK), max(1, values.shape[0] // SHRINK))
    if mask:
        return cv2.resize(values.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return cv2.resize(values.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def zoom_maps(dataset_dir: Path, seed: int, max_train: int) -> tuple[dict, list, int]:
    """(zoom name -> (clean maps, synthetic maps)), the synthetic masks (``OBJECTS_PER_SCAN`` per validation scan,
    in scan order) and the number of validation scans, all maps and masks at 1/SHRINK of the side."""
    items = evenly_spaced(sorted((dataset_dir / "train" / "good").iterdir()), max_train)
    base = DetectorConfig(seed=seed)
    train, clean = selection._validation_scans(items, seed, None)
    synthetic = selection.synthetic_validation_set(clean, train, seed, ProjectionSettings())
    maps = {}
    for candidate in selection.zoom_candidates(base, shorter_sides(items)):
        detector = selection.fit_candidate(candidate, base, train, device="cpu")
        maps[candidate.name] = ([_shrink(detector.raw_scores(scan).anomaly_map, False) for scan in clean],
                                [_shrink(detector.raw_scores(scan).anomaly_map, False) for scan, _ in synthetic])
        print(f"{dataset_dir.name} seed {seed}: {candidate.name} fitted", flush=True)
    return maps, [_shrink(mask, True) for _, mask in synthetic], len(clean)


def pooled_auroc(clean_maps, synthetic_maps, masks, scans) -> float:
    """Pixel AUROC over the clean maps of ``scans`` (validation scan indices, repeats allowed) and the maps of
    their synthetic objects (every clean pixel negative, every object pixel positive)."""
    per_scan = len(synthetic_maps) // len(clean_maps)
    objects = [i * per_scan + k for i in scans for k in range(per_scan)]
    all_masks = [np.zeros(clean_maps[i].shape, bool) for i in scans] + [masks[j] for j in objects]
    return pixel_auroc(all_masks, [clean_maps[i] for i in scans] + [synthetic_maps[j] for j in objects])


def confidence(maps: dict, masks: list, n_scans: int, seed: int, boots: int, margin: float) -> dict:
    """Per zoom: pixel AUROC on all validation scans and on ``boots`` seeded resamples of them; the share of draws
    in which the zoom beats the first (default) zoom by ``margin``."""
    rng = np.random.default_rng([seed, 0xB007])
    draws = [rng.integers(0, n_scans, n_scans) for _ in range(boots)]
    names = list(maps)
    values = {name: np.array([pooled_auroc(*maps[name], masks, scans) for scans in draws]) for name in names}
    default = values[names[0]]
    return {name: {"pixel_auroc": pooled_auroc(*maps[name], masks, range(n_scans)),
                   "boot_sd": float(values[name].std()),
                   "wins_over_default": float(np.mean(values[name] > default + margin)) if name != names[0] else None}
            for name in names}


def cautious_choice(rows: dict) -> str:
    """The default (first) zoom unless a later one wins over it in at least ``CONFIDENT`` of the draws; of those,
    the one with the highest pixel AUROC."""
    names = list(rows)
    sure = [n for n in names[1:] if rows[n]["wins_over_default"] >= CONFIDENT]
    return max(sure, key=lambda n: rows[n]["pixel_auroc"]) if sure else names[0]


def shipped_choice(rows: dict, margin: float) -> str:
    """The zoom ``select_scale`` keeps on these pixel AUROCs (``selection._best``: a later zoom must beat the best
    before it by ``margin``)."""
    results = [selection.CandidateResult(name, {}, None, row["pixel_auroc"], row["pixel_auroc"], 0, 0.0)
               for name, row in rows.items()]
    return selection._best(results, margin).name


def render(cache: dict) -> str:
    lines = ["# Could the zoom selection know when it cannot tell?", "",
             f"Generated by `python scripts/study_selection_confidence.py` (`--render-only` redraws it), {cache['date']}, "
             f"{cache['machine']}. Per dataset and seed: `--select scale`'s split and fits, its synthetic pixel AUROC "
             f"per zoom (maps at a quarter of their side), the spread over {cache['boots']} seeded resamples of the "
             "validation scans, and the share of resamples in which the zoom beats the default (16 px) by the "
             f"selection's margin ({cache['margin']}). *Shipped*: the zoom the shipped rule keeps on these figures; "
             f"*cautious*: the default unless a later zoom wins in at least {CONFIDENT:.0%} of the resamples.", "",
             "| dataset | seed | zoom: pixel AUROC ± resample sd (wins over default) | shipped | cautious |",
             "|---|---|---|---|---|"]
    for key, rows in cache["results"].items():
        dataset, seed = key.rsplit("/", 1)
        cells = "; ".join(f"{name}: {row['pixel_auroc']:.3f} ± {row['boot_sd']:.3f}"
                          + ("" if row["wins_over_default"] is None else f" ({row['wins_over_default']:.0%})")
                          for name, row in rows.items())
        lines.append(f"| {dataset} | {seed} | {cells} | {shipped_choice(rows, cache['margin'])} | "
                     f"{cautious_choice(rows)} |")
    return page_text(lines, cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="gdxray_castings,gdxray_welds")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--boots", type=int, default=200)
    parser.add_argument("--max-train", type=int, default=160)
    args = parse_page_args(parser, argv, DEFAULT_OUTPUT, render)
    if args is None:
        return 0
    output = Path(args.output)
    root, _ = bq._data_root(args.data_root)
    cache = json.loads(output.read_text()) if output.is_file() else {"results": {}}  # runs accumulate
    cache.update(date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"), machine=machine(),
                 boots=args.boots, margin=selection.SCALE_MARGIN)
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            maps, masks, n_scans = zoom_maps(root / dataset, seed, args.max_train)
            cache["results"][f"{dataset}/{seed}"] = confidence(maps, masks, n_scans, seed, args.boots,
                                                               selection.SCALE_MARGIN)
            output.write_text(json.dumps(cache, indent=1) + "\n")
    output.with_suffix(".md").write_text(render(cache))
    print(render(cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
