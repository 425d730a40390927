"""Does choosing the configuration from clean scans alone work? Writes docs/selection.json and docs/selection.md.

    python scripts/benchmark_selection.py                          # every shared dataset (CPU: about an hour)
    python scripts/benchmark_selection.py --datasets gdxray_welds  # one dataset; other entries of the JSON are kept
    python scripts/benchmark_selection.py --render-only            # Markdown again from the JSON

For each dataset (MVTec AD layout, read in place from the shared data, never copied), without a single
per-dataset flag:
  1. ``select_config`` runs on ``train/good`` only, exactly as ``rtg-anomaly fit --select auto`` does:
     every candidate's validation score on synthetic anomalies (threat image projection) is recorded.
  2. Every candidate, the plain defaults and the per-dataset flags tuned on the test set
     (``DATASET_FLAGS`` of benchmark_quality.py, for comparison only) are fitted on all of ``train/good``
     and evaluated on ``test/`` (false-alarm rate 5 %).
  3. The Spearman rank correlation between the candidates' synthetic validation scores and their real test
     AUROC says whether the validator predicts the real result.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from rtg_anomaly.config import DetectorConfig  # noqa: E402
from rtg_anomaly.pipeline.detector import Detector  # noqa: E402
from rtg_anomaly.evaluation.mvtec import evaluate, load_mvtec_folder  # noqa: E402
from rtg_anomaly.backbone.features import resolve_device  # noqa: E402
from rtg_anomaly.pipeline.selection import select_config  # noqa: E402

DATASETS = ["gdxray_castings", "gdxray_welds", "gdxray_castingpatches", "gdxray_fishbones", "mvtec_screw"]
FALSE_ALARM_RATE = 0.05
# The best peer measured on each dataset (anomalib 2.7, untuned, CPU, same offline weights) where known.
PEERS = {"gdxray_welds": ("PaDiM / EfficientNet-Lite0", 0.969, 0.921, 0.694)}


def _tuned_config(name: str, weights_dir: Path) -> DetectorConfig:
    from benchmark_quality import DATASET_FLAGS  # the per-dataset flags picked on the test sets

    from rtg_anomaly.cli import build_parser
    from rtg_anomaly.cli.options import config_from_args

    flags = [part.replace("{weights}", str(weights_dir)) for part in DATASET_FLAGS[name]]
    args = build_parser().parse_args(["evaluate", "--data", "x", *flags])
    return config_from_args(args)


def _real(config: DetectorConfig, eval_set, device: str) -> dict:
    started = time.perf_counter()
    detector = Detector(config, device=device).fit(eval_set.train_paths, false_alarm_rate=FALSE_ALARM_RATE)
    fit_seconds = time.perf_counter() - started
    metrics = evaluate(detector, eval_set)
    records = metrics["images"]
    n_good = sum(1 for r in records if r["label"] == 0)
    return {"image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"], "aupro": metrics["aupro"],
            "false_alarms": sum(1 for r in records if r["label"] == 0 and r["anomalous"]), "n_good": n_good,
            "recall": metrics["calibrated_recall"], "fit_seconds": fit_seconds,
            "detect_ms": metrics["detect_ms_per_image"]}


def run_dataset(name: str, data_root: Path, weights_dir: Path, device: str, defaults_only: bool = False) -> dict:
    eval_set = load_mvtec_folder(data_root / name)
    base = DetectorConfig()
    if defaults_only:  # the headline's first columns alone: one plain fit, no selection
        print(f"== {name}: defaults only", flush=True)
        real = _real(base, eval_set, device)
        print(f"  defaults: real image {real['image_auroc']:.3f} pixel {real['pixel_auroc'] or float('nan'):.3f}",
              flush=True)
        return {"dataset": name, "defaults_only": True, "selection": None, "selection_seconds": None,
                "rows": [{"name": "defaults", "config": base.to_dict(), "real": real, "synthetic": None,
                          "selected": False}], "spearman": {}, "n_candidates": 0}
    print(f"== {name}: selecting on {len(eval_set.train_paths)} clean training scans", flush=True)
    selection = select_config(eval_set.train_paths, base, device=device, progress=lambda line: print(line, flush=True))
    print(selection.summary(), flush=True)
    rows, seen = [], {}
    plan = [("defaults", base, None)]
    plan += [(c.name, c.config(base), c) for c in selection.candidates if not c.error]
    plan += [("tuned on the test set", _tuned_config(name, weights_dir), None)]
    for label, config, candidate in plan:
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key in seen:
            real = seen[key]
        else:
            real = seen[key] = _real(config, eval_set, device)
        row = {"name": label, "config": config.to_dict(), "real": real,
               "synthetic": None if candidate is None else candidate.to_dict(),
               "selected": candidate is not None and candidate.name == selection.chosen}
        rows.append(row)
        print(f"  {label}: real image {real['image_auroc']:.3f} pixel {real['pixel_auroc'] or float('nan'):.3f} "
              f"| synthetic {'' if candidate is None else f'{candidate.score:.3f}'}", flush=True)
    scored = [r for r in rows if r["synthetic"] is not None]
    correlation = {}
    for metric in ("image_auroc", "pixel_auroc"):
        pairs = [(r["synthetic"]["score"], r["real"][metric]) for r in scored if r["real"][metric] is not None]
        if len(pairs) >= 3:
            rho = spearmanr(*zip(*pairs)).statistic
            correlation[metric] = None if np.isnan(rho) else float(rho)
    return {"dataset": name, "selection": selection.to_dict(), "selection_seconds": selection.seconds,
            "rows": rows, "spearman": correlation, "n_candidates": len(scored)}


def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def render(results: dict) -> str:
    lines = ["# Configuration chosen from clean scans alone", "",
             "Generated by `python scripts/benchmark_selection.py` from `selection.json` (`--render-only` redraws "
             "it). No row uses a per-dataset flag except the last of each dataset, which is labelled as tuned on "
             "the test set and is there for comparison only.", "",
             "Every run below predates `fit --select scale` (the default since 2026-12-06, which chooses only the "
             "zoom): its *defaults* columns are a plain fit of that date (16 scan px per cell, `--select off`), "
             "not what ships today. Today's defaults, zoom selection included, are the headline of "
             "[benchmarks.md](benchmarks.md); `--select auto` has not been rerun since.", "",
             "Thresholds are calibrated at a requested false-alarm rate of 5 %. Runs (one per dataset; a GPU run uses "
             "float16 autocast, so its figures can differ from a CPU run's in the third decimal):", "",
             "| dataset | date | machine | command |", "|---|---|---|---|",
             *[f"| {name} | {e.get('run', {}).get('date', '?')} | {e.get('run', {}).get('machine', '?')} | "
               f"`{e.get('run', {}).get('command', '?')}` |"
               for name, e in sorted(results.get("datasets", {}).items())], "",
             "## Headline: no per-dataset flags", "",
             "| dataset | defaults: image AUROC | pixel AUROC | AUPRO | `--select auto`: chosen | image AUROC | "
             "pixel AUROC | AUPRO | false alarms (5 % asked) | recall there | tuned on test: image / pixel |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in DATASETS:
        entry = results.get("datasets", {}).get(name)
        if not entry:
            continue
        rows = entry["rows"]
        default = rows[0]["real"]
        if entry.get("defaults_only"):  # selection not run for this dataset: the defaults' operator figures
            lines.append(f"| {name} | {_fmt(default['image_auroc'])} | {_fmt(default['pixel_auroc'])} | "
                         f"{_fmt(default['aupro'])} | not run | – | – | – | defaults: "
                         f"{default['false_alarms']}/{default['n_good']} | defaults: {_fmt(default['recall'], 2)} "
                         f"| see benchmarks.md |")
            continue
        chosen = next((r for r in rows if r["selected"]), None)
        tuned = rows[-1]["real"]
        c = chosen["real"] if chosen else {}
        lines.append(f"| {name} | {_fmt(default['image_auroc'])} | {_fmt(default['pixel_auroc'])} | "
                     f"{_fmt(default['aupro'])} | {chosen['name'] if chosen else '–'} | {_fmt(c.get('image_auroc'))} | "
                     f"{_fmt(c.get('pixel_auroc'))} | {_fmt(c.get('aupro'))} | {c.get('false_alarms')}/{c.get('n_good')} | "
                     f"{_fmt(c.get('recall'), 2)} | {_fmt(tuned['image_auroc'])} / {_fmt(tuned['pixel_auroc'])} |")
    lines += ["", "## Does the synthetic validation score predict the real one?", "",
              "Spearman rank correlation, over each dataset's candidates, between the validation score on synthetic "
              "anomalies in held-out clean training scans and the real test AUROC.", "",
              "| dataset | candidates | ρ (image AUROC) | ρ (pixel AUROC) | selection time s |", "|---|---|---|---|---|"]
    for name in DATASETS:
        entry = results.get("datasets", {}).get(name)
        if entry and not entry.get("defaults_only"):
            rho = entry["spearman"]
            lines.append(f"| {name} | {entry['n_candidates']} | {_fmt(rho.get('image_auroc'), 2)} | "
                         f"{_fmt(rho.get('pixel_auroc'), 2)} | {entry['selection_seconds']:.0f} |")
    lines += ["", "## Every candidate (the ones that lost too)", ""]
    for name in DATASETS:
        entry = results.get("datasets", {}).get(name)
        if not entry:
            continue
        lines += [f"### {name}", "", "| candidate | synthetic image / pixel AUROC (score) | top patches | real image AUROC | "
                  "pixel AUROC | AUPRO | false alarms | recall | fit s | detect ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in entry["rows"]:
            s, r = row["synthetic"], row["real"]
            synth = "–" if s is None else f"{s['image_auroc']:.3f} / {s['pixel_auroc']:.3f} ({s['score']:.3f})"
            mark = " **(chosen)**" if row["selected"] else ""
            lines.append(f"| {row['name']}{mark} | {synth} | {row['config']['top_patches']} | {_fmt(r['image_auroc'])} | "
                         f"{_fmt(r['pixel_auroc'])} | {_fmt(r['aupro'])} | {r['false_alarms']}/{r['n_good']} | "
                         f"{_fmt(r['recall'], 2)} | {r['fit_seconds']:.0f} | {r['detect_ms']:.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data-root", default=os.environ.get("RTG_ANOMALY_DATA", str(REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--weights-dir", default=None, help="offline weights (default: DATA_ROOT/../weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default=str(REPO_ROOT / "docs" / "selection.json"))
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--defaults-only", action="store_true",
                        help="only the defaults row (one plain fit and evaluation per dataset, no selection)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.exists() else {"datasets": {}}
    if not args.render_only:
        data_root = Path(args.data_root)
        weights_dir = Path(args.weights_dir) if args.weights_dir else data_root.parent / "weights"
        os.environ.setdefault("RTG_ANOMALY_BACKBONES", str(weights_dir))
        for name in [d for d in args.datasets.split(",") if d]:
            entry = run_dataset(name, data_root, weights_dir, args.device, defaults_only=args.defaults_only)
            entry["run"] = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                            "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, device "
                                       f"{resolve_device(args.device)}, Python {platform.python_version()}",
                            "command": "python scripts/benchmark_selection.py --datasets " + name +
                                       ("" if args.device == "auto" else f" --device {args.device}") +
                                       (" --defaults-only" if args.defaults_only else "")}
            results["datasets"][name] = entry
            output.write_text(json.dumps(results, indent=1) + "\n")
    output.with_suffix(".md").write_text(render(results))
    print(f"wrote {output} and {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
