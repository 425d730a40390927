"""The OpenVINO runtime: same features and heatmaps as torch, clear one-line refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from rtg_anomaly import Detector
from rtg_anomaly.cli import main
from rtg_anomaly.backbone.features import FeatureExtractor, resolve_runtime
from rtg_anomaly.backbone.openvino_runtime import RuntimeUnavailable, compile_for_cpu
from tests.conftest import tiny_config


def _tiles(count: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).random((count, size, size), dtype=np.float32)


@pytest.mark.parametrize("changes", [dict(), dict(layers=(0, 1), neighbourhood=3)])
def test_openvino_features_match_torch_for_any_batch_size(changes):
    config = tiny_config(batch_size=2, **changes)
    reference = FeatureExtractor(config, "cpu")
    converted = FeatureExtractor(config, "cpu", runtime="openvino")
    assert converted.runtime == "openvino" and converted._compiled is not None
    assert (converted.grid, converted.feature_dim) == (reference.grid, reference.feature_dim)
    tiles = _tiles(5)  # batches of 2, 2 and 1: the batch axis is dynamic
    expected, got = reference.embed(tiles), converted.embed(tiles)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())


def test_openvino_results_do_not_alias_between_calls():
    # At the compiled call itself: embed's torch.cat would copy and hide an aliased result.
    extractor = FeatureExtractor(tiny_config(batch_size=1), "cpu", runtime="openvino")
    tiles = _tiles(2)
    held = extractor._compiled(extractor.to_input(tiles[:1]))
    first = held.clone()
    extractor._compiled(extractor.to_input(tiles[1:]))  # the request's output buffer is rewritten here
    assert torch.equal(held, first)


def test_detector_scores_the_same_with_either_runtime(tiny_detector, tiny_bundle, demo_data):
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    expected = Detector.load(tiny_bundle, device="cpu", runtime="torch").score(scan)
    got = Detector.load(tiny_bundle, device="cpu", runtime="openvino").score(scan)
    scale = float(np.abs(expected.heatmap).max())
    assert np.abs(got.heatmap - expected.heatmap).max() < 1e-4 * scale
    assert got.score == pytest.approx(expected.score, rel=1e-4)


def test_cli_detect_with_openvino_runtime_writes_the_torch_heatmap(demo_data, tiny_bundle, tmp_path, capsys):
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    maps = {}
    for runtime in ("torch", "openvino"):
        heat = tmp_path / f"{runtime}.npy"
        code = main(["detect", "--input", str(scan), "--output", str(tmp_path / f"{runtime}.png"),
                     "--model", str(tiny_bundle), "--device", "cpu", "--runtime", runtime, "--heatmap", str(heat)])
        assert code == 0, capsys.readouterr().err
        maps[runtime] = np.load(heat)
    assert np.abs(maps["openvino"] - maps["torch"]).max() < 1e-4 * np.abs(maps["torch"]).max()


def test_openvino_refuses_an_accelerator_device():
    with pytest.raises(RuntimeUnavailable, match="CPU only"):
        FeatureExtractor(tiny_config(), torch.device("cuda"), runtime="openvino")


def test_unknown_runtime_is_refused():
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'tensorrt'"):
        FeatureExtractor(tiny_config(), "cpu", runtime="tensorrt")


def test_missing_openvino_package_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'rtg-anomaly\[openvino\]'") as raised:
        FeatureExtractor(tiny_config(), "cpu", runtime="openvino")
    assert "\n" not in str(raised.value)


def test_missing_openvino_package_cli_exit_code(monkeypatch, tiny_bundle, demo_data, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    out = tmp_path / "overlay.png"
    code = main(["detect", "--input", str(scan), "--output", str(out), "--model", str(tiny_bundle),
                 "--device", "cpu", "--runtime", "openvino"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "openvino" in err and "Traceback" not in err


def test_conversion_failure_is_one_clear_line():
    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise ValueError("unsupported operator\nlong details")

    with pytest.raises(RuntimeUnavailable, match="^OpenVINO cannot convert this backbone: ") as raised:
        compile_for_cpu(broken, torch.zeros(2, 3, 8, 8), threads=1)
    assert "\n" not in str(raised.value)


# ------------------------------------------------------------------ converted-model cache
def _cache_entries(root) -> list:
    return sorted(p for p in (root / "openvino").iterdir() if not p.name.startswith("."))


def _refuse_conversion(monkeypatch):
    import openvino

    def refuse(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this graph")

    monkeypatch.setattr(openvino, "convert_model", refuse)


def test_second_process_reads_the_converted_graph_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RTG_ANOMALY_CACHE_DIR", str(tmp_path))
    config = tiny_config(batch_size=2)
    tiles = _tiles(3)
    first = FeatureExtractor(config, "cpu", runtime="openvino")
    (entry,) = _cache_entries(tmp_path)
    assert (entry / "model.xml").is_file() and (entry / "model.bin").stat().st_size > 0
    _refuse_conversion(monkeypatch)
    second = FeatureExtractor(config, "cpu", runtime="openvino")
    expected = FeatureExtractor(config, "cpu").embed(tiles)
    assert torch.equal(second.embed(tiles), first.embed(tiles))
    assert float((second.embed(tiles) - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    # another layer choice is another graph: a second entry, the first one untouched
    monkeypatch.undo()
    monkeypatch.setenv("RTG_ANOMALY_CACHE_DIR", str(tmp_path))
    FeatureExtractor(tiny_config(batch_size=2, layers=(0,)), "cpu", runtime="openvino")
    assert len(_cache_entries(tmp_path)) == 2 and entry in _cache_entries(tmp_path)


@pytest.mark.parametrize("damage", ["zeroed weights", "truncated weights", "garbled graph"])
def test_a_damaged_cache_entry_is_converted_again_and_replaced(monkeypatch, tmp_path, damage):
    monkeypatch.setenv("RTG_ANOMALY_CACHE_DIR", str(tmp_path))
    config = tiny_config(batch_size=2)
    FeatureExtractor(config, "cpu", runtime="openvino")
    (entry,) = _cache_entries(tmp_path)
    weights, graph = entry / "model.bin", entry / "model.xml"
    good_weights = weights.read_bytes()
    if damage == "zeroed weights":  # reads and compiles fine, but computes other features
        weights.write_bytes(bytes(len(good_weights)))
    elif damage == "truncated weights":
        weights.write_bytes(good_weights[: len(good_weights) // 2])
    else:
        graph.write_text("<net broken")
    tiles = _tiles(3)
    expected = FeatureExtractor(config, "cpu").embed(tiles)
    got = FeatureExtractor(config, "cpu", runtime="openvino").embed(tiles)
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    assert _cache_entries(tmp_path) == [entry] and weights.read_bytes() == good_weights


def test_cache_off_or_unwritable_still_converts(monkeypatch, tmp_path):
    config = tiny_config(batch_size=2)
    tiles = _tiles(2)
    expected = FeatureExtractor(config, "cpu").embed(tiles)
    monkeypatch.setenv("RTG_ANOMALY_CACHE_DIR", "off")
    got = FeatureExtractor(config, "cpu", runtime="openvino").embed(tiles)
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RTG_ANOMALY_CACHE_DIR", str(blocker))
    got = FeatureExtractor(config, "cpu", runtime="openvino").embed(tiles)
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    assert blocker.read_text() == "not a folder"


def test_model_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from rtg_anomaly.backbone.openvino_runtime import model_cache_dir

    monkeypatch.setenv("RTG_ANOMALY_CACHE_DIR", str(tmp_path / "mine"))
    assert model_cache_dir() == tmp_path / "mine"
    for off in ("", "off", "OFF", "none"):
        monkeypatch.setenv("RTG_ANOMALY_CACHE_DIR", off)
        assert model_cache_dir() is None
    monkeypatch.delenv("RTG_ANOMALY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "rtg-anomaly"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir() == tmp_path / "home" / ".cache" / "rtg-anomaly"


# ------------------------------------------------------------------ runtime "auto" (the default)
def test_auto_runtime_picks_openvino_on_the_cpu_when_installed():
    config = tiny_config(batch_size=2)
    auto = FeatureExtractor(config, "cpu", runtime="auto")
    assert auto.runtime == "openvino" and auto.runtime_fallback is None and auto._compiled is not None
    tiles = _tiles(3)
    expected = FeatureExtractor(config, "cpu", runtime="torch").embed(tiles)
    assert float((auto.embed(tiles) - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    assert Detector(config, device="cpu").extractor.runtime == "openvino"  # the library's default is auto


def test_auto_runtime_is_torch_on_an_accelerator_or_without_openvino_and_onnxruntime(monkeypatch):
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"
    assert resolve_runtime("openvino", torch.device("cpu")) == "openvino"
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert resolve_runtime("auto", torch.device("cpu")) == "torch"
    extractor = FeatureExtractor(tiny_config(), "cpu", runtime="auto")
    assert extractor.runtime == "torch" and extractor._compiled is None and extractor.runtime_fallback is None


def _failing_conversion(monkeypatch):
    import rtg_anomaly.backbone.features as features

    def fail(*args, **kwargs):
        raise RuntimeUnavailable("OpenVINO cannot convert this backbone: unsupported operator aten::odd")

    monkeypatch.setattr(features, "compile_for_cpu", fail)


def test_auto_runtime_falls_back_to_torch_when_conversion_fails(monkeypatch):
    _failing_conversion(monkeypatch)
    extractor = FeatureExtractor(tiny_config(), "cpu", runtime="auto")
    assert extractor.runtime == "torch" and extractor._compiled is None
    assert "unsupported operator aten::odd" in extractor.runtime_fallback
    tiles = _tiles(2)
    assert torch.equal(extractor.embed(tiles), FeatureExtractor(tiny_config(), "cpu", runtime="torch").embed(tiles))
    with pytest.raises(RuntimeUnavailable, match="aten::odd"):  # asked for by name, it is an error
        FeatureExtractor(tiny_config(), "cpu", runtime="openvino")


def test_cli_reports_the_runtime_and_notes_a_fallback(monkeypatch, demo_data, tiny_bundle, tmp_path, capsys):
    import json

    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    argv = ["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
            "--device", "cpu", "--report", str(tmp_path / "r.json"), "--quiet"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["runtime"] == "openvino"
    assert "note" not in capsys.readouterr().err
    _failing_conversion(monkeypatch)
    assert main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["runtime"] == "torch"
    err = capsys.readouterr().err.strip()
    assert err == ("rtg-anomaly: note: running the backbone with torch: "
                   "OpenVINO cannot convert this backbone: unsupported operator aten::odd")


# ------------------------------------------------------------------ nearest distance (kNN, k = 1)
@pytest.mark.parametrize("n_queries,n_bank", [(1, 1), (7, 5), (1500, 9000)])  # blocks: 1,024 queries x 4,096 rows
def test_openvino_nearest_distance_matches_knn_distance(n_queries, n_bank):
    from rtg_anomaly.methods.memory_bank import knn_distance
    from rtg_anomaly.backbone.openvino_runtime import compile_nearest_distance

    generator = torch.Generator().manual_seed(n_bank)
    queries = torch.randn(n_queries, 24, generator=generator)
    bank = torch.randn(n_bank, 24, generator=generator)
    bank[0] = queries[0]  # an exact match: distance 0, not NaN from a slightly negative square
    nearest = compile_nearest_distance(threads=1)
    got = nearest(queries, bank, (bank * bank).sum(1))
    expected = knn_distance(queries, bank, 1)
    assert got.dtype == torch.float32 and got.shape == (n_queries,)
    # Squared distances agree to float32 rounding; near 0 the square root magnifies that rounding (both ways).
    assert torch.allclose(got**2, expected**2, rtol=1e-5, atol=1e-3) and float(got[0]) < 0.05


def test_detector_uses_openvino_nearest_distance_only_for_k1_with_openvino(tiny_bundle, demo_data, monkeypatch):
    import rtg_anomaly.methods.patchcore as detector_module  # PatchCore compiles the nearest distance

    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    torch_result = Detector.load(tiny_bundle, device="cpu", runtime="torch").score(scan)
    openvino = Detector.load(tiny_bundle, device="cpu", runtime="openvino")
    calls = []
    real = detector_module.compile_nearest_distance

    def counting(threads):
        run = real(threads)
        return lambda *args: calls.append(1) or run(*args)

    monkeypatch.setattr(detector_module, "compile_nearest_distance", counting)
    result = openvino.score(scan)
    assert calls, "the OpenVINO detector did not use the OpenVINO nearest distance"
    scale = float(np.abs(torch_result.heatmap).max())
    assert np.abs(result.heatmap - torch_result.heatmap).max() < 1e-4 * scale
    assert result.score == pytest.approx(torch_result.score, rel=1e-4)
    calls.clear()
    Detector.load(tiny_bundle, device="cpu", runtime="torch").score(scan)
    assert not calls  # torch runs torch's kNN


# ------------------------------------------------------------------ telemetry
_CONVERT_IN_A_FRESH_PROCESS = """
import json, sys, torch
from rtg_anomaly.backbone.openvino_runtime import compile_for_cpu
features = compile_for_cpu(lambda batch: batch.mean(1, keepdim=True).permute(0, 2, 3, 1), torch.rand(2, 3, 8, 8),
                           threads=1)(torch.rand(1, 3, 8, 8))
