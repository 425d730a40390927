"""Leave-one-dataset-out study of the defaults: one set of flags for every shared dataset, no per-dataset flags.

    python scripts/benchmark_defaults.py                               # every candidate, every dataset
    python scripts/benchmark_defaults.py --candidates current,nb3      # some of them
    python scripts/benchmark_defaults.py --render-only                 # docs/defaults.md again from the JSON

A candidate is a list of documented CLI flags applied unchanged to every dataset (what a user who has no
test set would run). The acceptance rule of the project (issue 22, point 4): a candidate may replace the
current defaults only if it raises the mean image AUROC over the shared datasets and costs no dataset more
than 0.01 image AUROC (pixel AUROC is checked the same way where a dataset has masks). Every candidate tried
is kept in ``docs/defaults.json``, the ones that lost too.

To stay within a 2-core CPU's patience each dataset is subsampled the same way for every candidate
(``--max-train``, ``--max-per-class``: evenly spaced over the sorted names), so candidates are compared on
the same images; the absolute figures are those of the subsample, not of the full sets.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT))

import benchmark_quality as bq  # noqa: E402
import torch  # noqa: E402

DATASETS = ["gdxray_castings", "gdxray_welds", "gdxray_castingpatches", "gdxray_fishbones", "mvtec_screw"]
EFFNET = ["--backbone", "tf_efficientnet_lite0", "--weights", "{weights}/tf_efficientnet_lite0.in1k_fp16.safetensors"]

# name -> (flags, why it was tried). "current" is the shipped defaults and the reference of the rule.
CANDIDATES: dict[str, tuple[list[str], str]] = {
    "current": ([], "the shipped defaults: DINOv2 block 6, 512 px tiles seen at 448 px (16 scan px per cell)"),
    "nb3": (["--neighbourhood", "3"], "3x3 pooling of patch features, as anomalib's PatchCore does"),
    "i322": (["--input-size", "322"], "coarser cells: 512 px tiles at 322 px (22 scan px per cell)"),
    "i322-nb3": (["--input-size", "322", "--neighbourhood", "3"], "coarser cells and 3x3 pooling"),
    "t768-i336": (["--tile-size", "768", "--input-size", "336"],
                  "larger tiles seen smaller: 768 px tiles at 336 px (32 scan px per cell, a castings frame in one tile)"),
    "i224-nb3": (["--input-size", "224", "--neighbourhood", "3"], "32 scan px per cell and 3x3 pooling"),
    "effnet-i224-nb3": (EFFNET + ["--layers", "2,3", "--input-size", "224", "--neighbourhood", "3"],
                        "the peer's backbone, blocks 2+3, 3x3 pooling, 512 px tiles at 224 px (18 px per cell)"),
    "effnet-i160-nb3": (EFFNET + ["--layers", "2,3", "--input-size", "160", "--neighbourhood", "3"],
                        "as above at 160 px: 26 px per cell, near the peer's whole castings frame at 1/3 size"),
}
# Candidates whose tile and input size are then fitted to the clean scans (rtg_anomaly.scale), per dataset.
FIT_SCANS = "+fit-scans"
for _name, (_flags, _why) in list(CANDIDATES.items()):
    CANDIDATES[_name + FIT_SCANS] = (_flags, _why + "; tile and input fitted to the clean scans' shorter side")
MAX_LOSS = 0.01
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "defaults.json"


def machine() -> str:
    return (f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}, device cpu")


def scale_flags(flags: list[str], dataset_dir: Path) -> list[str]:
    """``flags`` plus the tile and input size that ``fit_scale_to_scans`` picks for the dataset's clean scans."""
    from PIL import Image

    from rtg_anomaly.scale import fit_scale_to_scans

    config = bq._config_from_args(bq.parse_cli(["fit", "--clean-dir", str(dataset_dir), *flags]))
    sides = []
    for path in sorted((dataset_dir / "train" / "good").iterdir()):
        with Image.open(path) as image:
            sides.append(min(image.size))
    fitted = fit_scale_to_scans(config, sides)
    return [*flags, "--tile-size", str(fitted.tile_size), "--input-size", str(fitted.input_size)]


def run(candidates: list[str], datasets: list[str], data_root: Path, max_train: int | None,
        max_per_class: int | None, output: Path) -> dict:
    cache = json.loads(output.read_text()) if output.is_file() else {"runs": {}}
    weights = str(data_root.parent / "weights")
    for name in candidates:
        flags, why = CANDIDATES[name]
        flags = [f.replace("{weights}", weights) for f in flags]
        for dataset in datasets:
            key = f"{name}/{dataset}"
            if key in cache["runs"]:
                continue
            run_flags = flags
            if name.endswith(FIT_SCANS):
                run_flags = scale_flags(flags, data_root / dataset)
                base = cache["runs"].get(f"{name[:-len(FIT_SCANS)]}/{dataset}")
                base_config = (base or {}).get("config", {})
                if run_flags[-4:] == ["--tile-size", str(base_config.get("tile_size")),
                                      "--input-size", str(base_config.get("input_size"))]:
                    # The scans are at least a tile: the rule changes nothing, the base candidate's run stands.
                    cache["runs"][key] = dict(base, candidate=name, same_as=f"{name[:-len(FIT_SCANS)]}/{dataset}")
                    continue
            try:
                record = bq.run_dataset(dataset, data_root / dataset, f"../shared/data/{dataset}", run_flags, "cpu",
                                        max_train, max_per_class, label=name)
            except Exception:  # one failed run is recorded, the study goes on
                traceback.print_exc()
                record = {"error": traceback.format_exc().splitlines()[-1]}
            record.update(candidate=name, why=why, date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                          machine=machine())
            cache["runs"][key] = record
            output.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    return cache


