"""Tests for telling whether scans reach the backbone the way the model's clean scans did."""
import numpy as np
import pytest

from rtg_anomaly.scans.intensity import resolved_window
from rtg_anomaly.scans.scan_kinds import kind_mismatch, mixed_kinds, scan_kind


def test_scan_kind_names_dtype_and_channels():
    assert scan_kind(np.zeros((4, 5), np.uint8)) == "uint8 grey"
    assert scan_kind(np.zeros((4, 5), np.uint16)) == "uint16 grey"
    assert scan_kind(np.zeros((4, 5, 3), np.uint8)) == "uint8 RGB"
    assert scan_kind(np.zeros((4, 5), np.float32)) == "float32 grey"


@pytest.mark.parametrize("dtype,window,expected", [
    (np.uint8, "auto", "dtype"), (np.uint16, "auto", "percentile"), (np.float32, "auto", "percentile"),
    (np.uint8, "percentile", "percentile"), (np.uint16, "dtype", "dtype"),
])
def test_resolved_window(dtype, window, expected):
    assert resolved_window(np.dtype(dtype), window) == expected


@pytest.mark.parametrize("kind,fitted,window", [
    ("uint8 grey", {"uint8 grey": 10}, "auto"),
    ("float32 grey", {"uint16 grey": 10}, "auto"),          # both windowed by their own percentiles
    ("uint16 grey", {"uint8 grey": 10}, "percentile"),      # a percentile window for every dtype
    ("uint16 grey", {"uint8 grey": 3, "uint16 grey": 1}, "auto"),  # matches one of the fitted kinds
    ("float64 grey", {"float32 grey": 2}, "dtype"),         # floats: both taken as 0..1
    ("uint16 grey", {}, "auto"),                            # a model saved before kinds were recorded
])
def test_comparable_kinds_give_no_warning(kind, fitted, window):
    assert kind_mismatch(kind, fitted, window) is None


@pytest.mark.parametrize("kind,fitted,window", [
    ("uint16 grey", {"uint8 grey": 10}, "auto"),            # raw 16-bit scans against 8-bit exports
    ("uint8 grey", {"uint16 grey": 10}, "auto"),
    ("uint8 RGB", {"uint8 grey": 10}, "auto"),
    ("uint16 grey", {"float32 grey": 10}, "dtype"),         # 0..65535 against 0..1
])
def test_other_kinds_are_named_in_one_line(kind, fitted, window):
    message = kind_mismatch(kind, fitted, window)
    assert message.startswith(f"{kind} scan, but the model was fitted on 10 {next(iter(fitted))} scans")
    assert "not comparable" in message and "\n" not in message


def test_mixed_clean_kinds():
    assert mixed_kinds({"uint8 grey": 5}, "auto") is None
    assert mixed_kinds({"uint16 grey": 5, "float32 grey": 2}, "auto") is None
    message = mixed_kinds({"uint16 grey": 2, "uint8 grey": 5}, "auto")
    assert message.endswith("5 uint8 grey, 2 uint16 grey; fit one model per kind")  # most frequent first
    assert mixed_kinds({"uint16 grey": 2, "uint8 grey": 5}, "percentile") is None
