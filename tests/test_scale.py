"""scale.py: the tile and input size fitted to the clean scans, and how fit applies it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly.config import DetectorConfig
from rtg_anomaly.pipeline.detector import Detector
from rtg_anomaly.scans.io import image_shape
from rtg_anomaly.pipeline.scale import MIN_INPUT, fit_scale_to_scans, input_multiple
from tests.conftest import tiny_config


def test_scans_of_at_least_half_a_tile_keep_the_configured_scale():
    config = DetectorConfig()
    assert fit_scale_to_scans(config, [572, 572, 600]) is config
    assert fit_scale_to_scans(config, [512]) is config
    assert fit_scale_to_scans(config, [378]) is config  # the shared welds: 0.74 of a tile, mirror-padded
    assert fit_scale_to_scans(config, [256]) is config  # exactly half a tile
    assert fit_scale_to_scans(config, []) is config
    assert fit_scale_to_scans(config.replace(input_size=None), [100]).tile_size == 512


def test_small_scans_are_one_tile_at_the_same_zoom_never_below_the_minimum_input():
    config = DetectorConfig()  # 512 px tiles at 448 px: 16 scan px per 14 px cell
    assert fit_scale_to_scans(config, [255]).tile_size == 255  # under half a tile
    # With the share at a whole tile (the study's "+fit-scans" rule) any scan under a tile is refitted.
    welds = fit_scale_to_scans(config, [378], small_scan_share=1.0)
    assert (welds.tile_size, welds.input_size) == (378, 336)  # 378 * 448 / 512 = 330.75, up to a multiple of 14
    assert welds.tile_size / (welds.input_size / 14) == pytest.approx(16, abs=0.5)
    fish = fit_scale_to_scans(config, [100])
    assert (fish.tile_size, fish.input_size) == (100, MIN_INPUT)  # magnified: 16 x 16 cells at least
    assert fit_scale_to_scans(config, [32]).input_size == MIN_INPUT
    # The median scan decides, not the smallest or the largest.
    assert fit_scale_to_scans(config, [100, 200, 900]).tile_size == 200
    assert fit_scale_to_scans(config, [100, 300, 900]) is config
    # Never a larger input than configured, and other settings are kept.
    coarse = fit_scale_to_scans(config.replace(input_size=160, pca_whiten=0.5), [100])
    assert (coarse.tile_size, coarse.input_size, coarse.pca_whiten) == (100, 160, 0.5)


def test_scale_to_scans_is_on_by_default():
    assert DetectorConfig().scale_to_scans is True


def test_input_multiple_follows_the_backbone_name():
    assert input_multiple("vit_small_patch14_dinov2") == 14
    assert input_multiple("vit_base_patch16_224") == 16
    assert input_multiple("tf_efficientnet_lite0") == 32
    cnn = fit_scale_to_scans(DetectorConfig(backbone="tf_efficientnet_lite0", input_size=448), [300],
                             small_scan_share=1.0)
    assert cnn.input_size % 32 == 0 and cnn.input_size >= 300 * 448 / 512


def test_image_shape_reads_the_header_only(tmp_path):
    path = tmp_path / "scan.png"
    Image.fromarray(np.zeros((30, 70), np.uint16)).save(path)
    assert image_shape(path) == (30, 70)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert image_shape(tmp_path / "junk.png") is None
    assert image_shape(tmp_path / "missing.png") is None


def _scans(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((size, size)) * 60 + 100).astype(np.uint8) for _ in range(n)]


def test_fit_shrinks_the_tile_to_small_scans_and_the_bundle_keeps_it(tmp_path):
    detector = Detector(tiny_config(tile_size=64, input_size=56, scale_to_scans=True), device="cpu").fit(_scans(5, 24))
    assert (detector.config.tile_size, detector.config.input_size) == (24, 56)
    assert detector.extractor.input_size == 56
    assert detector.fit_info_["scale"] == {"tile_size": 24, "input_size": 56, "fitted_to_scans": True,
                                           "configured": [64, 56], "median_shorter_side": 24}
    loaded = Detector.load(detector.save(tmp_path / "model"), device="cpu")
    assert loaded.config.tile_size == 24
    scan = _scans(1, 24, seed=9)[0]
    assert np.array_equal(loaded.score(scan).heatmap, detector.score(scan).heatmap)


def test_fit_without_scale_to_scans_pads_small_scans_to_the_configured_tile():
    detector = Detector(tiny_config(tile_size=64, input_size=56, scale_to_scans=False), device="cpu").fit(_scans(5, 24))
    assert detector.config.tile_size == 64
    assert detector.fit_info_["scale"] == {"tile_size": 64, "input_size": 56, "fitted_to_scans": False}


def test_scale_to_scans_must_be_a_bool():
    with pytest.raises(Exception, match="scale_to_scans"):
        DetectorConfig(scale_to_scans="yes")


def test_shorter_sides_reads_arrays_by_shape_and_files_by_header(tmp_path):
    from rtg_anomaly.pipeline.scale import shorter_sides

    Image.fromarray(np.zeros((40, 90), np.uint8)).save(tmp_path / "wide.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    items = [np.zeros((300, 120), np.uint16), tmp_path / "wide.png", tmp_path / "broken.png"]
    assert shorter_sides(items) == [120, 40]
