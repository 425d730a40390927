"""Leave-one-scan-out calibration: bank rows know their source scan, PatchCore scores without a scan's own
rows, and a fit asked to (config.calibration "leave_one_out"; the default holds scans out) calibrates on
every clean scan that way without changing the model it saves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rtg_anomaly.pipeline.fitting as fitting
from rtg_anomaly import Detector
from rtg_anomaly.cli import main
from rtg_anomaly.config import CALIBRATION_MODES, ConfigError, DetectorConfig
from rtg_anomaly.methods.memory_bank import StreamingCoreset
from rtg_anomaly.methods import FitPlan, create_method
from tests.conftest import TINY_CLI_FLAGS, tiny_config


def _scan_features(seed: int, n: int = 40, dim: int = 6) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(seed, 1.0, (n, dim)).astype(np.float32))


@pytest.mark.parametrize("max_size", [10_000, 7])
def test_every_bank_row_names_the_scan_it_came_from(max_size):
    """With or without the final greedy pass, row i of the bank is a row of the scan bank_sources_[i]."""
    builder = StreamingCoreset(0.5, seed=3)
    scans = [_scan_features(seed) for seed in range(4)]
    for features in scans:
        builder.add(features)
    bank = builder.finish(max_size)
    sources = builder.bank_sources_
    assert sources.shape == (bank.shape[0],) and bank.shape[0] == min(max_size, 4 * 20)
    for row, source in zip(bank, sources):
        assert (scans[source] == row).all(1).any()
    if max_size >= 80:
        assert np.array_equal(sources, np.repeat(np.arange(4), 20))


def _fitted_patchcore(n_scans: int = 3):
    config = DetectorConfig(pca_dim=4, coreset_ratio=1.0)  # every row kept: a scan's rows are all in the bank
    method = create_method(config)
    method.begin(FitPlan(training_views=n_scans, all_views=n_scans))
    scans = [_scan_features(seed) for seed in range(n_scans)]
    for features in scans:
        method.learn(features[None, :, None, :].expand(1, 40, 1, 6).contiguous(), torch.ones(1, 40, 1, dtype=torch.bool))
    method.finish(torch.device("cpu"))
    return method, scans


def test_patchcore_leave_out_scores_without_the_scans_own_rows_and_restores_the_bank():
    method, scans = _fitted_patchcore()
    full = method.memory_bank_.copy()
    query = scans[1][:5][None, :, None, :]
    valid = torch.ones(1, 5, 1, dtype=torch.bool)
    assert float(method.score(query, valid).max()) < 1e-3  # its own rows are in the bank
    with method.leave_out(range(1, 2)):
        assert method.memory_bank_.shape[0] == full.shape[0] - 40
        left_out = method.score(query, valid)
    expected = torch.cdist(method.pca_.transform(query.reshape(-1, 6)),
                           torch.from_numpy(full[method._bank_sources != 1])).min(1).values
    np.testing.assert_allclose(left_out.reshape(-1).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    assert float(left_out.min()) > 0.5
    np.testing.assert_array_equal(method.memory_bank_, full)
    assert float(method.score(query, valid).max()) < 1e-3  # restored: the next scan meets the whole bank


def test_patchcore_leave_out_refuses_an_empty_bank_and_a_loaded_bank():
    method, _ = _fitted_patchcore(n_scans=1)
    with pytest.raises(RuntimeError, match="empty"):
        with method.leave_out(range(0, 1)):
            pass
    loaded = type(method).from_arrays(method.config, method.to_arrays(), 6)
    with pytest.raises(RuntimeError, match="fitted in this process"):
        with loaded.leave_out(range(0, 1)):
            pass


def test_a_bank_rebuilt_from_arrays_leaves_out_like_the_fitted_one_once_given_its_sources():
    """What a Ray worker does: the driver's arrays plus the rows' sources give the same left-out scores."""
    method, scans = _fitted_patchcore()
    rebuilt = type(method).from_arrays(method.config, method.to_arrays(), 6)
    assert rebuilt.bank_sources is None
    with pytest.raises(ValueError, match="integers"):
        rebuilt.use_bank_sources(method.bank_sources[:-1])
    with pytest.raises(ValueError, match="integers"):
        rebuilt.use_bank_sources(method.bank_sources.astype(np.float32))
    rebuilt.use_bank_sources(method.bank_sources)
    query = scans[2][:5][None, :, None, :]
    valid = torch.ones(1, 5, 1, dtype=torch.bool)
    with method.leave_out(range(2, 3)):
        expected = method.score(query, valid)
    with rebuilt.leave_out(range(2, 3)):
        got = rebuilt.score(query, valid)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    assert float(got.min()) > 0.5


def test_calibration_mode_is_checked():
    assert DetectorConfig().calibration == "holdout" and "leave_one_out" in CALIBRATION_MODES
    with pytest.raises(ConfigError, match="calibration"):
        DetectorConfig(calibration="bootstrap")


LOO = {"calibration": "leave_one_out"}  # opt-in: the default calibration holds scans out


@pytest.fixture(scope="module")
def clean_paths(demo_data):
    return sorted((demo_data / "train" / "good").iterdir())


def test_leave_one_out_fit_scores_every_clean_scan_against_the_others(clean_paths):
    detector = Detector(tiny_config(**LOO), device="cpu").fit(clean_paths)
    info = detector.fit_info_
    assert info["calibration"] == "leave_one_out"
    assert info["n_train_scans"] == info["n_calibration_scans"] == len(clean_paths)
    # Without its own rows, a scan's nearest clean patches are farther: never a lower score, a higher one here.
    expected = []
    for j, path in enumerate(clean_paths):
        with detector.method_.leave_out(range(j, j + 1)):
            expected.append(detector._image_score(detector._raw_scores(detector.load_scan(path))))
    raw = np.array(expected)
    assert raw.min() > 0
    calibration = detector.calibration_
    assert calibration.clean_level == pytest.approx(float(np.median(raw)))
    np.testing.assert_allclose(calibration.image_scores, raw / np.median(raw), rtol=1e-6)
    whole_bank = np.array([detector._image_score(detector._raw_scores(detector.load_scan(p))) for p in clean_paths])
    assert (raw >= whole_bank - 1e-6).all() and (raw > whole_bank * 1.01).all()


def test_leave_one_out_saves_the_model_a_fit_without_calibration_would(clean_paths, tmp_path):
    """The calibration pass leaves the bank and PCA as learned from all the scans, byte for byte."""
    loo = Detector(tiny_config(**LOO), device="cpu").fit(clean_paths)
    plain = Detector(tiny_config(calibration="holdout", holdout_fraction=0.0), device="cpu").fit(clean_paths)
    for name, array in plain.method_.to_arrays().items():
        np.testing.assert_array_equal(loo.method_.to_arrays()[name], array, err_msg=name)
    again = Detector(tiny_config(**LOO), device="cpu").fit(clean_paths)
    assert again.calibration_ == loo.calibration_  # deterministic


def test_holdout_calibration_is_still_there_and_sizes_its_set_as_before(clean_paths):
    detector = Detector(tiny_config(calibration="holdout"), device="cpu").fit(clean_paths)
    info = detector.fit_info_
    assert info["calibration"] == "holdout"
    assert info["n_train_scans"] + info["n_calibration_scans"] == len(clean_paths) and info["n_calibration_scans"] >= 1


def test_methods_that_cannot_leave_a_scan_out_hold_scans_out(clean_paths):
    detector = Detector(tiny_config(method="padim", **LOO), device="cpu").fit(clean_paths)
    assert detector.fit_info_["calibration"] == "holdout"


def test_leave_one_out_scores_a_seeded_sample_of_at_most_the_cap(clean_paths, monkeypatch):
    monkeypatch.setattr(fitting, "LEAVE_ONE_OUT_MAX_SCANS", 3)
    first = Detector(tiny_config(**LOO), device="cpu").fit(clean_paths)
    second = Detector(tiny_config(**LOO), device="cpu").fit(clean_paths)
    assert first.fit_info_["n_calibration_scans"] == 3 and first.fit_info_["n_train_scans"] == len(clean_paths)
    assert first.calibration_ == second.calibration_


def test_one_clean_scan_calibrates_on_itself_with_a_warning(clean_paths):
    detector = Detector(tiny_config(**LOO), device="cpu").fit(clean_paths[:1])
    assert detector.fit_info_["calibration"] == "training"
    assert any("fewer than two clean scans" in w for w in detector.calibration_.warnings)


def test_cli_calibration_flag_and_the_holdout_default(demo_data, tmp_path, capsys):
    clean = str(demo_data / "train" / "good")
    for name, flags in (("holdout", ["--calibration", "holdout"]), ("fraction", ["--holdout-fraction", "0.4"]),
                        ("loo", ["--calibration", "leave-one-out"])):
        assert main(["fit", "--clean-dir", clean, "--model", str(tmp_path / name), *TINY_CLI_FLAGS, *flags]) == 0
    out = capsys.readouterr().out
    fit = {name: json.loads((tmp_path / name / "manifest.json").read_text())["fit"]
           for name in ("holdout", "fraction", "loo")}
    assert fit["holdout"]["calibration"] == fit["fraction"]["calibration"] == "holdout"
    assert fit["fraction"]["n_calibration_scans"] == 2  # 0.4 of 5
    assert fit["loo"]["calibration"] == "leave_one_out" and "held out to calibrate" in out
    assert f"{fit['loo']['n_calibration_scans']} of them scored leave-one-scan-out to calibrate" in out
    assert main(["fit", "--clean-dir", clean, "--model", str(tmp_path / "bad"), *TINY_CLI_FLAGS,
                 "--calibration", "jackknife"]) == 2
    assert not (tmp_path / "bad").exists()
