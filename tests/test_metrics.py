"""Tests of rtg_anomaly.evaluation.metrics: hand-computed cases and cross-checks against scikit-learn."""

import numpy as np
import pytest
from scipy.ndimage import label
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from rtg_anomaly.evaluation.metrics import aupro, best_f1, image_auroc, pixel_auroc, precision_recall_at, pro_curve


def _blob_masks(rng, shapes):
    """Masks with a few rectangular anomalies each (the last image stays clean)."""
    masks = []
    for index, (h, w) in enumerate(shapes):
        mask = np.zeros((h, w), bool)
        if index < len(shapes) - 1:
            for _ in range(int(rng.integers(1, 4))):
                y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
                mask[y:y + int(rng.integers(1, 5)), x:x + int(rng.integers(1, 5))] = True
        masks.append(mask)
    return masks


# ---------------------------------------------------------------------------- image level
def test_image_auroc_and_best_f1_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + 0.8 * labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    f1, threshold = best_f1(labels, scores)
    # brute force over every candidate threshold (predicted anomalous iff score >= t)
    expected = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1 == pytest.approx(expected)
    assert f1_score(labels, scores >= threshold) == pytest.approx(f1)
    precision, recall = precision_recall_at(labels, scores, threshold)
    assert 2 * precision * recall / (precision + recall) == pytest.approx(f1)
    p_curve, r_curve, t_curve = precision_recall_curve(labels, scores)
    i = int(np.searchsorted(t_curve, threshold))
    assert (precision, recall) == pytest.approx((p_curve[i], r_curve[i]))


def test_image_metrics_small_cases():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert image_auroc(labels, scores) == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered
    # at t = 0.35: predicted {0.4, 0.35, 0.8} -> tp 2, fp 1 -> P 2/3, R 1, F1 0.8 (the best)
    assert best_f1(labels, scores) == pytest.approx((0.8, 0.35))
    assert precision_recall_at(labels, scores, 0.35) == pytest.approx((2 / 3, 1.0))
    assert precision_recall_at(labels, scores, 0.5) == pytest.approx((1.0, 0.5))
    assert precision_recall_at(labels, scores, 0.9) == (0.0, 0.0)  # nothing predicted
    assert image_auroc([0, 1], [0.0, 1.0]) == 1.0 and image_auroc([0, 1], [1.0, 0.0]) == 0.0


