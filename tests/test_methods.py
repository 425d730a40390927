"""Detection methods: the table, PaDiM's statistics, the centroid, and fit -> save -> load -> detect of each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtg_anomaly import Detector
from rtg_anomaly.bundle import BundleError, load_bundle, seal
from rtg_anomaly.cli import main
from rtg_anomaly.config import ConfigError, DetectorConfig
from rtg_anomaly.methods import METHODS, FitPlan, create_method
from rtg_anomaly.methods.centroid import tile_embeddings
from rtg_anomaly.methods.padim import oas_shrink
from tests.conftest import TINY_CLI_FLAGS, tiny_config

NEW_METHODS = ["padim", "centroid", "svdd", "reconstruction"]


def test_table_names_every_method_and_unknown_names_are_refused():
    assert list(METHODS) == ["patchcore", "padim", "centroid", "svdd", "reconstruction"]
    for name, cls in METHODS.items():
        assert cls.name == name
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of: patchcore, padim, centroid, svdd, reconstruction"):
        DetectorConfig(method="nope")


def test_oas_shrinkage_matches_scikit_learn():
    from sklearn.covariance import oas

    rng = np.random.default_rng(0)
    samples = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    expected, _ = oas(samples)
    empirical = np.cov(samples, rowvar=False, bias=True)
    ours = oas_shrink(torch.from_numpy(empirical)[None], torch.tensor([40.0]))[0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


def _grid_features(rng, n_tiles, shift=None):
    """(T, 2, 2, 4) features: cell (i, j) draws around its own mean; ``shift`` moves cell (0, 0) of tile 0."""
    means = np.arange(4 * 4, dtype=np.float32).reshape(2, 2, 4)
    features = means + rng.normal(scale=0.1, size=(n_tiles, 2, 2, 4)).astype(np.float32)
    if shift is not None:
        features[0, 0, 0] += shift
    return torch.from_numpy(features)


def test_padim_learns_one_gaussian_per_cell_and_flags_a_displaced_patch():
    rng = np.random.default_rng(1)
    method = create_method(tiny_config(method="padim", padim_features=4))
    method.begin(FitPlan(training_views=3, all_views=3))
    for _ in range(3):
        method.learn(_grid_features(rng, 20), torch.ones(20, 2, 2, dtype=torch.bool))
    method.finish(torch.device("cpu"))
    assert method.mean_.shape == (4, 4) and method.precision_.shape == (4, 4, 4)
    np.testing.assert_allclose(method.mean_.reshape(2, 2, 4), np.arange(16).reshape(2, 2, 4), atol=0.05)
    # A value from cell (1, 1) placed in cell (0, 0) is normal somewhere, anomalous *there*.
    probe = _grid_features(rng, 2, shift=12.0)
    scores = method.score(probe, torch.ones(2, 2, 2, dtype=torch.bool))
    assert scores.shape == (2, 2, 2) and scores.dtype == torch.float32
    assert scores[0, 0, 0] > 10 * scores[1].max()


def test_padim_padding_never_enters_the_statistics():
    rng = np.random.default_rng(2)
    method = create_method(tiny_config(method="padim", padim_features=4))
    method.begin(FitPlan(training_views=1, all_views=1))
    features = _grid_features(rng, 30)
    features[:, 1, 1] = 1e6  # what a padded cell might see
    valid = torch.ones(30, 2, 2, dtype=torch.bool)
    valid[:, 1, 1] = False
    method.learn(features, valid)
    method.finish(torch.device("cpu"))
    assert np.abs(method.mean_).max() < 100  # the padded cell took the pooled statistics, not 1e6
    assert np.isfinite(method.precision_).all()


def test_centroid_scores_a_tile_by_its_direction_from_the_clean_mean():
    method = create_method(tiny_config(method="centroid"))
    method.begin(FitPlan(training_views=1, all_views=1))
    clean = torch.zeros(4, 2, 2, 3)
    clean[..., 0] = 1.0
    method.learn(clean, torch.ones(4, 2, 2, dtype=torch.bool))
    method.finish(torch.device("cpu"))
    np.testing.assert_allclose(method.centroid_, [1.0, 0.0, 0.0], atol=1e-7)
    probe = torch.zeros(2, 2, 2, 3)
    probe[0, ..., 0] = 5.0  # same direction: distance 0
    probe[1, ..., 1] = 1.0  # orthogonal: distance 1
    scores = method.score(probe, torch.ones(2, 2, 2, dtype=torch.bool))
    np.testing.assert_allclose(scores[0].numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(scores[1].numpy(), 1.0, atol=1e-6)


def test_tile_embedding_ignores_patches_outside_the_scan():
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0, 0] = torch.tensor([1.0, 0.0])
    features[0, 1, 1] = torch.tensor([0.0, 100.0])
    valid = torch.tensor([[[True, False], [False, False]]])
    np.testing.assert_allclose(tile_embeddings(features, valid).numpy(), [[1.0, 0.0]], atol=1e-7)


@pytest.fixture(scope="module", params=NEW_METHODS)
def method_detector(request, demo_data):
    paths = sorted((demo_data / "train" / "good").iterdir())
    return Detector(tiny_config(method=request.param, padim_features=8, svdd_epochs=3,
                                recon_epochs=3, recon_dim=32), device="cpu").fit(paths)


def test_fit_save_load_detect_round_trip(method_detector, demo_data, tmp_path):
    folder = method_detector.save(tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["method"]["name"] == method_detector.config.method == manifest["config"]["method"]
    assert not any(name.startswith(("memory_bank", "pca_")) for name in manifest["arrays"])  # no PatchCore state
    loaded = Detector.load(folder, device="cpu")
    assert loaded.method_.name == method_detector.method_.name
    for scan in sorted((demo_data / "test" / "anomalous").iterdir()) + sorted((demo_data / "test" / "good").iterdir()):
        expected, result = method_detector.score(scan), loaded.score(scan)
        assert result.heatmap.shape == loaded.load_scan(scan).shape[:2]
        assert np.isfinite(result.heatmap).all() and np.isfinite(result.score)
        np.testing.assert_array_equal(result.heatmap, expected.heatmap)
        assert result.score == expected.score


def test_fit_is_deterministic(method_detector, demo_data, tmp_path):
    paths = sorted((demo_data / "train" / "good").iterdir())
    again = Detector(method_detector.config, device="cpu").fit(paths)
    _, first = load_bundle(method_detector.save(tmp_path / "a"))
    _, second = load_bundle(again.save(tmp_path / "b"))
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_bundle_whose_method_disagrees_with_its_config_is_refused(method_detector, tmp_path):
    folder = method_detector.save(tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["method"]["name"] = "patchcore"
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))  # re-sealed: reach the deeper check
    with pytest.raises(BundleError, match="invalid manifest"):
        Detector.load(folder, device="cpu")


def test_bundle_with_an_unknown_method_is_refused(method_detector, tmp_path):
    folder = method_detector.save(tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["method"]["name"] = manifest["config"]["method"] = "svm"
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))  # re-sealed: reach the deeper check
    with pytest.raises(BundleError, match="invalid manifest"):
        Detector.load(folder, device="cpu")


def test_padim_arrays_that_do_not_fit_are_refused(demo_data, tmp_path):
    paths = sorted((demo_data / "train" / "good").iterdir())
    detector = Detector(tiny_config(method="padim", padim_features=8), device="cpu").fit(paths)
    folder = detector.save(tmp_path / "model")
    # Consistent checksums, inconsistent shapes: a mean for another number of channels.
    detector.method_.mean_ = detector.method_.mean_[:, :4].copy()
    with pytest.raises(ValueError):
        type(detector.method_).from_arrays(detector.config, detector.method_.to_arrays(), 32)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["arrays"]["padim_precision"]
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))  # re-sealed: reach the deeper check
    with pytest.raises(BundleError, match="padim_precision"):
        Detector.load(folder, device="cpu")


@pytest.mark.parametrize("method", NEW_METHODS)
def test_cli_fits_and_detects_with_a_method(method, demo_data, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(model),
                 "--method", method, *TINY_CLI_FLAGS]) == 0
    assert f"{method}, " in capsys.readouterr().out
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    report = tmp_path / "report.json"
    # detect needs no method flag: the bundle names it.
    assert main(["detect", "--model", str(model), "--input", str(scan), "--output", str(tmp_path / "o.png"),
                 "--report", str(report), "--quiet"]) == 0
    assert (tmp_path / "o.png").is_file() and json.loads(report.read_text())["images"][0]["score"] > 0


def test_cli_unknown_method_is_one_line_listing_the_known_ones(demo_data, tmp_path, capsys):
    code = main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(tmp_path / "m"),
                 "--method", "nope", *TINY_CLI_FLAGS])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert "patchcore, padim, centroid, svdd, reconstruction" in err[0] and not (tmp_path / "m").exists()


def test_cli_threshold_rule_is_recorded_in_the_bundle_and_the_report(demo_data, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(model),
                 "--threshold-rule", "mean-std", "--std-multiple", "2.5", *TINY_CLI_FLAGS]) == 0
    calibration = json.loads((model / "manifest.json").read_text())["calibration"]
    assert calibration["threshold_rule"] == {"name": "mean_std", "std_multiple": 2.5}
    scores = np.array(calibration["image_scores"])
    assert calibration["image_threshold"] == pytest.approx(scores.mean() + 2.5 * scores.std(ddof=1))
    report = tmp_path / "report.json"
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    assert main(["detect", "--model", str(model), "--input", str(scan), "--output", str(tmp_path / "o.png"),
                 "--report", str(report), "--quiet"]) == 0
    payload = json.loads(report.read_text())
    assert payload["threshold_rule"]["name"] == "mean_std" and payload["method"] == "patchcore"
    # calibrate keeps the bundle's rule unless told otherwise
    capsys.readouterr()
    assert main(["calibrate", "--model", str(model), "--clean-dir", str(demo_data / "test" / "good")]) == 0
    assert "mean + 2.5 std" in capsys.readouterr().out
    assert main(["calibrate", "--model", str(model), "--clean-dir", str(demo_data / "test" / "good"),
                 "--threshold-rule", "percentile", "--clean-percentile", "50"]) == 0
    calibration = json.loads((model / "manifest.json").read_text())["calibration"]
    assert calibration["threshold_rule"] == {"name": "percentile", "clean_percentile": 50.0}


def test_cli_bad_threshold_rule_value_is_one_line_before_any_work(demo_data, tmp_path, capsys):
    code = main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(tmp_path / "m"),
                 "--threshold-rule", "percentile", "--clean-percentile", "250", *TINY_CLI_FLAGS])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "percentile" in err[0] and not (tmp_path / "m").exists()


# ---------------------------------------------------------------- Deep SVDD
def test_svdd_head_has_no_bias_and_the_centre_stays_off_zero(demo_data):
    from rtg_anomaly.methods.svdd import CENTRE_MIN

    paths = sorted((demo_data / "train" / "good").iterdir())
    detector = Detector(tiny_config(method="svdd", svdd_epochs=4), device="cpu").fit(paths)
    method = detector.method_
    assert set(method.to_arrays()) == {"svdd_input_mean", "svdd_input_scale", "svdd_first", "svdd_second",
                                       "svdd_centre"}  # weights only: no bias arrays exist to store
    assert (np.abs(method.centre_) >= CENTRE_MIN - 1e-7).all()
    losses = detector.fit_info_["loss_history"]["svdd"]
    assert len(losses) == 4 and losses[-1] < losses[0]  # training pulled clean patches to the centre
    assert detector.fit_info_["loss_history"]["rotation"] == []


def test_svdd_feature_cache_is_bounded():
    method = create_method(tiny_config(method="svdd", svdd_cache_rows=1000, svdd_epochs=1))
    method.begin(FitPlan(training_views=4, all_views=5))
    for _ in range(4):
        method.learn(torch.randn(30, 4, 4, 8), torch.ones(30, 4, 4, dtype=torch.bool))
    assert sum(rows.shape[0] for rows in method._cache) == 1000 and method._cache[0].dtype == torch.float16
    method.finish(torch.device("cpu"))
    assert method.centre_.shape == (128,)


def test_svdd_rotation_pretraining_sees_four_labelled_views(demo_data, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(model), "--method", "svdd",
                 "--pretrain", "rotation", "--epochs", "2", *TINY_CLI_FLAGS]) == 0
    out = capsys.readouterr().out
    curve = tmp_path / "model.loss.png"
    assert curve.is_file() and str(curve) in out
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["method"]["params"]["svdd_pretrain"] == "rotation"
    assert len(manifest["fit"]["loss_history"]["rotation"]) == 2
    assert sorted(p.name for p in model.iterdir()) == sorted(["manifest.json", *[f"{n}.npy" for n in manifest["arrays"]]])


def test_svdd_rotation_cache_labels_every_view():
    method = create_method(tiny_config(method="svdd", svdd_pretrain="rotation", svdd_epochs=1))
    assert method.auxiliary_views == ("rot90", "rot180", "rot270")
    method.begin(FitPlan(training_views=1, all_views=1))
    for view in ("upright", "rot90", "rot180", "rot270"):
        method.learn_auxiliary(view, torch.randn(3, 2, 2, 8), torch.ones(3, 2, 2, dtype=torch.bool))
    assert [label for _, label in method._rotation_cache] == [0, 1, 2, 3]


# ---------------------------------------------------------------- feature reconstruction
def _tiles(rng, n_tiles, size=4, dim=8):
    """(T, size, size, dim) features: a smooth pattern shared by every clean tile, plus a little noise."""
    grid = np.stack(np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij"), -1)
    pattern = np.concatenate([np.sin(grid * (k + 1)) for k in range(dim // 2)], -1).astype(np.float32)
    return torch.from_numpy(pattern + rng.normal(scale=0.05, size=(n_tiles, size, size, dim)).astype(np.float32))


def _fitted_reconstruction(rng, **changes):
    method = create_method(tiny_config(**{"method": "reconstruction", "recon_dim": 16, "recon_epochs": 30, **changes}))
    method.begin(FitPlan(training_views=4, all_views=4))
    for _ in range(4):
        method.learn(_tiles(rng, 8), torch.ones(8, 4, 4, dtype=torch.bool))
    method.finish(torch.device("cpu"))
    return method


def test_reconstruction_learns_clean_tiles_and_flags_a_foreign_patch():
    method = _fitted_reconstruction(np.random.default_rng(3))
    losses = method.loss_history_["reconstruction"]
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]
    probe = _tiles(np.random.default_rng(4), 2)
    probe[0, 1, 2] = -probe[0, 1, 2] * 3  # a patch unlike any clean one at any place
    scores = method.score(probe, torch.ones(2, 4, 4, dtype=torch.bool))
    assert scores.shape == (2, 4, 4) and scores.dtype == torch.float32
    others = torch.ones(2, 4, 4, dtype=torch.bool)
    others[0, 1, 2] = False
    assert scores[0, 1, 2] > 3 * scores[others].max()


def test_reconstruction_never_looks_at_patches_outside_the_scan():
    """Padding neither enters the cache's statistics nor the attention: changing it changes no valid score."""
    rng = np.random.default_rng(5)
    method = _fitted_reconstruction(rng)
    probe = _tiles(rng, 1)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, :, 3] = False
    before = method.score(probe, valid)
    probe[0, :, 3] = 1e4
    after = method.score(probe, valid)
    torch.testing.assert_close(after[valid], before[valid], rtol=1e-5, atol=1e-6)


