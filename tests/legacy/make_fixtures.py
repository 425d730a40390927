"""Write the legacy-bundle fixtures: bundles saved by rtg-anomaly before the methods redesign (commit
d20b82a), with the heatmaps and scores that version gave, so tests/test_legacy_bundles.py can show that
today's code loads them as PatchCore and scores them the same. Run once, with that version:

    python tests/legacy/make_fixtures.py

Everything is synthetic (``write_demo_dataset``) and tiny (random 2-block ViT), so it may be committed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent.parent / "tests"))

from conftest import tiny_config  # noqa: E402

from rtg_anomaly import Detector  # noqa: E402
from rtg_anomaly.scans.synthetic import write_demo_dataset  # noqa: E402

DATASET = dict(n_clean_train=5, n_clean_test=2, n_anomalous=2, height=96, seed=3, fmt="bmp")
CASES = {
    "patchcore_default": dict(),
    "patchcore_global": dict(image_score="global"),
    "patchcore_variants": dict(k=3, augment=("hflip",), pca_whiten=0.5, image_score="max", neighbourhood=3),
}
# Defaults of the day the fixtures were made that have changed since (the map's Gaussian: 0.5 patch until
# 2026-12-07): a fresh fit of a case uses them to write the same arrays and calibration.
MADE_WITH = dict(smoothing_sigma=0.5)


def case_config(name: str):
    """The tiny config a case's bundle was fitted with."""
    return tiny_config(**{**MADE_WITH, **CASES[name]})


def demo_files(root: Path) -> dict:
    return write_demo_dataset(root, **DATASET)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        files = demo_files(Path(tmp))
        test = files["test_good"][:1] + files["test_anomalous"][:1]
        for name in CASES:
            detector = Detector(case_config(name), device="cpu").fit(files["train_good"])
            detector.save(HERE / name / "bundle")
            results = [detector.score(path) for path in test]
            np.savez_compressed(HERE / name / "expected.npz", scores=np.array([r.score for r in results]),
                                **{f"heatmap{i}": r.heatmap for i, r in enumerate(results)})
            print(name, [round(r.score, 4) for r in results])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
