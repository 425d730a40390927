"""Accepted ranges of every numeric setting, shared by ``DetectorConfig`` (flags, bundles) and the CLI.

The upper bounds keep the work bounded: a Gaussian sigma of ``inf`` patches grew to 23 GB before it was
killed, and a tile of 10**6 pixels or a batch of 10**6 tiles would do the same. Each bound is far beyond
any setting that served a real data set (docs/benchmarks.md); non-finite values (NaN, inf) are never
accepted, since NaN compares false against every bound and would slip through a plain comparison.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of ints or floats; ``integer`` ranges refuse fractions and bools."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        def show(bound: float) -> str:
            return str(int(bound)) if self.integer else f"{bound:g}"

        kind = "an integer" if self.integer else "a number"
        return f"{kind} in {'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"


FRACTION_OPEN_LOW = Range(0.0, 1.0, low_open=True)
SHARE = Range(0.0, 1.0, low_open=True, high_open=True)

# DetectorConfig field -> accepted values (None, where a field allows it, is checked by the config).
SETTING_RANGES: dict[str, Range] = {
    "tile_size": Range(8, 8192, integer=True),
    "overlap": Range(0.0, 0.9),
    "input_size": Range(8, 2048, integer=True),
    "neighbourhood": Range(1, 31, integer=True),
    "pca_dim": Range(1, 4096, integer=True),
    "pca_whiten": Range(0.0, 1.0),
    "coreset_ratio": FRACTION_OPEN_LOW,
    "memory_bank_size": Range(1, 1_000_000, integer=True),
    "k": Range(1, 1000, integer=True),
    "smoothing_sigma": Range(0.0, 16.0),
    "top_fraction": FRACTION_OPEN_LOW,
    "top_patches": Range(1, 2**31 - 1, integer=True),  # more than a scan has: all of them, harmless
    "holdout_fraction": Range(0.0, 0.9),
    "max_bank_size": Range(1, 10_000_000, integer=True),
    "max_patches_per_scan": Range(1, 10_000_000, integer=True),
    "batch_size": Range(1, 1024, integer=True),
    "padim_features": Range(1, 4096, integer=True),
    "svdd_dim": Range(1, 4096, integer=True),
    "svdd_epochs": Range(1, 10_000, integer=True),
    "svdd_cache_rows": Range(1_000, 50_000_000, integer=True),
    "recon_dim": Range(4, 4096, integer=True),
    "recon_layers": Range(1, 32, integer=True),
    "recon_dropout": Range(0.0, 0.9),
    "recon_epochs": Range(1, 10_000, integer=True),
    "recon_cache_rows": Range(1_000, 50_000_000, integer=True),
    "recon_latent": Range(2, 4096, integer=True),
    "recon_min_steps": Range(0, 10_000_000, integer=True),
    "recon_feature_weight": Range(0.0, 1000.0),
    "recon_refine_steps": Range(0, 10_000, integer=True),
}
LAYER_INDEX = Range(-64, 64, integer=True)
# The only timm.create_model arguments a config (and so a bundle from a stranger) may set: architecture
# sizes. Anything else could make timm read a file (checkpoint_path, pretrained_cfg_overlay) or the network.
MODEL_KWARGS: dict[str, Range] = {
    "depth": Range(1, 64, integer=True), "embed_dim": Range(1, 8192, integer=True),
    "num_heads": Range(1, 128, integer=True), "mlp_ratio": Range(0.0, 16.0, low_open=True),
    "patch_size": Range(1, 64, integer=True), "img_size": Range(8, 2048, integer=True),
}
FALSE_ALARM_RATE = SHARE
