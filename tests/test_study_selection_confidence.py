"""scripts/study_selection_confidence.py: pooled AUROC over resampled scans, the win shares and both rules."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("study_selection_confidence")


def _maps(object_value: float, clean_value: float = 1.0, n_scans: int = 4):
    """(clean maps, synthetic maps) for n_scans validation scans with one object each at pixel (0, 0)."""
    clean = [np.full((2, 2), clean_value, np.float32) for _ in range(n_scans)]
    synthetic = []
    for _ in range(n_scans):
        values = np.full((2, 2), clean_value, np.float32)
        values[0, 0] = object_value
        synthetic.append(values)
    return clean, synthetic


MASKS = [np.array([[True, False], [False, False]])] * 4


def test_pooled_auroc_scores_object_pixels_against_every_clean_pixel_of_the_drawn_scans(script):
    assert script.pooled_auroc(*_maps(2.0), MASKS, range(4)) == pytest.approx(1.0)
    assert script.pooled_auroc(*_maps(1.0), MASKS, [0, 0, 1, 1]) == pytest.approx(0.5)  # ties count half


def test_a_zoom_that_always_separates_better_wins_every_draw_and_moves_the_cautious_rule(script):
    maps = {"t512 (16 px/cell)": _maps(1.0), "t384 (12 px/cell)": _maps(2.0)}
    rows = script.confidence(maps, MASKS, 4, seed=0, boots=20, margin=0.005)
    assert rows["t512 (16 px/cell)"]["wins_over_default"] is None
    assert rows["t384 (12 px/cell)"]["wins_over_default"] == pytest.approx(1.0)
    assert script.cautious_choice(rows) == script.shipped_choice(rows, 0.005) == "t384 (12 px/cell)"
    assert script.confidence(maps, MASKS, 4, seed=0, boots=20, margin=0.005) == rows  # seeded


def test_cautious_rule_keeps_the_default_where_the_shipped_rule_follows_a_small_gain(script):
    rows = {"16": {"pixel_auroc": 0.750, "wins_over_default": None},
            "22": {"pixel_auroc": 0.780, "wins_over_default": 0.6},
            "12": {"pixel_auroc": 0.760, "wins_over_default": 0.95}}
    assert script.shipped_choice(rows, 0.005) == "22"
    assert script.cautious_choice(rows) == "12"
    rows["12"]["wins_over_default"] = 0.5
    assert script.cautious_choice(rows) == "16"
    page = script.render({"date": "2026-12-07", "machine": "test", "boots": 20, "margin": 0.005,
                          "results": {"a/0": {k: dict(v, boot_sd=0.01) for k, v in rows.items()}}, "read": "Read."})
    assert "| a | 0 | 16: 0.750 ± 0.010; 22: 0.780 ± 0.010 (60%); 12: 0.760 ± 0.010 (50%) | 22 | 16 |" in page
