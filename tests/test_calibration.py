"""Tests for clean-score calibration: thresholds at a false-alarm rate, units, round trips."""
import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from rtg_anomaly.pipeline.calibration import PIXEL_QUANTILES, Calibration, ThresholdRule, calibrate, threshold_at_rate
from rtg_anomaly.errors import InputError


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("dist", ["lognormal", "gamma", "uniform"])
def test_empirical_threshold_meets_rate(rate, dist):
    rng = np.random.default_rng(0)
    draw = {
        "lognormal": lambda n: rng.lognormal(0.0, 0.3, n),
        "gamma": lambda n: rng.gamma(3.0, 1.0, n),
        "uniform": lambda n: rng.uniform(1.0, 2.0, n),
    }[dist]
    scores = draw(10_000)
    threshold, method = threshold_at_rate(scores, rate)
    assert method == "empirical"
    # on the calibration set itself: at most `rate` exceed it, and not much less
    in_sample = np.mean(scores > threshold)
    assert in_sample <= rate
    assert in_sample >= rate - 2.0 / scores.size
    # on fresh scans from the same distribution: within sampling error of the rate
    fresh = draw(200_000)
    observed = np.mean(fresh > threshold)
    sigma = math.sqrt(rate * (1 - rate) / 10_000) + math.sqrt(rate * (1 - rate) / 200_000)
    assert abs(observed - rate) < 4.0 * sigma


def test_empirical_threshold_uniform_known_quantile():
    scores = np.arange(1, 1001, dtype=np.float64)  # 1..1000
    threshold, method = threshold_at_rate(scores, 0.01)
    assert method == "empirical"
    assert threshold == 991.0  # exactly 9 of 1000 values are above ("higher" quantile)
    threshold, _ = threshold_at_rate(scores[::-1], 0.1)  # order does not matter
    assert threshold == 901.0


@pytest.mark.parametrize("n", [2, 5, 20, 99])
def test_few_scans_normal_tail_not_below_max(n):
    rng = np.random.default_rng(n)
    scores = rng.lognormal(0.0, 0.2, n)
    threshold, method = threshold_at_rate(scores, 0.01)
    assert method == "normal-tail"
    assert threshold >= scores.max()
    logs = np.log(scores)
    tail = math.exp(logs.mean() + NormalDist().inv_cdf(0.99) * logs.std(ddof=1))
    assert threshold == pytest.approx(max(tail, scores.max()))


def test_normal_tail_extrapolates_lognormal_quantile():
    # 50 log-normal scans, rate 0.001: far beyond what 50 samples can measure empirically
    rng = np.random.default_rng(11)
    mu, sigma, rate = 0.1, 0.25, 0.001
    true_quantile = math.exp(mu + NormalDist().inv_cdf(1 - rate) * sigma)
    estimates = [threshold_at_rate(rng.lognormal(mu, sigma, 50), rate)[0] for _ in range(20)]
    assert abs(np.median(estimates) / true_quantile - 1.0) < 0.1


def test_exactly_one_over_rate_scans_is_empirical():
    scores = np.linspace(1.0, 2.0, 100)
    assert threshold_at_rate(scores, 0.01)[1] == "empirical"
    assert threshold_at_rate(scores[:99], 0.01)[1] == "normal-tail"


def test_single_scan():
    threshold, method = threshold_at_rate(np.array([1.3]), 0.01)
    assert threshold == 1.3 and method == "empirical"


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_invalid_rate(rate):
    with pytest.raises(InputError):
        threshold_at_rate(np.ones(10), rate)
    with pytest.raises(InputError):
        calibrate(np.ones(10), np.ones(10), np.ones(10), false_alarm_rate=rate)


def test_no_scores():
    with pytest.raises(InputError):
        threshold_at_rate(np.array([]), 0.01)


def test_clean_scans_that_score_zero_set_no_unit():
    with pytest.raises(InputError, match="score zero everywhere .*blank"):
        calibrate(np.zeros(4), np.zeros(4), np.zeros(100), false_alarm_rate=0.1)