def test_image_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both"):
        image_auroc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="length"):
        image_auroc([0, 1], [0.2])
    with pytest.raises(ValueError, match="0 .normal. or 1"):
        image_auroc([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="anomalous"):
        best_f1([0, 0], [0.2, 0.3])


# ---------------------------------------------------------------------------- pixel level
def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(1)
    masks = _blob_masks(rng, [(20, 30), (25, 17), (12, 40)])  # different image sizes
    perfect = [m + 0.5 * rng.random(m.shape) for m in masks]  # anomalous in [1, 1.5), normal in [0, 0.5)
    inverted = [-p for p in perfect]
    assert pixel_auroc(masks, perfect) == 1.0
    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert aupro(masks, perfect, num_thresholds=50) == pytest.approx(1.0)
    assert pixel_auroc(masks, inverted) == 0.0
    assert aupro(masks, inverted) == pytest.approx(0.0, abs=1e-12)
    assert aupro(masks, inverted, num_thresholds=50) == pytest.approx(0.0, abs=1e-12)
    # a constant map carries no information: one point (1, 1) after (0, 0)
    constant = [np.zeros(m.shape) for m in masks]
    assert pixel_auroc(masks, constant) == 0.5
    fpr, pro = pro_curve(masks, constant)
    assert fpr.tolist() == [0.0, 1.0] and pro.tolist() == [0.0, 1.0]
    assert aupro(masks, constant) == pytest.approx(0.15)  # (0.3 * 0.3 / 2) / 0.3


def _worked_example(tied: bool):
    """Three 4x4 images, 48 pixels, 2 regions of different sizes, 36 normal pixels.

    image 1: region A = 2x2 (4 px) scored 0.9; its 12 normal px 0.1.
    image 2: region B = 2x4 (8 px): top half (4 px) 0.8, bottom half (4 px) 0.3;
             its 8 normal px 0.1.
    image 3 (no anomaly): 9 normal px scored 0.5 (or 0.3 when ``tied``), 7 px 0.1.
    """
    m1, a1 = np.zeros((4, 4), bool), np.full((4, 4), 0.1)
    m1[:2, :2], a1[:2, :2] = True, 0.9
    m2, a2 = np.zeros((4, 4), bool), np.full((4, 4), 0.1)
    m2[1:3, :] = True
    a2[1, :], a2[2, :] = 0.8, 0.3
    m3, a3 = np.zeros((4, 4), bool), np.full((4, 4), 0.1)
    a3.reshape(-1)[:9] = 0.3 if tied else 0.5
    return [m1, m2, m3], [a1, a2, a3]


def test_worked_example_untied():
    # Thresholds (pixel predicted iff value >= t), FPR over the 36 normal px,
    # PRO = mean over the 2 regions of the detected fraction:
    #   t > 0.9 : FPR 0,        PRO 0
    #   t = 0.9 : FPR 0,        PRO (1 + 0) / 2   = 0.5    (A detected perfectly)
    #   t = 0.8 : FPR 0,        PRO (1 + 0.5) / 2 = 0.75   (B half detected)
    #   t = 0.5 : FPR 9/36=.25, PRO 0.75                    (image 3 false alarms)
    #   t = 0.3 : FPR 0.25,     PRO 1.0
    #   t = 0.1 : FPR 1,        PRO 1.0
    # (pixel-wise, t = 0.8 would detect 8 of 12 px = 0.667: PRO weighs regions, not pixels)
    # AUPRO(0.3) = (0.25 * 0.75 + 0.05 * 1.0) / 0.3 = 0.2375 / 0.3 = 0.791666...
    # AUPRO(0.1) = (0.1 * 0.75) / 0.1 = 0.75
    # AUPRO(1.0) = 0.25 * 0.75 + 0.75 * 1.0 = 0.9375
    masks, maps = _worked_example(tied=False)
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 0.25, 1.0])
    np.testing.assert_allclose(pro, [0, 0.5, 0.75, 0.75, 1.0, 1.0])
    assert aupro(masks, maps) == pytest.approx(0.2375 / 0.3)
    assert aupro(masks, maps, max_fpr=0.1) == pytest.approx(0.75)
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.9375)
    # a threshold at every distinct value: the quantile sweep is exact here too
    assert aupro(masks, maps, num_thresholds=200) == pytest.approx(0.2375 / 0.3)


def test_worked_example_with_ties_interpolates_at_max_fpr():
    # Image 3's 9 false alarms now tie with B's bottom half at 0.3, so the curve
    # goes diagonally from (0, 0.75) to (0.25, 1.0):
    # AUPRO(0.3) = [(0.75 + 1.0) / 2 * 0.25 + 0.05 * 1.0] / 0.3 = 0.26875 / 0.3 = 0.8958333
    # At max_fpr 0.1 the segment is cut: PRO(0.1) = 0.75 + 0.25 * 0.1 / 0.25 = 0.85, so
    # AUPRO(0.1) = [(0.75 + 0.85) / 2 * 0.1] / 0.1 = 0.8
    masks, maps = _worked_example(tied=True)
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 1.0])
    np.testing.assert_allclose(pro, [0, 0.5, 0.75, 1.0, 1.0])
    assert aupro(masks, maps) == pytest.approx(0.26875 / 0.3)
    assert aupro(masks, maps, max_fpr=0.1) == pytest.approx(0.8)


def test_components_are_8_connected():
    # One pixel at (0, 0) touches the pair (1, 1)-(1, 2) only diagonally: with
    # 8-connectivity they form one region of 3 px. Detecting only (0, 0) gives
    # PRO 1/3 until every normal pixel is flagged (4-connectivity would give 1/2).
    mask = np.zeros((3, 3), bool)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = True
    amap = np.full((3, 3), 0.5)
    amap[0, 0], amap[1, 1], amap[1, 2] = 1.0, 0.0, 0.0
    fpr, pro = pro_curve([mask], [amap])
    np.testing.assert_allclose(fpr, [0, 0, 1, 1])
    np.testing.assert_allclose(pro, [0, 1 / 3, 1 / 3, 1])
    assert aupro([mask], [amap]) == pytest.approx(1 / 3)


