"""Integration on real X-ray data (GDXray castings) with the real DINOv2 weights.

Subsampled to keep the suite fast on a 2-core CPU: the model is fitted on 30 of
the 98 clean training frames (evenly spaced, so all six wheels are seen) and
scored on 12 of 45 clean and 30 of 79 defective test frames (evenly spaced).
"""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from rtg_anomaly import Detector, DetectorConfig
from tests.conftest import shared_data_dir

pytestmark = pytest.mark.realdata


def evenly(paths, n):
    paths = sorted(paths)
    index = np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)
    return [paths[i] for i in index]


@pytest.fixture(scope="module")
def castings():
    root = shared_data_dir() / "gdxray_castings"
    if not root.is_dir():
        pytest.fail(f"{root} is missing from the shared data")
    return root


@pytest.fixture(scope="module")
def castings_train(castings):
    """30 of the 98 clean training frames, evenly spaced."""
    return evenly((castings / "train" / "good").iterdir(), 30)


@pytest.fixture(scope="module")
def castings_detector(castings_train):
    """Default settings (bundled DINOv2 ViT-S/14 weights) fitted on 30 clean frames."""
    return Detector(DetectorConfig(), device="cpu").fit(castings_train)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _castings_detection(castings, detector, what: str) -> tuple[float, float, float, float]:
    """Score 12 good + 30 defect test frames: (image AUROC, heatmap-maximum hit rate, chance, p-value)."""
    good = evenly((castings / "test" / "good").iterdir(), 12)
    defects = evenly((castings / "test" / "defect").iterdir(), 30)
    scores, labels, hits, box_fractions = [], [], [], []
    for path, label in [(p, 0) for p in good] + [(p, 1) for p in defects]:
        result = detector.score(path)
        scores.append(result.score)
        labels.append(label)
        if label:
            mask = np.asarray(Image.open(castings / "ground_truth" / "defect" / f"{path.stem}_mask.png")) > 0
            assert mask.shape == result.heatmap.shape
            hits.append(bool(mask.flat[int(result.heatmap.argmax())]))
            box_fractions.append(mask.mean())
    auroc = roc_auc_score(labels, scores)
    hit_rate, chance = float(np.mean(hits)), float(np.mean(box_fractions))
    p_value = binomial_tail(sum(hits), len(hits), chance)
    print(f"\ngdxray_castings, {what} (30 train, 12 good + 30 defect test): image AUROC {auroc:.3f}; "
          f"heatmap maximum inside a box in {hit_rate:.0%} of defect frames vs {chance:.1%} by chance "
          f"(binomial p = {p_value:.1e})")
    return auroc, hit_rate, chance, p_value


def test_castings_detection_and_localisation(castings, castings_detector):
    auroc, hit_rate, chance, p_value = _castings_detection(castings, castings_detector, "default settings")
    assert auroc >= 0.8
    assert hit_rate >= 5 * chance and p_value < 1e-3


def test_castings_with_a_half_whitened_pca(castings, castings_train, castings_detector):
    """--pca-whiten 0.5 on real DINOv2 features: same directions as plain PCA, spread damped, still detects."""
    whitened = Detector(DetectorConfig(pca_whiten=0.5), device="cpu").fit(castings_train)
    plain = castings_detector.method_.pca_
    norms = np.linalg.norm(whitened.method_.pca_.components, axis=1)
    assert np.allclose(whitened.method_.pca_.components / norms[:, None], plain.components, atol=1e-3)
    # direction i is divided by (var_i / mean var)^(1/4): the variance ratio of the first to the last
    # kept direction shrinks to its square root
    ratio = plain.explained_variance_ratio[0] / plain.explained_variance_ratio[-1]
    assert norms[-1] / norms[0] == pytest.approx(ratio ** 0.25, rel=1e-3)
    auroc, hit_rate, chance, p_value = _castings_detection(castings, whitened, "--pca-whiten 0.5")
    assert auroc >= 0.8
    assert hit_rate >= 5 * chance and p_value < 1e-3


def test_clean_scans_are_quiet_and_calibrated(castings, castings_detector):
    """Calibrated units: clean test frames score near 1.0, mostly below the decision threshold."""
    good = evenly((castings / "test" / "good").iterdir(), 12)
    scores = np.array([castings_detector.score(p).score for p in good])
    threshold = castings_detector.calibration_.image_threshold
    assert 0.5 < np.median(scores) < 1.5
    assert np.mean(scores > threshold) <= 0.25


