"""Tests for the greedy coreset, the chunked kNN distance and the streaming memory bank (CPU, tiny)."""
import numpy as np
import pytest
import torch

import rtg_anomaly.methods.memory_bank as memory_bank
from rtg_anomaly.methods.memory_bank import (StreamingCoreset, chunked_greedy_coreset, greedy_coreset, knn_distance,
                                             per_scan_share, random_rows)


def _clusters(n_clusters: int, sizes, dim: int, spread: float = 0.05, seed: int = 0):
    """Well-separated Gaussian blobs: (features, cluster label per row)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 20.0
    rows, labels = [], []
    for c, size in enumerate(sizes):
        rows.append(centres[c] + spread * torch.randn(size, dim, generator=g))
        labels += [c] * size
    return torch.cat(rows), torch.tensor(labels)


# ---------------------------------------------------------------- greedy coreset

@pytest.mark.parametrize("n,n_select,dim", [(200, 10, 8), (300, 50, 200), (64, 63, 4)])
def test_greedy_coreset_distinct_long_cpu(n, n_select, dim):
    features = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    idx = greedy_coreset(features, n_select, seed=3)
    assert idx.dtype == torch.long and idx.device.type == "cpu"
    assert idx.shape == (n_select,)
    assert len(set(idx.tolist())) == n_select
    assert idx.min() >= 0 and idx.max() < n


def test_greedy_coreset_distinct_with_duplicate_features():
    # only three distinct points, many copies: still n_select distinct indices
    features = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]).repeat(10, 1)
    idx = greedy_coreset(features, 8, seed=0)
    assert len(set(idx.tolist())) == 8
    # and the three distinct points are all represented
    assert {tuple(r) for r in features[idx].tolist()} == {(0.0, 0.0), (1.0, 1.0), (5.0, 5.0)}


@pytest.mark.parametrize("dim", [8, 300])  # 300 > projection_dim: the random projection is used
def test_greedy_coreset_deterministic_per_seed(dim):
    features = torch.randn(400, dim, generator=torch.Generator().manual_seed(0))
    a = greedy_coreset(features, 30, seed=5)
    b = greedy_coreset(features.clone(), 30, seed=5)
    assert torch.equal(a, b)
    others = [greedy_coreset(features, 30, seed=s) for s in (6, 7, 8)]
    assert any(not torch.equal(a, o) for o in others)


@pytest.mark.parametrize("dim", [16, 256])
def test_greedy_coreset_hits_every_cluster(dim):
    sizes = [500, 3, 40, 7, 120, 1]  # very unbalanced: random sampling would miss the small ones
    features, labels = _clusters(len(sizes), sizes, dim)
    for seed in range(3):
        idx = greedy_coreset(features, len(sizes), seed=seed)
        assert sorted(labels[idx].tolist()) == list(range(len(sizes)))


def test_greedy_coreset_covers_better_than_random():
    features = torch.randn(600, 6, generator=torch.Generator().manual_seed(2))
    idx = greedy_coreset(features, 30, seed=0)
    radius = torch.cdist(features, features[idx]).min(1).values.max()
    random_idx = torch.randperm(600, generator=torch.Generator().manual_seed(0))[:30]
    random_radius = torch.cdist(features, features[random_idx]).min(1).values.max()
    assert radius < random_radius
    # k-centre greedy: the last chosen point was at least as far as the final covering radius
    before_last = torch.cdist(features[idx[-1:]], features[idx[:-1]]).min()
    assert before_last >= radius - 1e-4


@pytest.mark.parametrize("n_select", [10, 11, 100])
def test_greedy_coreset_all_when_enough(n_select):
    features = torch.randn(10, 3)
    assert torch.equal(greedy_coreset(features, n_select), torch.arange(10))


# ---------------------------------------------------------------- chunked greedy coreset

def test_chunked_coreset_is_plain_greedy_within_one_part():
    features = torch.randn(300, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(chunked_greedy_coreset(features, 40, seed=2, part_rows=300), greedy_coreset(features, 40, seed=2))


def test_chunked_coreset_parts_share_the_selection_in_proportion():
    # 100 rows in parts of at most 30: 4 parts of 25 rows; 10 picks -> 3 + 3 + 2 + 2 (remainders tie: first parts)
    features = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
    idx = chunked_greedy_coreset(features, 10, seed=1, part_rows=30)
    assert idx.dtype == torch.long and idx.shape == (10,)
    assert torch.equal(idx, torch.sort(idx).values) and len(set(idx.tolist())) == 10
    order = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    part_of = torch.empty(100, dtype=torch.long)
    for number, part in enumerate(torch.tensor_split(order, 4)):
        part_of[part] = number
    assert torch.bincount(part_of[idx], minlength=4).tolist() == [3, 3, 2, 2]
    # each part's picks are that part's own greedy selection
    first_part = torch.tensor_split(order, 4)[0]
    assert torch.equal(torch.sort(first_part[greedy_coreset(features[first_part], 3, seed=2)]).values,
                       idx[part_of[idx] == 0])


def test_chunked_coreset_deterministic_and_all_when_enough():
    features = torch.randn(500, 12, generator=torch.Generator().manual_seed(5))
    a = chunked_greedy_coreset(features, 60, seed=3, part_rows=128)
    assert torch.equal(a, chunked_greedy_coreset(features.clone(), 60, seed=3, part_rows=128))
    assert not torch.equal(a, chunked_greedy_coreset(features, 60, seed=4, part_rows=128))
    assert torch.equal(chunked_greedy_coreset(features, 500, part_rows=128), torch.arange(500))


def test_chunked_coreset_covers_nearly_as_well_as_one_greedy_run():
    sizes = [900, 15, 60, 25]  # small clusters still reach every part, so every part keeps them
    features, labels = _clusters(len(sizes), sizes, 16, spread=1.0)
    full = greedy_coreset(features, 100, seed=0)
    chunked = chunked_greedy_coreset(features, 100, seed=0, part_rows=250)
    assert set(labels[chunked].tolist()) == set(range(len(sizes)))

    def radius(idx):
        return torch.cdist(features, features[idx]).min(1).values.max()

    random_idx = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:100]
    assert radius(chunked) < radius(random_idx)
    assert radius(chunked) < 1.5 * radius(full)


def test_streaming_coreset_reduces_a_large_scan_part_by_part(monkeypatch):
    calls = []
    real = memory_bank.greedy_coreset
    monkeypatch.setattr(memory_bank, "greedy_coreset", lambda f, n, **kw: calls.append((f.shape[0], n)) or real(f, n, **kw))
    builder = StreamingCoreset(0.1, seed=0, part_rows=100)
    builder.add(torch.randn(450, 4, generator=torch.Generator().manual_seed(0)))
    assert sorted(calls) == [(90, 9)] * 5  # 5 parts of 90 rows, 45 picks
    assert builder.pool_size == 45


# ---------------------------------------------------------------- kNN distance

def _reference(queries, bank, k):
    return torch.cdist(queries.double(), bank.double()).topk(k, dim=1, largest=False).values.mean(1).float()


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("n_queries,n_bank", [(1, 1), (17, 5), (40, 64), (123, 77)])
def test_knn_distance_matches_cdist(k, n_queries, n_bank):
    g = torch.Generator().manual_seed(n_queries * 1000 + n_bank)
    queries, bank = torch.randn(n_queries, 12, generator=g), torch.randn(n_bank, 12, generator=g)
    out = knn_distance(queries, bank, k=k)
    assert out.shape == (n_queries,) and out.dtype == torch.float32
    assert torch.allclose(out, _reference(queries, bank, min(k, n_bank)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("block", [1, 2, 7, 16, 100])
@pytest.mark.parametrize("k", [1, 3])
def test_knn_distance_chunked_matches_cdist(monkeypatch, block, k):
    monkeypatch.setattr(memory_bank, "_CPU_DISTANCE_BLOCK", block)
    g = torch.Generator().manual_seed(block)
    queries, bank = torch.randn(37, 5, generator=g), torch.randn(50, 5, generator=g)
    out = knn_distance(queries, bank, k=k)
    assert torch.allclose(out, _reference(queries, bank, k), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("chunk", [memory_bank._CPU_BANK_CHUNK, memory_bank._BANK_CHUNK])
def test_knn_distance_bank_larger_than_bank_chunk(monkeypatch, k, chunk):
    # chunk + 2 rows: the last bank chunk has fewer rows than k (the accelerator's chunk size, tried on the CPU too)
    monkeypatch.setattr(memory_bank, "_CPU_BANK_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(chunk + 2, 3, generator=g)
    queries = torch.cat([torch.randn(8, 3, generator=g), bank[-2:] + 1e-3])  # nearest rows are in the last chunk
    out = knn_distance(queries, bank, k=k)
    assert torch.allclose(out, _reference(queries, bank, k), atol=1e-3, rtol=1e-3)


def test_knn_distance_k_larger_than_bank_and_precomputed_norms():
    g = torch.Generator().manual_seed(4)
    queries, bank = torch.randn(10, 4, generator=g), torch.randn(2, 4, generator=g)
    out = knn_distance(queries, bank, k=5)
    assert torch.allclose(out, _reference(queries, bank, 2), atol=1e-4)
    norms = (bank ** 2).sum(1)
    assert torch.allclose(knn_distance(queries, bank, k=1, bank_squared_norms=norms),
                          _reference(queries, bank, 1), atol=1e-4)


def test_knn_distance_exact_member_is_zero_and_non_negative():
    bank = torch.randn(30, 6, generator=torch.Generator().manual_seed(9)) * 100.0
    out = knn_distance(bank, bank, k=1)
    assert torch.all(out >= 0)
    # |q|^2 + |b|^2 - 2 q.b in float32: only rounding error (relative to the norms), no NaN from sqrt(< 0)
    assert out.max() < 1e-3 * bank.norm(dim=1).max()
    assert not torch.isnan(out).any()


# ---------------------------------------------------------------- streaming coreset

def test_streaming_coreset_ratio_and_cap():
    g = torch.Generator().manual_seed(0)
    scans = [torch.randn(n, 8, generator=g) for n in (100, 250, 41, 3)]
    builder = StreamingCoreset(0.1, seed=1, max_patches_per_scan=50)
    for s in scans:
        builder.add(s)
    assert builder.patches_seen == 394
    # 100 -> cap 50 -> 5; 250 -> 50 -> 5; 41 -> 5 (ceil 4.1); 3 -> 1 (at least one)
    assert builder.pool_size == 5 + 5 + 5 + 1
    bank = builder.finish(max_size=1000)
    assert bank.shape == (16, 8) and bank.dtype == torch.float32
    every_row = torch.cat(scans)
    assert (bank[:, None, :] == every_row[None]).all(-1).any(1).all()  # every bank row is a real patch
    assert len({tuple(r) for r in bank.tolist()}) == 16


def test_streaming_coreset_uncapped_ratio():
    builder = StreamingCoreset(0.25, seed=0, max_patches_per_scan=100_000)
    builder.add(torch.randn(400, 4))
    builder.add(torch.randn(10, 4, dtype=torch.float64))
    assert builder.pool_size == 100 + 3
    assert builder.finish(max_size=10_000).dtype == torch.float32


def test_streaming_coreset_final_max_size_and_determinism():
    def build():
        g = torch.Generator().manual_seed(3)
        builder = StreamingCoreset(0.5, seed=2, max_patches_per_scan=1000)
        for _ in range(4):
            builder.add(torch.randn(60, 5, generator=g))
        return builder.finish(max_size=25)

    a, b = build(), build()
    assert a.shape == (25, 5)
    assert torch.equal(a, b)


def test_streaming_coreset_finish_empty_raises():
    with pytest.raises(ValueError):
        StreamingCoreset(0.1).finish(10)


# ---------------------------------------------------------------- random rows

def test_random_rows():
    rows = random_rows(1000, 100, seed=4)
    assert rows.shape == (100,)
    assert np.all(np.diff(rows) > 0)  # sorted and distinct
    assert rows.min() >= 0 and rows.max() < 1000
    assert np.array_equal(rows, random_rows(1000, 100, seed=4))
    assert not np.array_equal(rows, random_rows(1000, 100, seed=5))
    assert np.array_equal(random_rows(7, 7, seed=0), np.arange(7))
    assert np.array_equal(random_rows(7, 50, seed=0), np.arange(7))
    # roughly uniform: both halves sampled
    many = random_rows(10_000, 2000, seed=1)
    assert 800 < (many < 5000).sum() < 1200


@pytest.mark.parametrize("bank_cap", [200_000, 1000, 7])
def test_per_scan_share_never_lets_the_pool_exceed_the_cap(bank_cap):
    # ceil(200000 / 196) * 196 = 200,116 > 200,000 once made finish() run a greedy pass picking 200,000 of
    # 200,116 rows (castings with --coreset-ratio 0.25: fit did not end in 30 min)
    for n_scans in range(1, 3001):
        share = per_scan_share(bank_cap, n_scans)
        assert share >= 1
        assert share * n_scans <= bank_cap or share == 1


def test_full_pool_needs_no_final_greedy_pass(monkeypatch):
    calls = []
    real = memory_bank.greedy_coreset
    monkeypatch.setattr(memory_bank, "greedy_coreset", lambda f, n, **kw: calls.append((f.shape[0], n)) or real(f, n, **kw))
    n_scans, cap = 7, 100
    builder = StreamingCoreset(1.0, max_kept_per_scan=per_scan_share(cap, n_scans))
    g = torch.Generator().manual_seed(0)
    for _ in range(n_scans):
        builder.add(torch.randn(40, 4, generator=g))  # each scan would keep 40 > its share of 14
    calls.clear()
    bank = builder.finish(cap)
    assert bank.shape[0] == builder.pool_size <= cap and calls == []
