"""Bundles are data from strangers (issue #24, point 2): malformed manifests, arrays that do not fit each
other, absurd .npy headers and non-finite values are refused with one BundleError line, before any
allocation; hand edits are caught by the manifest checksum; reports never hold NaN or Infinity."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from rtg_anomaly import Detector
import rtg_anomaly.bundle as bundle_module
from rtg_anomaly.bundle import BundleError, load_bundle
from rtg_anomaly.cli import main
from rtg_anomaly.errors import InputError
from tests.conftest import replace_bundle_array

NAN = float("nan")
seal = getattr(bundle_module, "seal", lambda manifest: manifest)  # also runs against a package without it


def _copy(tiny_bundle, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bundle, folder)
    return folder


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict, sealed: bool = True) -> None:
    text = json.dumps(seal(manifest) if sealed else manifest)
    (folder / "manifest.json").write_text(text.replace('"HUGE"', "1e400"))  # a number Python reads as inf


def _set(path: str, value):
    """A change of the manifest value at a dotted path (``None`` as value writes JSON null)."""
    def change(manifest):
        *parents, last = path.split(".")
        target = manifest
        for key in parents:
            target = target[key]
        target[last] = value
    return change


def _delete(path: str):
    def change(manifest):
        *parents, last = path.split(".")
        target = manifest
        for key in parents:
            target = target[key]
        del target[last]
    return change


MANIFEST_CHANGES = {
    "config-list": _set("config", [1, 2]), "config-null": _set("config", None), "config-missing": _delete("config"),
    "config-string-size": _set("config.tile_size", "512"), "config-float-size": _set("config.tile_size", 64.5),
    "config-huge-size": _set("config.tile_size", 10**12), "config-sigma-huge": _set("config.smoothing_sigma", 1e300),
    "config-layers-null": _set("config.layers", None), "config-layers-string": _set("config.layers", "abc"),
    "config-backbone-null": _set("config.backbone", None), "config-backbone-int": _set("config.backbone", 7),
    "config-unknown-key": _set("config.evil", 1), "config-kwargs-list": _set("config.model_kwargs", [1]),
    # timm.create_model(**model_kwargs) from a stranger: never a file to read, never sizes that break it
    "config-kwargs-checkpoint": _set("config.model_kwargs.checkpoint_path", "evil.pth"),
    "config-kwargs-pretrained": _set("config.model_kwargs.pretrained", True),
    "config-kwargs-heads-negative": _set("config.model_kwargs.num_heads", -2),
    "config-kwargs-heads-mismatch": _set("config.model_kwargs.num_heads", 3),
    "calibration-list": _set("calibration", []), "calibration-missing": _delete("calibration"),
    "calibration-threshold-null": _set("calibration.image_threshold", None),
    "calibration-threshold-string": _set("calibration.image_threshold", "1.5"),
    "calibration-pixel-huge": _set("calibration.pixel_threshold", "HUGE"),
    "calibration-level-zero": _set("calibration.clean_level", 0.0),
    "calibration-level-missing": _delete("calibration.clean_level"),
    "calibration-rate": _set("calibration.false_alarm_rate", 2.0),
    "calibration-scores-null": _set("calibration.image_scores", [1.0, None]),
    "calibration-quantiles-list": _set("calibration.pixel_quantiles", [1.0]),
    "calibration-unknown-key": _set("calibration.evil", 1), "calibration-n-scans": _set("calibration.n_scans", -3),
    "backbone-null": _set("backbone", None), "backbone-list": _set("backbone", ["x"]),
    "backbone-digest-null": _set("backbone.state_dict_sha256", None), "fit-list": _set("fit", [1]),
    "arrays-list": _set("arrays", []), "array-entry-null": _set("arrays.memory_bank", None),
    "array-shape-string": _set("arrays.memory_bank.shape", "big"),
    "array-shape-negative": _set("arrays.memory_bank.shape", [-1, 16]),
    "array-dtype-object": _set("arrays.memory_bank.dtype", "object"),
    "array-dtype-nonsense": _set("arrays.memory_bank.dtype", "float77"),
    "array-file-outside": _set("arrays.memory_bank.file", "../memory_bank.npy"),
    "array-file-int": _set("arrays.memory_bank.file", 5), "array-sha-null": _set("arrays.memory_bank.sha256", None),
    "array-shape-absurd": _set("arrays.memory_bank.shape", [10**12, 16]),
    "array-missing": _delete("arrays.memory_bank"),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_CHANGES))
def test_malformed_manifest_refused_in_one_line(name, tiny_bundle, tmp_path):
    folder = _copy(tiny_bundle, tmp_path)
    manifest = _manifest(folder)
    MANIFEST_CHANGES[name](manifest)
    _write_manifest(folder, manifest)  # re-sealed: the checks behind the checksum
    with pytest.raises(InputError) as info:  # BundleError, or BackboneError for sizes timm refuses
        Detector.load(folder, device="cpu")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_threshold_in_json_refused(literal, tiny_bundle, tmp_path):
    folder = _copy(tiny_bundle, tmp_path)
    text = (folder / "manifest.json").read_text()
    value = _manifest(folder)["calibration"]["image_threshold"]
    (folder / "manifest.json").write_text(text.replace(f'"image_threshold": {value!r}', f'"image_threshold": {literal}'))
    with pytest.raises(BundleError):
        Detector.load(folder, device="cpu")


def test_a_threshold_edited_by_hand_is_detected(tiny_bundle, tmp_path, demo_data, capfd):
    folder = _copy(tiny_bundle, tmp_path)
    manifest = _manifest(folder)
    manifest["calibration"]["image_threshold"] *= 10
    _write_manifest(folder, manifest, sealed=False)
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(folder)]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "changed after it was saved" in err and "calibrate" in err
    assert not (tmp_path / "o.png").exists()


def _bank(tiny_bundle) -> np.ndarray:
    return np.load(tiny_bundle / "memory_bank.npy")


ARRAY_CHANGES = {
    "bank-empty": lambda b: ("memory_bank", np.zeros((0, b.shape[1]), np.float32)),
    "bank-nan": lambda b: ("memory_bank", np.where(np.arange(b.size).reshape(b.shape) == 3, NAN, b).astype(np.float32)),
    "bank-inf": lambda b: ("memory_bank", np.full_like(b, np.inf)),
    "bank-wider": lambda b: ("memory_bank", np.zeros((b.shape[0], b.shape[1] + 1), np.float32)),
    "bank-1d": lambda b: ("memory_bank", b.ravel()),
    "bank-int": lambda b: ("memory_bank", b.astype(np.int32)),
    "bank-bool": lambda b: ("memory_bank", b > 0),
    "pca-mean-short": lambda b: ("pca_mean", np.zeros(3, np.float32)),
    "pca-components-3d": lambda b: ("pca_components", np.zeros((2, 2, 2), np.float32)),
    "pca-components-nan": lambda b: ("pca_components", np.full((b.shape[1], 32), NAN, np.float32)),
    "pca-ratio-long": lambda b: ("pca_explained_variance_ratio", np.zeros(99, np.float32)),
}


@pytest.mark.parametrize("name", sorted(ARRAY_CHANGES))
def test_arrays_that_do_not_fit_are_refused_even_with_matching_checksums(name, tiny_bundle, tmp_path):
    folder = _copy(tiny_bundle, tmp_path)
    replace_bundle_array(folder, *ARRAY_CHANGES[name](_bank(tiny_bundle)))
    with pytest.raises(BundleError) as info:
        Detector.load(folder, device="cpu")
    assert "\n" not in str(info.value)


def _npy_with_header(shape, dtype="<f4", payload=b"\0" * 64, version=b"\x01\x00") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(header).to_bytes(2, "little") + header + payload


@pytest.mark.parametrize("shape", [(10**12, 16), (2**62, 2**62), (10**6, 10**6, 10**6)])
def test_npy_header_declaring_an_absurd_size_is_refused_before_allocation(shape, tiny_bundle, tmp_path):
    """The file, its manifest entry and the seal agree, so only the size check stands in the way."""
    folder = _copy(tiny_bundle, tmp_path)
    data = _npy_with_header(shape)
    (folder / "memory_bank.npy").write_bytes(data)
    manifest = _manifest(folder)
    manifest["arrays"]["memory_bank"].update(shape=list(shape), dtype="float32",
                                             sha256=hashlib.sha256(data).hexdigest())
    _write_manifest(folder, manifest)
    with pytest.raises(BundleError, match="bytes"):
        load_bundle(folder)


@pytest.mark.parametrize("data", [
    _npy_with_header((4,), payload=b"\0" * 16, version=b"\x03\x00"),
    _npy_with_header((4,), dtype="|O", payload=b"\0" * 32),
    b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}\n" + b"\0" * 16,
    b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 200,
])
def test_hostile_npy_headers_refused(data, tiny_bundle, tmp_path):
    folder = _copy(tiny_bundle, tmp_path)
    (folder / "pca_mean.npy").write_bytes(data)
    manifest = _manifest(folder)
    manifest["arrays"]["pca_mean"].update(shape=[4], dtype="float32", sha256=hashlib.sha256(data).hexdigest())
    _write_manifest(folder, manifest)
    with pytest.raises(BundleError):
        load_bundle(folder)


def test_cli_one_line_for_a_malformed_manifest(tiny_bundle, tmp_path, demo_data, capfd):
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    for name in ("config-list", "calibration-list", "backbone-null", "config-layers-null", "arrays-list"):
        folder = _copy(tiny_bundle, tmp_path / name)
        manifest = _manifest(folder)
        MANIFEST_CHANGES[name](manifest)
        _write_manifest(folder, manifest)
        out = tmp_path / name / "o.png"
        assert main(["detect", "--input", str(scan), "--output", str(out), "--model", str(folder)]) == 2, name
        err = capfd.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "unexpected" not in err, err
        assert not out.exists()


def test_report_never_holds_nan_or_infinity(tiny_bundle, tmp_path, demo_data, monkeypatch):
    """Whatever a score turns out to be, the report stays strict JSON (NaN and Infinity are not JSON)."""
    from rtg_anomaly.pipeline import detector as detector_module

    real = detector_module.Detector.score

    def nan_score(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        result.score, result.image_threshold = NAN, math.inf
        return result

    monkeypatch.setattr(detector_module.Detector, "score", nan_score)
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    report = tmp_path / "r.json"
    main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
          "--report", str(report)])

    def refuse(name):
        raise AssertionError(f"report holds {name}")

    payload = json.loads(report.read_text(), parse_constant=refuse)
    assert payload["images"][0]["score"] is None
