"""``patch_or_global``: the top-patch score and the whole-scan descriptor distance fused on the held-out clean
scans' scale, and ``image_score="auto"``, which picks it for scans fitted whole into one tile."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm

from rtg_anomaly import Detector
from rtg_anomaly.bundle import BundleError, seal
from rtg_anomaly.config import FUSION_MIN_CALIBRATION_SCANS
from rtg_anomaly.errors import InputError
from rtg_anomaly.methods import GlobalDescriptor
from tests.conftest import replace_bundle_array, tiny_config, write_crops


def test_fused_score_is_the_surprisal_of_the_less_likely_part():
    method = GlobalDescriptor()
    method.fit_fusion(np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.2, 0.3]))
    np.testing.assert_allclose(method.fusion_, [[2.0, 1.0], [0.2, 0.1]])
    # patch score 4 is 2 spreads above its mean, distance 0.25 is 0.5: the patch score decides
    assert method.fused(4.0, 0.25) == pytest.approx(-np.log(norm.sf(2.0)), rel=1e-9)
    assert method.fused(2.0, 0.6) == pytest.approx(-np.log(norm.sf(4.0)), rel=1e-9)
    # positive everywhere (a calibrated unit divides by the clean median) and growing with either part
    values = [method.fused(patch, 0.0) for patch in (-50.0, 0.0, 2.0, 3.0, 40.0)]
    assert all(v > 0 for v in values) and values == sorted(values) and np.isfinite(values[-1])
    assert method.fused(2.0, 0.3) > method.fused(2.0, 0.2)


def test_fusion_spread_has_a_floor_and_needs_two_finite_values():
    method = GlobalDescriptor()
    method.fit_fusion(np.array([1.0, 1.0]), np.array([0.5, 0.5]))
    assert np.all(method.fusion_[:, 1] > 0)
    assert np.isfinite(method.fused(1.1, 0.5))
    with pytest.raises(ValueError, match="two or more"):
        method.fit_fusion(np.array([1.0]), np.array([0.5]))
    with pytest.raises(ValueError, match="finite"):
        method.fit_fusion(np.array([1.0, np.nan]), np.array([0.5, 0.4]))
    with pytest.raises(RuntimeError, match="fit_fusion"):
        GlobalDescriptor().fused(1.0, 0.5)
    # a degenerate spread cannot overflow the score to infinity
    method.fusion_ = np.array([[0.0, 1e-300], [0.0, 1.0]])
    assert np.isfinite(method.fused(3e38, 0.0)) and method.fused(3e38, 0.0) == method.fused(1e30, 0.0)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    return {"train": write_crops(root / "train", 40), "clean": write_crops(root / "clean", 4, seed=1),
            "anomalous": write_crops(root / "anomalous", 4, seed=2, blob=True)}


@pytest.fixture(scope="module")
def fused_detector(crops):
    return Detector(tiny_config(), device="cpu").fit(crops["train"])


def test_auto_fuses_on_crops_fitted_whole_into_a_tile(fused_detector, crops):
    detector = fused_detector
    assert detector.config.image_score == "patch_or_global"
    assert detector.fit_info_["scale"]["fitted_to_scans"]
    assert detector.fit_info_["image_score"]["rule"] == "patch_or_global"
    assert detector.fit_info_["image_score"]["why"].startswith("auto: scans fitted whole")
    calibration = detector.calibration_
    assert calibration.n_scans == FUSION_MIN_CALIBRATION_SCANS  # a fifth of 40 held out
    assert calibration.image_level is not None and np.median(calibration.image_scores) == pytest.approx(1.0)
    # the score is the fusion of the two raw parts, in the fused clean scans' unit
    scan = detector.load_scan(crops["anomalous"][0])
    raw = detector.raw_scores(scan)
    top = np.sort(raw.patch_scores)[-detector.config.top_patches:].mean()
    expected = detector.global_.fused(float(top), detector.global_.distance(raw.descriptor))
    assert detector.score(scan).score == pytest.approx(expected / calibration.image_level, rel=1e-6)
    # crops with a bright square stand out from clean ones
    clean = [detector.score(p).score for p in crops["clean"]]
    anomalous = [detector.score(p).score for p in crops["anomalous"]]
    assert min(anomalous) > max(clean)


def test_fused_fit_is_deterministic_and_round_trips(fused_detector, crops, tmp_path):
    again = Detector(tiny_config(), device="cpu").fit(crops["train"])
    np.testing.assert_array_equal(again.global_.fusion_, fused_detector.global_.fusion_)
    first = fused_detector.save(tmp_path / "a")
    second = again.save(tmp_path / "b")
    assert (first / "descriptor_fusion.npy").read_bytes() == (second / "descriptor_fusion.npy").read_bytes()
    loaded = Detector.load(first, device="cpu")
    assert loaded.config.image_score == "patch_or_global"
    np.testing.assert_array_equal(loaded.global_.fusion_, fused_detector.global_.fusion_)
    for path in crops["anomalous"] + crops["clean"]:
        assert loaded.score(path).score == fused_detector.score(path).score
    # a recalibration keeps both units and the fusion
    recalibrated = loaded.calibrate(crops["clean"], false_alarm_rate=0.5)
    assert recalibrated.image_level == fused_detector.calibration_.image_level
    np.testing.assert_array_equal(loaded.global_.fusion_, fused_detector.global_.fusion_)


@pytest.mark.parametrize("changes, n_train, why", [
    ({}, 20, "held-out clean scans, under the 8"),
    ({"method": "padim"}, 40, "patchcore only"),
    ({"scale_to_scans": False}, 40, "larger than half a tile"),
])
def test_auto_keeps_the_top_patches_where_fusion_does_not_apply(crops, changes, n_train, why):
    detector = Detector(tiny_config(**changes), device="cpu").fit(crops["train"][:n_train])
    assert detector.config.image_score == "patch_top_mean" and detector.global_ is None
    assert why in detector.fit_info_["image_score"]["why"]


def test_auto_keeps_the_top_patches_on_tiled_scans(tiny_detector):
    assert tiny_detector.config.image_score == "patch_top_mean"
    assert tiny_detector.fit_info_["image_score"]["rule"] == "patch_top_mean"


def test_a_configured_rule_is_kept(crops):
    detector = Detector(tiny_config(image_score="global"), device="cpu").fit(crops["train"][:10])
    assert detector.config.image_score == "global"
    assert detector.fit_info_["image_score"] == {"rule": "global", "why": "configured"}
    assert detector.global_.fusion_ is None


def test_patch_or_global_needs_held_out_scans(crops):
    with pytest.raises(InputError, match="held-out"):
        Detector(tiny_config(image_score="patch_or_global", holdout_fraction=0.0), device="cpu").fit(crops["train"])


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("fusion", [np.array([[1.0, -1.0], [0.1, 0.1]]), np.full((2, 2), np.nan),
                                    np.ones((3, 2)), np.ones(4), np.array([[1.0, 1e-9], [0.1, 0.1]])])
def test_a_tampered_fusion_is_refused(fused_detector, tmp_path, fusion):
    folder = fused_detector.save(tmp_path / "model")
    replace_bundle_array(folder, "descriptor_fusion", fusion)
    with pytest.raises(BundleError, match="descriptor_fusion") as info:
        Detector.load(folder, device="cpu")
    assert "\n" not in str(info.value)


def test_a_fused_bundle_without_its_fusion_is_refused(fused_detector, tmp_path):
    folder = fused_detector.save(tmp_path / "model")
    manifest = _manifest(folder)
    del manifest["arrays"]["descriptor_fusion"]
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(BundleError, match="descriptor_fusion"):
        Detector.load(folder, device="cpu")


def test_an_unresolved_auto_rule_is_refused_and_an_old_bundle_reads_as_top_patches(tiny_bundle, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_bundle, folder)
    manifest = _manifest(folder)
    manifest["config"]["image_score"] = "auto"
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(BundleError, match="never resolved"):
        Detector.load(folder, device="cpu")
    del manifest["config"]["image_score"]  # a bundle from before the rule was configurable
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))
    assert Detector.load(folder, device="cpu").config.image_score == "patch_top_mean"


def test_a_scan_says_which_part_set_its_score(fused_detector, crops, tiny_detector, demo_data):
    method = GlobalDescriptor()
    method.fit_fusion(np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.2, 0.3]))
    assert method.fused_with_part(4.0, 0.25) == (method.fused(4.0, 0.25), "patches")
    assert method.fused_with_part(2.0, 0.6)[1] == "whole scan"
    for path in crops["anomalous"] + crops["clean"]:
        result = fused_detector.score(path)
        raw = fused_detector.raw_scores(path)
        top = float(np.sort(raw.patch_scores)[-fused_detector.config.top_patches:].mean())
        assert result.evidence == fused_detector.global_.fused_with_part(
            top, fused_detector.global_.distance(raw.descriptor))[1]
        flagged_whole = result.anomalous and result.evidence == "whole scan"
        assert flagged_whole == any("flagged as a whole" in w for w in result.warnings)
    # a crop with no texture at all differs as a whole, and the operator is told the map may stay quiet
    flat = np.clip(120 + np.random.default_rng(5).normal(0, 6, (24, 24)), 0, 255).astype(np.uint8)
    result = fused_detector.score(flat)
    assert result.anomalous and result.evidence == "whole scan"
    assert any(w.startswith("flagged as a whole") for w in result.warnings)
    # the other rules say nothing
    assert tiny_detector.score(sorted((demo_data / "test" / "anomalous").iterdir())[0]).evidence is None


def test_the_report_carries_the_evidence(fused_detector, crops, tmp_path):
    from rtg_anomaly.cli import main

    model = fused_detector.save(tmp_path / "model")
    report = tmp_path / "report.json"
    assert main(["detect", "--model", str(model), "--input", str(crops["anomalous"][0].parent),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--report", str(report), "--quiet"]) == 0
    images = json.loads(report.read_text())["images"]
    assert len(images) == len(crops["anomalous"])
    assert all(entry["evidence"] in ("patches", "whole scan") for entry in images)


def test_the_fit_summary_says_how_scans_are_judged(crops, tmp_path, capsys):
    from rtg_anomaly.cli import main
    from tests.conftest import TINY_CLI_FLAGS

    flags = [flag for flag in TINY_CLI_FLAGS if flag != "--quiet"]
    assert main(["fit", "--model", str(tmp_path / "model"), *flags, "--device", "cpu",
                 "--clean-dir", str(crops["train"][0].parent)]) == 0
    assert "judged by patches and as a whole (patch_or_global)" in capsys.readouterr().out
