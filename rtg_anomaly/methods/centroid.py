"""The good-only centroid baseline: one L2-normalised embedding per tile, compared with the centroid of
the clean tiles' embeddings by cosine distance.

A tile's embedding is the mean of its patch features inside the scan, scaled to unit length; the clean
centroid is the unit-length mean of the clean tiles' embeddings; a tile scores ``1 - f . c`` and every
patch of the tile gets that score, so the map is coarse (tile-level, blended where tiles overlap). It
knows nothing of where in a tile something sits: it answers "does this tile look like clean tiles on
average", the baseline every other method has to beat. For the whole-scan version add
``--image-score global`` (each scan's descriptor against the nearest clean scan's).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import FitPlan, PatchMethod, tile_means

_EPS = 1e-12


def tile_embeddings(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(T, D) float32 unit-length means of each tile's patch features inside the scan."""
    return torch.nn.functional.normalize(tile_means(features, valid).float(), dim=-1, eps=_EPS)


class Centroid(PatchMethod):
    """Fitted state: centroid_ float32 (D,), unit length. No parameters."""

    name = "centroid"

    def __init__(self, config):
        super().__init__(config)
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._on_device: dict[str, torch.Tensor] = {}

    def begin(self, plan: FitPlan) -> None:
        self._sum, self._count = None, 0

    def learn(self, features: torch.Tensor, valid: torch.Tensor) -> None:
        seen = valid.flatten(1).any(1)  # tiles with a patch that counts (a ROI may leave a tile none)
        total = tile_embeddings(features[seen], valid[seen]).to(torch.float64).sum(0).cpu()
        self._sum = total if self._sum is None else self._sum + total
        self._count += int(seen.sum())

    def finish(self, device: torch.device) -> None:
        mean = self._sum / max(self._count, 1)
        self.centroid_ = (mean / max(float(mean.norm()), _EPS)).to(torch.float32).numpy()
        self._on_device = {}

    def score(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        key = str(features.device)
        if key not in self._on_device:
            self._on_device[key] = torch.from_numpy(self.centroid_).to(features.device)
        distance = 1.0 - tile_embeddings(features, valid) @ self._on_device[key]  # (B,)
        b, h, w, _ = features.shape
        return distance.clamp_min(0.0)[:, None, None].expand(b, h, w).contiguous()

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"centroid": self.centroid_}

    @classmethod
    def from_arrays(cls, config, arrays: dict[str, np.ndarray], feature_dim: int) -> "Centroid":
        centroid = arrays["centroid"]
        if centroid.shape != (feature_dim,) or centroid.dtype.kind != "f" or not np.isfinite(centroid).all():
            raise ValueError("the centroid does not fit the backbone's feature size")
        method = cls(config)
        method.centroid_ = np.ascontiguousarray(centroid, dtype=np.float32)
        return method

    def fit_info(self) -> dict:
        return {"clean_tiles": self._count} if self._count else {}

    def describe(self) -> str:
        return f"centroid of {self._count} clean tiles" if self._count else "centroid"
