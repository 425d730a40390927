"""Exported backbone graphs in the bundle: the contract recorded, the checks that cover them, every runtime
that runs them, and one-line refusals (tiny random backbone; the real-data parity is test_realdata_export.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from rtg_anomaly import Detector
from rtg_anomaly.bundle import BundleError, content_digest, load_bundle, seal
from rtg_anomaly.cli import main
from rtg_anomaly.backbone.graph_export import GRAPH_KEY, onnxruntime_runner

onnx = pytest.importorskip("onnx")  # the [onnx] extra is in the test extra: present wherever tests run
import onnxruntime  # noqa: E402

TOLERANCE = 1e-4  # float32 graphs: heatmap difference relative to the map's largest value


@pytest.fixture()
def bundle(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle, free to export into and damage."""
    return shutil.copytree(tiny_bundle, tmp_path / "model")


def _export(bundle, fmt="onnx", precision="fp32", *extra) -> int:
    return main(["export", "--model", str(bundle), "--format", fmt, "--precision", precision, *extra])


def _detect(bundle, scan, tmp_path, runtime, name=None) -> tuple[int, np.ndarray | None, dict | None]:
    name = name or runtime
    heat, report = tmp_path / f"{name}.npy", tmp_path / f"{name}.json"
    code = main(["detect", "--input", str(scan), "--output", str(tmp_path / f"{name}.png"), "--model", str(bundle),
                 "--device", "cpu", "--runtime", runtime, "--heatmap", str(heat), "--report", str(report), "--quiet"])
    if code:
        return code, None, None
    return code, np.load(heat), json.loads(report.read_text())


@pytest.fixture()
def scan(demo_data):
    return sorted((demo_data / "test" / "anomalous").iterdir())[0]