def test_welds_evaluation_with_pixel_metrics(tmp_path):
    """A small real-data evaluation through the evaluate command's library path.

    gdxray_welds: fitted on all 16 clean tiles, scored on 10 good-or-fewer and 10 defect tiles.
    """
    from rtg_anomaly.evaluation.mvtec import evaluate, load_mvtec_folder

    root = shared_data_dir() / "gdxray_welds"
    eval_set = load_mvtec_folder(root)
    detector = Detector(DetectorConfig(calibration="leave_one_out"), device="cpu").fit(eval_set.train_paths)
    # every clean weld trains and is then scored leave-one-scan-out (asked for: the default holds scans out):
    # were a weld scored against its own bank rows it would score near 0, far below the median that is 1.0
    assert detector.fit_info_["calibration"] == "leave_one_out"
    assert detector.fit_info_["n_calibration_scans"] == 16
    assert min(detector.calibration_.image_scores) > 0.5
    metrics = evaluate(detector, eval_set, output_dir=tmp_path, max_per_class=10)
    print(f"\ngdxray_welds (16 train, {metrics['n_good']} good + {metrics['n_anomalous']} defect): "
          f"image AUROC {metrics['image_auroc']:.3f}, pixel AUROC {metrics['pixel_auroc']:.3f}, "
          f"AUPRO {metrics['aupro']:.3f}")
    assert metrics["pixel_metrics"] and metrics["n_anomalous"] == 10
    assert metrics["pixel_auroc"] >= 0.8
    assert metrics["aupro"] >= 0.4
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "roc.png").is_file()


