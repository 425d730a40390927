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
        np.testing.assert_array_equal(new_arrays[name], array, err_msg=name)
    assert new_manifest["calibration"] == old_manifest["calibration"]
    assert new_manifest["method"] == {"name": "patchcore", "params": detector.method_.params()}