import openvino.tools.ovc.convert_impl as convert_impl
import openvino_telemetry  # imports normally again for other code
print(json.dumps({"shape": list(features.shape), "telemetry": convert_impl.tm.__name__}))
"""


def test_conversion_sends_no_telemetry_and_writes_nothing_to_home(tmp_path):
    """OpenVINO's converter would send usage events and write ~/intel/openvino_ga_cid for a user who never
    opted out; it sees its no-op stub instead. Run where OpenVINO's own CI switch is off, with a fresh HOME."""
    import json
    import os
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), RTG_ANOMALY_CACHE_DIR="off")
    finished = subprocess.run([sys.executable, "-c", _CONVERT_IN_A_FRESH_PROCESS], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["shape"] == [1, 8, 8, 1]
    assert report["telemetry"] == "openvino.tools.ovc.telemetry_stub"
    assert list(home.rglob("*")) == []  # no ~/intel client id, stats or consent file


def test_a_plain_install_brings_openvino_where_wheels_exist():
    """OpenVINO is what makes the CPU path 3x faster than the plain reference, so it is a dependency, not only
    an extra, on the platforms OpenVINO publishes wheels for (this one among them), and only there."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    plain = [Requirement(line) for line in requires("rtg-anomaly")
             if line.startswith("openvino") and "extra ==" not in line]
    assert plain and all(requirement.marker is not None for requirement in plain)
    assert any(requirement.marker.evaluate() for requirement in plain)  # x86-64 Linux, Python < 3.15
    for machine, python, expected in [("x86_64", "3.12", True), ("AMD64", "3.13", True), ("arm64", "3.14", True),
                                      ("aarch64", "3.13", True), ("aarch64", "3.14", False),
                                      ("x86_64", "3.15", False), ("riscv64", "3.12", False)]:
        environment = {"platform_machine": machine, "python_version": python}
        assert any(requirement.marker.evaluate(environment) for requirement in plain) is expected, environment


_QUANTISER_IN_A_FRESH_PROCESS = """
import json
from rtg_anomaly.backbone.graph_export import import_nncf
nncf = import_nncf()
import nncf.telemetry.wrapper as wrapper
import openvino_telemetry  # imports normally again for other code
print(json.dumps({"telemetry": type(wrapper.telemetry).__name__}))
"""


def test_the_int8_quantiser_is_imported_with_its_telemetry_stub(tmp_path):
    """NNCF (``export --format openvino --precision int8``) reports usage through the same package as
    OpenVINO's converter unless it cannot import it; it binds its stub instead. Run in a fresh process
    without pytest (NNCF turns its telemetry off by itself under pytest) and without NNCF's CI switches."""
    import json
    import os
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("CI", "TF_BUILD", "JENKINS_URL") and not key.startswith("NNCF_")}
    env.update(HOME=str(home))
    finished = subprocess.run([sys.executable, "-c", _QUANTISER_IN_A_FRESH_PROCESS], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout.strip().splitlines()[-1])["telemetry"] != "NNCFTelemetry"
    assert list(home.rglob("*")) == []