def _reference_aupro(masks, maps, max_fpr):
    """Slow, direct AUPRO: one pass over all pixels per distinct threshold."""
    region_masks = []
    for mask in masks:
        labelled, n = label(mask, structure=np.ones((3, 3)))
        region_masks.append([labelled == k for k in range(1, n + 1)])
    n_normal = sum(int((~m).sum()) for m in masks)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        fp = sum(int(((a >= t) & ~m).sum()) for m, a in zip(masks, maps))
        overlaps = [((a >= t) & r).sum() / r.sum() for rs, a in zip(region_masks, maps) for r in rs]
        points.append((fp / n_normal, float(np.mean(overlaps))))
    fpr, pro = np.array(points).T
    keep = fpr <= max_fpr
    x, y = list(fpr[keep]), list(pro[keep])
    after = np.flatnonzero(~keep)
    if after.size and x[-1] < max_fpr:
        j = after[0]
        y.append(pro[j - 1] + (pro[j] - pro[j - 1]) * (max_fpr - fpr[j - 1]) / (fpr[j] - fpr[j - 1]))
        x.append(max_fpr)
    return np.trapezoid(y, x) / max_fpr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_direct_computation_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    masks = _blob_masks(rng, [(12, 15), (10, 9), (14, 11)])
    # informative but noisy maps, quantised so that ties happen
    maps = [np.round(m * 0.6 + rng.random(m.shape), 1) for m in masks]
    for max_fpr in (0.05, 0.3, 1.0):
        expected = _reference_aupro(masks, maps, max_fpr)
        assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < aupro(masks, maps) < 1.0


def test_quantile_sweep_approximates_the_exact_one():
    rng = np.random.default_rng(3)
    masks = _blob_masks(rng, [(60, 80), (50, 70), (64, 64)])
    maps = [m * 0.8 + rng.normal(size=m.shape) for m in masks]
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=300) == pytest.approx(exact, abs=0.01)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(masks, maps, num_thresholds=1)


def test_pixel_auroc_pools_images_of_different_sizes():
    rng = np.random.default_rng(4)
    masks = _blob_masks(rng, [(30, 20), (7, 50), (16, 16)])
    maps = [m * 0.5 + rng.random(m.shape) for m in masks]
    pooled_truth = np.concatenate([m.ravel() for m in masks])
    pooled_maps = np.concatenate([a.ravel() for a in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(pooled_truth, pooled_maps))
    sub_truth = np.concatenate([m[::2, ::2].ravel() for m in masks])
    sub_maps = np.concatenate([a[::2, ::2].ravel() for a in maps])
    assert pixel_auroc(masks, maps, stride=2) == pytest.approx(roc_auc_score(sub_truth, sub_maps))
    # masks given as 0/255 uint8 (as read from MVTec PNGs) mean the same
    assert pixel_auroc([m.astype(np.uint8) * 255 for m in masks], maps) == pytest.approx(
        pixel_auroc(masks, maps))


def test_pixel_metrics_reject_bad_input():
    mask, amap = np.zeros((4, 4), bool), np.zeros((4, 4))
    with pytest.raises(ValueError, match="same shape"):
        pixel_auroc([mask], [np.zeros((4, 5))])
    with pytest.raises(ValueError, match="2 masks but 1 maps"):
        aupro([mask, mask], [amap])
    with pytest.raises(ValueError, match="anomalous region"):
        aupro([mask], [amap])
    with pytest.raises(ValueError, match="both"):
        pixel_auroc([mask], [amap])
    with pytest.raises(ValueError, match="max_fpr"):
        aupro([~mask], [amap], max_fpr=0.0)
    with pytest.raises(ValueError, match="normal pixels"):
        aupro([~mask], [amap])
