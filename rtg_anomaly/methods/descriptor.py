"""Whole-scan descriptors for the ``global`` image score.

A scan's descriptor is the per-channel mean and standard deviation of all its
patch features, each half scaled to unit length. Clean descriptors form a small
bank; a new scan scores the cosine distance from its descriptor to the nearest
clean one, both taken relative to the clean descriptors' mean (centred cosine:
without centring, what every scan shares dominates the angle).

This suits image-level data, where a crop or a part is anomalous as a whole and
the anomaly spans most of it (32 px casting crops: image AUROC 0.965 against
0.841 for the top-patch score, docs/benchmarks.md). On large scans with a
small local defect, the patch scores are the better evidence; on scans fitted
whole into one tile the default joins the two (``patch_or_global``,
methods/global_descriptor.py).
"""

from __future__ import annotations

import numpy as np
import torch

_EPS = 1e-12


class DescriptorAccumulator:
    """Running per-channel sums of patch features, so a scan never holds all its patches.

    add: (n, D) features of any float dtype, on any device. descriptor: float32 (2 * D,).
    """

    def __init__(self) -> None:
        self.count = 0
        self._sum: torch.Tensor | None = None
        self._sum_sq: torch.Tensor | None = None

    def add(self, features: torch.Tensor) -> None:
        if features.ndim != 2:
            raise ValueError(f"features must be (n, D), got shape {tuple(features.shape)}")
        if features.shape[0] == 0:
            return
        # float64 sums: E[x^2] - E[x]^2 in float32 would cancel badly over a million patches.
        values = features.detach().to(torch.float64)
        total, total_sq = values.sum(0), (values * values).sum(0)
        if self._sum is None:
            self._sum, self._sum_sq = total, total_sq
        else:
            self._sum += total.to(self._sum.device)
            self._sum_sq += total_sq.to(self._sum.device)
        self.count += int(features.shape[0])

    def descriptor(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no patch features were added")
        mean = (self._sum / self.count).cpu().numpy()
        variance = np.maximum((self._sum_sq / self.count).cpu().numpy() - mean * mean, 0.0)
        return np.concatenate([_unit(mean), _unit(np.sqrt(variance))]).astype(np.float32)


def scan_descriptor(features: torch.Tensor) -> np.ndarray:
    """float32 (2 * D,) descriptor of one scan's (n, D) patch features."""
    accumulator = DescriptorAccumulator()
    accumulator.add(features)
    return accumulator.descriptor()


class DescriptorBank:
    """Clean scan descriptors, centred on their mean and scaled to unit length.

    centre: float32 (E,), the mean of the descriptors the bank was built from;
    rows: float32 (N, E), unit-length centred clean descriptors.
    """

    def __init__(self, centre: np.ndarray, rows: np.ndarray):
        self.centre = np.ascontiguousarray(centre, dtype=np.float32)
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.rows.ndim != 2 or self.rows.shape[1] != self.centre.shape[0]:
            raise ValueError(f"descriptor rows {self.rows.shape} do not match the centre {self.centre.shape}")

    @classmethod
    def fit(cls, descriptors: np.ndarray) -> "DescriptorBank":
        """Bank of (N, E) clean descriptors; the centre is their mean (zero for N = 1,
        where centring would leave nothing to compare with: plain cosine then)."""
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[0] == 0:
            raise ValueError("need at least one clean descriptor")
        centre = descriptors.mean(0) if descriptors.shape[0] > 1 else np.zeros(descriptors.shape[1], np.float32)
        return cls(centre, _centred_unit(descriptors, centre))

    def extended(self, descriptors: np.ndarray) -> "DescriptorBank":
        """A bank with more clean descriptors, centred on the same centre (scores stay comparable)."""
        extra = _centred_unit(np.asarray(descriptors, dtype=np.float32).reshape(-1, self.centre.size), self.centre)
        return DescriptorBank(self.centre, np.concatenate([self.rows, extra]))

    def distance(self, descriptor: np.ndarray) -> float:
        """Centred cosine distance in [0, 2] from (E,) ``descriptor`` to its nearest clean row."""
        query = _centred_unit(np.asarray(descriptor, dtype=np.float32).reshape(1, -1), self.centre)[0]
        return float(max(0.0, 1.0 - float((self.rows @ query).max())))

    def centroid_distance(self, descriptor: np.ndarray) -> float:
        """Cosine distance ``1 - f . c`` in [0, 2] of the scan's unit-length mean patch feature ``f`` (the
        first half of its (E,) descriptor) from ``c``, the unit-length mean of the clean scans' ones.

        ``c`` comes from the centre, the mean of the clean descriptors the bank was built from (for a
        one-scan bank, whose centre is zero, from its one row), so it needs no state of its own.
        """
        half = self.centre.size // 2
        source = self.centre if np.any(self.centre) else self.rows.mean(0)
        centroid = _unit(source[:half].astype(np.float64))
        scan = _unit(np.asarray(descriptor, dtype=np.float64).reshape(-1)[:half])
        return float(min(2.0, max(0.0, 1.0 - float(scan @ centroid))))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"descriptor_centre": self.centre, "descriptor_bank": self.rows}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "DescriptorBank":
        return cls(arrays["descriptor_centre"], arrays["descriptor_bank"])


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), _EPS)


def _centred_unit(descriptors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    centred = descriptors - centre
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), _EPS)
