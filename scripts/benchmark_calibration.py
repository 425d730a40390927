"""How the calibrated threshold is set: leave-one-scan-out against held-out scans, and the tail estimator.

    python scripts/benchmark_calibration.py                                   # castings and welds, full sets
    python scripts/benchmark_calibration.py --datasets gdxray_welds
    python scripts/benchmark_calibration.py --render-only                     # docs/calibration.md from the JSON

For every dataset it fits the defaults twice, ``calibration="leave_one_out"`` and ``"holdout"`` (the
default), at a requested 5 % false-alarm rate, and counts false alarms and recall on the test set at each
stored threshold. It then asks, on the clean scans alone, which tail estimator tracks the requested rate when
there are few clean scans: it draws ``n`` of the leave-one-out clean scores many times (seeded), sets a
threshold from them with each estimator, and measures the share of the *other* clean scores above it. No
test label enters that choice; the test-set columns beside it are for the record.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path
from statistics import NormalDist

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

import benchmark_quality as bq  # noqa: E402
from rtg_anomaly.pipeline.calibration import log_normal_tail, threshold_at_rate  # noqa: E402
from rtg_anomaly.config import DetectorConfig  # noqa: E402
from rtg_anomaly.pipeline.detector import Detector  # noqa: E402
from rtg_anomaly.evaluation.mvtec import load_mvtec_folder  # noqa: E402

DATASETS = ["gdxray_castings", "gdxray_welds"]
RATE = 0.05
SAMPLE_SIZES = (5, 10, 16, 30)
DRAWS = 2000
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "calibration.json"
READ_MODES = (
    "Read (2026-12-06, every set at the zoom the default selection chooses): leave-one-out raises the recall at "
    "the calibrated threshold on castings (41.8 % -> 50.6 %, 1/45 false alarms both), fish (85 % -> 90 %, 2/20 "
    "both) and the casting crops (14.2 % -> 30.6 %), but on the crops it does so by letting false alarms rise "
    "from 14/281 (5.0 %, what was asked) to 22/281 (7.8 %, exact 95 % interval 5.0-11.6 %: at the edge; its "
    "100 left-out crops are a sample of 1,127, and the tail of 281 new clean crops is longer). It lowers the "
    "recall on screw (66.4 % -> 60.5 %) and on welds, whose 16 clean scans leave too few scores for an empirical 5 % tail (78 % -> 16 %). No single mode wins, so the "
    "default stays held-out scans; castings' recall target (60 %) is missed either way.")


def estimators(clean: np.ndarray, rate: float) -> dict[str, float]:
    """Thresholds from calibrated clean image scores ``clean`` (n,) float64 by each candidate tail estimator."""
    logs = np.log(np.maximum(clean, 1e-12))
    z = NormalDist().inv_cdf(1.0 - rate)
    mad = float(np.median(np.abs(logs - np.median(logs))))
    return {
        "shipped": threshold_at_rate(clean, rate)[0],
        "log-normal fit alone": log_normal_tail(clean, rate),
        "interpolated quantile": float(np.quantile(clean, 1.0 - rate)),
        "robust log-normal (median, MAD)": float(math.exp(np.median(logs) + z * 1.4826 * mad)),
    }


def subsample_study(clean: np.ndarray, rate: float, seed: int = 0) -> dict:
    """For each n in SAMPLE_SIZES below the number of clean scores: mean and 90th percentile, over DRAWS seeded
    draws of n scores, of the share of the remaining scores above each estimator's threshold."""
    rng = np.random.default_rng(seed)
    study = {}
    for n in SAMPLE_SIZES:
        if n > clean.size - 5:
            continue
        realised: dict[str, list[float]] = {}
        for _ in range(DRAWS):
            order = rng.permutation(clean.size)
            sample, rest = clean[order[:n]], clean[order[n:]]
            for name, threshold in estimators(sample, rate).items():
                realised.setdefault(name, []).append(float((rest > threshold).mean()))
        study[str(n)] = {name: {"mean": float(np.mean(v)), "p90": float(np.quantile(v, 0.9))}
                         for name, v in realised.items()}
    return study


