"""Region of interest: the auto foreground mask, mask files, the patch rule, and ROI through fit, detect and
the report (tiny random backbone, synthetic scans)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CLI_FLAGS, tiny_config
from rtg_anomaly import Detector
from rtg_anomaly.cli import main
from rtg_anomaly.config import ConfigError, DetectorConfig
from rtg_anomaly.errors import InputError
from rtg_anomaly.scans.roi import auto_roi, fixed_roi, load_roi_mask, patch_inside_fraction


def _object_on_air(dtype=np.uint8, air=240, shape=(200, 300), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A textured dark object (rows 50..150, cols 80..220) on flat near-saturated open air; (scan, object)."""
    rng = np.random.default_rng(seed)
    scan = np.full(shape, air, dtype=np.float64) + rng.normal(0, air * 0.002, shape)
    inside = np.zeros(shape, bool)
    inside[50:150, 80:220] = True
    scan[inside] = air * 0.4 + rng.normal(0, air * 0.08, inside.sum())
    return np.clip(scan, 0, np.iinfo(dtype).max).astype(dtype), inside


@pytest.mark.parametrize("dtype, air", [(np.uint8, 240), (np.uint16, 60000)])
def test_auto_roi_keeps_the_object_and_masks_open_air(dtype, air):
    scan, inside = _object_on_air(dtype, air)
    roi = auto_roi(scan)
    assert roi is not None and roi.shape == scan.shape and roi.dtype == bool
    assert roi[inside].all()  # the whole object is kept
    assert not roi[:20].any() and not roi[:, :40].any()  # air far from the object is masked
    assert 0.6 < 1.0 - roi.mean() < 0.8  # about the air's share (0.77), less the margin around the object


def test_auto_roi_reads_rgb_and_float_scans():
    scan, inside = _object_on_air()
    rgb = np.repeat(scan[..., None], 3, axis=2)
    assert np.array_equal(auto_roi(rgb), auto_roi(scan))
    as_float = auto_roi(scan.astype(np.float32) / 255.0)  # finer histogram bins: nearly the same mask
    assert as_float[inside].all() and abs(as_float.mean() - auto_roi(scan).mean()) < 0.02


def test_auto_roi_keeps_an_enclosed_hole_and_drops_bright_specks():
    scan, inside = _object_on_air()
    scan[95:105, 145:155] = 240  # a small bright hole in the object: part of the object, not open air
    roi = auto_roi(scan)
    assert roi[95:105, 145:155].all()


@pytest.mark.parametrize("scan", [
    np.random.default_rng(1).integers(0, 256, (128, 128)).astype(np.uint8),  # texture everywhere
    np.tile(np.linspace(0, 65535, 200), (150, 1)).astype(np.uint16),          # a smooth 16-bit ramp
    np.full((100, 100), 255, np.uint8),                                       # flat: all saturated
    _object_on_air(shape=(40, 40))[0],                                        # a crop too small to tell
], ids=["texture", "ramp16", "flat", "small"])
def test_auto_roi_masks_nothing_without_clear_open_air(scan):
    assert auto_roi(scan) is None


def test_auto_roi_leaves_a_bright_textured_object_alone():
    # A bright band with texture (a weld seam on film): bright, but not the flat plateau of open air.
    rng = np.random.default_rng(2)
    scan = rng.normal(90, 15, (200, 200))
    scan[70:130] = rng.normal(200, 25, (60, 200))
    assert auto_roi(np.clip(scan, 0, 255).astype(np.uint8)) is None


