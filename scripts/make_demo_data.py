"""Write a synthetic MVTec-AD style RTG demo dataset.

Example (from the repository root):
    python scripts/make_demo_data.py --out demo_data --n-clean 6 --n-anomalous 3 --format bmp
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import rtg_anomaly  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtg_anomaly.scans.synthetic import write_demo_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-clean", type=int, default=6, help="clean training scans (train/good)")
    p.add_argument("--n-test-clean", type=int, default=2, help="clean test scans (test/good)")
    p.add_argument("--n-anomalous", type=int, default=3, help="anomalous test scans (test/anomalous)")
    p.add_argument("--height", type=int, default=320, help="scan height in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("bmp", "png", "tiff", "bmp16"), default="bmp",
                   help="bmp = 8-bit grey; png, tiff and bmp16 (a 16-bit grey .bmp) = 16-bit")
    a = p.parse_args(argv)
    paths = write_demo_dataset(a.out, n_clean_train=a.n_clean, n_clean_test=a.n_test_clean,
                               n_anomalous=a.n_anomalous, height=a.height, seed=a.seed, fmt=a.format)
    print(f"wrote {len(paths['train_good'])} train/good, {len(paths['test_good'])} test/good, "
          f"{len(paths['test_anomalous'])} test/anomalous (+{len(paths['ground_truth'])} masks) "
          f"as {a.format} to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
