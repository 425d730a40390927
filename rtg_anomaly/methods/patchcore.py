"""PatchCore: PCA of clean patch features, a greedy-coreset memory bank, kNN distance as the score.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022, with PCA before the
bank (our addition: 128 dims keep the kNN cheap on large scans).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch

from ..backbone.openvino_runtime import compile_nearest_distance
from .base import FitPlan, PatchMethod
from .memory_bank import StreamingCoreset, knn_distance, per_scan_share, random_rows
from .pca import PCAProjection

# Rows of clean patch features the PCA is fitted on, shared out over the training views.
PCA_SAMPLE_TOTAL = 200_000


class PoolPart(NamedTuple):
    """What one clean view adds to a PatchCore fit, computable apart from the fit (on a Ray worker).

    rows: float32 (k, D) CPU tensor, the view's coreset rows for the pool (raw features).
    pca_sample: float32 (s, D) rows for the PCA (first round only), else None.
    n_patches: the view's patches inside the scan.
    """

    rows: torch.Tensor
    pca_sample: np.ndarray | None
    n_patches: int


class PatchCore(PatchMethod):
    """Memory bank of clean patch features; a patch scores its mean distance to the ``k`` nearest.

    Fitted state: pca_ (PCAProjection, (D,) -> (d,)); memory_bank_: float32 (M, d) rows in PCA space.
    Parameters (from the config): patch_norm, pca_dim, pca_whiten, coreset_ratio, memory_bank_size,
    max_bank_size, max_patches_per_scan, k, seed.
    """

    name = "patchcore"
    can_leave_out = True  # the bank knows which view each row came from (StreamingCoreset.bank_sources_)

    def __init__(self, config):
        super().__init__(config)
        self._builder: StreamingCoreset | None = None
        self._pca_samples: list[np.ndarray] = []
        self._views_learned = 0
        self._per_view_sample = 0
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None
        self._openvino_nearest = None
        self._use_openvino = False
        self._bank_sources: np.ndarray | None = None  # (M,) source view of each bank row, fit time only

    # ------------------------------------------------------------------ fit
    def begin(self, plan: FitPlan) -> None:
        config = self.config
        # Each scan may keep its share of the bank cap, so memory stays bounded for any number of scans.
        self._builder = StreamingCoreset(config.coreset_ratio, seed=config.seed,
                                         max_patches_per_scan=config.max_patches_per_scan,
                                         max_kept_per_scan=per_scan_share(config.max_bank_size, plan.all_views))
        self._pca_samples, self._views_learned = [], 0
        self._per_view_sample = max(256, PCA_SAMPLE_TOTAL // max(1, plan.training_views))
        self.pca_ = None

    def learn(self, features: torch.Tensor, valid: torch.Tensor) -> None:
        self.absorb(self.pool_part(features, valid, self._views_learned, sample_for_pca=self.pca_ is None))

    def pool_part(self, features: torch.Tensor, valid: torch.Tensor, view_index: int,
                  sample_for_pca: bool) -> PoolPart:
        """What ``learn`` takes from the view number ``view_index`` of the fit (0 for the first one learned);
        ``sample_for_pca``: in the first round (no PCA yet), also its PCA rows. Reads only what ``begin`` set,
        so any process that ran ``begin`` with the same plan computes the same part."""
        features = self.normalised(features[valid])  # (n, D): PatchCore pools patches, wherever they sit
        sample = None
        if sample_for_pca:
            rows = random_rows(features.shape[0], self._per_view_sample, self.config.seed + view_index)
            sample = features[torch.from_numpy(rows).to(features.device)].cpu().numpy()
        return PoolPart(self._builder.select(features, view_index), sample, int(features.shape[0]))

    def absorb(self, part: PoolPart) -> None:
        """Add the next view's part (from ``pool_part`` with the next view index) to the fit."""
        if part.pca_sample is not None:
            self._pca_samples.append(part.pca_sample)
        self._views_learned += 1
        self._builder.add_selected(part.rows, part.n_patches)

    def finish(self, device: torch.device) -> None:
        config = self.config
        if self.pca_ is None:
            self.pca_ = PCAProjection.fit(np.concatenate(self._pca_samples), config.pca_dim, seed=config.seed,
                                          whiten_power=config.pca_whiten)
            self._pca_samples = []
        bank_cap = config.memory_bank_size or config.max_bank_size
        self._set_bank(self.pca_.transform_numpy(self._builder.finish(bank_cap, device).numpy()))
        self._bank_sources = self._builder.bank_sources_

    def progress_postfix(self) -> dict:
        """Patches seen and the pool's current size, for a progress bar."""
        builder = self._builder
        return {} if builder is None else {"patches": builder.patches_seen, "bank": builder.pool_size}

    def _set_bank(self, bank: np.ndarray) -> None:
        self.memory_bank_ = np.ascontiguousarray(bank, dtype=np.float32)
        self._on_device = None

    @property
    def bank_sources(self) -> np.ndarray | None:
        """int64 (M,): the learned view each bank row came from, for a bank fitted in this process, else None."""
        return self._bank_sources

    def use_bank_sources(self, sources: np.ndarray) -> None:
        """Give a bank rebuilt from arrays (another process's fit) its rows' sources: int (M,), one per row."""
        sources = np.asarray(sources)
        if sources.shape != (self.memory_bank_.shape[0],) or sources.dtype.kind not in "iu":
            raise ValueError(f"bank sources must be {self.memory_bank_.shape[0]} integers, got {sources.dtype} "
                             f"{sources.shape}")
        self._bank_sources = sources.astype(np.int64)

    @contextmanager
    def leave_out(self, views: range):
        """Score, inside the block, against the bank without the rows of the learned views ``views``
        (indices in the order ``learn``/``absorb`` saw them): what a bank built without that scan gives."""
        if self._bank_sources is None:
            raise RuntimeError("leave_out needs a bank fitted in this process (its rows' sources)")
        full = self.memory_bank_
        keep = (self._bank_sources < views.start) | (self._bank_sources >= views.stop)
        if not keep.any():
            raise RuntimeError("leaving these views out would empty the memory bank")
        self._set_bank(full[keep])
        try:
            yield
        finally:
            self._set_bank(full)

    # ------------------------------------------------------------------ score
    def prepare(self, device: torch.device, runtime: str) -> None:
        self._use_openvino = runtime == "openvino"
        self.device_bank(device)

    def device_bank(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank (M, d) on ``device`` and its rows' squared norms (M,), uploaded once."""
        if self._on_device is None or self._on_device[0].device != torch.device(device):
            bank = torch.from_numpy(self.memory_bank_).to(device)
            self._on_device = (bank, (bank * bank).sum(1))
        return self._on_device

    def normalised(self, features: torch.Tensor) -> torch.Tensor:
        """Patch features (..., D) as the bank holds them: unchanged, or with ``patch_norm == "l2"`` divided by
        their Euclidean norm (a zero row stays zero)."""
        if self.config.patch_norm != "l2":
            return features
        return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def score(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, h, w, d = features.shape
        queries = self.pca_.transform(self.normalised(features).reshape(-1, d))
        bank, bank_norms = self.device_bank(features.device)
        return self.nearest_distance(queries, bank, bank_norms).reshape(b, h, w)

    def nearest_distance(self, queries: torch.Tensor, bank: torch.Tensor, bank_norms: torch.Tensor) -> torch.Tensor:
        """``knn_distance`` (Q,) of queries (Q, d) to the bank; with the OpenVINO runtime and k = 1, OpenVINO
        computes it (the same float32 distances to about 1e-5, 1.7x faster on the benchmark CPU with a
        200,000-row bank; docs/performance.md, section 6)."""
        if self.config.k == 1 and self._use_openvino:
            if self._openvino_nearest is None:
                self._openvino_nearest = compile_nearest_distance(torch.get_num_threads())
            return self._openvino_nearest(queries, bank, bank_norms)
        return knn_distance(queries, bank, self.config.k, bank_norms)

    # ------------------------------------------------------------------ state
    def params(self) -> dict:
        config = self.config
        return {"patch_norm": config.patch_norm, "pca_dim": config.pca_dim, "pca_whiten": config.pca_whiten,
                "coreset_ratio": config.coreset_ratio,
                "memory_bank_size": config.memory_bank_size, "max_bank_size": config.max_bank_size,
                "max_patches_per_scan": config.max_patches_per_scan, "k": config.k}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"memory_bank": self.memory_bank_, **self.pca_.to_arrays()}

    @classmethod
    def from_arrays(cls, config, arrays: dict[str, np.ndarray], feature_dim: int) -> "PatchCore":
        method = cls(config)
        method.pca_ = PCAProjection.from_arrays(arrays)
        bank = arrays["memory_bank"]
        if method.pca_.mean.shape[0] != feature_dim or bank.ndim != 2 or bank.shape[1] != method.pca_.output_dim:
            raise ValueError("the memory bank and PCA do not match the backbone's feature size")
        method._set_bank(bank)
        return method

    def fit_info(self) -> dict:
        return {"memory_bank_size": int(self.memory_bank_.shape[0])}

    def describe(self) -> str:
        rows, dims = self.memory_bank_.shape
        return f"memory bank {rows} x {dims}"
