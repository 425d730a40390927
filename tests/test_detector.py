"""The library API: fit, score, save/load, calibrate, on tiny synthetic data."""

from __future__ import annotations

import copy
import dataclasses
import tracemalloc

import numpy as np
import pytest
from PIL import Image
import torch

from rtg_anomaly import Detector, NotFittedError
from rtg_anomaly.pipeline.detector import ImageTooSmallError, NonFiniteScanError, UnusableScanError
from rtg_anomaly.errors import InputError
from rtg_anomaly.backbone.features import FeatureExtractor
from rtg_anomaly.outputs.display import ALERT_COLOUR, DisplayStyle, render_display
from rtg_anomaly.scans.intensity import apply_window
from rtg_anomaly.outputs.overlay import percentile_mask, render_overlay
from rtg_anomaly.scans.synthetic import make_vehicle_scan
from tests.conftest import tiny_config


def test_score_before_fit_is_a_clear_error():
    with pytest.raises(NotFittedError, match="not fitted"):
        Detector(tiny_config(), device="cpu").score(np.zeros((64, 64), np.uint8))
    with pytest.raises(NotFittedError, match="not fitted"):
        Detector(tiny_config(), device="cpu").overlay(np.zeros((64, 64), np.uint8), None)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, float("nan")])
def test_a_bad_false_alarm_rate_is_refused_before_any_scan_is_read(rate, tiny_detector, monkeypatch):
    """fit() and calibrate() check the rate first: a fit of a thousand scans must not end on it."""
    def read(*args, **kwargs):
        raise AssertionError("a scan was read before the rate was checked")

    monkeypatch.setattr(Detector, "_read", read)
    with pytest.raises(InputError, match="false-alarm rate must be in"):
        Detector(tiny_config(), device="cpu").fit([np.zeros((64, 64), np.uint8)] * 3, false_alarm_rate=rate)
    with pytest.raises(InputError, match="false-alarm rate must be in"):
        copy.deepcopy(tiny_detector).calibrate([np.zeros((64, 64), np.uint8)], false_alarm_rate=rate)


def test_heatmap_matches_scan_size_and_units(tiny_detector, demo_data):
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    result = tiny_detector.score(scan)
    image = tiny_detector.load_scan(scan)
    assert result.heatmap.shape == image.shape[:2] and result.heatmap.dtype == np.float32
    top = np.sort(tiny_detector.raw_scores(image).patch_scores)[-tiny_detector.config.top_patches:]
    assert result.score == pytest.approx(float(top.mean()) / tiny_detector.calibration_.clean_level, rel=1e-6)
    assert result.anomalous == (result.score > result.image_threshold)
    # Calibrated units: the clean calibration scans sit around 1.0 by construction.
    assert np.median(tiny_detector.calibration_.image_scores) == pytest.approx(1.0)


def test_save_load_round_trip_gives_identical_heatmaps(tiny_detector, tiny_bundle, demo_data):
    loaded = Detector.load(tiny_bundle, device="cpu")
    for scan in sorted((demo_data / "test").rglob("*.bmp")):
        before, after = tiny_detector.score(scan), loaded.score(scan)
        np.testing.assert_array_equal(before.heatmap, after.heatmap)
        assert before.score == after.score and before.anomalous == after.anomalous
    np.testing.assert_array_equal(loaded.method_.memory_bank_, tiny_detector.method_.memory_bank_)
    assert loaded.calibration_ == tiny_detector.calibration_


def test_scoring_is_deterministic(tiny_detector, demo_data):
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    np.testing.assert_array_equal(tiny_detector.score(scan).heatmap, tiny_detector.score(scan).heatmap)


@pytest.mark.parametrize("shape", [(40, 50), (64, 20), (30, 200)])
def test_scans_smaller_than_a_tile_work(tiny_detector, shape):
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    assert tiny_detector.score(image).heatmap.shape == shape


def test_scan_smaller_than_one_patch_is_refused(tiny_detector):
    with pytest.raises(ImageTooSmallError, match="too small"):
        tiny_detector.score(np.zeros((2, 100), np.uint8))


