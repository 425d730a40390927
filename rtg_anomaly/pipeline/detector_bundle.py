"""A fitted ``Detector`` as a bundle folder and back: the manifest and arrays ``Detector.save`` writes, and
the checks ``Detector.load`` makes before it restores one (JSON plus ``.npy`` arrays, never a pickle: bundle.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..backbone.graph_export import GRAPH_KEY, graph_from_bundle
from ..bundle import BundleError, load_bundle
from ..bundle_checks import check_detector_bundle
from ..config import FUSED_RULE, MAP_SCORE_RULE, DetectorConfig
from ..errors import InputError, first_line
from ..methods import GlobalDescriptor, method_class
from .calibration import Calibration


def bundle_contents(detector) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, arrays) of a fitted detector: the JSON-able manifest (config, backbone identity, method
    parameters, calibration, fit record, selection, clean window, exported graph) and every array by name
    (the method's, the whole-scan descriptors', the graph's, the ROI mask's)."""
    import timm  # for its version only; slow to import

    info = detector.extractor.weights_info
    manifest = {
        "package_version": __version__,
        "config": detector.config.to_dict(),
        "backbone": {
            "name": detector.config.backbone,
            "weights_file": None if info["weights"] in ("hub", "random") else Path(info["weights"]).name,
            "weights_source": "file" if info["weights_sha256"] else info["weights"],
            "weights_sha256": info["weights_sha256"],
            "state_dict_sha256": detector.backbone_digest_,
            "feature_dim": detector.extractor.feature_dim,
            "input_size": detector.extractor.input_size,
            "grid": list(detector.extractor.grid),
        },
        "method": {"name": detector.method_.name, "params": detector.method_.params()},
        "calibration": detector.calibration_.to_dict(),
        "fit": {k: v for k, v in detector.fit_info_.items() if k != "seconds"},
        "versions": {"torch": torch.__version__.split("+")[0], "timm": timm.__version__, "numpy": np.__version__},
    }
    if detector.selection_ is not None:
        manifest["selection"] = detector.selection_
    if detector.clean_window_ is not None:
        manifest["clean_window"] = {"low": detector.clean_window_[0], "high": detector.clean_window_[1]}
    arrays = dict(detector.method_.to_arrays())
    graph = detector.graph_
    if graph is not None and graph.entry.get("backbone_state_dict_sha256") == detector.backbone_digest_:
        manifest[GRAPH_KEY] = graph.entry  # kept through calibrate; a refit drops it
        arrays.update(graph.arrays)
    if detector.global_ is not None:
        global_arrays = detector.global_.to_arrays()
        assert not set(global_arrays) & set(arrays), "array names of the method and the global score collide"
        arrays.update(global_arrays)
    if detector.config.roi == "file":
        if detector.roi_mask is None:
            raise InputError("the ROI mode is 'file' but no ROI mask was given to save with the model")
        assert "roi_mask" not in arrays, "a method's array is named roi_mask"
        arrays["roi_mask"] = np.ascontiguousarray(detector.roi_mask, dtype=np.uint8)  # 1 = inside
    return manifest, arrays


def restore_detector(cls, folder: str | os.PathLike, device: str | torch.device = "auto",
                     runtime: str = "auto"):
    """The ``cls`` (a Detector class) stored in bundle ``folder``, its backbone loaded and checked against the
    bundle's digest; BundleError (one line) for a bundle that is invalid, incomplete or built on other weights."""
    manifest, arrays = load_bundle(folder)  # one read: config and arrays from the same save
    check_detector_bundle(folder, manifest, arrays)
    try:
        config = DetectorConfig.from_dict(manifest["config"])
        if config.image_score == "auto":  # a fit always records the rule "auto" resolved to
            if "image_score" in manifest["config"]:
                raise ValueError("image_score 'auto' was never resolved by a fit")
            config = config.replace(image_score=MAP_SCORE_RULE)  # bundles older than the rule: its default
        calibration = Calibration.from_dict(manifest["calibration"])
        backbone = manifest["backbone"]
        # Bundles from before methods had a name hold PatchCore's arrays (and no "method" entry).
        method_name = manifest.get("method", {"name": "patchcore"})["name"]
        method_cls = method_class(method_name, config)
        if method_name != config.method:
            raise ValueError(f"the method {method_name!r} is not the config's {config.method!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"model bundle {folder} has an invalid manifest: {first_line(exc)}") from None
    detector = cls(config, device=device, runtime=runtime)
    detector.graph_ = graph_from_bundle(folder, manifest, arrays)
    extractor = detector.extractor
    if extractor.digest != backbone.get("state_dict_sha256"):
        raise BundleError(
            f"model bundle {folder} was fitted with other backbone weights than {config.backbone!r} "
            f"loaded from {extractor.weights_info['weights']}; refit or pass the original weights"
        )
    try:
        detector.method_ = method_cls.from_arrays(config, arrays, extractor.feature_dim)
        detector.global_ = (GlobalDescriptor.from_arrays(arrays, extractor.feature_dim,
                                                         fused=config.image_score == FUSED_RULE)
                            if detector._uses_descriptors else None)
    except KeyError as exc:
        raise BundleError(f"model bundle {folder} lacks array {exc}") from None
    except ValueError as exc:
        raise BundleError(f"model bundle {folder} does not fit {config.backbone!r}: {exc}") from None
    if config.roi == "file":
        mask = arrays.get("roi_mask")
        if mask is None or mask.ndim != 2 or mask.dtype.kind not in "biu" or not mask.any():
            raise BundleError(f"model bundle {folder}: its ROI mode is 'file' but it holds no usable roi_mask "
                              "(a 2-D array of 0/1 with some 1)")
        detector.roi_mask = mask.astype(bool)
    detector.calibration_ = calibration
    detector.backbone_digest_ = backbone["state_dict_sha256"]
    detector.fit_info_ = dict(manifest.get("fit", {}))
    selection = manifest.get("selection")
    detector.selection_ = selection if isinstance(selection, dict) else None
    window = manifest.get("clean_window")  # checked by check_detector_bundle
    detector.clean_window_ = None if window is None else (float(window["low"]), float(window["high"]))
    return detector
