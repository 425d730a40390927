"""Bundles written before the methods redesign (tests/legacy, made by make_fixtures.py with d20b82a) load
as PatchCore and give the same heatmaps and scores; a fresh fit writes the same arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rtg_anomaly import Detector
from rtg_anomaly.bundle import load_bundle
from tests.conftest import tiny_config
from tests.legacy.make_fixtures import CASES, demo_files

LEGACY = Path(__file__).resolve().parent / "legacy"


@pytest.fixture(scope="module")
def legacy_scans(tmp_path_factory) -> dict:
    return demo_files(tmp_path_factory.mktemp("legacy_demo"))


def _expected(case: str) -> tuple[np.ndarray, list[np.ndarray]]:
    data = np.load(LEGACY / case / "expected.npz")
    n = len(data["scores"])
    return data["scores"], [data[f"heatmap{i}"] for i in range(n)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_old_bundle_loads_as_patchcore_and_scores_the_same(case, legacy_scans):
    manifest = json.loads((LEGACY / case / "bundle" / "manifest.json").read_text())
    assert "method" not in manifest and "method" not in manifest["config"]  # really from before the redesign
    detector = Detector.load(LEGACY / case / "bundle", device="cpu")
    assert detector.method_.name == "patchcore" and detector.config.method == "patchcore"
    scores, heatmaps = _expected(case)
    test = legacy_scans["test_good"][:1] + legacy_scans["test_anomalous"][:1]
    for path, score, heatmap in zip(test, scores, heatmaps):
        result = detector.score(path)
        # Same math on the same arrays: identical to the last bit.
        np.testing.assert_array_equal(result.heatmap, heatmap)
        assert result.score == score


@pytest.mark.parametrize("case", sorted(CASES))
def test_fresh_fit_writes_the_old_arrays(case, legacy_scans, tmp_path):
    detector = Detector(tiny_config(**CASES[case]), device="cpu").fit(legacy_scans["train_good"])
    detector.save(tmp_path / "model")
    old_manifest, old_arrays = load_bundle(LEGACY / case / "bundle")
    new_manifest, new_arrays = load_bundle(tmp_path / "model")
    assert sorted(new_arrays) == sorted(old_arrays)
    for name, array in old_arrays.items():
        if np.issubdtype(array.dtype, np.floating):
            # The fixtures were fitted on another machine: torch's CPU matrix kernels are chosen by the CPU's
            # instruction set, so the features (and the memory bank projected from them) can move in the last
            # float32 bits (seen: 6e-6 on a bank of scale 3, 2026-12-06). Same math, same arrays to that.
            scale = float(np.abs(array).max()) or 1.0
            np.testing.assert_allclose(new_arrays[name], array, rtol=0, atol=1e-5 * scale, err_msg=name)
        else:
            np.testing.assert_array_equal(new_arrays[name], array, err_msg=name)
    assert new_manifest["calibration"] == _approx(old_manifest["calibration"])
    assert new_manifest["method"] == {"name": "patchcore", "params": detector.method_.params()}


def _approx(value):
    """``value`` with every float wrapped in ``pytest.approx`` (relative 1e-5): the calibration figures of a fit
    on another machine's float32 kernels (see the arrays above)."""
    if isinstance(value, dict):
        return {key: _approx(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_approx(item) for item in value]
    return pytest.approx(value, rel=1e-5) if isinstance(value, float) else value