@pytest.mark.parametrize("array, expected", [
    (np.zeros((64, 64, 4), np.uint8), "expected a grey or RGB image, got shape"),
    (np.zeros(4096, np.uint8), "expected a grey or RGB image, got shape"),
    (np.zeros((64, 64), bool), "got dtype bool"),
    (np.zeros((64, 64), np.complex64), "got dtype complex64"),
    (np.full((64, 64), None, object), "got dtype object"),
])
def test_arrays_that_are_not_grey_or_rgb_images_are_refused(tiny_detector, array, expected):
    with pytest.raises(UnusableScanError, match=expected):
        tiny_detector.score(array)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_scan_with_non_finite_pixels_is_refused(tiny_detector, bad_value):
    """A NaN pixel would make the window, the features and the score NaN, and a NaN score is never
    above the threshold: the scan would be reported clean."""
    image = np.full((96, 300), 0.5, np.float32)
    image[40, 7] = bad_value
    with pytest.raises(NonFiniteScanError, match="1 pixel value"):
        tiny_detector.score(image)


def test_score_names_the_source_of_an_array(tiny_detector):
    image = np.full((96, 300), np.nan, np.float32)
    with pytest.raises(NonFiniteScanError, match=r"^lane/scan\.tif: 28800 pixel value"):
        tiny_detector.score(image, source="lane/scan.tif")
    with pytest.raises(NonFiniteScanError, match=r"^image: 28800 pixel value"):
        tiny_detector.score(image)


def test_fit_skips_a_clean_scan_with_non_finite_pixels(demo_data):
    clean = sorted((demo_data / "train" / "good").iterdir())[:4]
    poisoned = np.full((96, 300), np.nan, np.float32)
    skipped = []
    detector = Detector(tiny_config(), device="cpu").fit([*clean, poisoned],
                                                         on_bad_image=lambda item, exc: skipped.append(exc))
    assert len(skipped) == 1 and isinstance(skipped[0], NonFiniteScanError)
    assert np.isfinite(detector.method_.memory_bank_).all()
    assert detector.fit_info_["n_train_scans"] + detector.fit_info_["n_calibration_scans"] == len(clean)


