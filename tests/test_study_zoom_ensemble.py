"""scripts/study_zoom_ensemble.py: the averaging of zooms and the page it renders, on hand-made scores."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("study_zoom_ensemble")


def _run(scores, maps, masks, fit_s=10.0, detect_ms=100.0):
    return {"scores": np.asarray(scores, float), "labels": np.array([0, 0, 1, 1]), "maps": maps, "masks": masks,
            "fit_s": fit_s, "detect_ms": detect_ms}


def test_an_average_of_zooms_ranks_by_the_mean_calibrated_score(script):
    # Each zoom misses a different anomalous scan; their average misses neither.
    masks = [np.zeros((2, 2), bool)] * 2 + [np.eye(2, dtype=bool)] * 2
    flat = [np.ones((2, 2), np.float32)] * 4
    runs = {16: _run([1.0, 1.1, 2.0, 1.05], flat, masks), 12: _run([1.0, 1.1, 1.05, 2.0], flat, masks, 20.0, 180.0)}
    rows = {tuple(r["zooms"]): r for r in script.ensemble_rows(runs)}
    assert set(rows) == {(12,), (16,), (12, 16)}
    assert rows[(16,)]["image_auroc"] == pytest.approx(0.75)
    assert rows[(12,)]["image_auroc"] == pytest.approx(0.75)
    assert rows[(12, 16)]["image_auroc"] == pytest.approx(1.0)
    assert rows[(12, 16)]["detect_ms"] == pytest.approx(280.0) and rows[(12, 16)]["fit_s"] == pytest.approx(30.0)
    assert rows[(12, 16)]["pixel_auroc"] == pytest.approx(0.5)  # flat maps separate nothing


def test_maps_are_averaged_pixel_by_pixel(script):
    masks = [np.zeros((1, 2), bool)] * 2 + [np.array([[True, False]])] * 2
    hot_left = [np.array([[2.0, 1.0]], np.float32)] * 4
    cold_left = [np.array([[0.0, 1.0]], np.float32)] * 4
    runs = {16: _run([1, 1, 2, 2], hot_left, masks), 22: _run([1, 1, 2, 2], cold_left, masks)}
    rows = {tuple(r["zooms"]): r for r in script.ensemble_rows(runs)}
    assert rows[(16,)]["pixel_auroc"] > 0.5 > rows[(22,)]["pixel_auroc"]
    assert rows[(16, 22)]["pixel_auroc"] == pytest.approx(0.5)  # the mean map is flat


def test_without_masks_no_pixel_figure_and_the_page_lists_every_combination(script):
    masks = [np.zeros((2, 2), bool)] * 4
    flat = [np.ones((2, 2), np.float32)] * 4
    runs = {16: _run([1, 2, 3, 4], flat, masks), 12: _run([1, 2, 4, 3], flat, masks, detect_ms=150.0)}
    rows = script.ensemble_rows(runs)
    assert all(r["pixel_auroc"] is None for r in rows)
    cache = {"flags": "", "date": "2026-12-07 03:00 UTC", "machine": "test", "subsample": "Full sets.",
             "datasets": {"a": rows, "b": rows}, "read": "Read: none wins."}
    page = script.render(cache)
    assert "| 16 | 1.000 | 1.000 | 1.000 | 1.00× |" in page
    assert "| 12 + 16 | 1.000 | 1.000 | 1.000 | 2.78× |" in page  # 384 px tiles at 448 px: 1.78× the tiles
    assert page.rstrip().endswith("Read: none wins.")


def test_backbone_work_counts_pixels_through_the_backbone_per_scan_pixel(script):
    assert script.backbone_work([16]) == pytest.approx(1.0)
    assert script.backbone_work([22]) == pytest.approx((322 / 512) ** 2 / (448 / 512) ** 2)
    assert script.backbone_work([12, 16, 22]) == pytest.approx(sum(script.backbone_work([z]) for z in (12, 16, 22)))
