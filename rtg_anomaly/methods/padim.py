"""PaDiM: a Gaussian of clean patch features per patch position; the Mahalanobis distance is the score.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and Localization",
ICPR 2020: a seeded random subset of the feature channels, one mean and covariance per position.

**Position** here is the patch cell (i, j) of the backbone grid within a tile. When a scan is a single
tile (crops no larger than ``tile_size``, which the pipeline mirror-pads to one tile) and the scans are
aligned, that is the absolute position in the scan, which is PaDiM's setting: each cell learns what
belongs exactly there. On a long vehicle scan cut into many tiles, a cell pools every tile's content at
that offset, so the model degrades to a per-offset Gaussian of everything; use PatchCore there.

Covariances are shrunk with the Oracle Approximating Shrinkage estimator (Chen et al. 2010, the formula
of ``sklearn.covariance.oas``), which needs only each cell's count, sum and sum of outer products, so a fit
streams over any number of scans in memory of cells x channels^2. A cell with fewer than 2 clean samples
(a cell only ever in the padding) takes the statistics of all cells pooled.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import FitPlan, PatchMethod


class PaDiM(PatchMethod):
    """Per-cell Gaussian of ``padim_features`` random channels of the patch features.

    Fitted state: channels_ int64 (d,) the kept channel indices; mean_ float32 (h*w, d);
    precision_ float32 (h*w, d, d), the inverse shrunk covariance of each cell; grid_ (h, w).
    Parameters (from the config): padim_features, seed.
    """

    name = "padim"

    def __init__(self, config):
        super().__init__(config)
        self._count = self._sum = self._outer = None
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ fit
    def begin(self, plan: FitPlan) -> None:
        self._count = self._sum = self._outer = None
        self.channels_ = None

    def learn(self, features: torch.Tensor, valid: torch.Tensor) -> None:
        t, h, w, d_full = features.shape
        if self.channels_ is None:
            d = min(self.config.padim_features, d_full)
            order = torch.randperm(d_full, generator=torch.Generator().manual_seed(self.config.seed))
            self.channels_ = torch.sort(order[:d]).values.numpy().astype(np.int64)
            self.grid_ = (h, w)
            self._count = torch.zeros(h * w, dtype=torch.float64)
            self._sum = torch.zeros(h * w, len(self.channels_), dtype=torch.float64)
            self._outer = torch.zeros(h * w, len(self.channels_), len(self.channels_), dtype=torch.float64)
        if (h, w) != self.grid_:
            raise ValueError(f"patch grid {h}x{w} differs from the first scan's {self.grid_[0]}x{self.grid_[1]}")
        channels = torch.from_numpy(self.channels_).to(features.device)
        # float64 sums: a cell's second moments over thousands of tiles cancel badly in float32.
        x = features.index_select(-1, channels).reshape(t, h * w, -1).to(torch.float64)
        mask = valid.reshape(t, h * w).to(torch.float64)
        x = x * mask[..., None]
        self._count += mask.sum(0).cpu()
        self._sum += x.sum(0).cpu()
        self._outer += torch.einsum("tcd,tce->cde", x, x).cpu()

    def finish(self, device: torch.device) -> None:
        count, total, outer = self._count, self._sum, self._outer
        pooled_n = count.sum()
        pooled_mean = total.sum(0) / pooled_n
        pooled_cov = outer.sum(0) / pooled_n - torch.outer(pooled_mean, pooled_mean)
        n = count.clamp_min(1.0)
        mean = total / n[:, None]
        cov = outer / n[:, None, None] - mean[:, :, None] * mean[:, None, :]
        sparse = count < 2
        mean[sparse] = pooled_mean
        cov[sparse] = pooled_cov
        n_eff = torch.where(sparse, pooled_n, count)
        shrunk = oas_shrink(cov, n_eff)
        self.mean_ = np.ascontiguousarray(mean.to(torch.float32).numpy())
        # C order, as a loaded bundle has it: LAPACK's inverse comes back column-major, and einsum over
        # another layout sums in another order (scores would differ from the reloaded model's by ~1e-7).
        self.precision_ = np.ascontiguousarray(torch.linalg.inv(shrunk).to(torch.float32).numpy())
        self._on_device = {}

    # ------------------------------------------------------------------ score
    def _device_state(self, device: torch.device):
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (torch.from_numpy(self.channels_).to(device), torch.from_numpy(self.mean_).to(device),
                                    torch.from_numpy(self.precision_).to(device))
        return self._on_device[key]

    def score(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = features.shape
        if (h, w) != tuple(self.grid_):
            raise ValueError(f"patch grid {h}x{w} differs from the fitted {self.grid_[0]}x{self.grid_[1]}")
        channels, mean, precision = self._device_state(features.device)
        centred = features.index_select(-1, channels).reshape(b, h * w, -1).float() - mean
        # (x - mu)^T P (x - mu) per cell, batched over tiles: one (d x d) product per cell.
        squared = torch.einsum("bcd,cde,bce->bc", centred, precision, centred)
        return squared.clamp_min_(0.0).sqrt_().reshape(b, h, w)

    # ------------------------------------------------------------------ state
    def params(self) -> dict:
        return {"padim_features": self.config.padim_features, "seed": self.config.seed,
                "position": "patch cell within a tile", "covariance": "OAS shrinkage"}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"padim_channels": self.channels_, "padim_mean": self.mean_, "padim_precision": self.precision_,
                "padim_grid": np.asarray(self.grid_, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, config, arrays: dict[str, np.ndarray], feature_dim: int) -> "PaDiM":
        method = cls(config)
        channels, mean = arrays["padim_channels"], arrays["padim_mean"]
        precision, grid = arrays["padim_precision"], arrays["padim_grid"]
        d = channels.shape[0] if channels.ndim == 1 else -1
        if (channels.ndim != 1 or channels.dtype.kind not in "iu" or d < 1 or channels.min() < 0
                or channels.max() >= feature_dim or grid.shape != (2,) or grid.min() < 1
                or mean.shape != (int(grid[0]) * int(grid[1]), d) or precision.shape != mean.shape + (d,)
                or mean.dtype.kind != "f" or precision.dtype.kind != "f"
                or not np.isfinite(mean).all() or not np.isfinite(precision).all()):
            raise ValueError("the PaDiM arrays do not fit each other or the backbone's feature size")
        method.channels_ = channels.astype(np.int64)
        method.mean_ = np.ascontiguousarray(mean, dtype=np.float32)
        method.precision_ = np.ascontiguousarray(precision, dtype=np.float32)
        method.grid_ = (int(grid[0]), int(grid[1]))
        return method

    def fit_info(self) -> dict:
        return {"padim_cells": int(self.mean_.shape[0]), "padim_channels": int(self.mean_.shape[1])}

    def describe(self) -> str:
        cells, d = self.mean_.shape
        return f"{cells} cell Gaussians over {d} channels"


def oas_shrink(covariance: torch.Tensor, n_samples: torch.Tensor) -> torch.Tensor:
    """Oracle Approximating Shrinkage of (C, d, d) empirical covariances (maximum-likelihood, i.e. divided
    by n) estimated from ``n_samples`` (C,) samples each: (1 - s) S + s mu I, with the shrinkage s of
    ``sklearn.covariance.oas``."""
    d = covariance.shape[-1]
    mu = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(-1) / d
    alpha = (covariance ** 2).mean(dim=(-2, -1))
    numerator = alpha + mu ** 2
    denominator = (n_samples + 1.0) * (alpha - mu ** 2 / d)
    shrinkage = torch.where(denominator == 0, torch.ones_like(mu), (numerator / denominator).clamp(max=1.0))
    eye = torch.eye(d, dtype=covariance.dtype)
    return (1.0 - shrinkage)[:, None, None] * covariance + (shrinkage * mu)[:, None, None] * eye
