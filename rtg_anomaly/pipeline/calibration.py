"""Clean-score statistics: the unit of the anomaly map, and thresholds by a rule over clean scores.

Threshold rules (``ThresholdRule``), applied alike to the image scores and to the map maxima of the
clean calibration scans:
  ``false_alarm_rate`` (default): the score a share ``false_alarm_rate`` of clean scans exceed
      (``threshold_at_rate``);
  ``mean_std``: mean + ``std_multiple`` x standard deviation of the clean scores (3 by default, the
      rule of the seed systems this tool replaces);
  ``percentile``: the ``clean_percentile``-th percentile of the clean scores (linear interpolation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from ..errors import InputError

DEFAULT_FALSE_ALARM_RATE = 0.01
PIXEL_QUANTILES = (0.5, 0.9, 0.99, 0.999)
THRESHOLD_RULES = ("false_alarm_rate", "mean_std", "percentile")


@dataclass(frozen=True)
class ThresholdRule:
    """How thresholds follow from clean scores: ``name`` from THRESHOLD_RULES and its parameter
    (``std_multiple`` for mean_std, ``clean_percentile`` in [0, 100] for percentile; the false-alarm
    rate is a calibration argument of its own)."""

    name: str = "false_alarm_rate"
    std_multiple: float = 3.0
    clean_percentile: float = 99.0

    def __post_init__(self) -> None:
        if self.name not in THRESHOLD_RULES:
            raise InputError(f"unknown threshold rule {self.name!r}; choose one of: {', '.join(THRESHOLD_RULES)}")
        if not (math.isfinite(self.std_multiple) and 0.0 <= self.std_multiple <= 100.0):
            raise InputError(f"the standard-deviation multiple must be in [0, 100], got {self.std_multiple}")
        if not (math.isfinite(self.clean_percentile) and 0.0 <= self.clean_percentile <= 100.0):
            raise InputError(f"the clean percentile must be in [0, 100], got {self.clean_percentile}")

    def to_dict(self) -> dict:
        """JSON-ready: the name and only the parameter it uses."""
        if self.name == "mean_std":
            return {"name": self.name, "std_multiple": self.std_multiple}
        if self.name == "percentile":
            return {"name": self.name, "clean_percentile": self.clean_percentile}
        return {"name": self.name}

    @classmethod
    def from_dict(cls, values: dict | None) -> "ThresholdRule":
        return cls() if values is None else cls(**values)

    def describe(self, false_alarm_rate: float) -> str:
        if self.name == "mean_std":
            return f"mean + {self.std_multiple:g} std of clean scores"
        if self.name == "percentile":
            return f"{self.clean_percentile:g}th percentile of clean scores"
        return f"a false-alarm rate of {false_alarm_rate:g}"

    def threshold(self, clean_scores: np.ndarray, false_alarm_rate: float) -> tuple[float, str]:
        """(threshold, how it was set) over (n,) calibrated clean scores."""
        scores = np.asarray(clean_scores, dtype=np.float64)
        if scores.size == 0:
            raise InputError("no clean scores to calibrate on")
        if self.name == "mean_std":
            spread = float(scores.std(ddof=1)) if scores.size >= 2 else 0.0
            return float(scores.mean()) + self.std_multiple * spread, "mean_std"
        if self.name == "percentile":
            return float(np.percentile(scores, self.clean_percentile)), "percentile"
        return threshold_at_rate(scores, false_alarm_rate)


@dataclass(frozen=True)
class Calibration:
    """What clean scans score, and the thresholds derived from it.

    clean_level: raw map value that becomes 1.0 in calibrated units (the
        median over clean scans of their image score, or of their map score when
        the image score is not read off the map).
    image_level: raw image score that becomes 1.0, when the image score has its
        own unit (the ``global`` descriptor distance); ``None``: ``clean_level``.
    image_scores: calibrated image scores of the clean calibration scans.
    pixel_maxima: calibrated map maxima of the same scans.
    pixel_quantiles: quantiles of all their pixel values, calibrated, keyed "0.99".
    false_alarm_rate: share of clean scans allowed to be flagged.
    image_threshold: calibrated image score above which a scan is anomalous.
    pixel_threshold: calibrated map value above which a pixel is coloured in
        calibrated mode (a clean scan has no pixel above it with probability
        1 - false_alarm_rate).
    n_scans: how many clean scans the figures rest on.
    method: "empirical" quantile, or "normal-tail" when there are too few
        scans for the rate (a log-normal fit extrapolates the tail); "mean_std" or
        "percentile" under those rules.
    warnings: human-readable caveats (too few scans, ...).
    threshold_rule: ``ThresholdRule.to_dict()`` of the rule the thresholds follow
        (None in bundles from before rules existed: the false-alarm rate).
    """

    clean_level: float
    image_scores: list[float]
    pixel_maxima: list[float]
    pixel_quantiles: dict[str, float]
    false_alarm_rate: float
    image_threshold: float
    pixel_threshold: float
    n_scans: int
    method: str
    warnings: list[str] = field(default_factory=list)
    image_level: float | None = None
    threshold_rule: dict | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["threshold_rule"] is None:  # bundles keep their bytes unless a rule was chosen
            del out["threshold_rule"]
        return out

    @property
    def rule(self) -> ThresholdRule:
        """The threshold rule (false_alarm_rate for calibrations that name none)."""
        return ThresholdRule.from_dict(self.threshold_rule)

    @property
    def image_unit(self) -> float:
        """Raw image score that is 1.0 in calibrated units."""
        return self.clean_level if self.image_level is None else self.image_level

    @property
    def color_range(self) -> tuple[float, float]:
        """Calibrated values at the bottom and top of the overlay's colour scale.

        From the clean level (1.0) to twice the pixel threshold's excess over
        it: the same for every scan scored with this calibration, so clean
        scans stay cold and an anomaly well past the threshold saturates.
        """
        return 1.0, 1.0 + 2.0 * max(self.pixel_threshold - 1.0, 0.25)

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        return cls(**values)


def check_false_alarm_rate(false_alarm_rate: float) -> None:
    """InputError unless 0 < rate < 1 (a share of clean scans)."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise InputError(f"false-alarm rate must be in (0, 1), got {false_alarm_rate}")