def run_dataset(name: str, device: str, select: str = "scale") -> dict:
    """Both calibration modes on the dataset's full sets, with the zoom ``fit --select scale`` (the CLI's
    default) chooses on the clean training scans, once for both (``select="off"``: the library's defaults)."""
    from rtg_anomaly.pipeline.selection import select_scale

    eval_set = load_mvtec_folder(bq._data_root(None)[0] / name)
    train = [str(p) for p in eval_set.train_paths]
    config, zoom = DetectorConfig(), "configured (no selection)"
    if select == "scale":
        selection = select_scale(train, config, device=device)
        config, zoom = selection.config, selection.chosen
    entry: dict = {"n_train": len(train), "n_test": len(eval_set.test_items), "modes": {}, "zoom": zoom,
                   "tile_size": config.tile_size, "input_size": config.input_size}
    for mode in ("leave_one_out", "holdout"):
        print(f"[calibration] {name}: fitting with calibration={mode}, zoom {zoom}", flush=True)
        started = time.perf_counter()
        detector = Detector(config.replace(calibration=mode), device=device).fit(train, false_alarm_rate=RATE)
        fit_seconds = time.perf_counter() - started
        calibration = detector.calibration_
        good, bad = [], []
        for item in eval_set.test_items:
            (good if item.label == 0 else bad).append(detector.score(str(item.path)).score)
        good, bad = np.asarray(good), np.asarray(bad)
        clean = np.asarray(calibration.image_scores, dtype=np.float64)
        per_estimator = {est: {"threshold": t, "false_alarms": int((good > t).sum()), "recall": float((bad > t).mean())}
                         for est, t in estimators(clean, RATE).items()}
        entry["modes"][mode] = {
            "fit_seconds": fit_seconds, "calibration_scans": int(clean.size),
            "threshold": float(calibration.image_threshold), "threshold_method": calibration.method,
            "false_alarms": int((good > calibration.image_threshold).sum()), "n_good": int(good.size),
            "recall": float((bad > calibration.image_threshold).mean()),
            "clean_test_median": float(np.median(good)), "clean_scores": clean.tolist(),
            "estimators": per_estimator}
        print(f"[calibration] {name} {mode}: {clean.size} scans, threshold {calibration.image_threshold:.3f}, "
              f"false alarms {entry['modes'][mode]['false_alarms']}/{good.size}, "
              f"recall {entry['modes'][mode]['recall']:.3f}, fit {fit_seconds:.0f} s", flush=True)
    entry["subsample"] = subsample_study(np.asarray(entry["modes"]["leave_one_out"]["clean_scores"]), RATE)
    return entry


def render(results: dict) -> str:
    lines = ["# Calibration: which clean scans set the threshold, and how the tail is estimated", "",
             "Generated by `scripts/benchmark_calibration.py` from `calibration.json` (`--render-only` regenerates "
             f"it). Last run: {results['run']}. Defaults, no per-dataset flag, a requested 5 % false-alarm rate.",
             "", "## Leave-one-scan-out against held-out scans (the default)", "",
             "*Clean median*: the median calibrated score of the clean *test* scans (the calibration scans' "
             "median is 1.0 by construction; a clean test median below 1 means the calibration scans scored "
             "higher than new clean scans do, so the threshold is conservative).", "",
             "*Zoom*: what `fit --select scale` chose on the clean training scans, once for both modes (rows "
             "without it ran the library's defaults, 16 px per cell, which is also what the selection keeps on "
             "welds). *Fit s* leaves the selection out.", "",
             "| dataset | zoom | calibration | scans | threshold (rule) | clean test median | false alarms | recall "
             "| fit s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["datasets"].items():
        zoom = {None: "defaults (no selection)", "configured": "own size (scans fitted to it)"}.get(
            entry.get("zoom"), entry.get("zoom"))
        for mode, m in entry["modes"].items():
            lines.append(f"| {name} | {zoom} | {mode.replace('_', '-')} | {m['calibration_scans']} | {m['threshold']:.3f} "
                         f"({m['threshold_method']}) | {m['clean_test_median']:.2f} | {m['false_alarms']}/{m['n_good']} "
                         f"| {100 * m['recall']:.1f} % | {m['fit_seconds']:.0f} |")
    lines += ["", READ_MODES, "", "## The tail estimator, judged on clean scans alone", "",
              "Each cell: over " f"{DRAWS} seeded draws of *n* leave-one-out clean scores, the mean (90th "
              "percentile) share of the other clean scores above the threshold each estimator sets from the "
              "draw. The estimator that tracks the requested 5 % is the one to ship; *shipped* is "
              "`threshold_at_rate`: the empirical quantile from 1/rate scans up, below that the larger of the "
              "sample maximum and a log-normal tail fit.", ""]
    for name, entry in results["datasets"].items():
        study = entry["subsample"]
        if not study:
            continue
        names = list(next(iter(study.values())))
        lines += [f"**{name}** ({len(entry['modes']['leave_one_out']['clean_scores'])} clean scores)", "",
                  "| n | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for n, row in study.items():
            lines.append(f"| {n} | " + " | ".join(f"{100 * row[e]['mean']:.1f} % ({100 * row[e]['p90']:.1f} %)"
                                                 for e in names) + " |")
        lines.append("")
    lines += ["## The same estimators on the full leave-one-out scores, counted on the test set (for the record)",
              "", "| dataset | estimator | threshold | false alarms | recall |", "|---|---|---|---|---|"]
    for name, entry in results["datasets"].items():
        m = entry["modes"]["leave_one_out"]
        for est, row in m["estimators"].items():
            lines.append(f"| {name} | {est} | {row['threshold']:.3f} | {row['false_alarms']}/{m['n_good']} | "
                         f"{100 * row['recall']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--select", choices=("scale", "off"), default="scale",
                        help="choose the zoom from the clean scans first, as fit does by default (default scale)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if args.render_only:
        results = json.loads(args.output.read_text())
    else:
        previous = json.loads(args.output.read_text()) if args.output.exists() else {"datasets": {}}
        results = {"run": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   "datasets": previous["datasets"]}
        for name in args.datasets.split(","):
            results["datasets"][name] = run_dataset(name, args.device, args.select)
        args.output.write_text(json.dumps(results, indent=1) + "\n")
    args.output.with_suffix(".md").write_text(render(results))
    print(f"[calibration] wrote {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
