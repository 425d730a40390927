"""Tests for the PCA projection (fit in sklearn, applied in numpy and torch)."""
import numpy as np
import pytest
import torch

from rtg_anomaly.methods.pca import PCAProjection


def _features(n=400, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    # anisotropic data with a clear ordering of variances and a non-zero mean
    scales = np.linspace(5.0, 0.1, dim)
    return (rng.standard_normal((n, dim)) * scales + rng.uniform(-3, 3, dim)).astype(np.float32)


@pytest.mark.parametrize("n,dim,k", [(400, 24, 6), (500, 40, 10), (30, 24, 5)])  # full and randomized solvers
def test_fit_shapes_and_orthonormal(n, dim, k):
    features = _features(n, dim)
    pca = PCAProjection.fit(features, k, seed=0)
    assert pca.output_dim == k
    assert pca.mean.shape == (dim,) and pca.mean.dtype == np.float32
    assert pca.components.shape == (k, dim) and pca.components.dtype == np.float32
    assert pca.explained_variance_ratio.shape == (k,) and pca.explained_variance_ratio.dtype == np.float32
    assert np.allclose(pca.components @ pca.components.T, np.eye(k), atol=1e-4)
    assert np.allclose(pca.mean, features.mean(0), atol=1e-4)
    ratios = pca.explained_variance_ratio
    assert np.all(np.diff(ratios) <= 1e-6) and 0 < ratios.sum() <= 1.0 + 1e-5


def test_finds_the_dominant_directions():
    features = _features(2000, 12)
    pca = PCAProjection.fit(features, 3)
    # the data's variance is largest along the first axes, in order
    leading_axes = np.abs(pca.components).argmax(axis=1)
    assert leading_axes.tolist() == [0, 1, 2]
    projected = pca.transform_numpy(features)
    assert np.allclose(projected.mean(0), 0.0, atol=1e-3)
    variances = projected.var(0)
    assert np.all(np.diff(variances) < 0)


def test_numpy_and_torch_agree():
    features = _features()
    pca = PCAProjection.fit(features, 8)
    queries = _features(50, seed=1)
    expected = pca.transform_numpy(queries)
    assert expected.shape == (50, 8) and expected.dtype == np.float32
    for dtype in (torch.float32, torch.float64, torch.float16):
        out = pca.transform(torch.from_numpy(queries).to(dtype))
        assert out.dtype == torch.float32 and out.shape == (50, 8)
        tol = 5e-2 if dtype == torch.float16 else 1e-4
        assert np.allclose(out.numpy(), expected, atol=tol, rtol=tol)
    # the numpy path accepts float64 input
    assert np.allclose(pca.transform_numpy(queries.astype(np.float64)), expected, atol=1e-5)


def test_transform_matches_definition():
    pca = PCAProjection(np.array([1.0, 2.0, 3.0]), np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), np.array([0.6, 0.4]))
    x = np.array([[1.0, 2.0, 3.0], [2.0, 5.0, -1.0]])
    assert np.allclose(pca.transform_numpy(x), [[0.0, 0.0], [3.0, 1.0]])
    assert np.allclose(pca.transform(torch.tensor(x)).numpy(), [[0.0, 0.0], [3.0, 1.0]])


@pytest.mark.parametrize("k", [None, 24, 100])
def test_keep_everything_when_pca_dim_large(k):
    features = _features(300, 24)
    pca = PCAProjection.fit(features, k)
    assert pca.output_dim == 24
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-4)
    projected = pca.transform_numpy(features)
    reconstructed = projected @ pca.components + pca.mean
    assert np.allclose(reconstructed, features, atol=1e-3)
    # a full rotation preserves distances
    d_in = np.linalg.norm(features[:20, None] - features[None, :20], axis=-1)
    d_out = np.linalg.norm(projected[:20, None] - projected[None, :20], axis=-1)
    assert np.allclose(d_in, d_out, atol=1e-3)


def test_fewer_samples_than_dimensions():
    features = _features(10, 24)
    pca = PCAProjection.fit(features, 128)
    assert pca.output_dim == 10  # limited by min(n, D)
    assert np.allclose(pca.components @ pca.components.T, np.eye(10), atol=1e-4)


def test_deterministic_for_seed():
    features = _features(500, 40)
    a = PCAProjection.fit(features, 10, seed=3)  # randomized solver
    b = PCAProjection.fit(features, 10, seed=3)
    assert np.array_equal(a.components, b.components)


def test_arrays_round_trip():
    features = _features()
    pca = PCAProjection.fit(features, 5)
    arrays = pca.to_arrays()
    assert set(arrays) == {"pca_mean", "pca_components", "pca_explained_variance_ratio"}
    copies = {name: np.array(value, dtype=np.float64) for name, value in arrays.items()}  # e.g. after a reload
    back = PCAProjection.from_arrays(copies)
    assert back.components.dtype == np.float32 and back.components.flags.c_contiguous
    assert np.array_equal(back.mean, pca.mean) and np.array_equal(back.components, pca.components)
    assert np.array_equal(back.explained_variance_ratio, pca.explained_variance_ratio)
    queries = _features(20, seed=2)
    assert np.array_equal(back.transform_numpy(queries), pca.transform_numpy(queries))
    assert torch.allclose(back.transform(torch.from_numpy(queries)), pca.transform(torch.from_numpy(queries)))


def test_torch_transform_cached_per_device():
    pca = PCAProjection.fit(_features(), 4)
    x = torch.from_numpy(_features(5, seed=3))
    first = pca.transform(x)
    assert "cpu" in pca._on_device
    assert torch.equal(pca.transform(x), first)


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_whitening_power_scales_each_direction(power):
    features = _features(2000, 12)
    plain = PCAProjection.fit(features, 6, seed=0)
    whitened = PCAProjection.fit(features, 6, seed=0, whiten_power=power)
    plain_var = plain.transform_numpy(features).var(0)
    whitened_var = whitened.transform_numpy(features).var(0)
    # direction i is divided by (var_i / mean var)^(power / 2): its variance by (var_i / mean var)^power
    expected = plain_var / (plain_var / plain_var.mean()) ** power
    assert np.allclose(whitened_var, expected, rtol=1e-3)
    if power == 1.0:  # full whitening: every kept direction has the same variance
        assert np.allclose(whitened_var, whitened_var.mean(), rtol=1e-3)
    # same directions, rows still orthogonal, explained variance ratios unchanged
    gram = whitened.components @ whitened.components.T
    assert np.allclose(gram, np.diag(np.diag(gram)), atol=1e-4)
    assert np.allclose(whitened.components / np.linalg.norm(whitened.components, axis=1, keepdims=True),
                       plain.components, atol=1e-5)
    assert np.array_equal(whitened.explained_variance_ratio, plain.explained_variance_ratio)
    # the scale lives in the saved arrays: a reload projects the same
    back = PCAProjection.from_arrays(whitened.to_arrays())
    assert np.array_equal(back.transform_numpy(features[:5]), whitened.transform_numpy(features[:5]))


def test_whitening_power_zero_is_plain_pca():
    features = _features()
    assert np.array_equal(PCAProjection.fit(features, 5, whiten_power=0.0).components,
                          PCAProjection.fit(features, 5).components)
