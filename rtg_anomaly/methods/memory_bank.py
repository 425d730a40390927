"""Memory bank: seeded approximate greedy coreset and chunked nearest-neighbour distances."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

# Bounds on the kNN's temporary query x bank distance block, in elements, and on its bank rows.
# On a GPU: 128 MiB blocks of up to 65,536 bank rows, so a scan takes few launches. On the CPU: 4 MiB
# blocks of 1,024 bank rows x 1,024 queries, which stay in cache while the block is written by addmm and
# read by amin: 2.0x faster than the GPU sizes with a 200,000-row bank on 2 cores, and within 10 % of faiss
# IndexFlatL2 (docs/performance.md, section 6).
_DISTANCE_BLOCK = 1 << 25
_BANK_CHUNK = 65536
_CPU_DISTANCE_BLOCK = 1 << 20
_CPU_BANK_CHUNK = 1024
# Rows per independent greedy run inside one scan (chunked_greedy_coreset): each greedy step reads every row,
# so one scan's selection costs ratio * N^2 * d; cut into parts of this size it costs ratio * N * part * d.
# 8,192 of a 2000x6000 scan's 81,920 patches: 50.55 s whole, 2.47 s in 5 parts on 2 cores (docs/performance.md,
# section 5), more than the 5x fewer rows read: a part's 128-d projection is 8 MiB.
CORESET_PART_ROWS = 16_384


def greedy_coreset(features: torch.Tensor, n_select: int, seed: int = 0, projection_dim: int = 128) -> torch.Tensor:
    """Indices of an approximate greedy (k-centre) coreset.

    features: tensor (N, D). Distances are measured after a seeded Gaussian
    random projection to ``projection_dim`` (PatchCore's approximation); each
    step keeps only the (N,) vector of distances to the chosen set, never an
    N x N matrix. Runs on the features' device (GPU when there is one).
    Returns a long tensor (min(n_select, N),) of distinct indices, on the CPU.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    points = features.float()
    if points.shape[1] > projection_dim:
        projection = torch.randn(points.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        points = points @ projection.to(points.device)
    squared_norms = (points * points).sum(1)
    selected = torch.empty(n_select, dtype=torch.long)
    index = int(torch.randint(n, (1,), generator=generator))
    min_distance = torch.full((n,), float("inf"), device=points.device)
    with _single_cpu_thread(points.device):
        for step in range(n_select):
            selected[step] = index
            chosen = points[index]
            distance = squared_norms - 2.0 * (points @ chosen) + squared_norms[index]
            torch.minimum(min_distance, distance, out=min_distance)
            min_distance[index] = -math.inf  # never pick a chosen row again (duplicate features tie at 0)
            index = int(torch.argmax(min_distance))
    return selected


def chunked_greedy_coreset(features: torch.Tensor, n_select: int, seed: int = 0,
                           part_rows: int = CORESET_PART_ROWS) -> torch.Tensor:
    """Indices of a greedy coreset run separately on seeded random parts of at most ``part_rows`` rows.

    features: tensor (N, D). With N <= part_rows this is ``greedy_coreset``
    itself. Otherwise the rows are dealt into ceil(N / part_rows) parts of
    near-equal size by a seeded permutation, each part keeps its proportional
    share of ``n_select`` (largest remainders first) through its own greedy
    run, and the union is returned. A random part is a thinned copy of the
    whole scan, so each covers the scan's feature space at a coarser radius;
    the union is as large as asked for, with some redundancy between parts.
    Returns a long tensor (min(n_select, N),) of distinct indices, on the CPU
    (in greedy order for one part, sorted for several).
    """
    n = features.shape[0]
    if n <= part_rows or n_select >= n:
        return greedy_coreset(features, n_select, seed=seed)
    n_parts = math.ceil(n / part_rows)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = list(torch.tensor_split(order, n_parts))
    exact = [n_select * len(part) / n for part in parts]
    quotas = [math.floor(q) for q in exact]
    by_remainder = sorted(range(n_parts), key=lambda i: (quotas[i] - exact[i], i))
    for i in by_remainder[: n_select - sum(quotas)]:
        quotas[i] += 1
    chosen = [part[greedy_coreset(features[part.to(features.device)], quota, seed=seed + 1 + i)]
              for i, (part, quota) in enumerate(zip(parts, quotas)) if quota > 0]
    return torch.sort(torch.cat(chosen)).values


@contextmanager
def _single_cpu_thread(device: torch.device):
    """Run a loop of small CPU tensor ops on one thread.

    Each greedy step is one matrix-vector product, bound by memory: a second
    thread gains nothing on an idle 2-core machine (1.00-1.08x, docs/performance.md)
    and its hand-offs cost 1.4-6.3x per pick when other jobs share the cores.
    No effect on GPU.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def knn_distance(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
                 bank_squared_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean distance from each query to its ``k`` nearest bank rows.

    queries: (Q, d); bank: (M, d), on the same device. Work is chunked over
    queries and bank so the temporary distance block never exceeds
    ``_DISTANCE_BLOCK`` elements (``_CPU_DISTANCE_BLOCK`` on the CPU): no full
    Q x M matrix is formed.
    Returns a float32 tensor (Q,).
    """
    k = min(k, bank.shape[0])
    queries = queries.to(bank.dtype)
    if bank_squared_norms is None:
        bank_squared_norms = (bank.float() ** 2).sum(1)
    on_cpu = bank.device.type == "cpu"
    block = _CPU_DISTANCE_BLOCK if on_cpu else _DISTANCE_BLOCK
    bank_chunk = min(bank.shape[0], max(k, min(_CPU_BANK_CHUNK if on_cpu else _BANK_CHUNK, block)))
    query_chunk = max(1, block // bank_chunk)
    result = torch.empty(queries.shape[0], device=queries.device, dtype=torch.float32)
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0 : q0 + query_chunk]
        q_norms = (q.float() ** 2).sum(1, keepdim=True)
        best = None
        for b0 in range(0, bank.shape[0], bank_chunk):
            chunk = bank[b0 : b0 + bank_chunk]
            # |b|^2 - 2 q.b in one fused matmul; |q|^2 is constant per row, added after the minimum.
            partial = torch.addmm(bank_squared_norms[b0 : b0 + bank_chunk], q, chunk.T, alpha=-2.0).float()
            if k == 1:  # amin is much cheaper than topk
                nearest = partial.amin(dim=1, keepdim=True)
                best = nearest if best is None else torch.minimum(best, nearest)
            else:
                nearest = torch.topk(partial, min(k, partial.shape[1]), dim=1, largest=False).values
                best = nearest if best is None else torch.topk(torch.cat([best, nearest], 1), k, dim=1,
                                                               largest=False).values
        result[q0 : q0 + query_chunk] = (best + q_norms).clamp_min_(0.0).sqrt_().mean(1)
    return result


class StreamingCoreset:
    """Builds the memory bank from scans one at a time, in bounded memory.

    Each scan's patch features are first cut to at most ``max_patches_per_scan``
    (seeded random subsample), then reduced by a greedy coreset to ``ratio``
    of their count, but to no more than ``max_kept_per_scan``, and the survivors
    pooled. A scan of more than ``part_rows`` patches is reduced part by part
    (``chunked_greedy_coreset``), which keeps its cost linear in its size.
    With ``max_kept_per_scan = bank cap / number of scans`` the pool can
    never outgrow the cap, however many scans there are: peak memory is the
    capped pool plus one scan's features. ``finish`` runs one more greedy pass
    over the pool when it holds more than the requested bank size.
    """

    def __init__(self, ratio: float, seed: int = 0, max_patches_per_scan: int = 100_000,
                 max_kept_per_scan: int | None = None, part_rows: int = CORESET_PART_ROWS):
        self.ratio = ratio
        self.part_rows = part_rows
        self.seed = seed
        self.max_patches_per_scan = max_patches_per_scan
        self.max_kept_per_scan = max_kept_per_scan
        self.patches_seen = 0
        self._pool: list[torch.Tensor] = []
        self._scans = 0
        self.bank_sources_: np.ndarray | None = None

    def add(self, features: torch.Tensor) -> None:
        """features: (n, D) patch features of one scan (any device)."""
        self.add_selected(self.select(features, self._scans), features.shape[0])

    def select(self, features: torch.Tensor, scan_index: int) -> torch.Tensor:
        """The rows of one scan's (n, D) features that ``add`` would pool as the scan number ``scan_index``
        (0 for the first scan added), float32 (k, D) on the CPU. It reads no state but the settings, so
        another process (a Ray worker) can compute it and hand it to ``add_selected``."""
        seed = self.seed + scan_index
        if features.shape[0] > self.max_patches_per_scan:
            generator = torch.Generator().manual_seed(seed)
            keep = torch.randperm(features.shape[0], generator=generator)[: self.max_patches_per_scan]
            features = features[keep.to(features.device)]
        n_keep = max(1, int(math.ceil(self.ratio * features.shape[0])))
        if self.max_kept_per_scan is not None:
            n_keep = min(n_keep, self.max_kept_per_scan)
        chosen = chunked_greedy_coreset(features, n_keep, seed=seed, part_rows=self.part_rows)
        return features[chosen.to(features.device)].float().cpu()

    def add_selected(self, rows: torch.Tensor, patches_seen: int) -> None:
        """Pool the next scan's ``select`` rows (float32 (k, D), CPU); ``patches_seen``: its patch count."""
        self.patches_seen += patches_seen
        self._scans += 1
        self._pool.append(rows)

    @property
    def pool_size(self) -> int:
        return sum(p.shape[0] for p in self._pool)

    def finish(self, max_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The pooled bank (M, D) float32 on the CPU, reduced to at most ``max_size`` rows.

        Also sets ``bank_sources_``: int64 (M,), for each bank row the index of the scan (view) it came from,
        in the order scans were added (leave-one-scan-out calibration drops a scan's own rows with it).
        """
        if not self._pool:
            raise ValueError("no features were added to the memory bank")
        pool = torch.cat(self._pool)
        sources = np.repeat(np.arange(len(self._pool)), [part.shape[0] for part in self._pool])
        if pool.shape[0] > max_size:
            chosen = greedy_coreset(pool.to(device), max_size, seed=self.seed)
            pool, sources = pool[chosen], sources[chosen.numpy()]
        self.bank_sources_ = sources
        return pool


def per_scan_share(bank_cap: int, n_scans: int) -> int:
    """Rows one scan (or augmented view) may keep so that ``n_scans`` of them never exceed ``bank_cap``.

    Rounded down: a pool even a few rows over the cap would make ``StreamingCoreset.finish`` run a greedy
    pass selecting nearly every row, one step per kept row (hours for a 200,000-row bank on a CPU).
    At least 1 per scan, so more scans than ``bank_cap`` can exceed the cap (``finish`` then reduces it).
    """
    return max(1, bank_cap // max(1, n_scans))


def random_rows(n_rows: int, n_pick: int, seed: int) -> np.ndarray:
    """Sorted distinct row indices, a seeded uniform sample of ``n_pick`` out of ``n_rows``."""
    rng = np.random.default_rng(seed)
    if n_pick >= n_rows:
        return np.arange(n_rows)
    return np.sort(rng.choice(n_rows, size=n_pick, replace=False))
