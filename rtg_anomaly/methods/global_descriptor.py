"""The whole-scan image scores as a method of their own: ``global``, a scan's descriptor against the
nearest clean scan's (see ``descriptor.py`` for the descriptor and why it suits image-level data), and
``scan_centroid``, the good-only rule: the scan's unit-length mean patch feature against the unit-length
centroid of the clean scans' ones, ``1 - f . c``.

It scores whole scans, not patches, so it is composed with a patch method (which still draws the map)
rather than listed beside them; it has its own calibration unit (``Calibration.image_level``).

``patch_or_global`` joins the two kinds of evidence: a defect that fills a small crop changes the crop's
feature statistics (the descriptor sees it, the top patches dilute it), a thin local one changes a few
patches (the reverse). Each score is put on the scale of the held-out clean scans: a normal fit to their
values gives its tail probability ``p``, and the scan scores the surprisal ``-log p`` of the less likely of
the two. The fit's two means and spreads are the fitted state ``fusion_``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from .descriptor import DescriptorBank

# The spread of a fused score never falls below this share of its mean: identical held-out values would
# otherwise make every departure infinitely surprising.
_MIN_RELATIVE_SPREAD = 1e-3
_MAX_Z = 1e6
FUSED_PARTS = ("patches", "whole scan")  # the two parts of ``patch_or_global``, in ``fusion_``'s row order


class GlobalDescriptor:
    """Clean scan descriptors; a scan scores the centred cosine distance to the nearest one.

    Fitted state: bank_ (DescriptorBank: centre (E,), rows (N, E), E = 2 x feature size); fusion_ (only for
    ``patch_or_global``): float64 (2, 2), the held-out clean scans' mean and standard deviation (columns) of the
    top-patch score and of the descriptor distance (rows), else None.
    """

    name = "global"

    def __init__(self) -> None:
        self.bank_: DescriptorBank | None = None
        self.fusion_: np.ndarray | None = None
        self._pending: list[np.ndarray] = []

    def learn(self, descriptor: np.ndarray) -> None:
        """One clean view's float32 (E,) descriptor (``descriptor.scan_descriptor``)."""
        self._pending.append(descriptor)

    def finish(self) -> None:
        """Build the bank from the descriptors learned (first call), or add the ones learned since; the
        centre stays that of the first round, so scores keep their scale."""
        if self._pending:
            pending = np.stack(self._pending)
            self.bank_ = DescriptorBank.fit(pending) if self.bank_ is None else self.bank_.extended(pending)
        self._pending = []

    def distance(self, descriptor: np.ndarray) -> float:
        """Raw image score of a scan's (E,) descriptor: centred cosine distance in [0, 2]."""
        return self.bank_.distance(descriptor)

    def centroid_distance(self, descriptor: np.ndarray) -> float:
        """Raw ``scan_centroid`` image score of a scan's (E,) descriptor: cosine distance in [0, 2]."""
        return self.bank_.centroid_distance(descriptor)

    def fit_fusion(self, patch_scores: np.ndarray, distances: np.ndarray) -> None:
        """Fit ``fusion_`` to held-out clean scans' raw top-patch scores and descriptor distances, (n,) each,
        n >= 2 (the spread needs two). ValueError otherwise."""
        values = np.stack([np.asarray(patch_scores, np.float64), np.asarray(distances, np.float64)])
        if values.ndim != 2 or values.shape[1] < 2 or not np.all(np.isfinite(values)):
            raise ValueError("the fusion needs two or more finite held-out scores of each kind")
        mean = values.mean(1)
        spread = np.maximum(values.std(1, ddof=1), _MIN_RELATIVE_SPREAD * np.abs(mean) + 1e-12)
        self.fusion_ = np.stack([mean, spread], axis=1)

    def fused(self, patch_score: float, distance: float) -> float:
        """Raw ``patch_or_global`` score (>= 0): the surprisal ``-log p`` of the less likely of the scan's top-patch
        score and descriptor distance, ``p`` each one's upper tail under its normal fit (``fusion_``)."""
        return self.fused_with_part(patch_score, distance)[0]

    def fused_with_part(self, patch_score: float, distance: float) -> tuple[float, str]:
        """``fused`` and which part set it: ``"patches"`` or ``"whole scan"`` (the less likely one)."""
        if self.fusion_ is None:
            raise RuntimeError("fit_fusion was not run")
        with np.errstate(over="ignore"):  # an overflow is an infinite z, capped below
            z = (np.array([patch_score, distance], np.float64) - self.fusion_[:, 0]) / self.fusion_[:, 1]
        # Beyond a million spreads the order of two scans no longer matters, and -log p of a larger z would
        # overflow to infinity (a non-finite score breaks every report).
        part = FUSED_PARTS[int(np.argmax(z))]
        return float(-log_ndtr(-min(float(z.max()), _MAX_Z))), part

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = self.bank_.to_arrays()
        if self.fusion_ is not None:
            arrays["descriptor_fusion"] = self.fusion_.astype(np.float64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], feature_dim: int, fused: bool = False) -> "GlobalDescriptor":
        """KeyError for a missing array (``descriptor_fusion`` is needed with ``fused``), ValueError when the
        arrays do not fit each other or ``feature_dim``."""
        method = cls()
        method.bank_ = DescriptorBank.from_arrays(arrays)
        if method.bank_.centre.size != 2 * feature_dim:
            raise ValueError("the descriptor bank does not match the backbone's feature size")
        if fused and "descriptor_fusion" not in arrays:
            raise KeyError("descriptor_fusion")
        if "descriptor_fusion" in arrays:
            fusion = np.asarray(arrays["descriptor_fusion"], np.float64)
            if (fusion.shape != (2, 2) or not np.all(np.isfinite(fusion))
                    or not np.all(fusion[:, 1] >= _MIN_RELATIVE_SPREAD * np.abs(fusion[:, 0]))
                    or not np.all(fusion[:, 1] > 0)):
                raise ValueError("descriptor_fusion must be finite (2, 2) means and spreads, each spread positive "
                                 "and at least 0.001 of its mean, as a fit writes them")
            method.fusion_ = fusion
        return method