def test_mask_file_nonzero_is_inside_and_sizes_must_match(tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    mask[5:10, 5:20] = 7
    Image.fromarray(mask).save(tmp_path / "m.png")
    loaded = load_roi_mask(tmp_path / "m.png")
    assert loaded.dtype == bool and np.array_equal(loaded, mask > 0)
    assert fixed_roi(loaded, (30, 40)) is loaded
    with pytest.raises(InputError, match="40x30 px but the scan is 41x30 px"):
        fixed_roi(loaded, (30, 41))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(InputError, match="no pixel inside"):
        load_roi_mask(tmp_path / "empty.png")


def test_patch_inside_fraction_counts_each_footprint():
    roi = np.zeros((16, 16), bool)
    roi[:, :6] = True  # columns 0..5
    origins = np.array([[0, 0], [0, 8]])
    fraction = patch_inside_fraction(roi, origins, tile_size=8, grid=(2, 2))  # 4 x 4 px patches
    assert fraction.shape == (2, 2, 2)
    assert np.allclose(fraction[0], [[1.0, 0.5], [1.0, 0.5]])  # the second column of patches: cols 4..7
    assert np.allclose(fraction[1], 0.0)
    beyond = patch_inside_fraction(np.ones((10, 10), bool), np.array([[8, 8]]), tile_size=8, grid=(2, 2))
    assert np.allclose(beyond[0], [[0.25, 0.0], [0.0, 0.0]])  # padding counts as outside


def test_config_refuses_an_unknown_roi_mode():
    with pytest.raises(ConfigError, match="roi must be one of"):
        DetectorConfig(roi="maybe")
    assert DetectorConfig.from_dict({k: v for k, v in DetectorConfig().to_dict().items() if k != "roi"}).roi == "off"


# ---------------------------------------------------------------------------- through the pipeline
WIDTH = 256


def _clean_scans(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [np.clip(rng.normal(120, 20, (64, WIDTH)), 0, 255).astype(np.uint8) for _ in range(n)]


def _left_half() -> np.ndarray:
    roi = np.zeros((64, WIDTH), bool)
    roi[:, : WIDTH // 2] = True
    return roi


@pytest.fixture(scope="module")
def half_roi_detector() -> Detector:
    """Fitted with a fixed mask keeping the left half; the bank keeps every patch learned (ratio 1)."""
    detector = Detector(tiny_config(roi="file", coreset_ratio=1.0), device="cpu")
    detector.roi_mask = _left_half()
    return detector.fit(_clean_scans(5))


def test_the_bank_holds_no_patch_outside_the_roi(half_roi_detector):
    detector = half_roi_detector
    bank = detector.method_.memory_bank_
    inside, outside = [], []
    for scan in _clean_scans(5):
        every = detector.tile_features(scan)
        kept = detector.tile_features(scan, _left_half())
        inside.append(every.features[kept.valid])
        outside.append(every.features[every.valid & ~kept.valid])
    project = detector.method_.pca_.transform_numpy
    inside, outside = project(np.concatenate(inside)), project(np.concatenate(outside))
    assert detector.fit_info_["patches_seen"] == len(inside) == bank.shape[0]

    def nearest(rows):
        return np.sqrt(((rows[:, None, :] - bank[None]) ** 2).sum(-1)).min(1)

    assert np.allclose(nearest(inside), 0.0, atol=1e-3)  # every inside patch is in the bank ...
    assert nearest(outside).min() > 1e-2  # ... and no outside one


def test_an_object_outside_the_roi_does_not_score(half_roi_detector):
    clean = _clean_scans(6)[-1]
    planted = clean.copy()
    planted[20:44, 200:240] = 255  # far right: no tile that holds an inside patch sees it
    with_roi = half_roi_detector
    before, after = with_roi.score(clean), with_roi.score(planted)
    assert after.score == pytest.approx(before.score, abs=1e-6)
    assert after.roi_mode == "file" and after.masked_fraction == pytest.approx(0.5)
    assert np.all(after.heatmap[:, WIDTH // 2:] == 0.0)  # the floor outside the ROI
    without = Detector(tiny_config(coreset_ratio=1.0), device="cpu").fit(_clean_scans(5))
    assert without.score(planted).score > without.score(clean).score + 0.2  # it would have scored


def test_the_mask_travels_in_the_bundle(half_roi_detector, tmp_path):
    loaded = Detector.load(half_roi_detector.save(tmp_path / "model"), device="cpu")
    assert loaded.config.roi == "file" and np.array_equal(loaded.roi_mask, _left_half())
    scan = _clean_scans(6)[-1]
    assert loaded.score(scan).score == pytest.approx(half_roi_detector.score(scan).score, rel=1e-5)


def test_detect_leaves_pixels_outside_the_roi_as_the_scan_and_reports_the_share(tmp_path, capsys):
    scans = _clean_scans(6)
    for i, scan in enumerate(scans[:5]):
        (tmp_path / "clean").mkdir(exist_ok=True)
        Image.fromarray(scan).save(tmp_path / "clean" / f"{i}.png")
    planted = scans[5].copy()
    planted[20:44, 200:240] = 255
    Image.fromarray(planted).save(tmp_path / "scan.png")
    Image.fromarray(_left_half().astype(np.uint8) * 255).save(tmp_path / "roi.png")
    model = tmp_path / "model"
    assert main(["fit", "--clean-dir", str(tmp_path / "clean"), "--model", str(model), "--roi",
                 str(tmp_path / "roi.png"), *TINY_CLI_FLAGS]) == 0
    # Percentile 0 colours every pixel the overlay may colour: none outside the ROI.
    assert main(["detect", "--input", str(tmp_path / "scan.png"), "--output", str(tmp_path / "out.png"),
                 "--model", str(model), "--threshold-percentile", "0", "--report", str(tmp_path / "r.json"),
                 "--heatmap", str(tmp_path / "h.npy"), "--quiet"]) == 0
    overlay = np.asarray(Image.open(tmp_path / "out.png"))
    outside = ~_left_half()
    assert np.array_equal(overlay[outside], np.repeat(planted[outside][:, None], 3, axis=1))
    assert not np.array_equal(overlay[~outside], np.repeat(planted[~outside][:, None], 3, axis=1))
    assert np.all(np.load(tmp_path / "h.npy")[outside] == 0.0)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["roi_mode"] == "file"
    assert report["images"][0]["roi"] == {"mode": "file", "masked_fraction": 0.5}
    # --roi off overrides the bundle's mask: nothing masked.
    assert main(["detect", "--input", str(tmp_path / "scan.png"), "--output", str(tmp_path / "out2.png"),
                 "--model", str(model), "--roi", "off", "--report", str(tmp_path / "r2.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r2.json").read_text())["images"][0]["roi"] == {"mode": "off",
                                                                                  "masked_fraction": 0.0}
    capsys.readouterr()
    # A mask of another size, or no mask file: one line, exit 2, no overlay written.
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
    for value in (str(tmp_path / "small.png"), str(tmp_path / "missing.png")):
        assert main(["detect", "--input", str(tmp_path / "scan.png"), "--output", str(tmp_path / "bad.png"),
                     "--model", str(model), "--roi", value, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and "Traceback" not in err[0]
        assert not (tmp_path / "bad.png").exists()


def test_a_bundle_in_file_mode_without_its_mask_is_refused(half_roi_detector, tmp_path):
    from rtg_anomaly.bundle import BundleError, seal

    folder = half_roi_detector.save(tmp_path / "model")
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["arrays"]["roi_mask"]
    manifest_path.write_text(json.dumps(seal(manifest)))  # resealed: a consistent bundle, but no mask
    (folder / "roi_mask.npy").unlink()
    with pytest.raises(BundleError, match="holds no usable roi_mask"):
        Detector.load(folder, device="cpu")


def test_select_auto_refuses_a_mask_file(tmp_path, capsys):
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "roi.png")
    (tmp_path / "clean").mkdir()
    Image.fromarray(_clean_scans(1)[0]).save(tmp_path / "clean" / "a.png")
    assert main(["fit", "--clean-dir", str(tmp_path / "clean"), "--model", str(tmp_path / "m"), "--select", "auto",
                 "--roi", str(tmp_path / "roi.png"), "--quiet"]) == 2
    assert "does not take a --roi mask file" in capsys.readouterr().err


@pytest.mark.parametrize("settings", [dict(method="padim"), dict(method="centroid"),
                                      dict(method="svdd", svdd_epochs=1, svdd_pretrain="rotation")],
                         ids=["padim", "centroid", "svdd"])
def test_every_method_learns_and_scores_inside_the_roi_only(settings):
    roi = np.zeros((64, WIDTH), bool)
    roi[:, :96] = True  # the tiles at the right see no patch inside: a method must cope
    detector = Detector(tiny_config(roi="file", **settings), device="cpu")
    detector.roi_mask = roi
    detector.fit(_clean_scans(5))
    result = detector.score(_clean_scans(6)[-1])
    assert np.isfinite(result.score) and np.all(result.heatmap[:, 96:] == 0.0)
    assert np.isfinite(result.heatmap).all() and result.heatmap[:, :64].max() > 0.0