def test_reconstruction_feature_cache_is_bounded_by_whole_tiles():
    method = create_method(tiny_config(method="reconstruction", recon_cache_rows=1000, recon_epochs=1))
    method.begin(FitPlan(training_views=10, all_views=10))  # 100 rows per view: 6 tiles of 16 patches
    for view in range(10):
        method.learn(torch.randn(30, 4, 4, 8), torch.ones(30, 4, 4, dtype=torch.bool))
    assert sum(t.shape[0] for t, _ in method._cache.parts) == 60
    assert all(t.dtype == torch.float16 and t.shape[1:] == (4, 4, 8) for t, _ in method._cache.parts)


def test_reconstruction_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    first = _fitted_reconstruction(np.random.default_rng(6), recon_epochs=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = _fitted_reconstruction(np.random.default_rng(6), recon_epochs=3)
    for name, value in first.weights_.items():
        np.testing.assert_array_equal(value, second.weights_[name], err_msg=name)
    other = _fitted_reconstruction(np.random.default_rng(6), recon_epochs=3, seed=1)
    assert any(not np.array_equal(value, other.weights_[name]) for name, value in first.weights_.items())


def test_reconstruction_arrays_that_do_not_fit_the_architecture_are_refused():
    method = _fitted_reconstruction(np.random.default_rng(7), recon_epochs=1)
    arrays = method.to_arrays()
    assert all(name.startswith("recon_") for name in arrays) and "recon_head_weight" in arrays
    again = type(method).from_arrays(method.config, arrays, 8)
    probe = _tiles(np.random.default_rng(8), 2)
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    torch.testing.assert_close(again.score(probe, valid), method.score(probe, valid))
    with pytest.raises(ValueError, match="do not fit"):
        type(method).from_arrays(method.config.replace(recon_dim=32), arrays, 8)  # another width
    with pytest.raises(KeyError):
        type(method).from_arrays(method.config.replace(recon_layers=3), arrays, 8)  # a block it never stored
    broken = dict(arrays, recon_head_weight=np.full_like(arrays["recon_head_weight"], np.nan))
    with pytest.raises(ValueError):
        type(method).from_arrays(method.config, broken, 8)


def test_cli_reconstruction_writes_its_loss_curve_and_records_its_architecture(demo_data, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(model),
                 "--method", "reconstruction", "--target", "features", "--epochs", "2", *TINY_CLI_FLAGS]) == 0
    assert "reconstruction, feature rebuilder" in capsys.readouterr().out
    assert (tmp_path / "model.loss.png").is_file()
    manifest = json.loads((model / "manifest.json").read_text())
    params = manifest["method"]["params"]
    assert params["recon_target"] == "features" and params["recon_epochs"] == 2 and params["recon_layers"] == 2
    assert manifest["config"]["svdd_epochs"] == DetectorConfig().svdd_epochs  # --epochs went to the method fitted


