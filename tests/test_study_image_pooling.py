"""scripts/study_image_pooling.py: the pooled image scores of one scan and the page, on hand-made scores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("study_image_pooling")


def _detector(image_score="patch_top_mean", fused=0.0):
    """What variant_scores reads of a detector: 64 px tiles on a 4x4 grid (16 scan px per cell)."""
    return SimpleNamespace(config=SimpleNamespace(tile_size=64, image_score=image_score),
                           extractor=SimpleNamespace(grid=(4, 4)), _image_score=lambda raw: fused)


def test_top_k_means_the_highest_patch_distances(script):
    raw = SimpleNamespace(patch_scores=np.arange(20, dtype=np.float32)[::-1].copy(),
                          anomaly_map=np.zeros((64, 64), np.float32))
    scores = script.variant_scores(_detector(), raw)
    assert scores["top 1"] == 19.0 and scores["top 5"] == pytest.approx(17.0)  # mean of 19..15
    assert scores["top 20"] == pytest.approx(9.5)
    assert "shipped" not in scores  # only where auto resolved to patch_or_global


def test_pooling_the_map_lowers_a_lone_spike_more_than_a_wide_defect(script):
    """What the pooled variants are for: a one-pixel spike and a defect three cells (48 px) wide of the same
    height: the map's maximum cannot tell them apart, the pooled maxima can."""
    spike = np.zeros((128, 128), np.float32)
    spike[64, 64] = 1.0
    wide = np.zeros((128, 128), np.float32)
    wide[40:88, 40:88] = 1.0
    patches = np.zeros(4, np.float32)
    lone = script.variant_scores(_detector(), SimpleNamespace(patch_scores=patches, anomaly_map=spike))
    defect = script.variant_scores(_detector(), SimpleNamespace(patch_scores=patches, anomaly_map=wide))
    assert lone["map max"] == defect["map max"] == 1.0
    for sigma in script.SIGMAS_CELLS:
        name = f"map max, sigma {sigma:g}"
        assert lone[name] < 0.01 and defect[name] > 100 * lone[name]


def test_the_shipped_fused_score_is_kept_where_auto_fuses(script):
    raw = SimpleNamespace(patch_scores=np.ones(8, np.float32), anomaly_map=np.ones((8, 8), np.float32))
    assert script.variant_scores(_detector("patch_or_global", fused=7.5), raw)["shipped"] == 7.5


def test_the_page_bolds_each_dataset_s_best_and_averages_complete_rows(script):
    run = {"tile_size": 512, "input_size": 448, "cell_px": 16.0, "image_score": "patch_top_mean", "n_train": 3,
           "n_test": 4, "fit_s": 1.0}
    cache = {"flags": "", "date": "2026-12-07", "machine": "test", "read": "",
             "datasets": {"a": {**run, "auroc": {"top 5": 0.9, "map max": 0.8}},
                          "b": {**run, "auroc": {"top 5": 0.7, "map max": 0.75, "shipped": 0.95}}}}
    page = script.render(cache)
    assert "| top 5 | **0.900** | 0.700 | 0.800 |" in page
    assert "| map max | 0.800 | 0.750 | 0.775 |" in page
    assert "| shipped | – | **0.950** | – |" in page
