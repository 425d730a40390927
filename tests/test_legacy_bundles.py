"""Bundles written before the methods redesign (tests/legacy, made by make_fixtures.py with d20b82a) load
as PatchCore and give the same heatmaps and scores; a fresh fit writes the same arrays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rtg_anomaly import Detector
from rtg_anomaly.bundle import BundleError, load_bundle
from tests.legacy.make_fixtures import CASES, case_config, demo_files

LEGACY = Path(__file__).resolve().parent / "legacy"


@pytest.fixture(scope="module")
def legacy_scans(tmp_path_factory) -> dict:
    return demo_files(tmp_path_factory.mktemp("legacy_demo"))


def _expected(case: str) -> tuple[np.ndarray, list[np.ndarray]]:
    data = np.load(LEGACY / case / "expected.npz")
    n = len(data["scores"])
    return data["scores"], [data[f"heatmap{i}"] for i in range(n)]


def _bundle_for_this_cpu(case: str, tmp_path: Path) -> tuple[Path, bool]:
    """The fixture bundle, and whether this machine builds its random backbone bit for bit.

    The fixtures' backbone is timm's seeded random init, and its values depend on the CPU: torch picks its
    vectorised kernels by instruction set, so an AVX-512 machine draws weights a few float32 bits away from
    the fixture machine's (seen 2026-12-07), and the load rightly refuses their digest. There, a copy whose
    manifest names this machine's digest stands in: the arrays, calibration and format are the old ones."""
    bundle = LEGACY / case / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    local = Detector(case_config(case), device="cpu").extractor.digest
    if manifest["backbone"]["state_dict_sha256"] == local:
        return bundle, True
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest["backbone"]["state_dict_sha256"] = local
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy, False


@pytest.mark.parametrize("case", sorted(CASES))
def test_old_bundle_loads_as_patchcore_and_scores_the_same(case, legacy_scans, tmp_path):
    manifest = json.loads((LEGACY / case / "bundle" / "manifest.json").read_text())
    assert "method" not in manifest and "method" not in manifest["config"]  # really from before the redesign
    bundle, same_backbone = _bundle_for_this_cpu(case, tmp_path)
    detector = Detector.load(bundle, device="cpu")
    assert detector.method_.name == "patchcore" and detector.config.method == "patchcore"
    scores, heatmaps = _expected(case)
    test = legacy_scans["test_good"][:1] + legacy_scans["test_anomalous"][:1]
    for path, score, heatmap in zip(test, scores, heatmaps):
        result = detector.score(path)
        if same_backbone:  # same math on the same arrays: identical to the last bit
            np.testing.assert_array_equal(result.heatmap, heatmap)
            assert result.score == score
        else:  # the same arrays through a backbone a few float32 bits away
            scale = float(np.abs(heatmap).max())
            np.testing.assert_allclose(result.heatmap, heatmap, rtol=0, atol=1e-4 * scale)
            assert result.score == pytest.approx(score, rel=1e-4)


def test_a_bundle_with_another_backbone_digest_is_refused(tmp_path):
    """What the stand-in above relies on: the load checks the digest (a changed one is refused)."""
    copy = tmp_path / "bundle"
    shutil.copytree(LEGACY / "patchcore_default" / "bundle", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["backbone"]["state_dict_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match="other backbone weights"):
        Detector.load(copy, device="cpu")


@pytest.mark.parametrize("case", sorted(CASES))
def test_fresh_fit_writes_the_old_arrays(case, legacy_scans, tmp_path):
    detector = Detector(case_config(case), device="cpu").fit(legacy_scans["train_good"])
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