def test_calibrate_units_and_thresholds():
    rng = np.random.default_rng(3)
    raw_scores = rng.lognormal(np.log(4.0), 0.1, 500)
    raw_maxima = raw_scores * 1.5
    raw_pixels = rng.uniform(0.0, 4.0, 5000)
    cal = calibrate(raw_scores, raw_maxima, raw_pixels, false_alarm_rate=0.01)
    assert cal.clean_level == pytest.approx(np.median(raw_scores))
    assert np.median(cal.image_scores) == pytest.approx(1.0)
    assert np.allclose(cal.image_scores, raw_scores / cal.clean_level)
    assert np.allclose(cal.pixel_maxima, raw_maxima / cal.clean_level)
    assert cal.image_threshold == pytest.approx(threshold_at_rate(raw_scores / cal.clean_level, 0.01)[0])
    assert cal.pixel_threshold == pytest.approx(threshold_at_rate(raw_maxima / cal.clean_level, 0.01)[0])
    assert 1.0 < cal.image_threshold < cal.pixel_threshold
    assert np.mean(np.array(cal.image_scores) > cal.image_threshold) <= 0.01
    assert cal.n_scans == 500 and cal.method == "empirical" and cal.warnings == []
    assert cal.false_alarm_rate == 0.01
    assert set(cal.pixel_quantiles) == {f"{q:g}" for q in PIXEL_QUANTILES} == {"0.5", "0.9", "0.99", "0.999"}
    for q in PIXEL_QUANTILES:
        assert cal.pixel_quantiles[f"{q:g}"] == pytest.approx(np.quantile(raw_pixels / cal.clean_level, q))


def test_calibrate_scale_invariant():
    rng = np.random.default_rng(5)
    scores, maxima, pixels = rng.uniform(1, 2, 30), rng.uniform(2, 3, 30), rng.uniform(0, 2, 300)
    a = calibrate(scores, maxima, pixels, false_alarm_rate=0.05)
    b = calibrate(scores * 1000.0, maxima * 1000.0, pixels * 1000.0, false_alarm_rate=0.05)
    assert b.clean_level == pytest.approx(1000.0 * a.clean_level)
    assert b.image_threshold == pytest.approx(a.image_threshold)
    assert b.pixel_threshold == pytest.approx(a.pixel_threshold)
    assert np.allclose(b.image_scores, a.image_scores)


def test_calibrate_keeps_given_clean_level():
    cal = calibrate(np.array([2.0, 4.0, 6.0]), np.array([3.0, 5.0, 7.0]), np.array([1.0, 2.0]),
                    false_alarm_rate=0.5, clean_level=2.0)
    assert cal.clean_level == 2.0
    assert cal.image_scores == [1.0, 2.0, 3.0]
    assert cal.pixel_maxima == [1.5, 2.5, 3.5]


def test_own_image_unit_from_image_scores_and_map_unit_from_map_scores():
    image_scores, map_scores = np.array([0.1, 0.2, 0.3]), np.array([4.0, 5.0, 6.0])
    cal = calibrate(image_scores, np.array([6.0, 8.0, 10.0]), np.array([5.0, 10.0]), false_alarm_rate=0.5,
                    map_scores=map_scores)
    assert cal.clean_level == 5.0 and cal.image_level == pytest.approx(0.2) and cal.image_unit == cal.image_level
    assert np.allclose(cal.image_scores, [0.5, 1.0, 1.5])
    assert np.allclose(cal.pixel_maxima, [1.2, 1.6, 2.0])
    assert cal.pixel_quantiles["0.5"] == pytest.approx(1.5)
    again = calibrate(np.array([0.4]), np.array([10.0]), np.array([]), false_alarm_rate=0.5,
                      clean_level=cal.clean_level, map_scores=np.array([1.0]), image_level=cal.image_level)
    assert again.clean_level == 5.0 and again.image_level == cal.image_level and again.image_scores == [2.0]
    with pytest.raises(InputError, match="zero"):
        calibrate(np.zeros(3), np.ones(3), np.ones(3), map_scores=np.ones(3))


def test_shared_unit_by_default():
    cal = calibrate(np.array([2.0, 4.0]), np.array([3.0, 5.0]), np.array([1.0]), false_alarm_rate=0.5)
    assert cal.image_level is None and cal.image_unit == cal.clean_level == 3.0


