"""Mapping raw detector values (8-bit, 16-bit, float) to [0, 1] before the backbone."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import torch

# Pixels of each clean scan pooled for the clean window: enough for its 0.5 % tails, cheap for huge scans.
CLEAN_WINDOW_VALUES_PER_SCAN = 65_536


def window_limits(image: np.ndarray, window: str = "auto",
                  percentiles: tuple[float, float] = (0.5, 99.5),
                  clean_limits: tuple[float, float] | None = None) -> tuple[float, float]:
    """Raw values (low, high) that map to 0 and 1 for this scan.

    window:
      ``"dtype"``: the dtype's full range (uint8 -> 0..255, uint16 -> 0..65535;
      floats are taken as already in [0, 1]).
      ``"percentile"``: the ``percentiles`` (low, high) of this scan. Robust to
      the narrow band of the 16-bit range a detector uses and to exposure
      changes between scans; a local anomaly barely moves it.
      ``"clean"``: ``clean_limits``, the range the model's clean scans use
      (``clean_window``, learned at fit): the same for every scan, so an anomaly
      cannot move it, however much of a small scan it fills.
      ``"auto"``: ``"dtype"`` for 8-bit scans, ``"percentile"`` for deeper ones.
    """
    window = resolved_window(image.dtype, window)
    if window == "dtype":
        high = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
        return 0.0, high
    if window == "percentile":
        return _ordered(*np.percentile(_subsample(image), percentiles))
    if window == "clean":
        if clean_limits is None:
            raise ValueError("the clean intensity window is learned at fit: no clean limits were given")
        return float(clean_limits[0]), float(clean_limits[1])
    raise ValueError(f"unknown intensity window {window!r}")


def resolved_window(dtype: np.dtype, window: str) -> str:
    """The window a scan of ``dtype`` gets: ``window`` itself, or for ``"auto"`` ``"dtype"`` (uint8) or
    ``"percentile"`` (every other dtype)."""
    if window == "auto":
        return "dtype" if np.dtype(dtype) == np.uint8 else "percentile"
    return window


def clean_window(scans: Iterable[np.ndarray], percentiles: tuple[float, float] = (0.5, 99.5),
                 values_per_scan: int = CLEAN_WINDOW_VALUES_PER_SCAN) -> tuple[float, float] | None:
    """The raw range (low, high) that clean scans use: the ``percentiles`` of their pooled values, each scan
    contributing a regular subsample of at most ``values_per_scan`` pixels (so a large scan weighs no more
    than a small one). None when ``scans`` is empty; ``high > low`` always."""
    pooled = [_subsample(np.asarray(scan), values_per_scan) for scan in scans]
    if not pooled:
        return None
    return _ordered(*np.percentile(np.concatenate([values.astype(np.float64) for values in pooled]), percentiles))


def _ordered(low: float, high: float) -> tuple[float, float]:
    """(low, high) as floats, ``high`` one raw unit above ``low`` when the values were constant."""
    return float(low), float(high) if high > low else float(low) + 1.0


def apply_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """float32 array of the same shape, ``(values - low) / (high - low)`` clipped to [0, 1]."""
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def to_device_float(values: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """Upload raw values as they are and convert them to float32 on ``device``.

    uint16 travels as its 2 bytes per pixel (torch has few uint16 kernels, so it is
    reinterpreted as int16 and unwrapped on the device), uint8 and int16 as themselves;
    other dtypes are converted to float32 on the host first. Same shape as ``values``; always
    a new tensor, so it can be windowed in place.
    """
    values = np.ascontiguousarray(values)
    if values.dtype == np.uint16:
        return (_host_tensor(values.view(np.int16)).to(device).to(torch.int32) & 0xFFFF).to(torch.float32)
    if values.dtype not in (np.uint8, np.int16, np.float32):
        values = values.astype(np.float32)
    return _host_tensor(values).to(device).to(torch.float32, copy=True)  # never aliases the caller's array


def _host_tensor(values: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without its warning for read-only arrays: the tensor is only read (copied)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(values)


def apply_window_torch(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``apply_window`` on a float32 tensor, in place: the same float32 arithmetic, so equal results."""
    values.sub_(float(np.float32(low))).mul_(float(np.float32(1.0 / (high - low))))
    return values.clamp_(0.0, 1.0)


def normalise_intensity(image: np.ndarray, window: str = "auto",
                        percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Window a whole scan into float32 values in [0, 1], same shape as ``image``."""
    return apply_window(image, *window_limits(image, window, percentiles))


def _subsample(values: np.ndarray, max_values: int = 1_000_000) -> np.ndarray:
    """A regular subsample of pixels, so percentiles of huge scans stay cheap."""
    flat = values.reshape(-1)
    step = max(1, flat.size // max_values)
    return flat[::step]
