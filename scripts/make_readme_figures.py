"""Render the README pictures from the synthetic demo (anyone can rerun this).

    python scripts/make_readme_figures.py [--out docs/images]

Fits the detector (bundled DINOv2 weights, 256 px tiles as in scripts/demo.sh) on synthetic clean scans and
writes, for a scan with hidden packages and for a clean scan, the overlay in
percentile mode (the seed behaviour, 90th percentile) and in calibrated mode,
with the ground truth outlined in the first picture.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

try:
    import rtg_anomaly  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtg_anomaly import Detector, DetectorConfig
from rtg_anomaly.io import load_image, save_image
from rtg_anomaly.regions import draw_regions, find_regions
from rtg_anomaly.synthetic import write_demo_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_demo_dataset(tmp, n_clean_train=16, n_clean_test=2, n_anomalous=3, seed=0)
        # The settings of scripts/demo.sh: 256 px tiles suit scans only 320 px high; 5 % false alarms.
        detector = Detector(DetectorConfig(tile_size=256), device=args.device).fit(paths["train_good"], false_alarm_rate=0.05)
        pictures = {}
        for name, path in (("anomalous", paths["test_anomalous"][0]), ("clean", paths["test_good"][0])):
            image = load_image(path)
            result = detector.score(image)
            print(f"{name}: score {result.score:.2f}, threshold {result.image_threshold:.2f}, "
                  f"anomalous {result.anomalous}")
            for mode in ("percentile", "calibrated"):
                picture = detector.overlay(image, result, threshold=mode, percentile=90)
                if mode == "calibrated":
                    picture = draw_regions(picture, find_regions(result.heatmap, result.pixel_threshold))
                pictures[f"{name}_{mode}"] = picture
            if name == "anomalous":
                mask = load_image(paths["ground_truth"][0]) > 0
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                truth = np.repeat(image[..., None], 3, axis=2).copy()
                cv2.drawContours(truth, contours, -1, (0, 255, 0), 2)
                pictures["anomalous_truth"] = truth
    for name, picture in pictures.items():
        save_image(out / f"{name}.png", picture)
    print(f"wrote {len(pictures)} pictures to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