def _value(cache: dict, name: str, dataset: str, metric: str):
    record = cache["runs"].get(f"{name}/{dataset}")
    return None if record is None or "error" in record else record.get(metric)


def verdict(cache: dict, name: str, datasets: list[str]) -> tuple[str, float | None, float | None]:
    """(verdict, mean image AUROC change, worst change of image or pixel AUROC) against "current"."""
    if name == "current":
        return "reference", None, None
    deltas, worst = [], None
    for dataset in datasets:
        for metric in ("image_auroc", "pixel_auroc"):
            new, old = _value(cache, name, dataset, metric), _value(cache, "current", dataset, metric)
            if old is None:
                continue
            if new is None:
                return "incomplete", None, None
            delta = new - old
            worst = delta if worst is None else min(worst, delta)
            if metric == "image_auroc":
                deltas.append(delta)
    if len(deltas) < len(datasets):
        return "incomplete", None, None
    mean = sum(deltas) / len(deltas)
    accepted = mean > 0 and worst >= -MAX_LOSS
    return ("accepted" if accepted else "rejected"), mean, worst


def render(cache: dict, datasets: list[str], max_train, max_per_class) -> str:
    names = [n for n in CANDIDATES if any(k.startswith(n + "/") for k in cache["runs"])]
    lines = [
        "# Defaults: one set of flags for every dataset",
        "",
        "Generated by `python scripts/benchmark_defaults.py` from `defaults.json` (`--render-only` redraws it).",
        "Each candidate is one list of flags applied unchanged to every shared dataset, as a user without a test",
        "set would run it. Rule (issue 22): a candidate replaces the defaults only if the mean image AUROC rises",
        f"and no dataset loses more than {MAX_LOSS} image or pixel AUROC. Every dataset is subsampled the same way "
        f"for every candidate (`--max-train {max_train}`, `--max-per-class {max_per_class}`, evenly spaced), so the",
        "figures compare candidates on the same images; they are not the full-set figures.",
        "",
        "Image AUROC (pixel AUROC in brackets where the dataset has masks):",
        "",
        "| candidate | " + " | ".join(datasets) + " | mean image | worst change | verdict |",
        "|---|" + "---|" * (len(datasets) + 3),
    ]
    for name in names:
        cells = []
        for dataset in datasets:
            record = cache["runs"].get(f"{name}/{dataset}")
            if record is None:
                cells.append("–")
            elif "error" in record:
                cells.append("error")
            else:
                pixel = record.get("pixel_auroc")
                cells.append(f"{record['image_auroc']:.3f}" + (f" ({pixel:.3f})" if pixel is not None else ""))
        images = [_value(cache, name, d, "image_auroc") for d in datasets]
        mean = sum(images) / len(images) if all(v is not None for v in images) else None
        kind, _, worst = verdict(cache, name, datasets)
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {'–' if mean is None else f'{mean:.3f}'} | "
                     f"{'–' if worst is None else f'{worst:+.3f}'} | {kind} |")
    lines += ["", "What each candidate is (flags added to the defaults):", ""]
    for name in names:
        flags, why = CANDIDATES[name]
        shown = " ".join(f.replace("{weights}", "../shared/weights") for f in flags) or "(none)"
        lines.append(f"- `{name}`: `{shown}`: {why}.")
    runs = sorted({(r.get("date", "")[:10], r.get("machine", "")) for r in cache["runs"].values()})
    lines += ["", "Runs: " + "; ".join(f"{d} on {m}" for d, m in runs) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data-root", default=str(bq.DEFAULT_DATA_ROOT))
    parser.add_argument("--max-train", type=int, default=160)
    parser.add_argument("--max-per-class", type=int, default=40)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    output = Path(args.output)
    datasets = args.datasets.split(",")
    if args.render_only:
        cache = json.loads(output.read_text())
    else:
        unknown = sorted(set(args.candidates.split(",")) - set(CANDIDATES))
        if unknown:
            parser.error(f"unknown candidates: {', '.join(unknown)}")
        cache = run(args.candidates.split(","), datasets, Path(args.data_root), args.max_train,
                    args.max_per_class, output)
        cache.update(max_train=args.max_train, max_per_class=args.max_per_class)
        output.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    output.with_suffix(".md").write_text(render(cache, DATASETS, cache.get("max_train"), cache.get("max_per_class")))
    print(output.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
