"""The whole-scan image scores as a method of their own: ``global``, a scan's descriptor against the
nearest clean scan's (see ``descriptor.py`` for the descriptor and why it suits image-level data), and
``scan_centroid``, the good-only rule: the scan's unit-length mean patch feature against the unit-length
centroid of the clean scans' ones, ``1 - f . c``.

It scores whole scans, not patches, so it is composed with a patch method (which still draws the map)
rather than listed beside them; it has its own calibration unit (``Calibration.image_level``).
"""

from __future__ import annotations

import numpy as np

from ..descriptor import DescriptorBank


class GlobalDescriptor:
    """Clean scan descriptors; a scan scores the centred cosine distance to the nearest one.

    Fitted state: bank_ (DescriptorBank: centre (E,), rows (N, E), E = 2 x feature size).
    """

    name = "global"

    def __init__(self) -> None:
        self.bank_: DescriptorBank | None = None
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

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.bank_.to_arrays()

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], feature_dim: int) -> "GlobalDescriptor":
        """KeyError for a missing array, ValueError when the arrays do not fit each other or ``feature_dim``."""
        method = cls()
        method.bank_ = DescriptorBank.from_arrays(arrays)
        if method.bank_.centre.size != 2 * feature_dim:
            raise ValueError("the descriptor bank does not match the backbone's feature size")
        return method
