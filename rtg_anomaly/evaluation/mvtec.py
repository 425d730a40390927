"""Evaluate a fitted detector on an MVTec-AD style folder: metrics, report, plots, worst cases.

    eval_set = load_mvtec_folder("data/demo")
    detector = Detector(config).fit(eval_set.train_paths)
    metrics = evaluate(detector, eval_set, output_dir="runs/eval", worst_overlays=3)

Folder layout (MVTec AD): ``train/good/*``, ``test/good/*``, ``test/<defect type>/*`` and,
optionally, ``ground_truth/<defect type>/<stem>_mask.png`` (non-zero = anomalous pixel;
``<stem>.png`` is accepted too). Without ``ground_truth/`` only image-level metrics are
computed, and the outputs say so.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import replacing, write_text
from ..errors import InputError
from ..scans.io import IMAGE_SUFFIXES, list_images, load_image, save_image
from .metrics import aupro, best_f1, image_auroc, pixel_auroc, precision_recall_at

GOOD = "good"
AUPRO_MAX_FPR = 0.3
# Pixel metrics pool the anomaly maps of all test images; larger maps are strided so
# that at most this many pixels are kept in all (bounded memory on full-size scans).
PIXEL_BUDGET = 40_000_000
# Above this many pooled pixels AUPRO uses a quantile threshold sweep instead of the exact sort.
EXACT_AUPRO_MAX_PIXELS = 10_000_000
AUPRO_THRESHOLDS = 1000
PLOT_PIXELS = 2_000_000
NO_GROUND_TRUTH_NOTE = ("no ground_truth/ folder: image-level metrics only "
                        "(pixel AUROC and AUPRO need ground-truth masks)")


@dataclass(frozen=True)
class EvalItem:
    """One test image: path, label (0 good, 1 anomalous), defect type (folder name), mask or None."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass
class EvalSet:
    """A dataset to evaluate on.

    root: the dataset folder; train_paths: clean training scans (``train/good``);
    test_items: test images in (type, name) order; has_ground_truth: a
    ``ground_truth/`` folder exists; notes: caveats found while reading the layout.
    """

    root: Path
    train_paths: list[Path]
    test_items: list[EvalItem]
    has_ground_truth: bool
    notes: list[str] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        """Test folder names other than ``good``, sorted."""
        return sorted({item.defect_type for item in self.test_items if item.label == 1})


# ---------------------------------------------------------------------------- dataset layout
def load_mvtec_folder(data_dir: str | os.PathLike) -> EvalSet:
    """Read an MVTec-AD style dataset folder (see the module docstring).

    Raises InputError when the folder, ``train/good`` or ``test/`` is missing,
    or when there is no training or test image.
    """
    root = Path(data_dir)
    layout = "expected train/good/, test/good/, test/<defect type>/ and optionally ground_truth/<defect type>/"
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    if not (root / "train" / GOOD).is_dir():
        raise InputError(f"{root} is not an MVTec-style dataset: no train/good folder ({layout})")
    if not (root / "test").is_dir():
        raise InputError(f"{root} is not an MVTec-style dataset: no test folder ({layout})")
    train_paths = list_images(root / "train" / GOOD)
    ground_truth = root / "ground_truth"
    has_ground_truth = ground_truth.is_dir()
    notes = [] if has_ground_truth else [NO_GROUND_TRUTH_NOTE]
    items, loose = [], 0
    for entry in sorted((root / "test").iterdir()):
        if entry.is_file():
            loose += entry.suffix.lower() in IMAGE_SUFFIXES
            continue
        if not entry.is_dir():
            continue
        images = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        label = 0 if entry.name == GOOD else 1
        for path in images:
            mask = _find_mask(ground_truth / entry.name, path.stem) if label and has_ground_truth else None
            items.append(EvalItem(path=path, label=label, defect_type=entry.name, mask_path=mask))
    if not items:
        raise InputError(f"{root / 'test'} holds no images in type subfolders ({layout})")
    if loose:
        notes.append(f"ignored {loose} image(s) directly under test/ (not in a type subfolder)")
    missing = sum(1 for item in items if item.label == 1 and item.mask_path is None)
    if has_ground_truth and missing:
        notes.append(f"{missing} anomalous test image(s) have no mask under ground_truth/: "
                     "they count for image-level metrics only")
    return EvalSet(root=root, train_paths=train_paths, test_items=items,
                   has_ground_truth=has_ground_truth, notes=notes)


