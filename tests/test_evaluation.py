"""Tests of rtg_anomaly.evaluation.mvtec on a tiny synthetic MVTec-style dataset and a tiny random backbone."""

import json
import shutil

import cv2
import numpy as np
import pytest

from rtg_anomaly import Detector, DetectorConfig, NotFittedError
from rtg_anomaly.outputs.display import DisplayStyle, render_display
from rtg_anomaly.errors import InputError
from rtg_anomaly.evaluation.mvtec import (NO_GROUND_TRUTH_NOTE, EvalItem, evaluate, load_mask, load_mvtec_folder,
                                          subsample_items)
from rtg_anomaly.outputs.overlay import percentile_mask
from rtg_anomaly.scans.synthetic import write_demo_dataset

TINY = DetectorConfig(backbone="vit_small_patch14_dinov2", weights="random",
                      model_kwargs=dict(depth=2, embed_dim=32, num_heads=2), layers=(1,), tile_size=64,
                      input_size=56, pca_dim=16, batch_size=4)
UNIT_KEYS = ("image_auroc", "pixel_auroc", "aupro", "best_f1", "calibrated_precision", "calibrated_recall",
             "calibrated_f1", "calibrated_false_alarm_rate", "calibrated_accuracy")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval") / "demo"
    write_demo_dataset(root, n_clean_train=4, n_clean_test=3, n_anomalous=3, height=96, seed=1, fmt="bmp")
    return root


@pytest.fixture(scope="module")
def detector(dataset):
    return Detector(TINY, device="cpu").fit(load_mvtec_folder(dataset).train_paths)


def test_load_mvtec_folder(dataset):
    eval_set = load_mvtec_folder(dataset)
    assert len(eval_set.train_paths) == 4 and eval_set.has_ground_truth and eval_set.notes == []
    assert [(i.defect_type, i.label) for i in eval_set.test_items] == [("anomalous", 1)] * 3 + [("good", 0)] * 3
    assert eval_set.defect_types == ["anomalous"]
    for item in eval_set.test_items:
        if item.label:
            assert item.mask_path == dataset / "ground_truth" / "anomalous" / f"{item.path.stem}_mask.png"
        else:
            assert item.mask_path is None


