"""What every detection method provides to the pipeline.

The pipeline (``rtg_anomaly.pipeline.detector.Detector``) owns everything shared: reading and windowing scans,
tiling, the backbone, the valid-patch mask, stitching, smoothing, calibration, overlays and the bundle
file. A method owns only what is specific to it:

* what it learns from clean patch features, streamed one view of one clean scan at a time
  (``learn``), turned into its fitted state by ``finish``;
* how it scores the patches of a batch of tiles (``score``);
* its fitted state as named plain arrays plus a small JSON dict of parameters (``to_arrays``,
  ``params``, ``from_arrays``), so a bundle never holds a pickle.

Fitting runs in two rounds: ``learn`` over the training scans, ``finish``; the pipeline scores the
held-out clean scans with that state to calibrate, then ``learn`` over the held-out scans' features and
``finish`` again, so they join the model without changing its scale (a method keeps whatever sets its
units, e.g. PatchCore its PCA, from the first ``finish``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from ..config import DetectorConfig


class TileFeatures(NamedTuple):
    """Patch features of a scan's tiles as the backbone gives them.

    features: float32 (T, h, w, D) on the device, T tiles of an h x w patch grid.
    valid: bool (T, h, w) on the same device: True where the patch centre lies inside the scan (tiles
        at the far edges of a scan are padded; their outer patches see padding only).
    """

    features: torch.Tensor
    valid: torch.Tensor


def tile_means(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(T, D) mean of each tile's patch features inside the scan, in the features' dtype."""
    weights = valid.to(features.dtype)[..., None]
    return (features * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1.0)


class TileCache:
    """A bound on the clean tiles a training method keeps: each training view may add an equal share of
    ``max_rows`` patch rows, as whole tiles with a patch inside the scan (a seeded subset beyond the
    share), stored float16 on the host.

    add: float (T, h, w, D) features and bool (T, h, w) valid of one view. take: (float32 (N, h, w, D),
    bool (N, h, w)) of every tile added, in order, emptying the cache.
    """

    def __init__(self, max_rows: int, training_views: int, seed: int):
        self.rows_per_view = max(1, max_rows // max(1, training_views))
        self.seed = seed
        self.views = 0
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, features: torch.Tensor, valid: torch.Tensor) -> None:
        seen = torch.nonzero(valid.flatten(1).any(1)).flatten().cpu()
        wanted = max(1, self.rows_per_view // (features.shape[1] * features.shape[2]))
        if seen.numel() > wanted:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.views)
            seen = seen[torch.randperm(seen.numel(), generator=generator)[:wanted]].sort().values
        index = seen.to(features.device)
        self.parts.append((features[index].to(torch.float16).cpu(), valid[index].cpu()))
        self.views += 1

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        tiles = torch.cat([t for t, _ in self.parts]).float()
        valid = torch.cat([v for _, v in self.parts])
        self.parts = []
        return tiles, valid


@dataclass(frozen=True)
class FitPlan:
    """What the pipeline knows before the first clean view arrives.

    training_views: views the first round may learn from (training scans x views per scan; unreadable
        scans make the real count smaller). all_views: training and held-out scans' views together.
    """

    training_views: int
    all_views: int


class PatchMethod:
    """Base class of a method that scores backbone patch features.

    config: the detector's settings (a method reads its own fields from them).
    Fitted state ends in ``_`` and exists after ``finish`` or ``from_arrays``.
    """

    name: ClassVar[str] = ""
    # Extra views of each training scan (augmentation names) that ``learn_auxiliary`` wants, e.g. rotations
    # for a self-supervised pretext task; the pipeline then also passes the upright view as "upright".
    auxiliary_views: tuple[str, ...] = ()
    # Whether ``leave_out`` can score as if one scan had not been learned (config.calibration "leave_one_out").
    can_leave_out: ClassVar[bool] = False

    def __init__(self, config: DetectorConfig):
        self.config = config
        self.show_progress = False  # set by the pipeline: a method that trains may show a progress bar

    # ------------------------------------------------------------------ fit
    def begin(self, plan: FitPlan) -> None:
        """Start a fit: forget any previous one."""
        raise NotImplementedError

    def learn(self, features: torch.Tensor, valid: torch.Tensor) -> None:
        """Learn from one view of one clean scan: its tiles' float32 (T, h, w, D) patch features and the
        bool (T, h, w) mask of patches inside the scan (see TileFeatures), on the backbone's device."""
        raise NotImplementedError

    def learn_auxiliary(self, view: str, features: torch.Tensor, valid: torch.Tensor) -> None:
        """One auxiliary view ("upright" or a name from ``auxiliary_views``) of a training scan, shaped as in
        ``learn``. Only called when ``auxiliary_views`` is not empty."""

    def progress_postfix(self) -> dict:
        """Figures for the fit progress bar (e.g. the memory bank's size so far)."""
        return {}

    def finish(self, device: torch.device) -> None:
        """Build (first call) or rebuild (after more ``learn`` calls) the fitted state; ``device`` is where
        heavy work may run."""
        raise NotImplementedError

    def leave_out(self, views: range):
        """A context manager inside which scores are those of the method fitted without the learned views
        ``views`` (indices in learning order), after ``finish`` in the same process. Only when
        ``can_leave_out`` (leave-one-scan-out calibration; other methods calibrate on held-out scans)."""
        raise NotImplementedError(f"{self.name} cannot leave a scan out of its fitted state")

    # ------------------------------------------------------------------ score
    def prepare(self, device: torch.device, runtime: str) -> None:
        """Called before scoring on ``device`` with the backbone run by ``runtime`` ("torch" or
        "openvino"): a method may upload its state or compile an operator here (cache it)."""

    def score(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Raw anomaly scores (higher = more anomalous) of a batch of tiles' patches.

        features: float (B, h, w, D) on the device given to ``prepare``; valid: bool (B, h, w), the
        patches inside the scan (the others' scores are ignored, but a method may not pool them in).
        Returns float32 (B, h, w) on the same device.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def params(self) -> dict:
        """JSON-ready parameters the fitted state was built with (recorded in the bundle)."""
        return {}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as named plain arrays."""
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, config: DetectorConfig, arrays: dict[str, np.ndarray], feature_dim: int) -> "PatchMethod":
        """Inverse of ``to_arrays``. Raises KeyError for a missing array and ValueError when the arrays do
        not fit each other or ``feature_dim`` (the backbone's patch feature size)."""
        raise NotImplementedError

    def fit_info(self) -> dict:
        """JSON-ready facts about the fitted state for ``Detector.fit_info_`` (e.g. its size)."""
        return {}

    def describe(self) -> str:
        """One phrase for the fit summary line, e.g. ``memory bank 5120 x 128``."""
        return self.name
