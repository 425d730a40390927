"""Detection methods, chosen by name: ``create_method(config)`` builds ``METHODS[config.method]``.

A method learns from clean patch features and scores patches; the pipeline (``Detector``) does
everything else (see ``base.py`` for the contract). ``global_descriptor`` is the whole-scan image score
(``image_score="global"``) that can sit beside any patch method.
"""

from __future__ import annotations

from ..config import DetectorConfig
from .base import FitPlan, PatchMethod, TileFeatures
from .centroid import Centroid
from .global_descriptor import GlobalDescriptor
from .padim import PaDiM
from .patchcore import PatchCore
from .pixel_reconstruction import PixelReconstruction
from .reconstruction import FeatureReconstruction
from .svdd import DeepSVDD

METHODS: dict[str, type[PatchMethod]] = {
    PatchCore.name: PatchCore,
    PaDiM.name: PaDiM,
    Centroid.name: Centroid,
    DeepSVDD.name: DeepSVDD,
    FeatureReconstruction.name: FeatureReconstruction,
}


def method_class(name: str, config: DetectorConfig | None = None) -> type[PatchMethod]:
    """The method class called ``name`` (for ``reconstruction``, the one of ``config.recon_target``);
    ValueError listing the known names otherwise."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None
    if cls is FeatureReconstruction and config is not None and config.recon_target == "pixels":
        return PixelReconstruction
    return cls


def create_method(config: DetectorConfig) -> PatchMethod:
    """An unfitted instance of ``config.method`` with ``config``'s parameters."""
    return method_class(config.method, config)(config)


__all__ = ["METHODS", "Centroid", "DeepSVDD", "FeatureReconstruction", "FitPlan", "GlobalDescriptor", "PaDiM", "PatchCore", "PatchMethod", "PixelReconstruction", "TileFeatures", "create_method",
           "method_class"]
