"""What a detector bundle must hold beyond a valid format: checked before the backbone is built.

``bundle.load_bundle`` vouches for the format, the checksums and each array against its own manifest
entry; these checks vouch that the values make a working detector: the manifest sections have the
right types, the arrays fit each other (memory bank width = PCA output, PCA input = descriptor half),
and nothing that feeds a score or a threshold is empty, NaN or infinite (a NaN threshold flags nothing,
a NaN in the bank makes every distance NaN). Each failure is one BundleError line.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np

from .bundle import BundleError

CALIBRATION_NUMBERS = ("clean_level", "image_threshold", "pixel_threshold", "false_alarm_rate")


def check_detector_bundle(folder, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """BundleError naming the first problem of a detector bundle's manifest sections and arrays.

    manifest: as ``load_bundle`` returns it; needs objects ``config``, ``calibration`` and ``backbone``
        (``fit`` and ``selection`` optional; ``clean_window`` {low, high} where the config's intensity window
        is ``"clean"``). The config's own values are checked by DetectorConfig.
    arrays: PatchCore's ``memory_bank`` float (M, d), M >= 1; ``pca_mean`` (D,), ``pca_components`` (d, D),
        ``pca_explained_variance_ratio`` (d,); optional ``descriptor_centre`` (E,), ``descriptor_bank`` (n, E),
        ``descriptor_fusion`` 2-D (its values are checked by ``GlobalDescriptor.from_arrays``).
        Other methods' arrays are checked by their ``from_arrays`` (shapes against each other and the
        backbone, finite values).
    """
    problem = _manifest_problem(manifest) or _array_problem(arrays)
    if problem:
        raise BundleError(f"model bundle {Path(folder)}: {problem}")


def _manifest_problem(manifest: dict) -> str | None:
    for key in ("config", "calibration", "backbone"):
        if not isinstance(manifest.get(key), dict):
            found = "missing" if key not in manifest else f"a {type(manifest[key]).__name__}"
            return f"'{key}' in the manifest must be an object, found {found}"
    for key in ("fit",):
        if key in manifest and not isinstance(manifest[key], dict):
            return f"'{key}' in the manifest must be an object"
    method = manifest.get("method", {"name": "patchcore"})
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        return "'method' in the manifest must be an object with a name"
    digest = manifest["backbone"].get("state_dict_sha256")
    if not isinstance(digest, str):
        return "the manifest's backbone has no state_dict_sha256"
    return _clean_window_problem(manifest) or _calibration_problem(manifest["calibration"])


def _clean_window_problem(manifest: dict) -> str | None:
    """The clean intensity window (detector.py): absent, or finite low < high; required by a "clean" config."""
    entry = manifest.get("clean_window")
    if entry is None:
        if manifest["config"].get("intensity_window") == "clean":
            return "its intensity window is 'clean' but it holds no clean_window"
        return None
    low, high = (entry.get(key) if isinstance(entry, dict) else None for key in ("low", "high"))
    if not (_finite(low) and _finite(high) and high > low):
        return f"invalid clean_window (expected finite low < high): {entry!r}"
    return None


def _calibration_problem(calibration: dict) -> str | None:
    for key in CALIBRATION_NUMBERS:
        if not _finite(calibration.get(key)):
            return f"calibration value {key} must be a finite number, found {calibration.get(key)!r}"
    if calibration["clean_level"] <= 0:
        return f"calibration value clean_level must be positive, found {calibration['clean_level']!r}"
    if not 0 < calibration["false_alarm_rate"] < 1:
        return f"calibration false_alarm_rate must be in (0, 1), found {calibration['false_alarm_rate']!r}"
    level = calibration.get("image_level")
    if level is not None and not (_finite(level) and level > 0):
        return f"calibration value image_level must be a positive finite number or null, found {level!r}"
    for key in ("image_scores", "pixel_maxima"):
        values = calibration.get(key)
        if not isinstance(values, list) or not all(_finite(v) for v in values):
            return f"calibration {key} must be a list of finite numbers"
    quantiles = calibration.get("pixel_quantiles")
    if not isinstance(quantiles, dict) or not all(_finite(v) for v in quantiles.values()):
        return "calibration pixel_quantiles must map quantiles to finite numbers"
    n_scans = calibration.get("n_scans")
    if not isinstance(n_scans, int) or isinstance(n_scans, bool) or n_scans < 0:
        return f"calibration n_scans must be a count, found {n_scans!r}"
    if not isinstance(calibration.get("method"), str):
        return "calibration method must be a name"
    rule = calibration.get("threshold_rule")
    if rule is not None:
        from .pipeline.calibration import ThresholdRule
        from .errors import InputError

        try:
            ThresholdRule.from_dict(rule)
        except (InputError, TypeError) as exc:
            return f"calibration threshold_rule is not a valid rule: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    warnings = calibration.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        return "calibration warnings must be a list of strings"
    return None


def _array_problem(arrays: dict[str, np.ndarray]) -> str | None:
    expected = {"memory_bank": 2, "pca_mean": 1, "pca_components": 2, "pca_explained_variance_ratio": 1,
                "descriptor_centre": 1, "descriptor_bank": 2, "descriptor_fusion": 2}
    for name, ndim in expected.items():
        if name not in arrays:
            continue  # a missing array is reported by the loader, which knows which ones it needs
        array = arrays[name]
        if array.ndim != ndim or array.dtype.kind != "f":
            return f"array {name} must be a {ndim}-D float array, found {array.dtype} {array.shape}"
        if not np.isfinite(array).all():
            return f"array {name} holds NaN or infinite values"
    bank, mean, components = (arrays.get(n) for n in ("memory_bank", "pca_mean", "pca_components"))
    if bank is not None and (bank.shape[0] == 0 or bank.shape[1] == 0):
        return f"the memory bank is empty ({bank.shape[0]} x {bank.shape[1]})"
    if mean is not None and components is not None and components.shape[1] != mean.shape[0]:
        return f"pca_components {components.shape} do not fit pca_mean {mean.shape}"
    if components is not None and components.shape[0] == 0:
        return "pca_components keep no direction"
    ratio = arrays.get("pca_explained_variance_ratio")
    if components is not None and ratio is not None and ratio.shape[0] != components.shape[0]:
        return f"pca_explained_variance_ratio {ratio.shape} does not fit pca_components {components.shape}"
    if bank is not None and components is not None and bank.shape[1] != components.shape[0]:
        return f"the memory bank's width {bank.shape[1]} is not the PCA output size {components.shape[0]}"
    centre, rows = arrays.get("descriptor_centre"), arrays.get("descriptor_bank")
    if rows is not None and (rows.shape[0] == 0 or (centre is not None and rows.shape[1] != centre.shape[0])):
        return f"descriptor_bank {rows.shape} is empty or does not fit descriptor_centre"
    if centre is not None and mean is not None and centre.shape[0] != 2 * mean.shape[0]:
        return f"descriptor_centre {centre.shape} does not fit the feature size {mean.shape[0]}"
    return None


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
