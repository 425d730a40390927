"""Evaluation metrics of an anomaly detector: pure numpy / scipy / scikit-learn functions.

Conventions
-----------
labels: (N,) 0/1 (or bool) image labels, 1 = anomalous.
scores: (N,) float image scores, higher = more anomalous.
masks: list of (H_i, W_i) arrays, non-zero / True = anomalous pixel. Images may
    have different sizes; ``maps[i]`` must have the shape of ``masks[i]``.
maps: list of (H_i, W_i) float anomaly maps, higher = more anomalous.

Degenerate input (a single class, mismatched shapes, no pixels) raises ValueError
with a one-line reason.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------- image level
def _image_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length ({labels.size} vs {scores.size})")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return labels.astype(np.int64), scores


def _need_both_classes(labels: np.ndarray, what: str) -> None:
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError(f"{what} needs both normal and anomalous samples "
                         f"(got {labels.size - n_pos} normal, {n_pos} anomalous)")


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores.

    labels: (N,) 0/1; scores: (N,) float. Returns a float in [0, 1] (0.5 = chance).
    """
    from sklearn.metrics import roc_auc_score

    labels, scores = _image_arrays(labels, scores)
    _need_both_classes(labels, "image AUROC")
    return float(roc_auc_score(labels, scores))


def best_f1(labels, scores) -> tuple[float, float]:
    """Best F1 over all thresholds of the image scores.

    labels: (N,) 0/1; scores: (N,) float. A sample is predicted anomalous when
    ``score >= threshold`` (scikit-learn's ``precision_recall_curve`` rule).
    Returns ``(f1, threshold)``; ties go to the highest threshold.
    """
    from sklearn.metrics import precision_recall_curve

    labels, scores = _image_arrays(labels, scores)
    if labels.sum() == 0:
        raise ValueError("best F1 needs at least one anomalous sample")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision 1, recall 0) point has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.where(denominator > 0, 2.0 * precision * recall / np.where(denominator > 0, denominator, 1.0), 0.0)
    # thresholds ascend: take the last maximum, i.e. the highest threshold reaching it.
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return float(f1[best]), float(thresholds[best])


def precision_recall_at(labels, scores, threshold: float) -> tuple[float, float]:
    """Precision and recall when a sample is predicted anomalous iff ``score >= threshold``.

    labels: (N,) 0/1; scores: (N,) float. Precision is 0.0 when nothing is
    predicted anomalous; recall is 0.0 when there is no anomalous sample.
    Returns ``(precision, recall)``.
    """
    labels, scores = _image_arrays(labels, scores)
    predicted = scores >= threshold
    true_positives = int((predicted & (labels == 1)).sum())
    n_predicted, n_positive = int(predicted.sum()), int(labels.sum())
    precision = true_positives / n_predicted if n_predicted else 0.0
    recall = true_positives / n_positive if n_positive else 0.0
    return float(precision), float(recall)


# ---------------------------------------------------------------------------- pixel level
def _check_pixel_inputs(masks: Sequence, maps: Sequence) -> None:
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} maps")
    if not len(masks):
        raise ValueError("no masks / maps given")
    for index, (mask, amap) in enumerate(zip(masks, maps)):
        if np.shape(mask) != np.shape(amap) or np.ndim(mask) != 2:
            raise ValueError(f"image {index}: mask {np.shape(mask)} and map {np.shape(amap)} "
                             "must be 2-D arrays of the same shape")


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], stride: int = 1) -> float:
    """Area under the ROC curve of all pixels of all images pooled.

    masks, maps: lists of (H_i, W_i) arrays (sizes may differ between images).
    stride: keep every ``stride``-th row and column of every image (1 = all
        pixels) to bound memory on large scans.
    Returns a float in [0, 1].
    """
    from sklearn.metrics import roc_auc_score

    _check_pixel_inputs(masks, maps)
    if stride < 1:
        raise ValueError("stride must be >= 1")
    truth = np.concatenate([(np.asarray(m)[::stride, ::stride] != 0).reshape(-1) for m in masks])
    values = np.concatenate([np.asarray(a, dtype=np.float32)[::stride, ::stride].reshape(-1) for a in maps])
    _need_both_classes(truth, "pixel AUROC")
    if not np.isfinite(values).all():
        raise ValueError("anomaly maps must be finite")
    return float(roc_auc_score(truth, values))


