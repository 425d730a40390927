"""scripts/study_welds_radiographs.py: welds figures split by source radiograph, on a tiny welds-like set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rtg_anomaly.methods.patchcore import PatchCore
from tests.conftest import load_script, tiny_config


@pytest.fixture(scope="module")
def study():
    return load_script("study_welds_radiographs")


def _tile(rng, side: int, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    xx = np.mgrid[:side, :side][1]
    image = 120 + 40 * np.sin(xx / 3.0 + rng.uniform(0, 6)) + rng.normal(0, 6, (side, side))
    mask = np.zeros((side, side), bool)
    if defect:
        mask[side // 3: 2 * side // 3, side // 3: 2 * side // 3] = True
        image[mask] += 90
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_welds_like(root) -> None:
    """Radiographs A and B have clean training tiles; C (another tile side) appears only with defects."""
    rng = np.random.default_rng(0)
    rows = []
    plan = ([("train/good", "A", 64, False)] * 6 + [("train/good", "B", 60, False)] * 4
            + [("test/good", "A", 64, False)] * 2 + [("test/defect", "A", 64, True)] * 2
            + [("test/defect", "C", 48, True)] * 2)
    for i, (split, source, side, defect) in enumerate(plan):
        image, mask = _tile(rng, side, defect)
        name = f"{source}_{i:03d}.png"
        folder = root / "gdxray_welds" / split
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name)
        if defect:
            truth = root / "gdxray_welds" / "ground_truth" / "defect"
            truth.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(truth / name.replace(".png", "_mask.png"))
        rows.append({"tile": name, "split": split, "source_image": f"W/{source}.png"})
    with open(root / "gdxray_welds" / "tiles.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["tile", "split", "source_image"])
        writer.writeheader()
        writer.writerows(rows)


def test_resized_to_side_scales_the_shorter_side(study):
    image = np.zeros((30, 60), np.uint8)
    assert study.resized_to_side(image, 60).shape == (60, 120)
    assert study.resized_to_side(image, 15).shape == (15, 30)
    assert study.resized_to_side(image, 30) is image


def test_exposure_copy_scales_contrast_about_the_mean_and_shifts_brightness_within_the_dtype(study):
    image = np.array([[100, 200], [100, 200]], np.uint8)
    np.testing.assert_array_equal(study.exposure_copy(image, 0.8, 0.0), [[110, 190], [110, 190]])
    np.testing.assert_array_equal(study.exposure_copy(image, 1.0, 0.1), [[126, 226], [126, 226]])
    np.testing.assert_array_equal(study.exposure_copy(image, 1.25, 0.1), [[113, 238], [113, 238]])
    deep = np.array([[0, 65535]], np.uint16)
    copy = study.exposure_copy(deep, 1.0, -0.1)
    assert copy.dtype == np.uint16 and copy.tolist() == [[0, 58982]]


def test_bank_spacing_is_the_mean_distance_to_the_nearest_other_rows(study):
    bank = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
    np.testing.assert_allclose(study.bank_spacing(bank, neighbours=1), [1.0, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(study.bank_spacing(bank, neighbours=2), [2.0, 1.5, 2.5, 5.0])


def test_density_knn_divides_each_distance_by_the_spacing_at_its_nearest_row(study, tmp_path):
    write_welds_like(tmp_path)
    train = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "gdxray_welds" / "train" / "good").iterdir())]
    detector = study.Detector(tiny_config(), device="cpu").fit(train)
    method = detector.method_
    features = detector.tile_features(train[0]).features
    valid = torch.ones(features.shape[:3], dtype=torch.bool)
    plain = PatchCore.score(method, features, valid)
    study.use_density_knn(method)
    density = method.score(features, valid)
    queries = method.pca_.transform(features.reshape(-1, features.shape[-1]))
    nearest = torch.cdist(queries, torch.from_numpy(method.memory_bank_)).argmin(1)
    spacing = torch.from_numpy(study.bank_spacing(method.memory_bank_))
    factor = spacing.median() / ((spacing**2 + spacing.median() ** 2) / 2).sqrt()
    np.testing.assert_allclose(density.reshape(-1), plain.reshape(-1) * factor[nearest], rtol=1e-4, atol=1e-5)


def test_each_variant_splits_the_figures_by_radiograph_and_the_page_shows_them(study, tmp_path):
    write_welds_like(tmp_path)
    base = tiny_config()
    rows = {variant: study.study_variant(variant, tmp_path, base)
            for variant in ("shipped", "common side", "half-cell shifts", "density kNN", "exposure copies")}
    shipped = rows["shipped"]
    assert shipped["trained_on"] == ["A", "B"] and shipped["side"] == 64
    assert set(shipped["radiographs"]) == {"A", "C"} and shipped["radiographs"]["C"]["size"] == 48
    assert (shipped["seen"]["n_defect"], shipped["unseen"]["n_defect"], shipped["all"]["n_defect"]) == (2, 2, 4)
    assert shipped["seen"]["n_good"] == shipped["unseen"]["n_good"] == 2  # every clean test tile in each group
    for row in rows.values():  # a bright square on a sine texture: found at every tile side
        assert row["all"]["image_auroc"] == 1.0 and row["all"]["pixel_auroc"] > 0.9
    cache = {"date": "d", "machine": "m", "zoom": "configured", "train_counts": {"A": 6, "B": 4}, "rows": rows,
             "read": "Read: C is new."}
    output = tmp_path / "welds.json"
    output.write_text(json.dumps(cache))
    assert study.main(["--output", str(output), "--render-only"]) == 0
    page = output.with_suffix(".md").read_text()
    assert "| clean tiles in training | 6 | 0 |" in page and "| tile side (px) | 64 | 48 |" in page
    assert "| density kNN | 1.000 |" in page and page.rstrip().endswith("Read: C is new.")


def test_unknown_variants_are_refused_before_any_work(study, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        study.main(["--variants", "shipped,wider", "--output", str(tmp_path / "x.json")])
    assert stop.value.code == 2 and "unknown variant(s): wider" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
