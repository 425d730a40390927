"""Proof that a refactor moved nothing: record heatmaps and scores now, check them after the change.

    python scripts/check_equivalence.py record --out /tmp/equivalence      # before the change
    python scripts/check_equivalence.py check  --ref /tmp/equivalence      # after it

Cases (real data from ../shared/data, or $RTG_ANOMALY_DATA, with the offline weights beside it):
  castings-default      DINOv2 defaults, fitted on 8 clean castings frames, 4 test frames scored
  castingpatches-global ``--tile-size 32 --image-score global``, 40 clean patches, 8 test patches
  welds-cnn             EfficientNet-Lite0 stages 2+3, 3x3 pooling, 256 px tiles, hflip, 6 clean, 3 test
For each case it stores the bundle the old code wrote, the fitted arrays, and every scored scan's
heatmap and calibrated score. ``check`` fits again with the current code (the new bundle's arrays must
equal the recorded ones), loads the recorded bundle (old bundles must load) and scores the same scans
with both; it prints the largest differences and exits 1 when one exceeds the tolerance.
The recorded folder holds maps of licensed data: keep it outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from rtg_anomaly.bundle import load_bundle  # noqa: E402
from rtg_anomaly.config import DetectorConfig  # noqa: E402
from rtg_anomaly.pipeline.detector import Detector  # noqa: E402
from rtg_anomaly.evaluation.mvtec import load_mvtec_folder  # noqa: E402

HEATMAP_TOLERANCE = 1e-5  # calibrated units; float32 rounding of identical math is 0


def _cases(data_root: Path, weights_dir: Path) -> dict:
    effnet = str(weights_dir / "tf_efficientnet_lite0.in1k_fp16.safetensors")
    return {
        "castings-default": ("gdxray_castings", DetectorConfig(), 8, 4),
        "castingpatches-global": ("gdxray_castingpatches", DetectorConfig(tile_size=32, image_score="global"), 40, 8),
        "welds-cnn": ("gdxray_welds", DetectorConfig(backbone="tf_efficientnet_lite0", weights=effnet, layers=(2, 3),
                                                     neighbourhood=3, tile_size=256, input_size=256,
                                                     augment=("hflip",)), 6, 3),
    }


def _scans(data_root: Path, dataset: str, n_train: int, n_test: int) -> tuple[list[Path], list[Path]]:
    eval_set = load_mvtec_folder(data_root / dataset)
    good = [i.path for i in eval_set.test_items if i.label == 0]
    bad = [i.path for i in eval_set.test_items if i.label == 1]
    test = good[: n_test // 2] + bad[: n_test - n_test // 2]
    return eval_set.train_paths[:n_train], test


def _score_all(detector: Detector, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for path in paths:
        result = detector.score(path)
        maps.append(result.heatmap)
        scores.append(result.score)
    return np.stack(maps) if len({m.shape for m in maps}) == 1 else np.array(maps, dtype=object), np.array(scores)


def _save_maps(path: Path, maps, scores) -> None:
    np.savez(path, scores=scores, **{f"map{i}": m for i, m in enumerate(maps)})


def _load_maps(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    data = np.load(path)
    n = len(data["scores"])
    return [data[f"map{i}"] for i in range(n)], data["scores"]


def record(out: Path, data_root: Path, weights_dir: Path, device: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for name, (dataset, config, n_train, n_test) in _cases(data_root, weights_dir).items():
        train, test = _scans(data_root, dataset, n_train, n_test)
        detector = Detector(config, device=device).fit(train)
        detector.save(out / name / "bundle")
        maps, scores = _score_all(detector, test)
        _save_maps(out / name / "scored.npz", maps, scores)
        (out / name / "scans.json").write_text(json.dumps({"train": [str(p) for p in train],
                                                           "test": [str(p) for p in test]}))
        print(f"{name}: recorded {len(test)} scans, scores {np.round(scores, 4).tolist()}", flush=True)
    return 0


def check(ref: Path, data_root: Path, weights_dir: Path, device: str) -> int:
    failures = 0
    for name in _cases(data_root, weights_dir):
        dataset, config, *_ = _cases(data_root, weights_dir)[name]
        scans = json.loads((ref / name / "scans.json").read_text())
        train, test = [Path(p) for p in scans["train"]], [Path(p) for p in scans["test"]]
        recorded_maps, recorded_scores = _load_maps(ref / name / "scored.npz")
        _, recorded_arrays = load_bundle(ref / name / "bundle")
        refit = Detector(config, device=device).fit(train)
        fresh = Path(os.environ.get("TMPDIR", "/tmp")) / f"equivalence-{os.getpid()}-{name}"
        refit.save(fresh)
        _, fresh_arrays = load_bundle(fresh)
        array_diff = {key: float(np.abs(fresh_arrays[key].astype(np.float64)
                                        - recorded_arrays[key].astype(np.float64)).max())
                      if fresh_arrays[key].shape == recorded_arrays[key].shape else float("inf")
                      for key in recorded_arrays}
        missing = sorted(set(recorded_arrays) ^ set(fresh_arrays))
        loaded = Detector.load(ref / name / "bundle", device=device)
        for label, detector in (("refit", refit), ("old bundle", loaded)):
            maps, scores = _score_all(detector, test)
            map_diff = max(float(np.abs(a - b).max()) for a, b in zip(maps, recorded_maps))
            score_diff = float(np.abs(scores - recorded_scores).max())
            ok = map_diff <= HEATMAP_TOLERANCE and score_diff <= HEATMAP_TOLERANCE
            failures += not ok
            print(f"{name} [{label}]: max |heatmap diff| {map_diff:.3g}, max |score diff| {score_diff:.3g} "
                  f"-> {'same' if ok else 'DIFFERENT'}", flush=True)
        worst = max(array_diff.values()) if array_diff else 0.0
        arrays_ok = worst <= HEATMAP_TOLERANCE and not missing
        failures += not arrays_ok
        print(f"{name} [fitted arrays]: max |diff| {worst:.3g}"
              f"{'' if not missing else f', arrays only on one side: {missing}'} -> "
              f"{'same' if arrays_ok else 'DIFFERENT'}", flush=True)
    print("equivalent" if not failures else f"{failures} check(s) differ")
    return 0 if not failures else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "check"])
    parser.add_argument("--out", type=Path, help="record: folder to write (outside the repository)")
    parser.add_argument("--ref", type=Path, help="check: the recorded folder")
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("RTG_ANOMALY_DATA", REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--weights-dir", type=Path, default=None, help="default: DATA_ROOT/../weights")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    weights_dir = args.weights_dir or args.data_root.parent / "weights"
    if args.mode == "record":
        return record(args.out, args.data_root, weights_dir, args.device)
    return check(args.ref, args.data_root, weights_dir, args.device)


if __name__ == "__main__":
    raise SystemExit(main())