def _components(masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """8-connected components of every mask.

    Returns (labels, sizes, n_components): labels[i] int32 (H_i, W_i) with 0 =
    normal and 1..n_i the components of image i; sizes[i] (n_i + 1,) pixel
    counts per label (sizes[i][0] = normal pixels).
    """
    from scipy.ndimage import label

    all_labels, all_sizes, total = [], [], 0
    for mask in masks:
        labelled, count = label(np.asarray(mask) != 0, structure=EIGHT_CONNECTIVITY)
        all_labels.append(labelled)
        all_sizes.append(np.bincount(labelled.reshape(-1), minlength=count + 1))
        total += count
    return all_labels, all_sizes, total


def pro_curve(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray],
              num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-region overlap (PRO) against the false positive rate, over a threshold sweep.

    A pixel is predicted anomalous when its map value is ``>= t``. For each t:
      FPR(t) = predicted normal pixels / all normal pixels, pooled over all images
          (images without any anomaly contribute only here);
      PRO(t) = mean over every 8-connected ground-truth component C of all
          images of |predicted ∩ C| / |C| (each region counts equally,
          whatever its size).
    num_thresholds: ``None`` sweeps every distinct map value (exact, one sort of
        all pixels); an integer uses about that many thresholds, half at evenly
        spaced quantiles of the normal pixels' values and half at those of the
        anomalous pixels' values (the curve is exact at those thresholds and
        linear in between: an approximation, computed by one histogram pass
        per image without sorting all pixels).
    Returns ``(fpr, pro)``, float64 (K,), both non-decreasing, starting at
    (0, 0) (threshold above every value) and ending at (1, 1) (at or below every value).
    """
    _check_pixel_inputs(masks, maps)
    labels, sizes, n_components = _components(masks)
    n_normal = int(sum(int(s[0]) for s in sizes))
    if n_components == 0:
        raise ValueError("PRO needs at least one anomalous region in the masks")
    if n_normal == 0:
        raise ValueError("PRO needs normal pixels to measure the false positive rate")
    values = [np.asarray(a, dtype=np.float32) for a in maps]
    if not all(np.isfinite(v).all() for v in values):
        raise ValueError("anomaly maps must be finite")
    # Per-pixel contributions: a normal pixel adds 1 / n_normal to the FPR, a pixel of
    # component C adds 1 / (n_components * |C|) to the PRO once predicted.
    weights = []
    for labelled, size in zip(labels, sizes):
        per_label = 1.0 / (n_components * np.maximum(size, 1).astype(np.float64))
        per_label[0] = 0.0
        weights.append(per_label[labelled])
    if num_thresholds is None:
        fpr, pro = _sweep_exact(values, labels, weights)
    else:
        fpr, pro = _sweep_binned(values, labels, weights, int(num_thresholds))
    fpr = np.r_[0.0, fpr / n_normal]
    pro = np.r_[0.0, pro]
    # Rounding of the cumulative sums must not leave [0, 1] nor break monotonicity.
    return np.clip(fpr, 0.0, 1.0), np.clip(np.maximum.accumulate(pro), 0.0, 1.0)


def _sweep_exact(values, labels, weights) -> tuple[np.ndarray, np.ndarray]:
    """Normal-pixel counts and PRO at every distinct value (descending), by one sort."""
    scores = np.concatenate([v.reshape(-1) for v in values])
    normal = np.concatenate([(lab == 0).reshape(-1) for lab in labels])
    pro_weight = np.concatenate([w.reshape(-1) for w in weights])
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    fp = np.cumsum(normal[order], dtype=np.int64)
    pro = np.cumsum(pro_weight[order])
    # The curve point of threshold t = value includes every pixel tied at that value.
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return fp[last_of_tie].astype(np.float64), pro[last_of_tie]


def _quantile_thresholds(values, labels, num_thresholds: int) -> np.ndarray:
    """Ascending thresholds: half at evenly spaced quantiles of the normal pixels' values
    (evenly spaced FPR steps), half at those of the anomalous pixels' values (evenly
    spaced pixel recall steps), plus the pooled minimum and maximum."""
    normal = np.concatenate([v[lab == 0] for v, lab in zip(values, labels)])
    anomalous = np.concatenate([v[lab != 0] for v, lab in zip(values, labels)])
    parts = [np.array([min(normal.min(), anomalous.min()), max(normal.max(), anomalous.max())])]
    for group, count in ((normal, num_thresholds - num_thresholds // 2), (anomalous, num_thresholds // 2)):
        step = max(1, group.size // 1_000_000)  # quantiles of a bounded subsample
        parts.append(np.quantile(group[::step], np.linspace(0.0, 1.0, max(count, 1))))
    return np.unique(np.concatenate(parts))


def _sweep_binned(values, labels, weights, num_thresholds: int) -> tuple[np.ndarray, np.ndarray]:
    """Normal-pixel counts and PRO at ``num_thresholds`` quantile thresholds (descending)."""
    if num_thresholds < 2:
        raise ValueError("num_thresholds must be >= 2 (or None for the exact sweep)")
    thresholds = _quantile_thresholds(values, labels, num_thresholds)
    fp_per_bin = np.zeros(thresholds.size, dtype=np.float64)
    pro_per_bin = np.zeros(thresholds.size, dtype=np.float64)
    for value, labelled, weight in zip(values, labels, weights):
        # bin j holds pixels with thresholds[j] <= value < thresholds[j + 1]
        bins = np.searchsorted(thresholds, value.reshape(-1), side="right") - 1
        fp_per_bin += np.bincount(bins, weights=(labelled == 0).reshape(-1), minlength=thresholds.size)
        pro_per_bin += np.bincount(bins, weights=weight.reshape(-1), minlength=thresholds.size)
    # predicted at thresholds[j] = pixels in bins >= j; list from the highest threshold down
    return np.cumsum(fp_per_bin[::-1]), np.cumsum(pro_per_bin[::-1])


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the polyline (x, y) from x[0] to x_max (x non-decreasing).

    The curve is cut at x_max by linear interpolation on the segment crossing it.
    """
    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.r_[xs, x_max]
        ys = np.r_[ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_fpr: float = 0.3,
          num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to ``max_fpr`` (the MVTec AD AUPRO).

    masks, maps: lists of (H_i, W_i) arrays (sizes may differ between images).
    The PRO-vs-FPR curve of :func:`pro_curve` (exact sweep when
    ``num_thresholds`` is None, else that many quantile thresholds) is
    integrated with the trapezoid rule from FPR 0 to ``max_fpr``, the curve
    being interpolated linearly at ``max_fpr``; the area is divided by
    ``max_fpr``, so a perfect detector scores 1.0 and one ranking every normal
    pixel above every anomalous pixel scores 0.0.
    Returns a float in [0, 1].
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError("max_fpr must be in (0, 1]")
    fpr, pro = pro_curve(masks, maps, num_thresholds)
    return min(1.0, max(0.0, _area_up_to(fpr, pro, max_fpr) / max_fpr))
