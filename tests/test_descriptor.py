"""Whole-scan descriptors and their bank, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtg_anomaly.methods.descriptor import DescriptorAccumulator, DescriptorBank, scan_descriptor


def test_descriptor_is_unit_mean_and_unit_spread():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 4.0], [2.0, -4.0]])
    # mean (2, 0) -> (1, 0); population std (sqrt(0.5), sqrt(8)) -> scaled to unit length
    std = np.array([np.sqrt(0.5), np.sqrt(8.0)])
    expected = np.concatenate([[1.0, 0.0], std / np.linalg.norm(std)])
    np.testing.assert_allclose(scan_descriptor(features), expected, rtol=1e-6)
    assert scan_descriptor(features).dtype == np.float32


def test_accumulating_in_batches_equals_one_pass():
    features = torch.randn(1000, 6, generator=torch.Generator().manual_seed(0)) * 50 + 1000
    accumulator = DescriptorAccumulator()
    for chunk in features.split(137):
        accumulator.add(chunk)
    accumulator.add(features[:0])  # an empty batch changes nothing
    assert accumulator.count == 1000
    np.testing.assert_allclose(accumulator.descriptor(), scan_descriptor(features), atol=1e-6)
    mean, std = features.double().mean(0), features.double().std(0, unbiased=False)
    np.testing.assert_allclose(accumulator.descriptor(), np.concatenate([mean / mean.norm(), std / std.norm()]),
                               atol=1e-6)


def test_constant_features_give_a_zero_spread_not_nan():
    descriptor = scan_descriptor(torch.full((10, 3), 2.0))
    assert np.isfinite(descriptor).all()
    np.testing.assert_allclose(descriptor[3:], 0.0)


def test_accumulator_refuses_bad_input():
    with pytest.raises(ValueError, match="no patch features"):
        DescriptorAccumulator().descriptor()
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        DescriptorAccumulator().add(torch.zeros(2, 3, 4))


def test_bank_distance_is_centred_cosine_to_the_nearest_row():
    clean = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    bank = DescriptorBank.fit(clean)
    centre = clean.mean(0)
    np.testing.assert_allclose(bank.centre, centre)
    for row in clean:  # a clean descriptor is at distance 0 from itself
        assert bank.distance(row) == pytest.approx(0.0, abs=1e-6)
    query = np.array([2.0, 0.5], np.float32)
    centred = clean - centre
    cosines = centred @ (query - centre) / (np.linalg.norm(centred, axis=1) * np.linalg.norm(query - centre))
    assert bank.distance(query) == pytest.approx(1.0 - cosines.max(), abs=1e-6)


def test_opposite_descriptor_is_at_distance_two():
    bank = DescriptorBank.fit(np.array([[1.0, 0.0], [3.0, 0.0]], np.float32))  # centre (2, 0)
    assert bank.distance(np.array([2.0, 5.0], np.float32)) == pytest.approx(1.0, abs=1e-6)  # orthogonal
    bank_one_side = DescriptorBank(np.zeros(2, np.float32), np.array([[1.0, 0.0]], np.float32))
    assert bank_one_side.distance(np.array([-3.0, 0.0], np.float32)) == pytest.approx(2.0)


def test_single_descriptor_bank_falls_back_to_plain_cosine():
    bank = DescriptorBank.fit(np.array([[2.0, 0.0]], np.float32))
    np.testing.assert_array_equal(bank.centre, [0.0, 0.0])
    assert bank.distance(np.array([0.0, 1.0], np.float32)) == pytest.approx(1.0)


def test_extended_bank_keeps_its_centre():
    bank = DescriptorBank.fit(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    far = np.array([5.0, 5.0], np.float32)  # centred (4.5, 4.5): orthogonal to both centred rows
    assert bank.distance(far) == pytest.approx(1.0, abs=1e-6)
    bigger = bank.extended(far[None])
    np.testing.assert_array_equal(bigger.centre, bank.centre)
    assert bigger.rows.shape == (3, 2) and bigger.distance(far) == pytest.approx(0.0, abs=1e-6)


def test_arrays_round_trip_and_shape_check():
    bank = DescriptorBank.fit(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    again = DescriptorBank.from_arrays(bank.to_arrays())
    np.testing.assert_array_equal(again.rows, bank.rows)
    np.testing.assert_array_equal(again.centre, bank.centre)
    with pytest.raises(ValueError, match="do not match"):
        DescriptorBank(np.zeros(3, np.float32), np.zeros((2, 4), np.float32))


def test_centroid_distance_is_one_minus_cosine_to_the_clean_mean_direction():
    # descriptors are (unit mean | unit spread); only the mean half counts
    clean = np.array([[1.0, 0.0, 0.3, 0.7], [0.0, 1.0, 0.9, 0.1], [0.6, 0.8, 0.5, 0.5]], np.float32)
    bank = DescriptorBank.fit(clean)
    centroid = clean[:, :2].mean(0)
    centroid /= np.linalg.norm(centroid)
    query = np.array([0.8, -0.6, 0.0, 1.0], np.float32)
    assert bank.centroid_distance(query) == pytest.approx(1.0 - query[:2] @ centroid, abs=1e-6)
    assert bank.centroid_distance(np.concatenate([centroid, [1.0, 0.0]])) == pytest.approx(0.0, abs=1e-6)
    assert bank.centroid_distance(np.concatenate([-centroid, [1.0, 0.0]])) == pytest.approx(2.0, abs=1e-6)
    # the spread half does not move it, and neither does extending the bank (the centre is kept)
    assert bank.extended(query[None]).centroid_distance(query) == bank.centroid_distance(query)
    assert bank.centroid_distance(np.array([0.8, -0.6, 1.0, 0.0], np.float32)) == bank.centroid_distance(query)


def test_centroid_distance_of_a_one_scan_bank_uses_its_row():
    bank = DescriptorBank.fit(np.array([[0.6, 0.8, 1.0, 0.0]], np.float32))  # centre zero
    assert bank.centroid_distance(np.array([0.6, 0.8, 0.0, 1.0], np.float32)) == pytest.approx(0.0, abs=1e-6)
    assert bank.centroid_distance(np.array([0.8, -0.6, 0.0, 1.0], np.float32)) == pytest.approx(1.0, abs=1e-6)