def test_fishbones_evaluate_command_with_its_documented_flags(tmp_path):
    """`rtg-anomaly evaluate` end to end on gdxray_fishbones (image-level only: no masks).

    The benchmark's flags for 100 px fillet crops: one tile per image, 224 px input, per-image percentile
    window. Fitted on all 320 clean crops, scored on all 20 good and 20 fishbone crops.
    """
    import json

    from rtg_anomaly.cli import main

    root = shared_data_dir() / "gdxray_fishbones"
    argv = ["evaluate", "--data", str(root), "--output", str(tmp_path), "--device", "cpu", "--quiet",
            "--tile-size", "100", "--input-size", "224", "--intensity-window", "percentile"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    print(f"\ngdxray_fishbones: image AUROC {metrics['image_auroc']:.3f}, best F1 {metrics['best_f1']:.3f}")
    assert (metrics["n_good"], metrics["n_anomalous"]) == (20, 20)
    assert metrics["pixel_auroc"] is None and any("mask" in note for note in metrics["notes"])
    assert metrics["image_auroc"] >= 0.95


def test_casting_crops_judged_whole_with_the_global_score():
    """32 px casting crops (image-level labels) scored by the whole-crop descriptor.

    Fitted on 200 of the 1127 clean crops and scored on 30 clean and 30 defect crops, all evenly spaced.
    224 px input keeps it fast (the benchmark runs 448 px on the full sets).
    """
    root = shared_data_dir() / "gdxray_castingpatches"
    config = DetectorConfig(tile_size=32, input_size=224, image_score="global")
    detector = Detector(config, device="cpu").fit(evenly((root / "train" / "good").iterdir(), 200))
    assert detector.global_.bank_.rows.shape[0] == 200
    good = evenly((root / "test" / "good").iterdir(), 30)
    defects = evenly((root / "test" / "defect").iterdir(), 30)
    results = [detector.score(path) for path in good + defects]
    auroc = roc_auc_score([0] * len(good) + [1] * len(defects), [r.score for r in results])
    clean_scores = np.array([r.score for r in results[: len(good)]])
    print(f"\ngdxray_castingpatches (200 train, 30 good + 30 defect, 224 px): global image AUROC {auroc:.3f}")
    assert auroc >= 0.85
    assert 0.3 < np.median(clean_scores) < 3.0  # calibrated unit: clean crops near 1.0


# Measured with these subsets on the 2-core CPU (2026-12-07): patch_or_global 0.903, its top-patch part 0.651.
FUSED_CROPS_FLOOR = 0.85


def test_casting_crops_with_the_defaults_are_judged_by_patches_and_as_a_whole(tmp_path):
    """The plain defaults on 32 px casting crops: the tile is fitted to the crops, so ``image_score="auto"``
    resolves to ``patch_or_global``; the fused score ranks the crops better than its top-patch part alone, and
    a saved and loaded bundle scores the same. 200 of the 1127 clean crops (40 held out), 30 + 30 test crops."""
    root = shared_data_dir() / "gdxray_castingpatches"
    detector = Detector(DetectorConfig(), device="cpu").fit(evenly((root / "train" / "good").iterdir(), 200))
    assert detector.config.image_score == "patch_or_global" and detector.fit_info_["scale"]["fitted_to_scans"]
    assert detector.calibration_.n_scans == 40 and detector.global_.fusion_.shape == (2, 2)
    good = evenly((root / "test" / "good").iterdir(), 30)
    defects = evenly((root / "test" / "defect").iterdir(), 30)
    labels = [0] * len(good) + [1] * len(defects)
    fused = [detector.score(path).score for path in good + defects]
    top = [detector._image_score(detector.raw_scores(path), "patch_top_mean") for path in good + defects]
    fused_auroc, top_auroc = roc_auc_score(labels, fused), roc_auc_score(labels, top)
    print(f"\ngdxray_castingpatches defaults (200 train, 30 + 30 test): patch_or_global {fused_auroc:.3f}, "
          f"top patches {top_auroc:.3f}")
    assert fused_auroc >= FUSED_CROPS_FLOOR and fused_auroc > top_auroc + 0.05
    loaded = Detector.load(detector.save(tmp_path / "model"), device="cpu")
    assert [loaded.score(path).score for path in defects[:3]] == fused[len(good): len(good) + 3]


# Measured with these exact subsets on the 2-core CPU (2026-12-04): patchcore 0.862, padim 0.827,
# svdd 0.804, centroid 0.676; reconstruction 0.831 (2026-12-05, 44 s fit); the floors leave room for other
# CPUs' float rounding, not for regressions.
METHOD_FLOORS = {"padim": 0.75, "svdd": 0.72, "centroid": 0.6, "reconstruction": 0.75}


@pytest.mark.parametrize("method", sorted(METHOD_FLOORS))
def test_each_method_finds_fishbones_on_real_scans(method, tmp_path):
    """Every non-default method end to end on real X-ray crops (gdxray_fishbones at its scale: one 100 px tile
    at 224 px input): fit on 60 clean crops, save, load, score 15 clean and 15 with a fishbone."""
    root = shared_data_dir() / "gdxray_fishbones"
    train = evenly((root / "train" / "good").iterdir(), 60)
    good = evenly((root / "test" / "good").iterdir(), 15)
    bad = evenly((root / "test" / "fishbone").iterdir(), 15)
    config = DetectorConfig(method=method, tile_size=100, input_size=224)
    folder = Detector(config, device="cpu").fit(train).save(tmp_path / "model")
    detector = Detector.load(folder, device="cpu")
    assert detector.method_.name == method
    scores = [detector.score(path).score for path in good + bad]
    auroc = roc_auc_score([0] * len(good) + [1] * len(bad), scores)
    print(f"\ngdxray_fishbones subset, {method}: image AUROC {auroc:.3f}")
    assert auroc >= METHOD_FLOORS[method]


def test_pixel_gan_end_to_end_on_real_weld_scans(tmp_path):
    """The pixel target of reconstruction (transformer GAN + f-AnoGAN encoder) end to end on real X-ray weld
    scans with a short schedule (16 clean scans, 300 batches per phase: CI time): the encoder learns, a saved and loaded
    bundle scores as fitted, clean test scans sit near the calibrated clean level, and a scan is drawn at
    its size. Its detection quality is far below the feature methods (docs/benchmarks.md, methods table),
    so no AUROC floor is claimed here; the figure is printed."""
    root = shared_data_dir() / "gdxray_welds"
    train = sorted((root / "train" / "good").iterdir())
    good = sorted((root / "test" / "good").iterdir())
    bad = evenly((p for p in (root / "test").glob("*/*") if p.parent.name != "good"), 8)
    config = DetectorConfig(method="reconstruction", recon_target="pixels", backbone="pixels", tile_size=128,
                            input_size=64, recon_min_steps=300)
    fitted = Detector(config, device="cpu").fit(train)
    # The per-epoch means of 7 batches move by about 3 % from epoch to epoch, and the seeded trajectory depends
    # on the CPU's kernels: where this test was written the last epoch came over 10 % under the first, on an
    # AVX-512 machine 2 % (2026-12-07). So the trend is judged on five epochs at each end.
    losses = fitted.fit_info_["loss_history"]["encoder"]
    assert len(losses) >= 10 and np.mean(losses[-5:]) < np.mean(losses[:5])
    detector = Detector.load(fitted.save(tmp_path / "model"), device="cpu")
    results = [detector.score(path) for path in good + bad]
    assert [r.score for r in results[:2]] == [fitted.score(path).score for path in good[:2]]
    clean = np.array([r.score for r in results[: len(good)]])
    assert 0.3 < np.median(clean) < 3.0 and all(np.isfinite(r.heatmap).all() for r in results)
    auroc = roc_auc_score([0] * len(good) + [1] * len(bad), [r.score for r in results])
    print(f"\ngdxray_welds, pixel GAN (16 scans, 300 batches per phase): image AUROC {auroc:.3f}")
    drawn = detector.reconstruct(bad[0])
    assert drawn.shape == detector.load_scan(bad[0]).shape[:2] and 0.0 <= drawn.min() and drawn.max() <= 1.0
