"""Render the README pictures and gallery from the synthetic demo and one real dataset (anyone can rerun this).

    python scripts/make_readme_figures.py [--out docs/images] [--data ../shared/data] [--weights-dir ../shared/weights]

Demo (always): fits the detector (bundled DINOv2 weights, 256 px tiles and 5 % false alarms, as in
scripts/demo.sh) on 16 synthetic clean scans and writes, for a scan with hidden packages and a clean scan,
the overlay in calibrated mode (the headline) and percentile mode, the ground truth, the triptych, the overlay
before and after issue #25 (the old cold-end colours against the warm-end scale and outline), a grid of the
display flags on the flagged region, and a screenshot of the HTML triage page of the test scans (needs
Chromium; skipped with a note without it).

ROI (always; ``--only-roi`` makes this picture alone): the same demo fitted twice, ``--roi off`` and
``--roi auto``, and the anomalous scan's overlay in detect's default (percentile) mode from each, one above the
other, the auto ROI's border drawn in cyan on the second.

Real data (when DATA/gdxray_welds and the EfficientNet-Lite0 weights are found): fits on the welds' clean
tiles with the settings of docs/benchmarks.md, scores every 10th defect tile and every clean test tile, and
writes the overlay of the highest-scoring clean tile (the hardest clean one), the overlay and the triptych of
the highest-scoring flagged defect tile whose flagged area stays under 10 % of the tile. GDXray may not be
redistributed: only these small derived pictures are committed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
try:
    import rtg_anomaly  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rtg_anomaly import Detector, DetectorConfig  # noqa: E402
from rtg_anomaly.atomic import replacing  # noqa: E402
from rtg_anomaly.cli import main as cli_main  # noqa: E402
from rtg_anomaly.outputs.display import DisplayStyle, display_scale, render_display  # noqa: E402
from rtg_anomaly.scans.io import list_images, load_image  # noqa: E402
from rtg_anomaly.outputs.legend import colorbar_strip, text_strip  # noqa: E402
from rtg_anomaly.outputs.overlay import percentile_mask  # noqa: E402
from rtg_anomaly.outputs.regions import draw_regions, find_regions  # noqa: E402
from rtg_anomaly.scans.synthetic import write_demo_dataset  # noqa: E402
from rtg_anomaly.outputs.triptych import render_triptych  # noqa: E402

WELD_SETTINGS = dict(backbone="tf_efficientnet_lite0", layers=(2, 3), neighbourhood=3, tile_size=256,
                     augment=("hflip", "vflip", "rot180"), overlap=0.5)
WELD_WEIGHTS = "tf_efficientnet_lite0.in1k_fp16.safetensors"
MAX_DOC_WIDTH = 1600  # wider pictures (triptychs) are shrunk for the README


def _shrink(picture: np.ndarray, width: int = MAX_DOC_WIDTH) -> np.ndarray:
    if picture.shape[1] <= width:
        return picture
    return cv2.resize(picture, (width, round(picture.shape[0] * width / picture.shape[1])), interpolation=cv2.INTER_AREA)


def _save_png(path: Path, picture: np.ndarray) -> None:
    """A README picture: PNG squeezed by Pillow (save_image trades size for speed), written atomically."""
    from PIL import Image

    with replacing(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", optimize=True)


def _overlay(detector, image, result, style=DisplayStyle(), mode="calibrated", regions=True) -> np.ndarray:
    """The overlay as ``detect`` draws it (with ``--draw-regions`` when ``regions``)."""
    mask = percentile_mask(result.heatmap, 90.0) if mode == "percentile" else None
    picture = render_display(image, result.heatmap, result.pixel_threshold, style, display_mask=mask,
                             color_range=detector.calibration_.color_range, window=result.window)
    found = find_regions(result.heatmap, result.pixel_threshold)
    return draw_regions(picture, found) if regions and found else picture


def _triptych(detector, image, result, name: str) -> np.ndarray:
    overlay = _overlay(detector, image, result, regions=False)
    n_regions = len(find_regions(result.heatmap, result.pixel_threshold))
    return render_triptych(image, overlay, result.heatmap, name, result.score, result.anomalous,
                           result.image_threshold, result.pixel_threshold, n_regions, result.window)


def _flag_grid(detector, image, result) -> np.ndarray:
    """Crops around the top region, one per display setting, labelled with its flags."""
    regions = find_regions(result.heatmap, result.pixel_threshold)
    if regions:
        cx, cy = regions[0].x + regions[0].width // 2, regions[0].y + regions[0].height // 2
    else:  # nothing flagged: around the map's peak
        cy, cx = divmod(int(result.heatmap.argmax()), result.heatmap.shape[1])
    half_w, half_h = 72, 40
    x0 = int(np.clip(cx - half_w, 0, image.shape[1] - 2 * half_w))
    y0 = int(np.clip(cy - half_h, 0, image.shape[0] - 2 * half_h))
    variants = [("defaults", DisplayStyle()), ("--colormap turbo", DisplayStyle(cmap="turbo")),
                ("--colormap inferno", DisplayStyle(cmap="inferno")), ("--gamma 0.5", DisplayStyle(gamma=0.5)),
                ("--blur 6", DisplayStyle(blur=6.0)),
                ("--alpha-min 0.6 --alpha-max 1", DisplayStyle(alpha_min=0.6, alpha_max=1.0)),
                ("--no-outline", DisplayStyle(outline=False)), ("--threshold percentile", DisplayStyle())]
    tiles = []
    for label, style in variants:
        mode = "percentile" if "percentile" in label else "calibrated"
        crop = _overlay(detector, image, result, style, mode=mode, regions=False)[y0:y0 + 2 * half_h, x0:x0 + 2 * half_w]
        crop = cv2.resize(crop, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
        tiles.append(np.vstack([crop, text_strip([label], crop.shape[1], 16)]))
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    rows = [np.hstack([tiles[i], gap, tiles[i + 1], gap, tiles[i + 2], gap, tiles[i + 3]]) for i in (0, 4)]
    return np.vstack([rows[0], np.full((6, rows[0].shape[1], 3), 255, np.uint8), rows[1]])


def demo_figures(out: Path, work: Path, device: str) -> None:
    data = work / "demo"
    paths = write_demo_dataset(data, n_clean_train=16, n_clean_test=2, n_anomalous=3, seed=0)
    # The settings of scripts/demo.sh: 256 px tiles suit scans only 320 px high; 5 % false alarms.
    detector = Detector(DetectorConfig(tile_size=256), device=device).fit(paths["train_good"], false_alarm_rate=0.05)
    model = detector.save(work / "model")
    pictures = {}
    for name, path in (("anomalous", paths["test_anomalous"][0]), ("clean", paths["test_good"][0])):
        image = load_image(path)
        result = detector.score(image)
        print(f"demo {name}: score {result.score:.2f}, threshold {result.image_threshold:.2f}, "
              f"anomalous {result.anomalous}, pixel threshold {result.pixel_threshold:.3f}")
        for mode in ("percentile", "calibrated"):
            pictures[f"{name}_{mode}"] = _overlay(detector, image, result, mode=mode, regions=mode == "calibrated")
        if name == "anomalous":
            mask = load_image(paths["ground_truth"][0]) > 0
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            truth = np.repeat(image[..., None], 3, axis=2).copy()
            cv2.drawContours(truth, contours, -1, (0, 255, 0), 2)
            pictures["anomalous_truth"] = truth
            # Before issue #25: Detector.overlay's cold-to-hot scale from 1.0, regions boxed (the old headline).
            before = detector.overlay(image, result, threshold="calibrated", style="legacy")
            pictures["overlay_before"] = draw_regions(before, find_regions(result.heatmap, result.pixel_threshold))
            after = pictures["anomalous_calibrated"]
            scale = display_scale(result.pixel_threshold, detector.calibration_.color_range)
            pictures["overlay_after"] = np.vstack([after, colorbar_strip(after.shape[1], scale, DisplayStyle(), True)])
            pictures["triptych_demo"] = _shrink(_triptych(detector, image, result, path.name))
            pictures["display_flags"] = _flag_grid(detector, image, result)
    for name, picture in pictures.items():
        _save_png(out / f"{name}.png", picture)
    print(f"wrote {len(pictures)} demo pictures to {out}")
    triage_page(out, work, model, paths)


def roi_figure(out: Path, work: Path, device: str) -> None:
    """``roi_before_after.png``: the anomalous demo scan's default (percentile) overlay without and with
    ``--roi auto``, each model fitted on the same clean scans with that mode."""
    data = work / "demo_roi"
    paths = write_demo_dataset(data, n_clean_train=16, n_clean_test=2, n_anomalous=3, seed=0)
    image = load_image(paths["test_anomalous"][0])
    panels = []
    for roi in ("off", "auto"):
        detector = Detector(DetectorConfig(tile_size=256, roi=roi), device=device).fit(
            paths["train_good"], false_alarm_rate=0.05)
        result = detector.score(image)
        mask = percentile_mask(result.heatmap, 90.0, within=result.roi_mask)
        picture = render_display(image, result.heatmap, result.pixel_threshold, DisplayStyle(), display_mask=mask,
                                 color_range=detector.calibration_.color_range, window=result.window)
        if result.roi_mask is not None:
            contours, _ = cv2.findContours(result.roi_mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(picture, contours, -1, (0, 255, 255), 1)
        label = (f"--roi {roi}: score {result.score:.2f} (threshold {result.image_threshold:.2f}), "
                 f"{100 * result.masked_fraction:.0f} % of the scan masked")
        print(f"roi {roi}: score {result.score:.2f}, threshold {result.image_threshold:.2f}, "
              f"masked {result.masked_fraction:.3f}")
        panels.append(np.vstack([text_strip([label], picture.shape[1], 18), picture]))
    _save_png(out / "roi_before_after.png", _shrink(np.vstack(panels)))
    print(f"wrote {out / 'roi_before_after.png'}")


def triage_page(out: Path, work: Path, model: Path, paths: dict) -> None:
    """Run ``detect`` on the demo test scans with --html and screenshot the page in Chromium."""
    folder = work / "lane"
    folder.mkdir()
    for kind in ("test_anomalous", "test_good"):
        for path in paths[kind]:
            shutil.copy(path, folder / f"{'truck' if kind == 'test_anomalous' else 'clean'}_{path.name}")
    page = work / "triage" / "index.html"
    page.parent.mkdir()
    here = os.getcwd()
    os.chdir(work)  # relative paths, so that the page shows "lane/truck_000.bmp", not a temporary folder
    try:
        code = cli_main(["detect", "--input", "lane", "--output", "triage/overlays", "--model", model.name,
                         "--threshold", "calibrated", "--draw-regions", "--triptych", "triage/triptychs",
                         "--html", "triage/index.html", "--quiet"])
    finally:
        os.chdir(here)
    if code != 0:
        raise SystemExit(f"detect --html failed with exit code {code}")
    from screenshot_html import BROWSERS, screenshot

    if not any(shutil.which(name) for name in BROWSERS):
        print("no Chromium: docs/images/triage_page.png not refreshed (apt-get install chromium)")
        return
    screenshot(page, out / "triage_page.png", width=1280, height=1000)
    print(f"wrote {out / 'triage_page.png'}")


def weld_figures(out: Path, data: Path, weights_dir: Path, device: str) -> None:
    welds, weights = data / "gdxray_welds", weights_dir / WELD_WEIGHTS
    if not (welds / "train" / "good").is_dir() or not weights.is_file():
        print(f"real-data pictures skipped: {welds} or {weights} not found")
        return
    config = DetectorConfig(weights=str(weights), **WELD_SETTINGS)
    detector = Detector(config, device=device).fit(list_images(welds / "train" / "good"), false_alarm_rate=0.05)
    candidates = list_images(welds / "test" / "defect")[::10] + list_images(welds / "test" / "good")
    scored = []
    for path in candidates:
        image = load_image(path)
        result = detector.score(image)
        flagged = float((result.heatmap >= result.pixel_threshold).mean())
        scored.append((path, image, result, flagged))
    clean = max((s for s in scored if s[0].parent.name == "good" and not s[2].anomalous), key=lambda s: s[2].score)
    anomalous = max((s for s in scored if s[0].parent.name == "defect" and s[2].anomalous and s[3] < 0.1),
                    key=lambda s: s[2].score)
    for name, (path, image, result, flagged) in (("welds_clean", clean), ("welds_anomalous", anomalous)):
        print(f"{name}: {path.name} score {result.score:.2f}, threshold {result.image_threshold:.2f}, "
              f"{100 * flagged:.1f} % of the tile flagged")
        _save_png(out / f"{name}.png", _overlay(detector, image, result))
    path, image, result, _ = anomalous
    _save_png(out / "welds_triptych.png", _shrink(_triptych(detector, image, result, path.name)))
    print(f"wrote 3 weld pictures to {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding gdxray_welds")
    parser.add_argument("--weights-dir", default=str(REPO.parent / "shared" / "weights"),
                        help=f"folder holding {WELD_WEIGHTS}")
    parser.add_argument("--skip-real", action="store_true", help="only the demo pictures")
    parser.add_argument("--only-roi", action="store_true", help="only the ROI before/after picture")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        roi_figure(out, Path(tmp), args.device)
        if args.only_roi:
            return 0
        demo_figures(out, Path(tmp), args.device)
    if not args.skip_real:
        weld_figures(out, Path(args.data), Path(args.weights_dir), args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
