"""The clean intensity window: the range the clean scans use, learned at fit and kept in the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly import Detector
from rtg_anomaly.bundle import BundleError, read_manifest, seal
from rtg_anomaly.cli import main
from rtg_anomaly.errors import InputError
from rtg_anomaly.scans.intensity import clean_window, resolved_window, window_limits
from rtg_anomaly.scans.scan_kinds import kind_mismatch, mixed_kinds
from rtg_anomaly.scans.synthetic import make_vehicle_scan
from tests.conftest import TINY_CLI_FLAGS, tiny_config


def narrow_scans(n: int = 4, low: int = 60, high: int = 180, seed: int = 0) -> list[np.ndarray]:
    """8-bit scans that use only [low, high] of 0..255, as many exports do."""
    out = []
    for index in range(n):
        scan = make_vehicle_scan(seed + index, height=96, length=192, bit_depth=16)[0].astype(np.float64)
        scan = (scan - scan.min()) / (scan.max() - scan.min())
        out.append(np.rint(low + scan * (high - low)).astype(np.uint8))
    return out


def test_clean_window_is_the_pooled_percentiles_of_the_scans():
    scans = [np.full((10, 10), 100, np.uint8), np.arange(100, dtype=np.uint8).reshape(10, 10)]
    assert clean_window(scans, (0.0, 100.0)) == (0.0, 100.0)
    pooled = np.concatenate([scan.ravel() for scan in scans]).astype(float)
    assert clean_window(scans, (0.5, 99.5)) == tuple(np.percentile(pooled, (0.5, 99.5)))


def test_each_scan_weighs_alike_whatever_its_size():
    """A huge bright scan contributes a subsample as large as a small dark one's whole: the quartiles of the
    pool fall on both (weighted by pixels, both quartiles would be the bright scan's)."""
    small_dark, huge_bright = np.zeros((64, 64), np.uint8), np.full((2048, 2048), 200, np.uint8)
    assert clean_window([small_dark, huge_bright], (25.0, 75.0), values_per_scan=64 * 64) == (0.0, 200.0)


def test_clean_window_of_nothing_is_none_and_of_a_constant_is_one_wide():
    assert clean_window([]) is None
    assert clean_window([np.full((8, 8), 7, np.uint16)]) == (7.0, 8.0)


def test_window_limits_with_the_clean_window():
    scan = np.full((4, 4), 90, np.uint8)
    assert window_limits(scan, "clean", clean_limits=(60.0, 180.0)) == (60.0, 180.0)
    assert window_limits(scan, "auto", clean_limits=(60.0, 180.0)) == (0.0, 255.0)  # only "clean" uses them
    with pytest.raises(ValueError, match="learned at fit"):
        window_limits(scan, "clean")


def test_scan_kinds_with_a_clean_window():
    assert resolved_window(np.dtype(np.uint8), "clean") == "clean"
    assert kind_mismatch("uint8 grey", {"uint8 grey": 3}, "clean") is None
    # One raw range learned on 8-bit scans means nothing for 16-bit ones.
    assert "differently" in kind_mismatch("uint16 grey", {"uint8 grey": 3}, "clean")
    assert mixed_kinds({"uint8 grey": 3, "uint16 grey": 2}, "clean") is not None
    assert mixed_kinds({"uint8 grey": 3}, "clean") is None


@pytest.fixture(scope="module")
def narrow_detector():
    scans = narrow_scans()
    return Detector(tiny_config(intensity_window="clean"), device="cpu").fit(scans), scans


def test_fit_learns_the_clean_window_of_8_bit_scans(narrow_detector):
    detector, scans = narrow_detector
    assert detector.clean_window_ == clean_window(scans)
    low, high = detector.clean_window_
    assert 60 <= low < high <= 180
    assert detector.window_limits(scans[0]) == (low, high)
    assert detector.score(scans[0]).window == (low, high)


def test_the_clean_window_stretches_a_narrow_band_to_the_backbone_range(narrow_detector):
    detector, scans = narrow_detector
    windowed = np.clip((scans[0].astype(np.float32) - detector.clean_window_[0])
                       / (detector.clean_window_[1] - detector.clean_window_[0]), 0, 1)
    assert windowed.min() == 0.0 and windowed.max() >= 0.99  # the dtype window gave 60/255 .. 180/255


def test_only_the_clean_window_is_learned():
    """The default (auto) windows 8-bit scans by their dtype's range and 16-bit ones by their percentiles; no
    clean window is learned or saved."""
    scans = narrow_scans(3)
    detector = Detector(tiny_config(), device="cpu").fit(scans)
    assert detector.clean_window_ is None and detector.window_limits(scans[0]) == (0.0, 255.0)
    deep = [scan.astype(np.uint16) * 200 for scan in scans]
    detector = Detector(tiny_config(intensity_window="clean"), device="cpu").fit(deep)
    assert detector.clean_window_ == clean_window(deep)
    assert detector.window_limits(deep[0]) == detector.clean_window_


def test_the_clean_window_travels_in_the_bundle(narrow_detector, tmp_path):
    detector, scans = narrow_detector
    folder = detector.save(tmp_path / "model")
    assert read_manifest(folder)["clean_window"] == {"low": detector.clean_window_[0], "high": detector.clean_window_[1]}
    loaded = Detector.load(folder, device="cpu")
    assert loaded.clean_window_ == detector.clean_window_
    assert np.array_equal(loaded.score(scans[1]).heatmap, detector.score(scans[1]).heatmap)


def _tamper(folder, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(seal(manifest)))  # re-sealed: the checks behind the checksum


@pytest.mark.parametrize("entry", [{"low": 5.0, "high": 5.0}, {"low": "nan", "high": 9.0}, {"low": 1.0},
                                   [1.0, 2.0], {"low": True, "high": 9.0}])
def test_a_tampered_clean_window_is_a_bundle_error(narrow_detector, tmp_path, entry):
    folder = narrow_detector[0].save(tmp_path / "model")
    _tamper(folder, lambda manifest: manifest.__setitem__("clean_window", entry))
    with pytest.raises(BundleError, match="clean_window"):
        Detector.load(folder, device="cpu")


def test_a_clean_window_model_without_its_window_is_a_bundle_error(narrow_detector, tmp_path):
    folder = narrow_detector[0].save(tmp_path / "model")
    _tamper(folder, lambda manifest: manifest.pop("clean_window"))
    with pytest.raises(BundleError, match="holds no clean_window"):
        Detector.load(folder, device="cpu")


def test_no_clean_window_is_learned_from_unreadable_scans(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="clean intensity window"):
        Detector(tiny_config(intensity_window="clean"), device="cpu")._fit_clean_window([bad])


def test_cli_fit_with_the_clean_window(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    for index, scan in enumerate(narrow_scans(4)):
        Image.fromarray(scan).save(clean / f"{index}.png")
    assert main(["fit", "--clean-dir", str(clean), "--model", str(tmp_path / "model"), "--device", "cpu",
                 "--intensity-window", "clean", *TINY_CLI_FLAGS]) == 0
    manifest = read_manifest(tmp_path / "model")
    assert manifest["config"]["intensity_window"] == "clean" and 60 <= manifest["clean_window"]["low"]


def test_the_clean_window_is_learned_from_at_most_64_scans_evenly_spaced(monkeypatch):
    from rtg_anomaly.pipeline import fitting

    monkeypatch.setattr(fitting, "CLEAN_WINDOW_MAX_SCANS", 2)
    dark, bright = np.full((96, 160), 20, np.uint8), np.full((96, 160), 220, np.uint8)
    middle = narrow_scans(1)[0]
    detector = Detector(tiny_config(intensity_window="clean"), device="cpu")
    assert detector._fit_clean_window([dark, middle, bright]) == clean_window([dark, bright])


def test_recalibrating_keeps_the_clean_window(narrow_detector, tmp_path):
    """``calibrate`` re-derives thresholds on new clean scans windowed by the fitted range, and the bundle it
    saves still holds that range."""
    detector, _ = narrow_detector
    folder = detector.save(tmp_path / "model")
    loaded = Detector.load(folder, device="cpu")
    loaded.calibrate(narrow_scans(3, seed=7))
    again = Detector.load(loaded.save(tmp_path / "recalibrated"), device="cpu")
    assert again.clean_window_ == detector.clean_window_
    assert read_manifest(tmp_path / "recalibrated")["clean_window"] == read_manifest(folder)["clean_window"]
