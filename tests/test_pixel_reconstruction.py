"""The pixel target of the reconstruction method: the ``pixels`` backbone, the transformer GAN with its
f-AnoGAN encoder, AnoGAN refinement, the drawing shown to the operator, bundles and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtg_anomaly import Detector, DetectorConfig
from rtg_anomaly.bundle import load_bundle
from rtg_anomaly.cli import main
from rtg_anomaly.config import ConfigError
from rtg_anomaly.backbone.features import FeatureExtractor
from rtg_anomaly.methods import FitPlan, PixelReconstruction, create_method
from rtg_anomaly.backbone.pixel_backbone import PIXEL_CELL, cells_to_images, images_to_cells

SMALL = dict(method="reconstruction", recon_target="pixels", backbone="pixels", tile_size=64, input_size=32,
             recon_dim=32, recon_layers=1, recon_latent=16, recon_epochs=3, recon_min_steps=0, batch_size=8)


def test_pixels_backbone_gives_the_resized_tile_cut_into_cells():
    extractor = FeatureExtractor(DetectorConfig(**SMALL))
    assert extractor.grid == (4, 4) and extractor.feature_dim == PIXEL_CELL ** 2 and extractor.runtime == "torch"
    tiles = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    features = extractor.embed(tiles)
    resized = F.interpolate(torch.from_numpy(tiles)[:, None], size=(32, 32), mode="bilinear", align_corners=False,
                            antialias=True)
    torch.testing.assert_close(cells_to_images(features), resized)  # values reach the method as they are
    torch.testing.assert_close(images_to_cells(cells_to_images(features)), features)
    np.testing.assert_allclose(features[0, 0, 1].numpy(), resized[0, 0, :8, 8:16].reshape(-1).numpy())


def test_pixel_target_settings_are_checked():
    with pytest.raises(ConfigError, match="needs backbone 'pixels'"):
        DetectorConfig(method="reconstruction", recon_target="pixels")
    with pytest.raises(ConfigError, match="multiple of 8"):
        DetectorConfig(**{**SMALL, "input_size": 36})
    with pytest.raises(ConfigError, match="recon_target must be"):
        DetectorConfig(method="reconstruction", recon_target="voxels")


def _clean_tiles(rng, n, side=32):
    """Grey tiles of a soft horizontal stripe pattern at random phases, plus a little noise: (n, 1, S, S)."""
    y = np.arange(side, dtype=np.float32)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    stripes = 0.5 + 0.25 * np.sin(y / 3.0 + phase) + rng.normal(scale=0.02, size=(n, side, side)).astype(np.float32)
    return torch.from_numpy(np.clip(stripes, 0, 1)[:, None])


def _fitted(rng, **changes):
    method = create_method(DetectorConfig(**{**SMALL, "recon_epochs": 8, **changes}))
    assert isinstance(method, PixelReconstruction)
    method.begin(FitPlan(training_views=4, all_views=4))
    for _ in range(4):
        method.learn(images_to_cells(_clean_tiles(rng, 16)), torch.ones(16, 4, 4, dtype=torch.bool))
    method.finish(torch.device("cpu"))
    return method


def test_gan_and_encoder_train_and_a_foreign_object_scores_in_its_cells():
    method = _fitted(np.random.default_rng(1))
    history = method.loss_history_
    assert [len(history[name]) for name in ("discriminator", "generator", "encoder")] == [8, 8, 8]
    assert history["encoder"][-1] < history["encoder"][0]
    probe = _clean_tiles(np.random.default_rng(2), 2)
    probe[0, 0, 8:16, 16:24] = 1.0  # a bright square, unlike any clean tile, in cell (1, 2)
    cells, valid = images_to_cells(probe), torch.ones(2, 4, 4, dtype=torch.bool)
    scores = method.score(cells, valid)
    assert scores.shape == (2, 4, 4) and scores.dtype == torch.float32
    others = torch.ones(4, 4, dtype=torch.bool)
    others[1, 2] = False
    assert scores[0, 1, 2] > 1.5 * scores[0][others].max()
    assert scores[0, 1, 2] > 1.5 * scores[1].max()  # and above every cell of a clean tile
    drawn = method.reconstruct(cells, valid)
    assert drawn.shape == (2, 1, 32, 32) and float(drawn.min()) >= 0.0 and float(drawn.max()) <= 1.0


def test_refinement_brings_the_drawing_closer_to_a_clean_tile():
    method = _fitted(np.random.default_rng(3))
    probe = images_to_cells(_clean_tiles(np.random.default_rng(4), 4))
    valid = torch.ones(4, 4, 4, dtype=torch.bool)
    images = cells_to_images(probe)
    encoder_only = (method.reconstruct(probe, valid) - images).abs().mean()
    method.config = method.config.replace(recon_refine_steps=20)
    refined = (method.reconstruct(probe, valid) - images).abs().mean()
    assert refined < encoder_only


def test_training_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    first = _fitted(np.random.default_rng(5), recon_epochs=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = _fitted(np.random.default_rng(5), recon_epochs=2)
    for name, value in first.weights_.items():
        np.testing.assert_array_equal(value, second.weights_[name], err_msg=name)
    other = _fitted(np.random.default_rng(5), recon_epochs=2, seed=1)
    assert any(not np.array_equal(value, other.weights_[name]) for name, value in first.weights_.items())


def test_cache_keeps_tiles_that_reach_into_the_scan_within_its_bound():
    method = create_method(DetectorConfig(**{**SMALL, "recon_cache_rows": 1000}))
    method.begin(FitPlan(training_views=10, all_views=10))  # 100 cells per view: 6 tiles of 16 cells
    valid = torch.ones(30, 4, 4, dtype=torch.bool)
    valid[:20] = False  # 20 tiles wholly outside the scan: never cached
    valid[20:, :, 3] = False  # the others reach past its edge: cached
    for _ in range(10):
        method.learn(torch.rand(30, 4, 4, 64), valid)
    assert sum(t.shape[0] for t, _ in method._cache.parts) == 60
    assert all(bool(v.flatten(1).any(1).all()) for _, v in method._cache.parts)
    assert all(t.dtype == torch.float16 for t, _ in method._cache.parts)


def test_arrays_round_trip_and_misfits_are_refused():
    method = _fitted(np.random.default_rng(6), recon_epochs=1)
    arrays = method.to_arrays()
    assert all(name.startswith("pixel_") for name in arrays) and arrays["pixel_grid"].tolist() == [4, 4]
    again = PixelReconstruction.from_arrays(method.config, arrays, 64)
    probe, valid = images_to_cells(_clean_tiles(np.random.default_rng(7), 2)), torch.ones(2, 4, 4, dtype=torch.bool)
    torch.testing.assert_close(again.score(probe, valid), method.score(probe, valid))
    with pytest.raises(ValueError, match="pixels backbone"):
        PixelReconstruction.from_arrays(method.config, arrays, 384)  # a network backbone's features
    with pytest.raises(ValueError, match="stored architecture"):
        PixelReconstruction.from_arrays(method.config, dict(arrays, pixel_grid=np.array([5, 5])), 64)
    with pytest.raises(KeyError):
        PixelReconstruction.from_arrays(method.config.replace(recon_layers=2), arrays, 64)
    broken = dict(arrays, pixel_encoder_head_weight=np.full_like(arrays["pixel_encoder_head_weight"], np.inf))
    with pytest.raises(ValueError):
        PixelReconstruction.from_arrays(method.config, broken, 64)


@pytest.fixture(scope="module")
def pixel_detector(demo_data):
    return Detector(DetectorConfig(**SMALL), device="cpu").fit(sorted((demo_data / "train" / "good").iterdir()))


def test_detector_fits_saves_loads_and_detects_deterministically(pixel_detector, demo_data, tmp_path):
    folder = pixel_detector.save(tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["method"]["params"]["recon_target"] == "pixels" and manifest["config"]["backbone"] == "pixels"
    loaded = Detector.load(folder, device="cpu")
    assert isinstance(loaded.method_, PixelReconstruction) and loaded.can_reconstruct
    for scan in sorted((demo_data / "test").glob("*/*")):
        expected, result = pixel_detector.score(scan), loaded.score(scan)
        assert np.isfinite(result.heatmap).all() and result.heatmap.shape == loaded.load_scan(scan).shape[:2]
        np.testing.assert_array_equal(result.heatmap, expected.heatmap)
    again = Detector(pixel_detector.config, device="cpu").fit(sorted((demo_data / "train" / "good").iterdir()))
    _, first = load_bundle(folder)
    _, second = load_bundle(again.save(tmp_path / "again"))
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_reconstruction_of_a_scan_is_the_blended_drawing_of_its_tiles(pixel_detector, demo_data):
    import cv2

    from rtg_anomaly.scans.intensity import apply_window

    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    drawn = pixel_detector.reconstruct(scan)
    image = pixel_detector.load_scan(scan)
    assert drawn.shape == image.shape[:2] and drawn.dtype == np.float32
    assert 0.0 <= drawn.min() and drawn.max() <= 1.0 and drawn.std() > 0
    # one tile: its drawing at the input size, resized to the tile (no neighbour to blend with)
    crop = np.ascontiguousarray(image[:64, :64])
    tile = apply_window(crop, *pixel_detector.window_limits(crop))[None]
    features = pixel_detector.extractor.embed(tile)
    expected = pixel_detector.method_.reconstruct(features, torch.ones(features.shape[:3], dtype=torch.bool))
    expected = cv2.resize(expected[0, 0].numpy(), (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(pixel_detector.reconstruct(crop), np.clip(expected, 0, 1), atol=1e-5)


def test_methods_that_do_not_draw_refuse_to_reconstruct(tiny_detector, demo_data):
    from rtg_anomaly.errors import InputError

    assert not tiny_detector.can_reconstruct
    with pytest.raises(InputError, match="only reconstruction --target pixels"):
        tiny_detector.reconstruct(sorted((demo_data / "test" / "good").iterdir())[0])


def test_cli_pixel_target_sets_its_backbone_and_draws_the_reconstruction_in_the_triptych(demo_data, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(model), "--method",
                 "reconstruction", "--target", "pixels", "--epochs", "2", "--min-steps", "0", "--latent", "8",
                 "--quiet"]) == 0
    assert "pixel GAN on 64 px tiles, latent 8" in capsys.readouterr().out
    config = json.loads((model / "manifest.json").read_text())["config"]
    assert (config["backbone"], config["input_size"], config["tile_size"]) == ("pixels", 64, 128)
    assert (tmp_path / "model.loss.png").is_file()
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    triptych = tmp_path / "t.png"
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(model),
                 "--triptych", str(triptych), "--device", "cpu", "--quiet"]) in (0, 1)
    from PIL import Image

    width = Image.open(scan).size[0]
    panels = Image.open(triptych).size[0]
    assert panels > 4 * width  # original | reconstruction | mask | overlay
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(tmp_path / "bad"),
                 "--method", "reconstruction", "--target", "pixels", "--backbone", "vit_small_patch14_dinov2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs backbone 'pixels'" in err[0] and not (tmp_path / "bad").exists()


def test_refinement_runs_through_the_pipeline_at_detect_time_only(pixel_detector, demo_data):
    """Scores come from features made under inference mode: the latent search must still get gradients."""
    train = sorted((demo_data / "train" / "good").iterdir())
    refined = Detector(pixel_detector.config.replace(recon_refine_steps=10), device="cpu").fit(train)
    for name, value in pixel_detector.method_.weights_.items():  # the networks are trained the same way
        np.testing.assert_array_equal(refined.method_.weights_[name], value, err_msg=name)
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    result = refined.score(scan)
    assert np.isfinite(result.heatmap).all() and np.isfinite(result.score)
    image = pixel_detector.load_scan(scan).astype(np.float32) / 255.0  # 8-bit scans: the full-range window
    assert np.abs(refined.reconstruct(scan) - image).mean() < np.abs(pixel_detector.reconstruct(scan) - image).mean()
