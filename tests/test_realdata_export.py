"""Parity of exported graphs on real data with the real DINOv2 weights: every runtime and precision against
torch float32 (largest heatmap difference in calibrated units, 1.0 = the clean level), the same image-score
ranking, and an exported graph scoring the same in a fresh process.

Kept small for the 2-core CPU: GDXray fishbones (100x100 crops, one tile each), fitted on 6 clean crops,
4 test crops (2 clean, 2 with bones), int8 calibrated on 6 tiles.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rtg_anomaly import Detector, DetectorConfig
from tests.conftest import REPO_ROOT, shared_data_dir

pytestmark = pytest.mark.realdata
pytest.importorskip("onnxruntime")

# Largest heatmap difference from torch float32 allowed, calibrated units (the pixel threshold is ~1.2-2).
FP32_TOLERANCE = 1e-3
# int8 is not within the tolerance (docs/precision.md): this bounds its error. Measured 0.31 here since
# the default fits the tile to these 100 px crops (scale_to_scans, 2026-12-05; 0.25 held at the 512 px tile), and
# 0.352 since the map has no Gaussian to average the int8 error away (2026-12-07).
INT8_TOLERANCE = 0.4
# NNCF's int8 OpenVINO IR (transformer scheme), on the same crops: measured 0.313 (ONNX Runtime's: 0.309), and
# 0.324 without the map's Gaussian (ONNX Runtime's: 0.352).
NNCF_TOLERANCE = 0.4
# OpenVINO computing in bfloat16 (a CPU with AVX-512 BF16 or AMX): within the 0.05 (docs/precision.md:
# 0.013 castings, 0.037 welds); in float32 on a CPU without it.
BF16_TOLERANCE = 0.05


def evenly(paths, n):
    paths = sorted(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)]


@pytest.fixture(scope="module")
def fishbones():
    root = shared_data_dir() / "gdxray_fishbones"
    if not root.is_dir():
        pytest.fail(f"{root} is missing from the shared data")
    return root


@pytest.fixture(scope="module")
def exported(fishbones, tmp_path_factory):
    """(folder, {name: bundle}, test scans, torch heatmaps, torch scores): the fitted bundle and copies of it
    with an ONNX fp32 graph, ONNX Runtime's int8 ONNX graph, NNCF's int8 OpenVINO IR and a bf16 OpenVINO IR."""
    folder = tmp_path_factory.mktemp("export")
    train = evenly((fishbones / "train" / "good").iterdir(), 6)
    Detector(DetectorConfig(), device="cpu", runtime="openvino").fit(train).save(folder / "plain")
    bundles = {"plain": folder / "plain"}
    for name, fmt, precision in (("fp32", "onnx", "fp32"), ("int8", "onnx", "int8"), ("nncf", "openvino", "int8"),
                                 ("bf16", "openvino", "bf16")):
        detector = Detector.load(folder / "plain", device="cpu", runtime="torch")
        detector.export_graph(fmt, precision, train, calibration_tiles=6)
        bundles[name] = detector.save(folder / name)
    scans = evenly((fishbones / "test" / "good").iterdir(), 2) + evenly((fishbones / "test" / "fishbone").iterdir(), 2)
    reference = Detector.load(bundles["plain"], device="cpu", runtime="torch")
    results = [reference.score(scan) for scan in scans]
    return folder, bundles, scans, [r.heatmap for r in results], np.array([r.score for r in results])


# OpenVINO running ONNX Runtime's int8 graph is left out: it is not usable (image AUROC 0.35 instead of 0.92 on
# castings, docs/precision.md), so auto never picks it; OpenVINO runs NNCF's int8 IR instead.
@pytest.mark.parametrize("bundle, runtime, tolerance, same_ranking", [
    ("plain", "openvino", FP32_TOLERANCE, True),  # converted from torch at load
    ("fp32", "onnxruntime", FP32_TOLERANCE, True),
    ("fp32", "openvino", FP32_TOLERANCE, True),
    ("int8", "onnxruntime", INT8_TOLERANCE, False),  # int8 reordered castings scans (docs/precision.md)
    ("nncf", "openvino", NNCF_TOLERANCE, False),
    ("bf16", "openvino", BF16_TOLERANCE, True),
])
def test_every_runtime_and_precision_scores_like_torch_fp32(exported, bundle, runtime, tolerance, same_ranking):
    _, bundles, scans, expected_maps, expected_scores = exported
    detector = Detector.load(bundles[bundle], device="cpu", runtime=runtime)
    assert detector.extractor.runtime == runtime
    assert (detector.extractor.graph_info or {}).get("source") == ("converted" if bundle == "plain" else "bundle")
    if bundle == "bf16":
        from rtg_anomaly.backbone.graph_export import cpu_computes_bf16

        assert detector.extractor.runtime_label == ("openvino bf16" if cpu_computes_bf16() else "openvino fp32") \
            + " (bundle openvino graph)"
    results = [detector.score(scan) for scan in scans]
    difference = max(float(np.abs(r.heatmap - m).max()) for r, m in zip(results, expected_maps))
    assert difference <= tolerance
    scores = np.array([r.score for r in results])
    if same_ranking:
        assert list(np.argsort(scores)) == list(np.argsort(expected_scores))
    else:  # int8: still tells the bone crops from the clean ones here
        assert scores[2:].min() > scores[:2].max() or expected_scores[2:].min() <= expected_scores[:2].max()


def test_an_exported_graph_scores_the_same_in_a_fresh_process(exported):
    folder, bundles, scans, _, _ = exported
    in_process = Detector.load(bundles["fp32"], device="cpu", runtime="onnxruntime").score(scans[-1]).heatmap
    heatmap = folder / "fresh.npy"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-m", "rtg_anomaly", "detect", "--input", str(scans[-1]), "--output",
                           str(folder / "fresh.png"), "--model", str(bundles["fp32"]), "--device", "cpu",
                           "--runtime", "onnxruntime", "--heatmap", str(heatmap), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=str(REPO_ROOT))
    assert done.returncode == 0, done.stderr
    assert "backbone on onnxruntime fp32 (bundle onnx graph)" in done.stdout
    assert float(np.abs(np.load(heatmap) - in_process).max()) <= 1e-5