def _fitted_patchcore(clean: torch.Tensor, **changes):
    method = create_method(tiny_config(method="patchcore", pca_dim=4, coreset_ratio=1.0, **changes))
    method.begin(FitPlan(training_views=clean.shape[0], all_views=clean.shape[0]))
    for view in clean:
        method.learn(view[None], torch.ones(1, *view.shape[:2], dtype=torch.bool))
    method.finish(torch.device("cpu"))
    return method


def test_patchcore_l2_patch_norm_scores_the_direction_of_a_feature_not_its_length():
    rng = np.random.default_rng(3)
    clean = torch.from_numpy(rng.normal(size=(3, 4, 4, 8)).astype(np.float32))
    # Clean patches again, each stretched by its own factor: only their lengths differ from the bank's.
    stretched = clean[:1] * torch.from_numpy(rng.uniform(0.3, 3.0, size=(1, 4, 4, 1)).astype(np.float32))
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    plain, cosine = _fitted_patchcore(clean), _fitted_patchcore(clean, patch_norm="l2")
    assert cosine.params()["patch_norm"] == "l2" and plain.params()["patch_norm"] == "none"
    assert float(cosine.score(stretched, valid).max()) < 1e-3
    assert float(plain.score(stretched, valid).max()) > 0.1
    # A patch pointing elsewhere is still far from the bank.
    turned = torch.roll(clean[:1], shifts=1, dims=-1)
    assert float(cosine.score(turned, valid).min()) > 0.05


def test_patch_norm_is_a_fit_flag_recorded_in_the_bundle(demo_data, tmp_path):
    model = tmp_path / "model"
    clean = str(demo_data / "train" / "good")
    assert main(["fit", "--clean-dir", clean, "--model", str(model), "--patch-norm", "l2", *TINY_CLI_FLAGS]) == 0
    assert json.loads((model / "manifest.json").read_text())["config"]["patch_norm"] == "l2"
    with pytest.raises(ConfigError, match="patch_norm"):
        DetectorConfig(patch_norm="l1")