def _find_mask(folder: Path, stem: str) -> Path | None:
    """``<stem>_mask.<ext>`` (MVTec) or ``<stem>.<ext>`` in ``folder``, else None."""
    for name in (f"{stem}_mask", stem):
        for suffix in IMAGE_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return None


def subsample_items(items: Sequence[EvalItem], max_per_class: int | None) -> list[EvalItem]:
    """At most ``max_per_class`` items per defect type, evenly spread over each type's
    (sorted) list; deterministic. ``None`` keeps everything. Order is preserved."""
    if max_per_class is None:
        return list(items)
    if max_per_class < 1:
        raise InputError("max_per_class must be >= 1")
    by_type: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_type.setdefault(item.defect_type, []).append(index)
    keep = set()
    for indices in by_type.values():
        if len(indices) <= max_per_class:
            keep.update(indices)
        else:
            picks = np.unique(np.round(np.linspace(0, len(indices) - 1, max_per_class)).astype(int))
            keep.update(indices[i] for i in picks)
    return [item for index, item in enumerate(items) if index in keep]


def load_mask(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Ground-truth mask as bool (H, W) of ``shape``; non-zero = anomalous.

    A mask of another size is resized with nearest-neighbour interpolation.
    """
    return _read_mask(path, shape)[0]


def _read_mask(path, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """(mask bool (H, W) of ``shape``, whether it had to be resized)."""
    import cv2

    mask = load_image(path)
    mask = (mask != 0).any(axis=2) if mask.ndim == 3 else mask != 0
    if mask.shape == tuple(shape):
        return mask, False
    resized = cv2.resize(mask.astype(np.uint8), (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_NEAREST)
    return resized > 0, True


# ---------------------------------------------------------------------------- scoring
@dataclass
class _Scored:
    """What the scoring pass keeps: per-image records, strided maps/masks, worst cases."""

    records: list[dict] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    pixel_stride: int = 1
    masks_resized: int = 0
    mask_errors: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    warnings: collections.Counter = field(default_factory=collections.Counter)  # warning -> number of scans
    worst_good: list[tuple] = field(default_factory=list)       # (record, result), highest scores
    worst_anomalous: list[tuple] = field(default_factory=list)  # (record, result), lowest scores


def _pixel_stride(shape: tuple[int, int], budget: int) -> int:
    """Row/column stride that keeps at most ``budget`` pixels of a map of ``shape``."""
    return max(1, int(math.ceil(math.sqrt(shape[0] * shape[1] / max(1, budget)))))


def _keep_worst(kept: list[tuple], entry: tuple, count: int, highest: bool) -> None:
    """Insert ``entry`` (record, result) and keep the ``count`` most extreme by score."""
    if count <= 0:
        return
    kept.append(entry)
    kept.sort(key=lambda e: (-e[0]["score"] if highest else e[0]["score"], e[0]["path"]))
    del kept[count:]


def _score_items(detector, eval_set: EvalSet, items: list[EvalItem], pixel_metrics: bool,
                 worst_overlays: int, progress: bool) -> _Scored:
    """Score every item; keep records, strided maps and masks, and the worst cases."""
    from tqdm import tqdm

    scored = _Scored()
    budget = max(4096, PIXEL_BUDGET // max(1, len(items)))
    for item in tqdm(items, unit="scan", desc="evaluate", disable=not progress, leave=False):
        started = time.perf_counter()
        try:
            result = detector.score(item.path)
        except InputError as exc:
            scored.skipped.append({"path": _relative(item.path, eval_set.root), "error": str(exc)})
            continue
        record = {"path": _relative(item.path, eval_set.root), "type": item.defect_type, "label": item.label,
                  "score": float(result.score), "anomalous": bool(result.anomalous),
                  "masked_fraction": round(result.masked_fraction, 4),
                  "ms": 1000.0 * (time.perf_counter() - started)}
        scored.records.append(record)
        scored.warnings.update(result.warnings)
        if pixel_metrics and (item.label == 0 or item.mask_path is not None):
            _keep_pixels(scored, item, result.heatmap, budget)
        if item.label == 1:
            _keep_worst(scored.worst_anomalous, (record, result), worst_overlays, highest=False)
        else:
            _keep_worst(scored.worst_good, (record, result), worst_overlays, highest=True)
    if not scored.records:
        raise InputError("none of the test images could be scored")
    return scored


def _keep_pixels(scored: _Scored, item: EvalItem, heatmap: np.ndarray, budget: int) -> None:
    """Store a strided copy of the map and the matching mask (all-normal for good images)."""
    if item.mask_path is None:
        mask = np.zeros(heatmap.shape, dtype=bool)
    else:
        try:
            mask, resized = _read_mask(item.mask_path, heatmap.shape)
        except InputError as exc:
            scored.mask_errors.append(str(exc))
            return
        scored.masks_resized += resized
    stride = _pixel_stride(heatmap.shape, budget)
    scored.pixel_stride = max(scored.pixel_stride, stride)
    scored.maps.append(np.array(heatmap[::stride, ::stride], dtype=np.float32))  # a copy, not a view
    scored.masks.append(np.array(mask[::stride, ::stride]))


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------- metrics
def _image_metrics(records: list[dict], notes: list[str]) -> dict:
    """Image AUROC, best F1 and the calibrated operating point."""
    labels = np.array([r["label"] for r in records])
    scores = np.array([r["score"] for r in records])
    flags = np.array([r["anomalous"] for r in records], dtype=float)
    n_good, n_anomalous = int((labels == 0).sum()), int((labels == 1).sum())
    out = {"image_auroc": None, "best_f1": None, "best_f1_threshold": None}
    if n_good and n_anomalous:
        out["image_auroc"] = image_auroc(labels, scores)
        out["best_f1"], out["best_f1_threshold"] = best_f1(labels, scores)
    else:
        notes.append(f"the test set has {n_good} good and {n_anomalous} anomalous images: "
                     "image AUROC and best F1 need both")
    precision, recall = precision_recall_at(labels, flags, 0.5)  # flags are the detector's own decisions
    false_alarms = int(flags[labels == 0].sum())
    out.update({
        "calibrated_precision": precision if flags.any() else None,
        "calibrated_recall": recall if n_anomalous else None,
        "calibrated_f1": (2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0,
        "calibrated_false_alarm_rate": false_alarms / n_good if n_good else None,
        "calibrated_accuracy": float((flags == labels).mean()),
    })
    if not n_anomalous:
        out["calibrated_f1"] = None
    return out


def _pixel_metrics(scored: _Scored, has_ground_truth: bool, notes: list[str]) -> dict:
    """Pixel AUROC and AUPRO over the stored (strided) maps, or None with a note why not."""
    out = {"pixel_auroc": None, "aupro": None, "aupro_max_fpr": AUPRO_MAX_FPR, "aupro_method": None,
           "pixel_stride": scored.pixel_stride, "n_pixels": int(sum(m.size for m in scored.masks))}
    if not has_ground_truth:
        if NO_GROUND_TRUTH_NOTE not in notes:
            notes.append(NO_GROUND_TRUTH_NOTE)
        return out
    if scored.mask_errors:
        notes.append(f"{len(scored.mask_errors)} mask(s) could not be read and were left out of the "
                     f"pixel metrics; first: {scored.mask_errors[0]}")
    if scored.masks_resized:
        notes.append(f"{scored.masks_resized} mask(s) differ in size from their scan and were resized (nearest)")
    if scored.pixel_stride > 1:
        notes.append(f"pixel metrics use every {scored.pixel_stride}th row and column of the anomaly maps "
                     "at most (bounded memory)")
    n_anomalous_pixels = int(sum(int(m.sum()) for m in scored.masks))
    if n_anomalous_pixels == 0 or n_anomalous_pixels == out["n_pixels"]:
        notes.append("pixel AUROC and AUPRO need both anomalous and normal ground-truth pixels; "
                     "the masks have " + ("none anomalous" if n_anomalous_pixels == 0 else "no normal pixel"))
        return out
    out["pixel_auroc"] = pixel_auroc(scored.masks, scored.maps)
    exact = out["n_pixels"] <= EXACT_AUPRO_MAX_PIXELS
    out["aupro_method"] = "exact" if exact else f"{AUPRO_THRESHOLDS} quantile thresholds"
    out["aupro"] = aupro(scored.masks, scored.maps, AUPRO_MAX_FPR, None if exact else AUPRO_THRESHOLDS)
    return out


def _per_type(records: list[dict]) -> dict:
    """Per defect type: count, mean score, share flagged, AUROC of that type vs good."""
    good_scores = [r["score"] for r in records if r["label"] == 0]
    out = {}
    for kind in sorted({r["type"] for r in records}, key=lambda t: (t != GOOD, t)):
        rows = [r for r in records if r["type"] == kind]
        scores = [r["score"] for r in rows]
        entry = {"n": len(rows), "mean_score": float(np.mean(scores)),
                 "flagged": float(np.mean([r["anomalous"] for r in rows]))}
        if kind != GOOD:
            entry["image_auroc"] = (image_auroc([0] * len(good_scores) + [1] * len(scores), good_scores + scores)
                                    if good_scores else None)
        out[kind] = entry
    return out


def _detector_info(detector) -> dict:
    calibration = detector.calibration_
    return {"backbone": detector.config.backbone, "config": detector.config.to_dict(),
            "image_threshold": calibration.image_threshold, "pixel_threshold": calibration.pixel_threshold,
            "calibration_method": calibration.method, "calibration_scans": calibration.n_scans,
            "calibration_warnings": list(calibration.warnings),
            "fit_info": dict(getattr(detector, "fit_info_", {}) or {})}


# ---------------------------------------------------------------------------- entry point
def evaluate(detector, eval_set: EvalSet, output_dir: str | os.PathLike | None = None,
             max_per_class: int | None = None, worst_overlays: int = 0, progress: bool = False) -> dict:
    """Score every test image of ``eval_set`` with a fitted ``detector`` and compute metrics.

    max_per_class: keep at most this many test images per type (evenly spread, deterministic).
    worst_overlays: with ``output_dir``, write overlays of this many lowest-scored
        anomalous and this many highest-scored good images under ``output_dir/worst/``.
    output_dir: when given, writes metrics.json, metrics.md, roc.png, pr.png and
        score_histogram.png there (created if missing).
    Returns the metrics dict (the content of metrics.json). Pixel metrics are None
    when the dataset has no ground truth; ``notes`` says why.
    Unreadable test images are skipped and listed under ``skipped``.
    """
    from ..pipeline.detector import NotFittedError

    if not detector.is_fitted:
        raise NotFittedError("evaluate needs a fitted detector: call fit() or Detector.load() first")
    if worst_overlays < 0:
        raise InputError("worst_overlays must be >= 0")
    out_dir = _prepare_output_dir(output_dir)
    items = subsample_items(eval_set.test_items, max_per_class)
    notes = list(eval_set.notes)
    notes += [f"detector calibration: {warning}" for warning in detector.calibration_.warnings]
    started = time.perf_counter()
    scored = _score_items(detector, eval_set, items, eval_set.has_ground_truth,
                          worst_overlays if out_dir is not None else 0, progress)
    seconds = time.perf_counter() - started
    if scored.skipped:
        notes.append(f"{len(scored.skipped)} test image(s) could not be scored and were skipped")
    notes += [f"{count} test image(s): {warning}" for warning, count in sorted(scored.warnings.items())]
    records = scored.records
    milliseconds = [r["ms"] for r in records]
    metrics = {
        "dataset": str(eval_set.root),
        "n_train_images": len(eval_set.train_paths),
        "n_test_images": len(records),
        "n_good": sum(1 for r in records if r["label"] == 0),
        "n_anomalous": sum(1 for r in records if r["label"] == 1),
        "n_skipped": len(scored.skipped),
        "max_per_class": max_per_class,
        "counts": {kind: sum(1 for r in records if r["type"] == kind) for kind in sorted({r["type"] for r in records})},
        "has_ground_truth": eval_set.has_ground_truth,
        "pixel_metrics": False,
        **_image_metrics(records, notes),
        **_pixel_metrics(scored, eval_set.has_ground_truth, notes),
        "calibrated_threshold": detector.calibration_.image_threshold,
        "per_type": _per_type(records),
        "detect_ms_per_image": float(np.mean(milliseconds)),
        "detect_ms_median": float(np.median(milliseconds)),
        "roi": {"mode": detector.config.roi,
                "mean_masked_fraction": float(np.mean([r["masked_fraction"] for r in records])),
                "scans_masked": sum(1 for r in records if r["masked_fraction"] > 0)},
        "seconds": seconds,
        "detector": _detector_info(detector),
        "notes": notes,
        "skipped": scored.skipped,
        "worst_overlays": [],
        "images": records,
    }
    metrics["pixel_metrics"] = metrics["pixel_auroc"] is not None
    if out_dir is not None:
        metrics["worst_overlays"] = _write_worst(detector, scored, out_dir / "worst", eval_set)
        _write_outputs(metrics, scored, out_dir)
    return metrics


def _prepare_output_dir(output_dir) -> Path | None:
    if output_dir is None:
        return None
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot write the evaluation to {out}: it is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    return out


# ---------------------------------------------------------------------------- outputs
def _write_outputs(metrics: dict, scored: _Scored, out_dir: Path) -> None:
    write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    write_text(out_dir / "metrics.md", markdown_report(metrics))
    _plot_roc(metrics, scored, out_dir / "roc.png")
    _plot_pr(metrics, out_dir / "pr.png")
    _plot_histogram(metrics, out_dir / "score_histogram.png")


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_report(metrics: dict) -> str:
    """The metrics as Markdown: a summary table, a per-type table and the notes."""
    rows = [
        ("Test images (good / anomalous)", f"{metrics['n_test_images']} ({metrics['n_good']} / {metrics['n_anomalous']})"),
        ("Image AUROC", _fmt(metrics["image_auroc"])),
        ("Pixel AUROC", _fmt(metrics["pixel_auroc"])),
        (f"AUPRO (FPR <= {metrics['aupro_max_fpr']:g})", _fmt(metrics["aupro"])),
        ("Best F1 (image)", _fmt(metrics["best_f1"])),
        ("Best-F1 threshold", _fmt(metrics["best_f1_threshold"])),
        ("Calibrated threshold", _fmt(metrics["calibrated_threshold"])),
        ("Precision at calibrated threshold", _fmt(metrics["calibrated_precision"])),
        ("Recall at calibrated threshold", _fmt(metrics["calibrated_recall"])),
        ("False-alarm rate at calibrated threshold", _fmt(metrics["calibrated_false_alarm_rate"])),
        ("Detect time (ms/image, mean / median)",
         f"{metrics['detect_ms_per_image']:.1f} / {metrics['detect_ms_median']:.1f}"),
    ]
    roi = metrics.get("roi")
    if roi and roi["mode"] != "off":
        rows.append((f"ROI ({roi['mode']}): mean share masked, scans masked",
                     f"{roi['mean_masked_fraction']:.3f}, {roi['scans_masked']} of {metrics['n_test_images']}"))
    lines = [f"# Evaluation of `{metrics['dataset']}`", "", "| Metric | Value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "## Per type", "", "| Type | Images | Mean score | Flagged | Image AUROC vs good |",
              "|---|---|---|---|---|"]
    for kind, entry in metrics["per_type"].items():
        auroc = "-" if kind == GOOD else _fmt(entry.get("image_auroc"))
        lines.append(f"| {kind} | {entry['n']} | {entry['mean_score']:.3f} | {entry['flagged']:.3f} | {auroc} |")
    if metrics["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in metrics["notes"]]
    return "\n".join(lines) + "\n"


def _new_figure():
    from matplotlib.figure import Figure  # no pyplot: no global state, renders with Agg

    figure = Figure(figsize=(5.5, 4.5), dpi=100)
    return figure, figure.add_subplot(1, 1, 1)


def _save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png")


def _labels_scores(metrics: dict) -> tuple[np.ndarray, np.ndarray]:
    records = metrics["images"]
    return np.array([r["label"] for r in records]), np.array([r["score"] for r in records])


def _plot_roc(metrics: dict, scored: _Scored, path: Path) -> None:
    """Image-level ROC, and the pooled pixel-level ROC when masks exist."""
    from sklearn.metrics import roc_curve

    figure, axes = _new_figure()
    labels, scores = _labels_scores(metrics)
    if metrics["image_auroc"] is not None:
        fpr, tpr, _ = roc_curve(labels, scores)
        axes.plot(fpr, tpr, label=f"image (AUROC {metrics['image_auroc']:.3f})")
    if metrics["pixel_auroc"] is not None:
        truth = np.concatenate([m.reshape(-1) for m in scored.masks])
        values = np.concatenate([a.reshape(-1) for a in scored.maps])
        step = max(1, truth.size // PLOT_PIXELS)  # the drawn curve needs no more pixels
        fpr, tpr, _ = roc_curve(truth[::step], values[::step])
        axes.plot(fpr, tpr, label=f"pixel (AUROC {metrics['pixel_auroc']:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    _finish_axes(axes, "False positive rate", "True positive rate", "ROC",
                 metrics["image_auroc"] is not None or metrics["pixel_auroc"] is not None)
    _save_figure(figure, path)


def _plot_pr(metrics: dict, path: Path) -> None:
    """Image-level precision-recall curve with the best-F1 and calibrated operating points."""
    from sklearn.metrics import precision_recall_curve

    figure, axes = _new_figure()
    labels, scores = _labels_scores(metrics)
    available = metrics["best_f1"] is not None
    if available:
        precision, recall, _ = precision_recall_curve(labels, scores)
        axes.plot(recall, precision, drawstyle="steps-post", label="image")
        best_p, best_r = precision_recall_at(labels, scores, metrics["best_f1_threshold"])
        axes.plot([best_r], [best_p], "o", label=f"best F1 {metrics['best_f1']:.3f}")
        if metrics["calibrated_recall"] is not None and metrics["calibrated_precision"] is not None:
            axes.plot([metrics["calibrated_recall"]], [metrics["calibrated_precision"]], "s",
                      label="calibrated threshold")
    _finish_axes(axes, "Recall", "Precision", "Precision-recall (images)", available)
    _save_figure(figure, path)


def _plot_histogram(metrics: dict, path: Path) -> None:
    """Image scores of good and anomalous images, with the calibrated threshold line."""
    figure, axes = _new_figure()
    labels, scores = _labels_scores(metrics)
    threshold = metrics["calibrated_threshold"]
    bins = np.histogram_bin_edges(np.r_[scores, threshold], bins=min(40, max(10, scores.size // 2)))
    for label, name, colour in ((0, "good", "tab:blue"), (1, "anomalous", "tab:red")):
        if (labels == label).any():
            axes.hist(scores[labels == label], bins=bins, alpha=0.6, color=colour,
                      label=f"{name} ({int((labels == label).sum())})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"calibrated threshold {threshold:.3f}")
    if metrics["best_f1_threshold"] is not None:
        axes.axvline(metrics["best_f1_threshold"], color="grey", linestyle=":",
                     label=f"best-F1 threshold {metrics['best_f1_threshold']:.3f}")
    axes.set_xlabel("Image score (calibrated units)")
    axes.set_ylabel("Images")
    axes.set_title("Image scores")
    axes.legend(fontsize=8)
    _save_figure(figure, path)


def _finish_axes(axes, xlabel: str, ylabel: str, title: str, available: bool) -> None:
    axes.set_xlim(-0.01, 1.02)
    axes.set_ylim(-0.01, 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if available:
        axes.legend(loc="lower right", fontsize=8)
    else:
        axes.text(0.5, 0.5, "not available:\nneeds good and anomalous test images",
                  ha="center", va="center", transform=axes.transAxes)


def _write_worst(detector, scored: _Scored, folder: Path, eval_set: EvalSet) -> list[dict]:
    """Overlay PNGs of the lowest-scored anomalous and highest-scored good images.

    Anomalous ones carry the ground-truth outline in green. Earlier ``good_*.png`` /
    ``anomalous_*.png`` files in ``folder`` are removed so the folder matches this run.
    """
    if not scored.worst_good and not scored.worst_anomalous:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("good_*.png")) + list(folder.glob("anomalous_*.png")):
        old.unlink()
    masks = {_relative(item.path, eval_set.root): item.mask_path for item in eval_set.test_items}
    written = []
    for kind, entries in (("anomalous", scored.worst_anomalous), ("good", scored.worst_good)):
        for rank, (record, result) in enumerate(entries, start=1):
            source = eval_set.root / record["path"]
            image = _draw_outline(operator_overlay(detector, detector.load_scan(source), result),
                                  masks.get(record["path"]))
            stem = Path(record["path"]).stem if kind == GOOD else f"{record['type']}_{Path(record['path']).stem}"
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
            name = f"{kind}_{rank:02d}_{stem}.png"
            save_image(folder / name, image)
            miss = (not record["anomalous"]) if kind == "anomalous" else record["anomalous"]
            written.append({"file": f"worst/{name}", "path": record["path"], "score": record["score"],
                            "label": record["label"], "miss": bool(miss)})
    return written


def operator_overlay(detector, image: np.ndarray, result) -> np.ndarray:
    """The overlay ``detect`` writes with its default flags (``display.render_display``: percentile mode at
    90, the default style, nothing coloured outside the region of interest): uint8 (H, W, 3)."""
    from ..outputs.display import DisplayStyle, render_display
    from ..outputs.overlay import percentile_mask

    return render_display(image, result.heatmap, result.pixel_threshold, DisplayStyle(),
                          display_mask=percentile_mask(result.heatmap, 90.0, within=result.roi_mask),
                          color_range=detector.calibration_.color_range, window=result.window)


def _draw_outline(overlay: np.ndarray, mask_path: Path | None) -> np.ndarray:
    """Draw the ground-truth mask outline in green on an RGB overlay."""
    if mask_path is None:
        return overlay
    import cv2

    try:
        mask = load_mask(mask_path, overlay.shape[:2])
    except InputError:
        return overlay
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    image = np.ascontiguousarray(overlay)
    cv2.drawContours(image, contours, -1, (0, 255, 0), max(1, min(overlay.shape[:2]) // 200))
    return image