def test_onnx_export_records_the_contract_and_is_covered_by_the_bundle_checks(bundle, tiny_detector, capsys):
    assert _export(bundle) == 0
    assert "as onnx fp32" in capsys.readouterr().out
    manifest, arrays = load_bundle(bundle)
    entry = manifest[GRAPH_KEY]
    assert entry["format"] == "onnx" and entry["precision"] == "fp32" and entry["arrays"] == ["graph_onnx"]
    assert entry["input"]["shape"] == ["batch", 3, 56, 56] and entry["input"]["normalisation"]["inside_graph"]
    assert entry["output"]["shape"] == ["batch", *tiny_detector.extractor.grid, tiny_detector.extractor.feature_dim]
    assert entry["backbone_state_dict_sha256"] == manifest["backbone"]["state_dict_sha256"]
    data = (bundle / "graph_onnx.npy").read_bytes()
    assert manifest["arrays"]["graph_onnx"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["content_sha256"] == content_digest(manifest)  # the seal covers the graph's entry
    graph = arrays["graph_onnx"].tobytes()
    onnx.checker.check_model(onnx.load_from_string(graph))
    # Dynamic batch; normalisation inside: windowed tiles in, the torch features out.
    extractor = tiny_detector.extractor
    tiles = np.random.default_rng(1).random((3, 64, 64), dtype=np.float32)
    run = onnxruntime_runner(graph, torch.device("cpu"), 1)
    expected = extractor._forward_in(extractor.to_input(tiles), autocast=False)
    for batch in (extractor.graph_input(tiles[:1]), extractor.graph_input(tiles)):
        got = run(batch)
        assert got.shape == (len(batch), *expected.shape[1:])
        assert float((got - expected[: len(batch)]).abs().max()) < TOLERANCE * float(expected.abs().max())


@pytest.mark.parametrize("fmt, precision, runtimes, relative", [
    ("onnx", "fp32", ("onnxruntime", "openvino", "auto"), TOLERANCE),
    ("openvino", "fp32", ("openvino", "auto"), TOLERANCE),
    ("openvino", "fp16", ("openvino",), 2e-3),
])
def test_every_runtime_scores_the_exported_graph_like_torch(bundle, scan, tmp_path, fmt, precision, runtimes, relative):
    _, expected, _ = _detect(bundle, scan, tmp_path, "torch")
    assert _export(bundle, fmt, precision) == 0
    for runtime in runtimes:
        code, heatmap, report = _detect(bundle, scan, tmp_path, runtime)
        assert code == 0
        assert report["backbone_graph"] == {"format": fmt, "precision": precision, "source": "bundle"}
        assert report["runtime"] == (runtime if runtime != "auto" else "openvino")  # auto: fastest here
        assert np.abs(heatmap - expected).max() < relative * np.abs(expected).max()


def test_int8_export_is_calibrated_on_clean_tiles_and_runs_on_both_runtimes(bundle, scan, demo_data, tmp_path, capsys):
    clean = demo_data / "train" / "good"
    assert _export(bundle, "onnx", "int8", "--clean-dir", str(clean), "--calibration-tiles", "8") == 0
    entry = load_bundle(bundle)[0][GRAPH_KEY]
    assert entry["quantisation"]["calibration_tiles"] == 8 and entry["quantisation"]["quant_format"] == "QDQ"
    model = onnx.load_from_string(np.load(bundle / "graph_onnx.npy").tobytes())
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    _, expected, _ = _detect(bundle, scan, tmp_path, "torch")
    for runtime in ("onnxruntime", "openvino", "auto"):
        code, heatmap, report = _detect(bundle, scan, tmp_path, runtime)
        assert code == 0 and report["backbone_graph"]["precision"] == "int8"
        assert report["runtime"] == (runtime if runtime != "auto" else "onnxruntime")
        # The random tiny backbone's features are noise-like, the hardest case for 8 bits: a loose bound.
        assert np.abs(heatmap - expected).max() < 0.2 * np.abs(expected).max()


def test_openvino_int8_is_quantised_by_nncf_on_clean_tiles_and_runs_on_openvino(bundle, scan, demo_data, tmp_path):
    clean = demo_data / "train" / "good"
    assert _export(bundle, "openvino", "int8", "--clean-dir", str(clean), "--calibration-tiles", "8") == 0
    manifest = load_bundle(bundle)[0]
    entry = manifest[GRAPH_KEY]
    assert entry["quantisation"]["quantiser"].startswith("nncf ") and entry["quantisation"]["calibration_tiles"] == 8
    assert entry["exporter"].endswith("quantised by NNCF")
    assert b'type="FakeQuantize"' in np.load(bundle / "graph_openvino_xml.npy").tobytes()
    first = hashlib.sha256(np.load(bundle / "graph_openvino_bin.npy").tobytes()).hexdigest()
    _, expected, _ = _detect(bundle, scan, tmp_path, "torch")
    for runtime in ("openvino", "auto"):
        code, heatmap, report = _detect(bundle, scan, tmp_path, runtime)
        assert code == 0 and report["backbone_graph"] == {"format": "openvino", "precision": "int8", "source": "bundle"}
        assert report["runtime"] == "openvino"
        assert np.abs(heatmap - expected).max() < 0.2 * np.abs(expected).max()  # noise-like tiny backbone
    # the same clean tiles give the same quantised graph
    assert _export(bundle, "openvino", "int8", "--clean-dir", str(clean), "--calibration-tiles", "8") == 0
    assert hashlib.sha256(np.load(bundle / "graph_openvino_bin.npy").tobytes()).hexdigest() == first


def test_missing_nncf_is_one_line_exit_2(bundle, demo_data, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nncf", None)
    assert _export(bundle, "openvino", "int8", "--clean-dir", str(demo_data / "train" / "good")) == 2
    assert capsys.readouterr().err.strip() == ("rtg-anomaly: error: --format openvino --precision int8 quantises "
                                               "with NNCF: pip install 'rtg-anomaly[int8]'")
    assert load_bundle(bundle)[0].get(GRAPH_KEY) is None  # the bundle is left as it was


def test_export_refusals_are_one_line(bundle, demo_data, capsys):
    assert _export(bundle, "onnx", "int8") == 2
    assert capsys.readouterr().err.strip() == ("rtg-anomaly: error: --precision int8 needs --clean-dir: clean scans "
                                               "to calibrate the quantisation on")
    assert _export(bundle, "onnx", "fp32", "--clean-dir", str(demo_data / "train" / "good")) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert _export(bundle, "tflite") == 2
    assert "invalid choice" in capsys.readouterr().err
    assert _export(bundle, "onnx", "int8", "--clean-dir", str(demo_data), "--calibration-tiles", "0") == 2
    assert "--calibration-tiles" in capsys.readouterr().err
    assert main(["export", "--model", str(bundle.parent / "absent"), "--format", "onnx"]) == 2
    assert "no model bundle" in capsys.readouterr().err


def test_a_tampered_graph_file_is_refused_before_it_runs(bundle, scan, tmp_path, capsys):
    assert _export(bundle) == 0
    path = bundle / "graph_onnx.npy"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one weight byte
    path.write_bytes(bytes(data))
    code, _, _ = _detect(bundle, scan, tmp_path, "onnxruntime")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "checksum mismatch in graph_onnx.npy" in err and "\n" not in err
    path.write_bytes(bytes(data) + b"\0" * 70_000)  # larger than its manifest entry: refused before reading
    assert _detect(bundle, scan, tmp_path, "onnxruntime")[0] == 2
    assert "more than its manifest entry declares" in capsys.readouterr().err


def _resealed_with_other_graph(bundle, other_bundle):
    """``bundle`` with ``other_bundle``'s graph file and entry, checksums and seal made consistent: what a
    careless copy between bundles gives."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    other = json.loads((other_bundle / "manifest.json").read_text())
    shutil.copy(other_bundle / "graph_onnx.npy", bundle / "graph_onnx.npy")
    manifest["arrays"]["graph_onnx"] = other["arrays"]["graph_onnx"]
    manifest[GRAPH_KEY] = {**other[GRAPH_KEY], "backbone_state_dict_sha256": manifest["backbone"]["state_dict_sha256"]}
    (bundle / "manifest.json").write_text(json.dumps(seal(manifest)))


def test_a_graph_from_other_weights_is_refused_by_its_features(bundle, tmp_path, scan, capsys):
    from tests.conftest import tiny_config

    assert _export(bundle) == 0
    other = Detector(tiny_config(seed=7), device="cpu")  # other random weights, same architecture
    other.fit(sorted((scan.parent.parent.parent / "train" / "good").iterdir())).save(tmp_path / "other")
    assert _export(tmp_path / "other") == 0
    _resealed_with_other_graph(bundle, tmp_path / "other")
    code, _, _ = _detect(bundle, scan, tmp_path, "onnxruntime")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not exported from these weights" in err and "\n" not in err
    code, heatmap, report = _detect(bundle, scan, tmp_path, "auto")  # auto: a note, and torch scores
    assert code == 0 and report["runtime"] == "torch" and report["backbone_graph"] is None
    assert "note: running the backbone with torch" in capsys.readouterr().err


def test_graph_entry_problems_are_bundle_errors(bundle):
    assert _export(bundle) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest[GRAPH_KEY]["arrays"] = ["memory_bank"]
    (bundle / "manifest.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(BundleError, match="must list the arrays"):
        Detector.load(bundle, device="cpu", runtime="torch")


def test_calibrate_keeps_the_exported_graph(bundle, demo_data):
    assert _export(bundle, "openvino") == 0
    before = load_bundle(bundle)[0]
    assert main(["calibrate", "--clean-dir", str(demo_data / "test" / "good"), "--model", str(bundle),
                 "--device", "cpu", "--runtime", "torch"]) == 0
    after = load_bundle(bundle)[0]
    assert after[GRAPH_KEY] == before[GRAPH_KEY]
    assert after["arrays"]["graph_openvino_bin"] == before["arrays"]["graph_openvino_bin"]


def test_missing_onnxruntime_is_one_line_exit_2(bundle, scan, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert _detect(bundle, scan, tmp_path, "onnxruntime")[0] == 2
    assert capsys.readouterr().err.strip() == ("rtg-anomaly: error: the onnxruntime runtime needs the onnxruntime "
                                               "package: pip install 'rtg-anomaly[onnx]'")


def test_auto_without_openvino_picks_onnxruntime(monkeypatch):
    from rtg_anomaly.backbone.features import resolve_runtime

    cpu = torch.device("cpu")
    assert resolve_runtime("auto", cpu) == "openvino"
    assert resolve_runtime("auto", cpu, "onnx") == "openvino"  # OpenVINO runs ONNX graphs, and faster here
    assert resolve_runtime("auto", cpu, "onnx", "int8") == "onnxruntime"  # OpenVINO's int8 lost AUROC
    assert resolve_runtime("auto", cpu, "openvino", "int8") == "openvino"  # NNCF's int8 IR is OpenVINO's
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert resolve_runtime("auto", cpu) == "onnxruntime"
    assert resolve_runtime("auto", cpu, "onnx") == "onnxruntime"
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"


def test_onnxruntime_on_cuda_needs_the_cuda_provider():
    from rtg_anomaly.backbone.openvino_runtime import RuntimeUnavailable

    graph = b"not read: the provider is checked first"
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider (the GPU path is exercised on a GPU machine)")
    with pytest.raises(RuntimeUnavailable, match="no CUDA provider"):
        onnxruntime_runner(graph, torch.device("cuda"), 1)


def test_bf16_graph_computes_in_bfloat16_where_the_cpu_does_and_in_float32_elsewhere(bundle, scan, tmp_path,
                                                                                     monkeypatch, capsys):
    import rtg_anomaly.backbone.graph_export as graph_export

    compiled_with = []
    real_runner = graph_export.openvino_runner

    def recording_runner(model, weights, threads, precision="fp32"):
        compiled_with.append(precision)
        return real_runner(model, weights, threads, precision)

    monkeypatch.setattr(graph_export, "openvino_runner", recording_runner)
    _, expected, _ = _detect(bundle, scan, tmp_path, "torch")
    assert _export(bundle, "openvino", "bf16") == 0
    out, err = capsys.readouterr()
    assert "as openvino bf16" in out and err.count("\n") == 1
    assert ("computes in bfloat16" if graph_export.cpu_computes_bf16() else "no native bfloat16") in err
    entry = load_bundle(bundle)[0][GRAPH_KEY]
    assert entry["precision"] == "bf16" and compiled_with == ["bf16"]  # checked at export as it will run
    native = graph_export.cpu_computes_bf16()
    for runtime in ("openvino", "auto"):
        code, heatmap, report = _detect(bundle, scan, tmp_path, runtime)
        assert code == 0 and report["runtime"] == "openvino"
        assert report["backbone_graph"] == {"format": "openvino", "precision": "bf16" if native else "fp32",
                                            "source": "bundle"}
        # 8 bits of mantissa: the tiny random backbone's noise-like features move the most (real data:
        # test_realdata_export.py, docs/precision.md).
        assert np.abs(heatmap - expected).max() < 0.1 * np.abs(expected).max()
    # A CPU without bfloat16 runs the same graph in float32: the torch heatmap to float32 precision.
    monkeypatch.setattr(graph_export, "cpu_computes_bf16", lambda: False)
    code, heatmap, report = _detect(bundle, scan, tmp_path, "openvino")
    assert code == 0 and report["backbone_graph"]["precision"] == "fp32"
    assert np.abs(heatmap - expected).max() < TOLERANCE * np.abs(expected).max()


def test_bf16_is_refused_for_onnx_in_one_line_and_in_a_tampered_entry(bundle, capsys):
    assert _export(bundle, "onnx", "bf16") == 2
    assert capsys.readouterr().err.strip() == ("rtg-anomaly: error: bf16 is a compute precision of OpenVINO on the "
                                               "CPU: export it with --format openvino")
    assert load_bundle(bundle)[0].get(GRAPH_KEY) is None
    assert _export(bundle) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest[GRAPH_KEY]["precision"] = "bf16"  # an ONNX graph claiming bf16
    (bundle / "manifest.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(BundleError, match="unknown format or precision"):
        Detector.load(bundle, device="cpu", runtime="torch")