def test_calibration_without_image_level_loads():
    """Bundles written before the image unit existed have no ``image_level`` key."""
    values = calibrate(np.array([2.0, 4.0]), np.array([3.0, 5.0]), np.array([1.0]), false_alarm_rate=0.5).to_dict()
    del values["image_level"]
    assert Calibration.from_dict(values).image_unit == 3.0


def test_calibrate_few_scans_warns():
    rng = np.random.default_rng(6)
    cal = calibrate(rng.uniform(1, 2, 20), rng.uniform(2, 3, 20), rng.uniform(0, 2, 100), false_alarm_rate=0.01)
    assert cal.method == "normal-tail"
    assert len(cal.warnings) == 1 and "20" in cal.warnings[0] and "100" in cal.warnings[0]
    assert cal.image_threshold >= max(cal.image_scores)
    assert cal.pixel_threshold >= max(cal.pixel_maxima)
    enough = calibrate(rng.uniform(1, 2, 100), rng.uniform(2, 3, 100), rng.uniform(0, 2, 100), false_alarm_rate=0.01)
    assert enough.warnings == [] and enough.method == "empirical"


@pytest.mark.parametrize("rate", [0.3, 0.07, 1 / 49, 0.01, 1 / 97, 0.001])
def test_warning_agrees_with_method(rate):
    needed = math.ceil(1.0 / rate)
    for n in (needed - 1, needed):
        cal = calibrate(np.linspace(1, 2, n), np.linspace(2, 3, n), np.array([]), false_alarm_rate=rate)
        assert (cal.method == "normal-tail") == bool(cal.warnings), (rate, n)
        assert cal.pixel_quantiles == {}


@pytest.mark.parametrize("scores", [np.zeros(5), np.array([0.0, 0.0, 0.0, 1.0, 2.0])])
def test_calibrate_zero_clean_level(scores):
    with pytest.raises(InputError):
        calibrate(scores, np.ones(5), np.ones(5))


def test_to_dict_from_dict_json_round_trip():
    rng = np.random.default_rng(8)
    cal = calibrate(rng.uniform(1, 2, 40), rng.uniform(2, 3, 40), rng.uniform(0, 2, 400), false_alarm_rate=0.05)
    as_dict = cal.to_dict()
    back = Calibration.from_dict(json.loads(json.dumps(as_dict)))
    assert back == cal
    assert back.to_dict() == as_dict
    with pytest.raises(TypeError):
        Calibration.from_dict({**as_dict, "unexpected": 1})


# ---------------------------------------------------------------- threshold rules

def test_mean_std_and_percentile_rules_follow_their_formulas():
    rng = np.random.default_rng(5)
    scores = rng.lognormal(0.0, 0.2, 40)
    maxima = scores * 2.0
    cal = calibrate(scores, maxima, scores, rule=ThresholdRule("mean_std", std_multiple=3.0))
    unit = np.median(scores)
    assert cal.image_threshold == pytest.approx((scores / unit).mean() + 3.0 * (scores / unit).std(ddof=1))
    assert cal.pixel_threshold == pytest.approx((maxima / unit).mean() + 3.0 * (maxima / unit).std(ddof=1))
    assert cal.method == "mean_std" and cal.threshold_rule == {"name": "mean_std", "std_multiple": 3.0}
    cal = calibrate(scores, maxima, scores, rule=ThresholdRule("percentile", clean_percentile=90.0))
    assert cal.image_threshold == pytest.approx(np.percentile(scores / unit, 90.0))
    assert cal.rule == ThresholdRule("percentile", clean_percentile=90.0)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_the_default_rule_leaves_the_calibration_as_before():
    scores = np.linspace(1.0, 2.0, 30)
    cal = calibrate(scores, scores, scores, false_alarm_rate=0.1)
    assert "threshold_rule" not in cal.to_dict() and cal.rule == ThresholdRule()
    assert cal.image_threshold == threshold_at_rate(scores / np.median(scores), 0.1)[0]


@pytest.mark.parametrize("changes", [dict(name="sigma"), dict(name="mean_std", std_multiple=float("nan")),
                                     dict(name="percentile", clean_percentile=101.0),
                                     dict(name="mean_std", std_multiple=-1.0)])
def test_bad_rules_are_refused(changes):
    with pytest.raises(InputError):
        ThresholdRule(**changes)
