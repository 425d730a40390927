"""scripts/benchmark_calibration.py: the tail estimators, the clean-only subsampling study and its page."""

from __future__ import annotations

import numpy as np
import pytest

from rtg_anomaly.pipeline.calibration import threshold_at_rate
from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("benchmark_calibration")


def test_estimators_match_their_definitions(script):
    clean = np.exp(np.random.default_rng(0).normal(0.0, 0.2, 16))
    found = script.estimators(clean, 0.05)
    assert found["shipped"] == threshold_at_rate(clean, 0.05)[0]
    assert found["interpolated quantile"] == pytest.approx(np.quantile(clean, 0.95))
    # the shipped rule below 1/rate scans is the larger of the sample maximum and the log-normal fit
    assert found["shipped"] == pytest.approx(max(clean.max(), found["log-normal fit alone"]))
    one_outlier = np.append(clean[:-1], 10.0)
    assert script.estimators(one_outlier, 0.05)["shipped"] == 10.0
    assert script.estimators(one_outlier, 0.05)["robust log-normal (median, MAD)"] < 2.0


def test_subsample_study_is_seeded_and_tracks_the_rate_on_log_normal_scores(script):
    clean = np.exp(np.random.default_rng(1).normal(0.0, 0.3, 400))
    study = script.subsample_study(clean, 0.05, seed=0)
    assert study == script.subsample_study(clean, 0.05, seed=0)
    assert set(study) == {"5", "10", "16", "30"}
    for row in study.values():
        assert 0.0 <= row["shipped"]["mean"] <= row["shipped"]["p90"] <= 1.0
    # from 30 log-normal scores the shipped rule (here the log-normal fit) realises close to the 5 % asked
    assert 0.02 < study["30"]["shipped"]["mean"] < 0.09
    # sizes too close to the number of scores are left out: nothing would be left to count on
    assert set(script.subsample_study(clean[:12], 0.05)) == {"5"}


def test_render_lists_every_mode_and_estimator(script):
    mode = {"fit_seconds": 3.0, "calibration_scans": 16, "threshold": 2.0, "threshold_method": "normal-tail",
            "false_alarms": 0, "n_good": 8, "recall": 0.5, "clean_test_median": 0.9, "clean_scores": [1.0] * 16,
            "estimators": {"shipped": {"threshold": 2.0, "false_alarms": 0, "recall": 0.5}}}
    results = {"run": "2026-12-05 00:00 UTC", "datasets": {"welds": {
        "modes": {"leave_one_out": mode, "holdout": dict(mode, calibration_scans=3)},
        "subsample": {"5": {"shipped": {"mean": 0.1, "p90": 0.3}}}}}}
    page = script.render(results)
    assert ("| welds | defaults (no selection) | leave-one-out | 16 | 2.000 (normal-tail) | 0.90 | 0/8 | 50.0 % | 3 |"
            in page)
    assert "| welds | defaults (no selection) | holdout | 3 |" in page
    results["datasets"]["welds"]["zoom"] = "t512-i322 (22 px/cell)"
    assert "| welds | t512-i322 (22 px/cell) | holdout | 3 |" in script.render(results)
    assert "| 5 | 10.0 % (30.0 %) |" in page
