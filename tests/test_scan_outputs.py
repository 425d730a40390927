"""outputs/scan_outputs.py: one scored scan's files and report entry, from plain options (no argparse)."""

from __future__ import annotations

import numpy as np

from rtg_anomaly import Detector
from rtg_anomaly.outputs.display import DisplayStyle
from rtg_anomaly.outputs.scan_outputs import OutputOptions, display_mask, score_scan, write_scan
from rtg_anomaly.scans.io import load_image


def test_a_scored_scan_is_drawn_filed_and_reported_from_plain_options(demo_data, tiny_bundle, tmp_path):
    detector = Detector.load(tiny_bundle, device="cpu")
    path = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    options = OutputOptions(style=DisplayStyle(), threshold="calibrated", colorbar=True,
                            sort_into=str(tmp_path / "sorted"))
    scored = score_scan(detector, path, load_image(path), options)
    assert scored.picture is None and scored.reconstruction is None  # no GPU; the tiny PatchCore cannot reconstruct
    overlay, heatmap = tmp_path / "overlay.png", tmp_path / "heatmap.npy"
    entry, pictures = write_scan(scored, overlay, heatmap, None, options, thumbnails=True)
    drawn = load_image(overlay)
    assert drawn.shape[0] > scored.image.shape[0]  # the colour bar sits under the overlay
    assert np.array_equal(np.load(heatmap), scored.result.heatmap)
    decision = "suspect" if scored.result.anomalous else "clean"
    assert entry["sorted_to"] == str(tmp_path / "sorted" / decision / path.name)
    assert (tmp_path / "sorted" / decision / path.name).is_file()
    assert entry["score"] == scored.result.score and entry["output"] == str(overlay)
    assert set(pictures) == {"overlay", "triptych"} and pictures["overlay"].startswith("data:image/")


def test_the_display_mask_follows_the_threshold_mode(demo_data, tiny_bundle):
    detector = Detector.load(tiny_bundle, device="cpu")
    path = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    result = detector.score(load_image(path))
    assert display_mask(result, OutputOptions(style=DisplayStyle(), threshold="calibrated")) is None
    mask = display_mask(result, OutputOptions(style=DisplayStyle(), threshold_percentile=90.0))
    assert mask.dtype == bool and mask.shape == result.heatmap.shape
    assert abs(mask.mean() - 0.10) < 0.02  # the top tenth of the map
