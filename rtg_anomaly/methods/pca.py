"""PCA fitted on clean patch features, kept as plain arrays and applied in torch."""

from __future__ import annotations

import numpy as np
import torch


class PCAProjection:
    """x -> (x - mean) @ components.T, mapping (n, D) features to (n, d).

    mean: float32 (D,); components: float32 (d, D), rows orthogonal (orthonormal
    unless fitted with a whitening power, which scales each row);
    explained_variance_ratio: float32 (d,).
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray, explained_variance_ratio: np.ndarray):
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self.explained_variance_ratio = np.asarray(explained_variance_ratio, dtype=np.float32)
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, features: np.ndarray, n_components: int | None, seed: int = 0,
            whiten_power: float = 0.0) -> "PCAProjection":
        """Fit on (n, D) clean patch features; ``None`` or >= min(n, D) keeps every direction.

        whiten_power w in [0, 1]: direction i is divided by (var_i / mean(var))^(w/2),
        so w = 1 gives every kept direction the same variance (whitening) and
        w = 0 keeps plain PCA. The scale is folded into ``components``, so the
        projection costs the same and a saved bundle needs no extra array.
        """
        from sklearn.decomposition import PCA

        features = np.asarray(features, dtype=np.float32)
        limit = min(features.shape)
        n = limit if n_components is None else min(n_components, limit)
        solver = "full" if n >= limit or features.shape[0] < 4 * features.shape[1] else "randomized"
        model = PCA(n_components=n, svd_solver=solver, random_state=seed).fit(features)
        components = model.components_
        if whiten_power > 0:
            variance = np.maximum(model.explained_variance_, np.finfo(np.float32).tiny)
            components = components / ((variance / variance.mean()) ** (whiten_power / 2))[:, None]
        return cls(model.mean_, components, model.explained_variance_ratio_)

    def transform_numpy(self, features: np.ndarray) -> np.ndarray:
        """(n, D) float -> (n, d) float32."""
        return (np.asarray(features, dtype=np.float32) - self.mean) @ self.components.T

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """(n, D) tensor -> (n, d) float32 tensor on the same device."""
        key = str(features.device)
        if key not in self._on_device:
            self._on_device[key] = (torch.from_numpy(self.mean).to(features.device),
                                    torch.from_numpy(self.components.T.copy()).to(features.device))
        mean, components_t = self._on_device[key]
        return (features.float() - mean) @ components_t

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"pca_mean": self.mean, "pca_components": self.components,
                "pca_explained_variance_ratio": self.explained_variance_ratio}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "PCAProjection":
        return cls(arrays["pca_mean"], arrays["pca_components"], arrays["pca_explained_variance_ratio"])
