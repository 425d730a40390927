"""One scored scan and its outputs as ``detect`` writes them: overlay, heatmap, triptych, sorted copy, report entry.

Shared by the command line and the Ray engine, so that a folder scored either way gives the same files. The
options are plain values (``OutputOptions``), built from ``detect``'s flags by ``cli.options.output_options``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..pipeline.results import AnomalyResult
from .display import DisplayStyle
from .regions import DEFAULT_MIN_AREA

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class OutputOptions:
    """How ``detect`` draws and files a scored scan.

    style: the overlay's look. threshold: ``"percentile"`` (colour the pixels above ``threshold_percentile``, 0-100,
    of the scan's map) or ``"calibrated"`` (those above the pixel threshold). draw_regions / colorbar: boxes round
    the regions, a legend strip under the overlay. min_region_area: regions smaller than this (scan pixels) are
    dropped. sort_into / sort_mode: a folder to sort the scan into (clean/ or suspect/) and how (copy, link,
    symlink); None: no sorting. reconstruct: also draw what a clean scan looks like here (methods that can), for
    triptychs and the HTML page.
    """

    style: DisplayStyle
    threshold: str = "percentile"
    threshold_percentile: float = 90.0
    draw_regions: bool = False
    colorbar: bool = False
    min_region_area: int = DEFAULT_MIN_AREA
    sort_into: str | None = None
    sort_mode: str = "copy"
    reconstruct: bool = False


@dataclass
class ScoredScan:
    """What scoring a scan gives the background writer: host arrays only (the device is free again)."""
    path: Path
    image: np.ndarray  # the scan as read
    result: AnomalyResult
    color_range: tuple[float, float]  # the calibration's colour scale (calibrated units)
    started: float  # time.perf_counter() when scoring began
    picture: np.ndarray | None = None  # the overlay when it was drawn on the GPU, else None (the writer draws it)
    reconstruction: np.ndarray | None = None  # what a clean scan looks like here (pixel reconstruction, for the triptych)


def score_scan(detector, path: Path, image, options: OutputOptions, gpu=None) -> ScoredScan:
    """Score one scan (on the detector's device). On a GPU (``gpu``: its torch device) the overlay is
    blended there too, as fast as scoring; on the CPU the writer thread draws it while the next scan is
    scored."""
    started = time.perf_counter()
    result = detector.score(image, source=path)  # checks the scan, naming path in an error
    if result.fallback:
        print(f"rtg-anomaly: note: {path}: {result.fallback}", file=sys.stderr)
    scored = ScoredScan(path, image, result, detector.calibration_.color_range, started)
    if detector.can_reconstruct and options.reconstruct:
        scored.reconstruction = detector.reconstruct(image, source=path)
    if gpu is not None:  # None back (host pixel work, or the GPU out of memory): the writer draws it on the host
        scored.picture = detector.display_on_device(image, result, options.threshold, options.threshold_percentile,
                                                    options.style, scored.color_range)
    return scored


def display_mask(result: AnomalyResult, options: OutputOptions):
    """The pixels the overlay colours: bool (H, W) in percentile mode (the percentile of the map inside the
    region of interest, never outside it), None (those at or above the pixel threshold, which the heatmap's 0
    outside the ROI never reaches) in calibrated mode."""
    from .overlay import percentile_mask

    if options.threshold != "percentile":
        return None
    return percentile_mask(result.heatmap, options.threshold_percentile, within=result.roi_mask)


def render_scan(scored: ScoredScan, regions, options: OutputOptions) -> np.ndarray:
    """The overlay of a scored scan as ``detect`` writes it: uint8 (H, W, 3), or taller with --colorbar."""
    import numpy as np

    from .display import display_scale, render_display
    from .legend import colorbar_strip
    from .regions import draw_regions

    result, style, picture = scored.result, options.style, scored.picture
    if picture is None:
        picture = render_display(scored.image, result.heatmap, result.pixel_threshold, style,
                                 display_mask=display_mask(result, options), color_range=scored.color_range,
                                 window=result.window)
    if options.draw_regions and regions:
        picture = draw_regions(picture, regions)
    if options.colorbar:
        scale = display_scale(result.pixel_threshold, style.color_range or scored.color_range)
        legend = colorbar_strip(picture.shape[1], scale, style, calibrated_only=options.threshold == "calibrated")
        picture = np.vstack([picture, legend])
    return picture


def write_scan(scored: ScoredScan, overlay_path: Path, heatmap_path: Path | None, triptych_path: Path | None,
               options: OutputOptions, thumbnails: bool) -> tuple[dict, dict]:
    """Find a scored scan's regions, draw and write its overlay (and heatmap, triptych, sorted copy).

    Returns its report entry and, with ``thumbnails``, its small pictures for the HTML page.
    """
    from ..scans.io import save_array, save_image
    from .regions import find_regions
    from .triage import sort_into
    from .triptych import render_triptych

    result, path = scored.result, scored.path
    regions = find_regions(result.heatmap, result.pixel_threshold, min_area=options.min_region_area)
    picture = render_scan(scored, regions, options)
    save_image(overlay_path, picture)
    if heatmap_path is not None:
        save_array(heatmap_path, result.heatmap)
    triptych = None
    if triptych_path is not None or thumbnails:
        overlay = picture[:scored.image.shape[0]]  # without the colour bar
        triptych = render_triptych(scored.image, overlay, result.heatmap, path.name, result.score, result.anomalous,
                                   result.image_threshold, result.pixel_threshold, len(regions), result.window,
                                   reconstruction=scored.reconstruction)
    if triptych_path is not None:
        save_image(triptych_path, triptych)
    decision = "suspect" if result.anomalous else "clean"
    sorted_to = sort_into(options.sort_into, path, decision, mode=options.sort_mode) if options.sort_into else None
    peak_y, peak_x = divmod(int(result.heatmap.argmax()), result.heatmap.shape[1])
    entry = {
        "input": str(path), "output": str(overlay_path), "heatmap": str(heatmap_path) if heatmap_path else None,
        "score": result.score, "anomalous": result.anomalous, "threshold": result.image_threshold,
        "pixel_threshold": result.pixel_threshold, "peak_xy": [peak_x, peak_y],
        "width": int(scored.image.shape[1]), "height": int(scored.image.shape[0]),
        "regions": [region.to_dict() for region in regions],
        "seconds": round(time.perf_counter() - scored.started, 4),  # scoring began -> outputs written
        "fallback": result.fallback,
        "warnings": list(result.warnings),
        "roi": {"mode": result.roi_mode, "masked_fraction": round(result.masked_fraction, 4)},
    }
    if result.evidence is not None:
        entry["evidence"] = result.evidence
    if triptych_path is not None:
        entry["triptych"] = str(triptych_path)
    if sorted_to is not None:
        entry["sorted_to"] = str(sorted_to)
    pictures = {}
    if thumbnails:
        from .html_report import thumbnail_uri

        flagged = result.heatmap >= result.pixel_threshold
        pictures = {"overlay": thumbnail_uri(picture, 480, flagged), "triptych": thumbnail_uri(triptych, 960)}
    return entry, pictures
