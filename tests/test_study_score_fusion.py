"""scripts/study_score_fusion.py: the ways to join the top-patch and whole-scan scores, on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import rankdata

from tests.conftest import load_script, tiny_config, write_crops


@pytest.fixture(scope="module")
def study():
    return load_script("study_score_fusion")


def test_normalisers_put_values_on_the_held_out_scale(study):
    held = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(study.normalised(held, np.array([5.0]), "median"), [2.0])
    np.testing.assert_allclose(study.normalised(held, np.array([2.5 + np.std(held, ddof=1)]), "z"), [1.0])
    np.testing.assert_allclose(study.normalised(held, np.array([0.0, 2.0, 9.0]), "rank"), [0.0, 0.375, 1.0])
    with pytest.raises(ValueError, match="normaliser"):
        study.normalised(held, held, "mean")


def test_the_shipped_variant_orders_scans_as_the_larger_z_score(study):
    rng = np.random.default_rng(0)
    held = np.c_[rng.normal(1.0, 0.2, 30), rng.normal(0.1, 0.05, 30)]
    test = np.c_[rng.normal(1.2, 0.4, 50), rng.normal(0.12, 0.1, 50)]
    scores = study.variant_scores(held, test)
    assert set(scores) == set(study.VARIANTS) and all(v.shape == (50,) for v in scores.values())
    z_max = np.maximum(study.normalised(held[:, 0], test[:, 0], "z"), study.normalised(held[:, 1], test[:, 1], "z"))
    np.testing.assert_array_equal(rankdata(scores[study.SHIPPED]), rankdata(z_max))
    np.testing.assert_array_equal(scores["top patches"], test[:, 0])


def test_fusion_applies_where_the_tile_is_fitted_to_the_scans(study):
    assert study.fuses_here([np.zeros((32, 32), np.uint8)] * 3)
    assert not study.fuses_here([np.zeros((600, 800), np.uint8)] * 3)


def test_a_dataset_row_and_its_page(study, tmp_path, monkeypatch):
    write_crops(tmp_path / "crops" / "train" / "good", 40)
    write_crops(tmp_path / "crops" / "test" / "good", 4, seed=1)
    write_crops(tmp_path / "crops" / "test" / "defect", 4, seed=2, blob=True)
    monkeypatch.setattr(study, "DetectorConfig", tiny_config)
    row = study.study_dataset(tmp_path, "crops")
    assert (row["n_fit"], row["n_held"], row["n_test"]) == (32, 8, 8) and row["fuses_here"]
    assert set(row["image_auroc"]) == set(study.VARIANTS)
    assert row["image_auroc"][study.SHIPPED] == 1.0  # a bright square in every defective crop
    cache = {"date": "d", "machine": "m", "rows": {"crops": row}, "read": "Read: both."}
    output = tmp_path / "fusion.json"
    output.write_text(json.dumps(cache))
    assert study.main(["--output", str(output), "--render-only"]) == 0
    page = output.with_suffix(".md").read_text()
    assert "| crops | yes | 32 / 8 / 8 | 24 px at 56 px |" in page and "**1.000**" in page
    assert page.rstrip().endswith("Read: both.")