def test_sixteen_bit_and_colour_scans(tiny_detector):
    grey16, _ = make_vehicle_scan(seed=5, height=96, length=300, bit_depth=16)
    assert tiny_detector.score(grey16).heatmap.shape == grey16.shape
    colour = np.stack([grey16 // 257] * 3, axis=2).astype(np.uint8)
    colour[..., 0] //= 2
    assert tiny_detector.score(colour).heatmap.shape == grey16.shape


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_pixel_path_matches_numpy_path(tiny_bundle, demo_data, monkeypatch, device):
    """On CUDA, tiling, stitching, smoothing and overlay run with torch on the device; forced on here
    (on the CPU too), they must give the numpy path's heatmap, score and overlay."""
    detector = Detector.load(tiny_bundle, device=device)
    grey16, _ = make_vehicle_scan(seed=5, height=96, length=300, bit_depth=16)
    colour = np.stack([grey16 // 257] * 3, axis=2).astype(np.uint8)
    colour[..., 0] //= 2
    scans = [detector.load_scan(sorted((demo_data / "test" / "anomalous").iterdir())[0]), grey16, colour,
             np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)]  # smaller than a tile
    outputs = {}
    for on_device in (False, True):
        monkeypatch.setattr(Detector, "_on_gpu", property(lambda self, flag=on_device: flag))
        outputs[on_device] = []
        for scan in scans:
            result = detector.score(scan)
            outputs[on_device].append((result, detector.overlay(scan, result),
                                       detector.overlay(scan, result, threshold="calibrated")))
    for (numpy_result, *numpy_overlays), (device_result, *device_overlays) in zip(outputs[False], outputs[True]):
        assert device_result.heatmap.dtype == np.float32 and device_result.heatmap.shape == numpy_result.heatmap.shape
        np.testing.assert_allclose(device_result.heatmap, numpy_result.heatmap, rtol=0, atol=1e-5)
        assert device_result.score == pytest.approx(numpy_result.score, rel=1e-6)
        for numpy_overlay, device_overlay in zip(numpy_overlays, device_overlays):
            # the maps agree to float32 rounding, so a pixel may fall on the other side of a colour step
            assert np.abs(device_overlay.astype(int) - numpy_overlay).max() <= 3
            assert (device_overlay != numpy_overlay).any(axis=2).mean() < 0.01


@pytest.mark.parametrize("device", DEVICES)
def test_device_overlay_reuses_the_scored_copies(tiny_bundle, monkeypatch, device):
    """On the device path, the legacy overlay of the scan just scored uploads neither the heatmap nor the scan
    again (score left them on the device), and draws the same pixels as an overlay that uploads them."""
    import rtg_anomaly.outputs.overlay as overlay_module

    detector = Detector.load(tiny_bundle, device=device)
    monkeypatch.setattr(Detector, "_on_gpu", property(lambda self: True))
    first, _ = make_vehicle_scan(seed=5, height=96, length=300, bit_depth=16)
    second, _ = make_vehicle_scan(seed=6, height=96, length=300, bit_depth=16)
    result = detector.score(first)
    copies = detector._device_copies
    assert torch.equal(copies.heatmap.cpu(), torch.from_numpy(result.heatmap))  # bit for bit, not just close
    uploaded = detector.overlay(first.copy(), result, style="legacy")  # another array: uploaded as before
    heatmap = torch.from_numpy(result.heatmap).to(copies.heatmap.device)
    for mode in ("percentile", "calibrated"):
        mask = (overlay_module.percentile_mask_torch(heatmap, 90.0) if mode == "percentile"
                else heatmap > result.pixel_threshold)
        assert np.array_equal(detector.overlay(first.copy(), result, threshold=mode, style="legacy"),
                              overlay_module.render_overlay_torch(first, heatmap, mask, window=result.window,
                                                                  color_range=detector.calibration_.color_range))

    def no_upload(*args, **kwargs):
        raise AssertionError("the overlay uploaded the scan again")

    def no_map_upload(array, from_numpy=torch.from_numpy):
        assert array.shape != result.heatmap.shape, "the overlay uploaded the heatmap again"
        return from_numpy(array)

    monkeypatch.setattr(overlay_module, "to_device_float", no_upload)
    monkeypatch.setattr(torch, "from_numpy", no_map_upload)
    assert np.array_equal(detector.overlay(first, result, style="legacy"), uploaded)
    monkeypatch.undo()
    monkeypatch.setattr(Detector, "_on_gpu", property(lambda self: True))

    later = detector.score(second)  # the next score replaces the copies: one scan's worth at most
    assert detector._device_copies.result() is later and detector._device_copies.image() is second
    assert np.array_equal(detector.overlay(first, result, style="legacy"), uploaded)  # an older result still renders right


@pytest.mark.parametrize("device", DEVICES)
def test_device_display_reuses_the_scored_copies(tiny_bundle, monkeypatch, device):
    """The operator display of the scan just scored, on the device path: blended from the windowed scan and
    the heatmap that score left there, its percentile mask taken there (no upload, no host pass over the
    map), with the same pixels as the display of another array, which uploads them."""
    import rtg_anomaly.pipeline.detector as detector_module
    import rtg_anomaly.outputs.display_torch as display_torch_module

    detector = Detector.load(tiny_bundle, device=device)
    monkeypatch.setattr(Detector, "_on_gpu", property(lambda self: True))
    scan, _ = make_vehicle_scan(seed=5, height=96, length=300, bit_depth=16)
    result = detector.score(scan)
    uploaded = {mode: detector.overlay(scan.copy(), result, threshold=mode) for mode in ("percentile", "calibrated")}

    def no_upload(*args, **kwargs):
        raise AssertionError("the display uploaded the scan again")

    def no_map_upload(array, from_numpy=torch.from_numpy):
        assert array.shape[:2] != result.heatmap.shape, "the display uploaded the heatmap or a mask"
        return from_numpy(array)

    def no_host_percentile(*args, **kwargs):
        raise AssertionError("the percentile mask was taken on the host")

    monkeypatch.setattr(display_torch_module, "to_device_float", no_upload)
    monkeypatch.setattr(torch, "from_numpy", no_map_upload)
    monkeypatch.setattr(detector_module, "percentile_mask", no_host_percentile)
    for mode, expected in uploaded.items():
        assert np.array_equal(detector.overlay(scan, result, threshold=mode), expected)


def _out_of_memory(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_scan_too_large_for_the_gpu_is_scored_with_the_pixel_work_on_the_host(tiny_bundle, monkeypatch):
    """When the scan's pixel work runs the GPU out of memory, score() and overlay() redo it on the host: the
    CPU path's heatmap and overlay, and the result says why. The next scan tries the GPU again."""
    scan, _ = make_vehicle_scan(seed=5, height=96, length=300, bit_depth=16)
    on_host = Detector.load(tiny_bundle, device="cpu")
    expected = on_host.score(scan)
    detector = Detector.load(tiny_bundle, device="cpu")
    monkeypatch.setattr(Detector, "_on_gpu", property(lambda self: not self._pixel_work_on_host))
    with monkeypatch.context() as patch:
        patch.setattr(Detector, "_device_scan", _out_of_memory)
        result = detector.score(scan)
    assert result.fallback.startswith("the GPU ran out of memory for this scan's pixel work")
    assert "Tried to allocate 20.00 GiB" in result.fallback
    np.testing.assert_array_equal(result.heatmap, expected.heatmap)
    assert result.score == expected.score and detector._device_copies is None
    assert np.array_equal(detector.overlay(scan, result), on_host.overlay(scan, expected))
    again = detector.score(scan)
    assert again.fallback is None and detector._device_copies is not None  # the device path, as before


def test_overlay_too_large_for_the_gpu_is_rendered_on_the_host(tiny_bundle, monkeypatch):
    import rtg_anomaly.pipeline.detector as detector_module

    scan, _ = make_vehicle_scan(seed=5, height=96, length=300, bit_depth=16)
    detector = Detector.load(tiny_bundle, device="cpu")
    monkeypatch.setattr(Detector, "_on_gpu", property(lambda self: True))
    result = detector.score(scan)
    assert result.fallback is None
    monkeypatch.setattr(detector_module, "render_overlay_torch", _out_of_memory)
    monkeypatch.setattr(detector_module, "render_display_torch", _out_of_memory)
    expected = render_overlay(scan, result.heatmap, percentile_mask(result.heatmap, 90.0), window=result.window,
                              color_range=detector.calibration_.color_range)
    assert np.array_equal(detector.overlay(scan, result, style="legacy"), expected)
    assert detector._device_copies is None  # freed for the host render
    result = detector.score(scan)
    expected = render_display(scan, result.heatmap, result.pixel_threshold, DisplayStyle(),
                              display_mask=percentile_mask(result.heatmap, 90.0), window=result.window,
                              color_range=detector.calibration_.color_range)
    assert np.array_equal(detector.overlay(scan, result), expected)
    assert detector._device_copies is None


@pytest.mark.parametrize("calibration, passes", [("holdout", 2), ("leave_one_out", 3)])
def test_fit_redoes_a_scan_too_large_for_the_gpu_on_the_host(demo_data, monkeypatch, calibration, passes):
    """Training scans, their flipped views and the calibration scans (held out, or every scan scored again
    leave-one-out): each retried on the host, same model."""
    clean = sorted((demo_data / "train" / "good").iterdir())[:5]
    attempts = []

    def out_of_memory(*args, **kwargs):
        attempts.append(1)
        _out_of_memory()

    monkeypatch.setattr(Detector, "_on_gpu", property(lambda self: not self._pixel_work_on_host))
    monkeypatch.setattr(Detector, "_device_scan", out_of_memory)
    fitted = Detector(tiny_config(augment=("hflip",), calibration=calibration), device="cpu").fit(clean)
    monkeypatch.undo()
    reference = Detector(tiny_config(augment=("hflip",), calibration=calibration), device="cpu").fit(clean)
    assert len(attempts) == passes * len(clean)  # every scan and every view went to the GPU first
    np.testing.assert_array_equal(fitted.method_.memory_bank_, reference.method_.memory_bank_)
    assert fitted.calibration_ == reference.calibration_


def test_overlay_of_another_sized_image_is_a_clear_error(tiny_detector):
    scan, _ = make_vehicle_scan(seed=5, height=96, length=300)
    result = tiny_detector.score(scan)
    with pytest.raises(InputError, match=r"the image \(48x300\) is not the scan this result was scored on \(96x300"):
        tiny_detector.overlay(scan[:48], result)


def test_overlay_modes(tiny_detector, demo_data):
    scan = tiny_detector.load_scan(sorted((demo_data / "test" / "anomalous").iterdir())[0])
    result = tiny_detector.score(scan)
    by_percentile = tiny_detector.overlay(scan, result, threshold="percentile", percentile=90)
    calibrated = tiny_detector.overlay(scan, result, threshold="calibrated")
    assert by_percentile.shape == scan.shape + (3,) and by_percentile.dtype == np.uint8
    grey = np.repeat(scan[..., None], 3, axis=2).astype(int)
    tinted = np.abs(by_percentile.astype(int) - grey).max(axis=2) > 1
    # 90th percentile: about a tenth of the pixels are coloured.
    assert 0.05 < tinted.mean() < 0.15
    quiet = result.heatmap <= result.pixel_threshold
    assert np.abs(calibrated.astype(int) - grey)[quiet].max() <= 1


def test_recalibration_keeps_the_unit_and_moves_thresholds(tiny_detector, demo_data):
    import copy

    detector = copy.copy(tiny_detector)
    clean = sorted((demo_data / "train" / "good").iterdir()) + sorted((demo_data / "test" / "good").iterdir())
    strict = detector.calibrate(clean, false_alarm_rate=0.01)
    loose = detector.calibrate(clean, false_alarm_rate=0.5)
    assert strict.clean_level == loose.clean_level == tiny_detector.calibration_.clean_level
    assert strict.n_scans == len(clean)
    assert loose.image_threshold <= strict.image_threshold
    assert strict.warnings and "needs at least 100" in strict.warnings[0]


def test_large_sixteen_bit_scan_in_bounded_memory():
    """A 4000 x 12000 16-bit scan: the map is the only full-size float array."""
    detector = Detector(tiny_config(tile_size=512, batch_size=16), device="cpu")
    rng = np.random.default_rng(0)
    clean = [rng.normal(30000, 800, (600, 900)).astype(np.uint16) for _ in range(3)]
    detector.fit(clean)
    scan = rng.normal(30000, 800, (4000, 12000)).astype(np.uint16)
    map_bytes = scan.size * 4
    tracemalloc.start()
    result = detector.score(scan)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.heatmap.shape == scan.shape
    # The map itself plus bounded per-batch buffers; a second full-size float array would double it.
    assert peak < 1.5 * map_bytes, f"peak {peak / 2**20:.0f} MiB for a {map_bytes / 2**20:.0f} MiB map"


def _with_config(detector: Detector, **changes) -> Detector:
    """A shallow copy of a fitted detector that scores under other settings (same bank and calibration)."""
    other = copy.copy(detector)
    other.config = detector.config.replace(**changes)
    return other


def test_patch_top_mean_averages_the_highest_raw_patch_scores(tiny_detector, demo_data):
    scan = tiny_detector.load_scan(sorted((demo_data / "test" / "anomalous").iterdir())[0])
    raw = tiny_detector.raw_scores(scan)
    assert raw.patch_scores.dtype == np.float32 and raw.patch_scores.ndim == 1
    clean_level = tiny_detector.calibration_.clean_level
    top3 = _with_config(tiny_detector, image_score="patch_top_mean", top_patches=3).score(scan)
    assert top3.score == pytest.approx(np.sort(raw.patch_scores)[-3:].mean() / clean_level, rel=1e-6)
    # The heatmap does not depend on the image-score rule.
    np.testing.assert_array_equal(top3.heatmap, tiny_detector.score(scan).heatmap)
    # Stitching and smoothing only average patch scores: the best patch is never below the map's maximum.
    top1 = _with_config(tiny_detector, image_score="patch_top_mean", top_patches=1).score(scan)
    assert top1.score >= float(top3.heatmap.max()) * (1 - 1e-6)
    # Asking for more patches than the scan has averages them all.
    everything = _with_config(tiny_detector, image_score="patch_top_mean", top_patches=10**9).score(scan)
    assert everything.score == pytest.approx(raw.patch_scores.mean() / clean_level, rel=1e-5)


def test_patch_top_mean_counts_every_in_scan_patch_once_per_tile(tiny_detector):
    image = np.random.default_rng(1).integers(0, 255, (100, 150), dtype=np.uint8)
    raw = tiny_detector.raw_scores(image)
    expected = sum(int(tiny_detector.valid_patches(origins, image.shape).sum())
                   for origins, _ in tiny_detector.patch_features(image))
    assert raw.patch_scores.size == expected


def test_autocast_overflow_falls_back_to_float32(monkeypatch):
    """Under autocast (CUDA), a batch whose features overflow is recomputed in float32 (a torch-path rule)."""
    extractor = FeatureExtractor(tiny_config(), "cpu", runtime="torch")
    tiles = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    expected = extractor.embed(tiles)
    calls = []
    real_forward_in = type(extractor)._forward_in

    def forward_in(self, batch, autocast):
        calls.append(autocast)
        features = real_forward_in(self, batch, autocast=False)
        return features.fill_(float("inf")) if autocast else features

    monkeypatch.setattr(type(extractor), "uses_autocast", property(lambda self: True))
    monkeypatch.setattr(type(extractor), "_forward_in", forward_in)
    np.testing.assert_array_equal(extractor.embed(tiles).numpy(), expected.numpy())
    assert calls == [True, False]


@pytest.fixture(scope="module")
def global_detector(demo_data):
    """The tiny detector with the whole-scan descriptor image score."""
    paths = sorted((demo_data / "train" / "good").iterdir())
    return Detector(tiny_config(image_score="global"), device="cpu").fit(paths)


def test_global_score_is_the_descriptor_distance_in_its_own_unit(global_detector, tiny_detector, demo_data):
    from rtg_anomaly.methods.descriptor import scan_descriptor

    n_clean = len(list((demo_data / "train" / "good").iterdir()))
    calibration = global_detector.calibration_
    # every clean scan ends in the descriptor bank: the training scans, then the held-out ones
    assert global_detector.global_.bank_.rows.shape == (n_clean, 2 * global_detector.extractor.feature_dim)
    assert calibration.image_level is not None and np.median(calibration.image_scores) == pytest.approx(1.0)
    # the map keeps the top-patch unit, so the heatmap is the default detector's
    assert calibration.clean_level == pytest.approx(tiny_detector.calibration_.clean_level)
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    result = global_detector.score(scan)
    np.testing.assert_allclose(result.heatmap, tiny_detector.score(scan).heatmap, rtol=1e-6)
    image = global_detector.load_scan(scan)
    descriptor = scan_descriptor(global_detector.scan_features(image))
    np.testing.assert_allclose(global_detector.raw_scores(image).descriptor, descriptor, atol=1e-6)
    expected = global_detector.global_.distance(descriptor) / calibration.image_level
    assert result.score == pytest.approx(expected, rel=1e-5)
    assert result.anomalous == (result.score > calibration.image_threshold)
    # a clean training scan is its own nearest neighbour
    train_scan = sorted((demo_data / "train" / "good").iterdir())[0]
    assert global_detector.score(train_scan).score == pytest.approx(0.0, abs=1e-5)


def test_global_detector_round_trip_and_recalibration(global_detector, demo_data, tmp_path):
    folder = global_detector.save(tmp_path / "model")
    loaded = Detector.load(folder, device="cpu")
    np.testing.assert_array_equal(loaded.global_.bank_.rows, global_detector.global_.bank_.rows)
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    assert loaded.score(scan).score == global_detector.score(scan).score
    clean = sorted((demo_data / "test" / "good").iterdir())
    recalibrated = loaded.calibrate(clean, false_alarm_rate=0.5)
    assert recalibrated.clean_level == global_detector.calibration_.clean_level
    assert recalibrated.image_level == global_detector.calibration_.image_level


def test_scan_centroid_score_is_the_cosine_to_the_clean_scans_centroid(demo_data, tmp_path):
    """The good-only per-scan rule beside the centroid method's tile map: image score 1 - f . c in its
    own unit, f the scan's unit mean patch feature, c the unit mean of the clean fit scans' f."""
    from rtg_anomaly.methods.descriptor import scan_descriptor

    train = sorted((demo_data / "train" / "good").iterdir())
    detector = Detector(tiny_config(method="centroid", image_score="scan_centroid"), device="cpu").fit(train)
    calibration = detector.calibration_
    assert calibration.image_level is not None and np.median(calibration.image_scores) == pytest.approx(1.0)

    def unit_mean(path):
        descriptor = scan_descriptor(detector.scan_features(detector.load_scan(path)))
        mean = descriptor[: descriptor.size // 2].astype(np.float64)
        return mean / np.linalg.norm(mean)

    # the fit holds out a share of the scans chosen by a permutation seeded with config.seed
    n_holdout = len(calibration.image_scores)
    fitted = sorted(np.random.default_rng(detector.config.seed).permutation(len(train))[n_holdout:])
    centroid = np.mean([unit_mean(train[i]) for i in fitted], axis=0)
    centroid /= np.linalg.norm(centroid)
    for scan in [*sorted((demo_data / "test" / "anomalous").iterdir())[:2], train[0]]:
        expected = (1.0 - unit_mean(scan) @ centroid) / calibration.image_level
        assert detector.score(scan).score == pytest.approx(expected, rel=1e-4, abs=1e-6)
    loaded = Detector.load(detector.save(tmp_path / "model"), device="cpu")
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    assert loaded.config.image_score == "scan_centroid"
    assert loaded.score(scan).score == detector.score(scan).score


def test_global_bundle_without_descriptor_bank_is_refused(global_detector, tmp_path):
    import json

    from rtg_anomaly.bundle import BundleError, seal

    folder = global_detector.save(tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["arrays"]["descriptor_bank"]
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))  # re-sealed: the check behind the checksum
    with pytest.raises(BundleError, match="descriptor_bank"):
        Detector.load(folder, device="cpu")


def test_global_score_needs_held_out_scans(demo_data):
    one = sorted((demo_data / "train" / "good").iterdir())[:1]
    with pytest.raises(InputError, match="held-out"):
        Detector(tiny_config(image_score="global"), device="cpu").fit(one)
    with pytest.raises(InputError, match="held-out"):
        Detector(tiny_config(image_score="global", holdout_fraction=0.0), device="cpu").fit(
            sorted((demo_data / "train" / "good").iterdir()))


def _as_16bit(path) -> np.ndarray:
    from rtg_anomaly.scans.io import load_image

    return load_image(path).astype(np.uint16) * 257  # the same scan, as a raw 16-bit file would hold it


def test_scans_of_another_kind_than_the_clean_scans_are_flagged(tiny_detector, tiny_bundle, demo_data):
    """Fitted on 8-bit scans: a 16-bit scan is windowed differently and its score says little, so the
    result says so; the kinds of the clean scans travel in the bundle."""
    n_clean = len(list((demo_data / "train" / "good").iterdir()))
    assert tiny_detector.fit_info_["scan_kinds"] == {"uint8 grey": n_clean}
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    assert tiny_detector.score(scan).warnings == []
    result = tiny_detector.score(_as_16bit(scan))
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith(f"uint16 grey scan, but the model was fitted on {n_clean} uint8 grey scans")
    loaded = Detector.load(tiny_bundle, device="cpu")
    assert loaded.fit_info_["scan_kinds"] == {"uint8 grey": n_clean}
    assert loaded.score(_as_16bit(scan)).warnings == result.warnings
    del loaded.fit_info_["scan_kinds"]  # as in a bundle saved before the kinds were recorded
    assert loaded.score(_as_16bit(scan)).warnings == []


def test_calibrating_or_fitting_on_other_kinds_warns(tiny_bundle, demo_data):
    clean = sorted((demo_data / "train" / "good").iterdir())
    detector = Detector.load(tiny_bundle, device="cpu")
    calibration = detector.calibrate([_as_16bit(p) for p in clean[:3]] + clean[3:])
    assert [w for w in calibration.warnings if "uint16" in w] == [
        f"3 calibration scan(s): uint16 grey scan, but the model was fitted on {len(clean)} uint8 grey scans: they "
        "reach the backbone differently (intensity window or channels), so its score is not comparable to theirs"]
    mixed = Detector(tiny_config(), device="cpu").fit([_as_16bit(p) for p in clean[:2]] + clean[2:])
    assert mixed.fit_info_["scan_kinds"] == {"uint16 grey": 2, "uint8 grey": len(clean) - 2}
    assert any(w.endswith(f"{len(clean) - 2} uint8 grey, 2 uint16 grey; fit one model per kind")
               for w in mixed.calibration_.warnings)


def test_a_multi_page_file_is_scored_from_its_first_page_with_a_warning(tiny_detector, tmp_path):
    first, _ = make_vehicle_scan(seed=5, height=96, length=300)
    second, _ = make_vehicle_scan(seed=6, height=96, length=300)
    Image.fromarray(first).save(tmp_path / "pair.tif", save_all=True, append_images=[Image.fromarray(second)])
    warning = "the file holds 2 images (pages); only the first was scored"
    from_path = tiny_detector.score(tmp_path / "pair.tif")
    from_array = tiny_detector.score(first, source=tmp_path / "pair.tif")  # how detect passes a decoded scan
    plain = tiny_detector.score(first)
    assert warning in from_path.warnings and warning in from_array.warnings
    assert not any("pages" in w for w in plain.warnings)
    assert from_path.score == from_array.score == plain.score


def test_a_fit_on_multi_page_files_warns_that_only_first_pages_were_learned(demo_data, tmp_path):
    clean = sorted((demo_data / "train" / "good").iterdir())
    pages = [np.asarray(Image.open(path)) for path in clean[:2]]
    Image.fromarray(pages[0]).save(tmp_path / "pair.tif", save_all=True, append_images=[Image.fromarray(pages[1])])
    detector = Detector(tiny_config(), device="cpu").fit([tmp_path / "pair.tif", *clean[1:]])
    assert ("1 clean scan file(s) hold several images (pages): only the first page of each was learned"
            in detector.calibration_.warnings)
    reference = Detector(tiny_config(), device="cpu").fit([pages[0], *clean[1:]])
    assert not any("pages" in w for w in reference.calibration_.warnings)
    np.testing.assert_array_equal(detector.method_.memory_bank_, reference.method_.memory_bank_)


def test_library_overlay_is_the_operator_display_detect_draws(tiny_detector):
    """Detector.overlay gives what detect writes: pixels at or above the calibrated pixel threshold warm and
    outlined, the rest the scan's own grey in calibrated mode; the scale is the calibration's, not the
    scan's maximum; "legacy" keeps the old look; a bad style is a one-line InputError."""
    scan, _ = make_vehicle_scan(seed=5, height=96, length=300)
    result = tiny_detector.score(scan)
    style = DisplayStyle(cmap="turbo", outline=False)
    picture = tiny_detector.overlay(scan, result, threshold="calibrated", style=style)
    expected = render_display(scan, result.heatmap, result.pixel_threshold, style,
                              color_range=tiny_detector.calibration_.color_range, window=result.window)
    assert np.array_equal(picture, expected)
    hot = result.heatmap >= result.pixel_threshold
    grey = np.clip(apply_window(scan, *result.window) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(picture[~hot], np.repeat(grey[..., None], 3, axis=2)[~hot])
    default = tiny_detector.overlay(scan, result, threshold="calibrated")
    assert hot.any()  # the synthetic vehicle carries planted objects
    assert (default == np.array(ALERT_COLOUR, np.uint8)).all(axis=2).any()  # outlined in the alert colour
    # Doubling the map's maximum elsewhere does not change the colour of the pixels that stayed put.
    peak = result.heatmap == result.heatmap.max()
    louder = dataclasses.replace(result, heatmap=np.where(peak, result.heatmap * 2, result.heatmap))
    again = tiny_detector.overlay(scan, louder, threshold="calibrated", style=style)
    assert np.array_equal(again[~peak], picture[~peak])
    legacy = tiny_detector.overlay(scan, result, threshold="calibrated", style="legacy")
    assert legacy.shape == picture.shape and not np.array_equal(legacy, default)
    with pytest.raises(InputError, match="style must be a DisplayStyle"):
        tiny_detector.overlay(scan, result, style="warm")
    with pytest.raises(InputError, match="--alpha-min"):
        tiny_detector.overlay(scan, result, style=DisplayStyle(alpha_min=2.0))