def threshold_at_rate(clean_scores: np.ndarray, false_alarm_rate: float) -> tuple[float, str]:
    """Score that at most ``false_alarm_rate`` of clean scans exceed.

    With at least 1/rate scans it is the empirical (1 - rate) quantile. With
    fewer, the empirical quantile is just the sample maximum and would
    under-state the tail, so a normal fit to the log scores is extrapolated
    and the larger of the two is used. Returns (threshold, method).
    """
    scores = np.asarray(clean_scores, dtype=np.float64)
    if scores.size == 0:
        raise InputError("no clean scores to calibrate on")
    check_false_alarm_rate(false_alarm_rate)
    empirical = float(np.quantile(scores, 1.0 - false_alarm_rate, method="higher"))
    if scores.size * false_alarm_rate >= 1.0 or scores.size < 2:
        return empirical, "empirical"
    return max(empirical, log_normal_tail(scores, false_alarm_rate)), "normal-tail"


def log_normal_tail(clean_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The (1 - rate) quantile of a normal fit (mean, sample std) to the log of ``clean_scores`` (n >= 2,)."""
    logs = np.log(np.maximum(np.asarray(clean_scores, dtype=np.float64), 1e-12))
    z = NormalDist().inv_cdf(1.0 - false_alarm_rate)
    return float(math.exp(logs.mean() + z * logs.std(ddof=1)))


def calibrate(image_scores: np.ndarray, pixel_maxima: np.ndarray, pixel_samples: np.ndarray,
              false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, clean_level: float | None = None,
              map_scores: np.ndarray | None = None, image_level: float | None = None,
              rule: ThresholdRule | None = None) -> Calibration:
    """Build a Calibration from raw (uncalibrated) clean statistics.

    image_scores, pixel_maxima: (n_scans,) raw scores of clean scans.
    pixel_samples: (n,) raw map values sampled from those scans.
    map_scores: (n_scans,) raw map scores of the same scans when the image score
        has a unit of its own; the map unit then comes from them and the image
        unit from ``image_scores``.
    clean_level, image_level: keep existing units (recalibration); default:
        the medians of ``map_scores`` (else ``image_scores``) and ``image_scores``.
    rule: how the thresholds follow from the clean scores (default: the false-alarm rate).
    """
    image_scores = np.asarray(image_scores, dtype=np.float64)
    own_image_unit = map_scores is not None or image_level is not None
    if clean_level is None:
        clean_level = float(np.median(image_scores if map_scores is None else np.asarray(map_scores, np.float64)))
    if own_image_unit and image_level is None:
        image_level = float(np.median(image_scores))
    if not clean_level > 0 or (own_image_unit and not image_level > 0):
        raise InputError("the held-out clean scans score zero everywhere (blank, or copies of training scans "
                         "kept whole in the bank), so they set no calibrated unit: give clean scans that differ")
    image_cal = image_scores / (image_level if own_image_unit else clean_level)
    maxima_cal = np.asarray(pixel_maxima, dtype=np.float64) / clean_level
    image_threshold, method = (rule or ThresholdRule()).threshold(image_cal, false_alarm_rate)
    pixel_threshold, _ = (rule or ThresholdRule()).threshold(maxima_cal, false_alarm_rate)
    samples = np.asarray(pixel_samples, dtype=np.float64) / clean_level
    quantiles = {f"{q:g}": float(np.quantile(samples, q)) for q in PIXEL_QUANTILES} if samples.size else {}
    warnings = []
    needed = int(math.ceil(1.0 / false_alarm_rate))
    if image_scores.size < 2:
        warnings.append(
            f"calibration rests on a single clean scan, which sets no spread: the thresholds equal its score; "
            f"run 'rtg-anomaly calibrate' with at least {needed} clean scans"
        )
    elif image_scores.size < needed and (rule is None or rule.name == "false_alarm_rate"):
        warnings.append(
            f"calibration rests on {image_scores.size} clean scans; a false-alarm rate of {false_alarm_rate:g} "
            f"needs at least {needed} to be measured (the threshold is extrapolated from a log-normal fit)"
        )
    return Calibration(
        clean_level=float(clean_level),
        image_scores=[float(s) for s in image_cal],
        pixel_maxima=[float(s) for s in maxima_cal],
        pixel_quantiles=quantiles,
        false_alarm_rate=float(false_alarm_rate),
        image_threshold=float(image_threshold),
        pixel_threshold=float(pixel_threshold),
        n_scans=int(image_scores.size),
        method=method,
        warnings=warnings,
        image_level=float(image_level) if own_image_unit else None,
        threshold_rule=None if rule is None or rule.name == "false_alarm_rate" else rule.to_dict(),
    )
