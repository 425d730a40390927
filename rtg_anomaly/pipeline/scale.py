"""The scale at which the backbone sees a scan, fitted to the size of the clean scans.

A tile of ``tile_size`` scan pixels is resized to ``input_size`` backbone pixels, so the *zoom* is
``input_size / tile_size`` and one feature cell covers ``tile_size / (input_size / patch)`` scan pixels.
Scans smaller than a tile used to be mirror-padded up to it: a 100 px scan inside a 512 px tile is a fifth
of the backbone's view, the rest is mirrored copies (four times the work, and seams that are not in any
scan). Fitted to the scans, the tile shrinks to the clean scans' typical shorter side and the input shrinks
with it, so the zoom (scan pixels per cell) stays what the config says, except that the input never drops
below ``MIN_INPUT``: a small scan is magnified until its grid has at least 16 cells a side.

Only scans under half a tile a side are refitted (``SMALL_SCAN_SHARE``): there at least three quarters of the
backbone's view would be mirrored copies. A scan of most of a tile keeps the configured tile: mirrored
context of up to half the view costs little, and on the shared welds (median side 378 px, 0.74 of a tile)
refitting lost 0.016 image AUROC (docs/defaults.md), so the rule leaves such scans alone.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..config import DetectorConfig

SMALL_SCAN_SHARE = 0.5  # refit only scans whose median shorter side is below this share of the tile side
MIN_INPUT = 224  # backbone pixels: a 16 x 16 grid of 14 px ViT patches, 7 x 7 cells of a CNN's stride 32


def input_multiple(backbone: str) -> int:
    """The size a backbone's input must be a multiple of: the ViT patch (``patch14`` in the timm name),
    else 32 (the output stride of the CNNs timm offers)."""
    for patch in (8, 14, 16, 32):
        if f"patch{patch}" in backbone:
            return patch
    return 32


def shorter_sides(items: Sequence) -> list[int]:
    """The shorter side (px) of each clean scan: arrays by their shape, files by their header alone (nothing
    decoded); a file whose header cannot be read is left out (its full read reports why, later)."""
    import numpy as np

    from ..scans.io import image_shape

    shapes = [item.shape[:2] if isinstance(item, np.ndarray) else image_shape(item) for item in items]
    return [min(shape) for shape in shapes if shape is not None]


def fit_scale_to_scans(config: DetectorConfig, shorter_sides: Sequence[int],
                       small_scan_share: float = SMALL_SCAN_SHARE) -> DetectorConfig:
    """``config`` with its tile and input size fitted to clean scans whose shorter sides are given (px).

    Unchanged when the median shorter side is at least ``small_scan_share`` of a tile, or when the config
    has no input size (the backbone's own). Otherwise the tile is that median side and the input keeps the config's zoom, rounded
    to the backbone's multiple and kept within [``MIN_INPUT``, the config's input size].
    """
    sides = sorted(int(s) for s in shorter_sides if s and s > 0)
    if not sides or config.input_size is None:
        return config
    median = sides[(len(sides) - 1) // 2]
    if median >= small_scan_share * config.tile_size:
        return config
    multiple = input_multiple(config.backbone)
    zoomed = median * config.input_size / config.tile_size
    size = max(MIN_INPUT, int(math.ceil(zoomed / multiple)) * multiple)
    size = min(size, config.input_size)
    return config.replace(tile_size=median, input_size=size)