def test_evaluate_writes_every_output(detector, dataset, tmp_path):
    out = tmp_path / "report"
    metrics = evaluate(detector, load_mvtec_folder(dataset), output_dir=out, worst_overlays=1)
    for name in ("metrics.json", "metrics.md", "roc.png", "pr.png", "score_histogram.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    flagged = any(image["anomalous"] for image in metrics["images"])
    for key in UNIT_KEYS:
        if key == "calibrated_precision" and not flagged:
            assert metrics[key] is None  # undefined when nothing is flagged
            continue
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, key
    assert metrics["pixel_metrics"] and metrics["aupro_method"] == "exact" and metrics["aupro_max_fpr"] == 0.3
    assert (metrics["n_test_images"], metrics["n_good"], metrics["n_anomalous"]) == (6, 3, 3)
    assert metrics["counts"] == {"anomalous": 3, "good": 3}
    assert np.isfinite(metrics["best_f1_threshold"]) and metrics["detect_ms_per_image"] > 0
    assert metrics["calibrated_threshold"] == detector.calibration_.image_threshold
    assert set(metrics["per_type"]) == {"good", "anomalous"}
    assert 0.0 <= metrics["per_type"]["anomalous"]["image_auroc"] <= 1.0
    # the per-image decisions are the detector's own calibrated ones
    assert all(r["anomalous"] == (r["score"] > metrics["calibrated_threshold"]) for r in metrics["images"])
    assert metrics["per_type"]["good"]["flagged"] == metrics["calibrated_false_alarm_rate"]
    # one worst anomalous image (lowest score) and one worst good image (highest score)
    worst = sorted(p.name for p in (out / "worst").iterdir())
    assert len(worst) == 2 and worst[0].startswith("anomalous_01_") and worst[1].startswith("good_01_")
    lowest = min(r["score"] for r in metrics["images"] if r["label"] == 1)
    assert metrics["worst_overlays"][0]["score"] == lowest
    overlay = cv2.imread(str(out / "worst" / worst[0]))
    scan = cv2.imread(str(dataset / metrics["worst_overlays"][0]["path"]))
    assert overlay.shape == scan.shape
    # The good one (no ground-truth outline drawn on it) is the overlay detect writes by default.
    good_path = dataset / metrics["worst_overlays"][1]["path"]
    good = cv2.cvtColor(cv2.imread(str(out / "worst" / worst[1])), cv2.COLOR_BGR2RGB)
    result = detector.score(good_path)
    expected = render_display(detector.load_scan(good_path), result.heatmap, result.pixel_threshold, DisplayStyle(),
                              display_mask=percentile_mask(result.heatmap, 90.0),
                              color_range=detector.calibration_.color_range, window=result.window)
    assert np.array_equal(good, expected)
    report = (out / "metrics.md").read_text()
    assert "| Metric | Value |" in report and "| Image AUROC |" in report and "| anomalous | 3 |" in report


def test_without_ground_truth_gives_image_metrics_and_says_so(detector, dataset, tmp_path):
    root = tmp_path / "no_gt"
    shutil.copytree(dataset, root, ignore=shutil.ignore_patterns("ground_truth"))
    eval_set = load_mvtec_folder(root)
    assert not eval_set.has_ground_truth and eval_set.test_items[0].mask_path is None
    metrics = evaluate(detector, eval_set, output_dir=tmp_path / "out")
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None and not metrics["pixel_metrics"]
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["best_f1"] is not None
    assert NO_GROUND_TRUTH_NOTE in metrics["notes"]
    report = (tmp_path / "out" / "metrics.md").read_text()
    assert "| Pixel AUROC | n/a |" in report and "image-level metrics only" in report
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["aupro"] is None


def test_masks_of_other_size_subsampling_and_unreadable_images(detector, dataset, tmp_path):
    root = tmp_path / "odd"
    shutil.copytree(dataset, root)
    for mask_path in (root / "ground_truth" / "anomalous").iterdir():  # half-size masks
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(mask_path), cv2.resize(mask, (mask.shape[1] // 2, mask.shape[0] // 2),
                                               interpolation=cv2.INTER_NEAREST))
    (root / "test" / "good" / "zzz_broken.png").write_bytes(b"not an image")
    metrics = evaluate(detector, load_mvtec_folder(root), max_per_class=2)
    # 2 kept per type; the broken file is one of the 2 good ones kept, skipped and listed
    assert metrics["counts"] == {"anomalous": 2, "good": 1} and metrics["n_skipped"] == 1
    assert [s["path"] for s in metrics["skipped"]] == ["test/good/zzz_broken.png"]
    assert any("resized" in note for note in metrics["notes"])
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and 0.0 <= metrics["aupro"] <= 1.0


def test_test_scans_of_another_kind_are_noted(detector, dataset, tmp_path):
    root = tmp_path / "raw16"
    shutil.copytree(dataset, root)
    for path in sorted((root / "test" / "good").iterdir())[:2]:  # two good scans as raw 16-bit files
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257
        assert cv2.imwrite(str(path.with_suffix(".png")), image)
        path.unlink()
    metrics = evaluate(detector, load_mvtec_folder(root))
    notes = [note for note in metrics["notes"] if "uint16" in note]
    assert len(notes) == 1 and notes[0].startswith("2 test image(s): uint16 grey scan, but the model was fitted on")


def test_subsample_items_is_even_and_deterministic(tmp_path):
    items = [EvalItem(tmp_path / f"{i}.png", 1, "crack") for i in range(10)] + \
            [EvalItem(tmp_path / f"g{i}.png", 0, "good") for i in range(3)]
    kept = subsample_items(items, 4)
    assert [i.path.name for i in kept] == ["0.png", "3.png", "6.png", "9.png", "g0.png", "g1.png", "g2.png"]
    assert subsample_items(items, 4) == kept and subsample_items(items, None) == items
    with pytest.raises(InputError):
        subsample_items(items, 0)


def test_load_mask_resizes_with_nearest(tmp_path):
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:4] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    big = load_mask(tmp_path / "m.png", (8, 12))
    assert big.dtype == bool and big.shape == (8, 12) and big.sum() == 16 and set(np.unique(big)) == {False, True}


def test_bad_layout_is_an_input_error(dataset, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_mvtec_folder(tmp_path / "missing")
    no_train = tmp_path / "no_train"
    shutil.copytree(dataset / "test", no_train / "test")
    with pytest.raises(InputError, match="train/good"):
        load_mvtec_folder(no_train)
    no_test = tmp_path / "no_test"
    shutil.copytree(dataset / "train", no_test / "train")
    with pytest.raises(InputError, match="no test folder"):
        load_mvtec_folder(no_test)
    (no_test / "test" / "good").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no images"):
        load_mvtec_folder(no_test)


def test_evaluate_needs_a_fitted_detector(dataset):
    with pytest.raises(NotFittedError):
        evaluate(Detector(TINY, device="cpu"), load_mvtec_folder(dataset))
