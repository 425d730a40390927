"""The command line, called as main([...]) with every path in a temporary folder."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly import Detector
from rtg_anomaly.bundle import seal
from rtg_anomaly.cli import main
from tests.conftest import TINY_CLI_FLAGS


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_fit_writes_bundle_and_summary(demo_data, tmp_path, capsys):
    model = tmp_path / "model"
    code = main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(model), *TINY_CLI_FLAGS])
    assert code == 0
    out = capsys.readouterr().out
    assert "memory bank" in out and str(model) in out
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["config"]["tile_size"] == 64
    assert manifest["fit"]["n_train_scans"] + manifest["fit"]["n_calibration_scans"] == 5
    assert manifest["fit"]["calibration"] == "holdout"
    assert f"+{manifest['fit']['n_calibration_scans']} held out to calibrate" in out
    assert (model / "memory_bank.npy").is_file()


def test_fit_is_deterministic(demo_data, tmp_path):
    for name in ("a", "b"):
        assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(tmp_path / name),
                     *TINY_CLI_FLAGS]) == 0
    for file in ("manifest.json", "memory_bank.npy", "pca_components.npy"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_detect_single_file_writes_overlay_heatmap_and_report(demo_data, tiny_bundle, tmp_path, capsys):
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    out, heat, report = tmp_path / "overlay.bmp", tmp_path / "map.npy", tmp_path / "report.json"
    code = main(["detect", "--input", str(scan), "--output", str(out), "--model", str(tiny_bundle),
                 "--device", "cpu", "--threshold-percentile", "90", "--heatmap", str(heat), "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    with Image.open(out) as img:
        assert img.format == "BMP"
        width, height = img.size
    with Image.open(scan) as original:
        assert (width, height) == original.size
    heatmap = np.load(heat, allow_pickle=False)
    assert heatmap.dtype == np.float32 and heatmap.shape == (height, width)
    payload = json.loads(report.read_text())
    entry = payload["images"][0]
    assert payload["model"] == str(tiny_bundle)
    assert {"input", "output", "score", "anomalous", "threshold"} <= set(entry)
    assert isinstance(entry["score"], float) and isinstance(entry["anomalous"], bool)
    assert entry["fallback"] is None
    library = Detector.load(tiny_bundle, device="cpu").score(scan)
    assert entry["score"] == pytest.approx(library.score, rel=1e-6)
    np.testing.assert_allclose(heatmap, library.heatmap, rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix,fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".tiff", "TIFF")])
def test_overlay_format_follows_extension(demo_data, tiny_bundle, tmp_path, suffix, fmt):
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    out = tmp_path / f"overlay{suffix}"
    assert main(["detect", "--input", str(scan), "--output", str(out), "--model", str(tiny_bundle), "--device", "cpu"]) == 0
    with Image.open(out) as img:
        assert img.format == fmt and img.mode == "RGB"


def test_calibrated_mode_leaves_clean_scan_uncoloured(demo_data, tiny_bundle, tmp_path):
    scan = sorted((demo_data / "train" / "good").iterdir())[0]
    out = tmp_path / "overlay.png"
    assert main(["detect", "--input", str(scan), "--output", str(out), "--model", str(tiny_bundle),
                 "--threshold", "calibrated", "--heatmap", str(tmp_path / "m.npy")]) == 0
    heatmap = np.load(tmp_path / "m.npy")
    overlay = np.asarray(Image.open(out)).astype(int)
    grey = np.asarray(Image.open(scan))
    quiet = heatmap <= json.loads((tiny_bundle / "manifest.json").read_text())["calibration"]["pixel_threshold"]
    # Every pixel below the calibrated pixel threshold keeps its grey value.
    assert np.abs(overlay[quiet] - grey[quiet][:, None]).max() <= 1


def test_detect_folder_skips_bad_file(demo_data, tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(demo_data / "test" / "anomalous", folder)
    (folder / "broken.bmp").write_text("this is not an image")
    out, heat, report = tmp_path / "out", tmp_path / "maps", tmp_path / "r.json"
    code = main(["detect", "--input", str(folder), "--output", str(out), "--heatmap", str(heat),
                 "--report", str(report), "--model", str(tiny_bundle)])
    assert code == 0
    captured = capsys.readouterr()
    assert "broken.bmp" in captured.err and "Traceback" not in captured.err
    good = sorted(p.name for p in folder.iterdir() if p.name != "broken.bmp")
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".bmp") == good
    assert sorted(p.name for p in heat.iterdir()) == [Path(n).stem + ".npy" for n in good]
    payload = json.loads(report.read_text())
    assert len(payload["images"]) == len(good)
    assert payload["errors"][0]["input"].endswith("broken.bmp")


def test_bad_inputs_exit_2_with_one_line(demo_data, tiny_bundle, tmp_path, capsys):
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    text_bmp = tmp_path / "fake.bmp"
    text_bmp.write_text("hello")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.full((200, 300), 128, np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tiny)
    not_finite = tmp_path / "not_finite.tiff"
    float_scan = np.full((200, 300), 0.5, np.float32)
    float_scan[10, 20] = np.nan
    Image.fromarray(float_scan).save(not_finite)
    empty = tmp_path / "empty"
    empty.mkdir()
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(sorted((demo_data / "train" / "good").iterdir())[0], single)
    cases = [
        (["fit", "--clean-dir", str(tmp_path / "missing"), *TINY_CLI_FLAGS], "does not exist"),
        (["fit", "--clean-dir", str(empty), *TINY_CLI_FLAGS], "holds no images"),
        (["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(tmp_path / "no" / "m"),
          *TINY_CLI_FLAGS], "does not exist"),
        (["detect", "--input", str(text_bmp), "--output", str(tmp_path / "o1.png"), "--model", str(tiny_bundle)],
         "not a recognised image"),
        (["detect", "--input", str(truncated), "--output", str(tmp_path / "o2.png"), "--model", str(tiny_bundle)],
         "cannot read image"),
        (["detect", "--input", str(tiny), "--output", str(tmp_path / "o3.png"), "--model", str(tiny_bundle)],
         f"{tiny}: image of"),
        (["detect", "--input", str(scan), "--output", str(tmp_path / "missing" / "o.png"), "--model", str(tiny_bundle)],
         "does not exist"),
        (["detect", "--input", str(scan), "--output", str(tmp_path / "o4.gif"), "--model", str(tiny_bundle)],
         "expected one of"),
        (["detect", "--input", str(tmp_path / "nope.png"), "--output", str(tmp_path / "o5.png"),
          "--model", str(tiny_bundle)], "does not exist"),
        (["detect", "--input", str(scan), "--output", str(tmp_path / "o6.png"), "--model", str(tmp_path / "nomodel")],
         "no model bundle"),
        (["detect", "--input", str(scan), "--output", str(tmp_path / "o7.png"), "--model", str(tiny_bundle),
          "--threshold-percentile", "120"], "argument --threshold-percentile: expected a number in [0, 100]"),
        (["detect", "--input", str(scan), "--output", str(tmp_path / "o9.png"), "--model", str(tiny_bundle),
          "--alpha", "1.5"], "argument --alpha: expected a number in [0, 1]"),
        (["detect", "--input", str(not_finite), "--output", str(tmp_path / "o10.png"), "--model", str(tiny_bundle)],
         f"{not_finite}: 1 pixel value(s) are NaN or infinite"),
        (["detect", "--input", str(scan)], "required"),
        (["fit", "--clean-dir", str(empty), "--overlap", "1.5", *TINY_CLI_FLAGS], "--overlap"),
        (["fit", "--clean-dir", str(empty), "--top-fraction", "0", *TINY_CLI_FLAGS], "--top-fraction"),
        (["fit", "--clean-dir", str(empty), "--pca-whiten", "2", *TINY_CLI_FLAGS], "--pca-whiten"),
        (["fit", "--clean-dir", str(empty), "--top-patches", "0", *TINY_CLI_FLAGS], "--top-patches: expected an integer in [1, "),
        (["fit", "--clean-dir", str(empty), "--augment", "spin", *TINY_CLI_FLAGS], "unknown augmentation"),
        (["fit", "--clean-dir", str(empty), *TINY_CLI_FLAGS, "--layers", "6,,7"],
         "argument --layers: expected comma-separated block indices such as 6 or 4,6, each an integer in [-64, 64], got '6,,7'"),
        (["fit", "--clean-dir", str(empty), *TINY_CLI_FLAGS, "--tile-size", "abc"],
         "argument --tile-size: expected an integer in [8, 8192], got 'abc'"),
        (["fit", "--clean-dir", str(single), "--model", str(tmp_path / "o8"), "--image-score", "global",
          *TINY_CLI_FLAGS], "held-out"),
        (["fit", "--clean-dir", str(single), "--model", str(tmp_path / "o9"), "--image-score", "scan_centroid",
          *TINY_CLI_FLAGS], "the scan_centroid image score calibrates on held-out clean scans"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        line = _one_line_error(capsys)
        assert expected in line, (argv, line)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("o")) == []


def test_detect_decodes_the_scan_while_the_model_loads(demo_data, tiny_bundle, tmp_path, monkeypatch, capsys):
    import threading

    from rtg_anomaly.scans import io as rtg_io

    decoding_started = threading.Event()
    real_load_image, real_load = rtg_io.load_image, Detector.load.__func__

    def load_image(path):
        decoding_started.set()
        return real_load_image(path)

    seen_at_model_load = []

    def load(cls, *args, **kwargs):
        seen_at_model_load.append(decoding_started.wait(timeout=30))
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(rtg_io, "load_image", load_image)
    monkeypatch.setattr(Detector, "load", classmethod(load))
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    out = tmp_path / "overlay.png"
    assert main(["detect", "--input", str(scan), "--output", str(out), "--model", str(tiny_bundle),
                 "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
    assert seen_at_model_load == [True] and out.is_file()


def _copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


@pytest.mark.parametrize("damage,expected", [
    ("checksum", "checksum mismatch"),
    ("newer", "newer than this rtg-anomaly"),
    ("backbone", "other backbone weights"),
    ("missing_array", "missing memory_bank.npy"),
])
def test_damaged_bundles_are_refused(demo_data, tiny_bundle, tmp_path, capsys, damage, expected):
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if damage == "checksum":
        data = bytearray((bundle / "memory_bank.npy").read_bytes())
        data[-1] ^= 0xFF
        (bundle / "memory_bank.npy").write_bytes(bytes(data))
    elif damage == "newer":
        manifest["format_version"] += 1
    elif damage == "backbone":
        manifest["config"]["seed"] = 12345  # a different random init: other backbone weights
    elif damage == "missing_array":
        (bundle / "memory_bank.npy").unlink()
    manifest_path.write_text(json.dumps(seal(manifest)))  # re-sealed: the checks behind the checksum
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    out = tmp_path / "o.png"
    assert main(["detect", "--input", str(scan), "--output", str(out), "--model", str(bundle)]) == 2
    assert expected in _one_line_error(capsys)
    assert not out.exists()


def test_cuda_requested_without_cuda_is_a_clear_error(demo_data, tiny_bundle, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
                 "--device", "cuda"]) == 2
    assert "CUDA is not available" in _one_line_error(capsys)


def test_failed_fit_leaves_existing_bundle_untouched(tiny_bundle, tmp_path, capsys):
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.bmp").write_text("not an image")
    assert main(["fit", "--clean-dir", str(broken), "--model", str(bundle), *TINY_CLI_FLAGS]) == 2
    assert "none of the clean images" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_fit_never_replaces_a_folder_that_is_not_a_bundle(demo_data, tmp_path, capsys):
    """'--model' naming the clean-scan folder by mistake must not delete the scans (saving replaces the
    whole bundle folder); the check runs before the fit."""
    clean = tmp_path / "clean"
    shutil.copytree(demo_data / "train" / "good", clean)
    before = {p.name: p.read_bytes() for p in clean.iterdir()}
    assert main(["fit", "--clean-dir", str(clean), "--model", str(clean), *TINY_CLI_FLAGS]) == 2
    assert "holds files that are not a model bundle" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in clean.iterdir()} == before


def test_detect_never_writes_the_overlay_over_its_input(demo_data, tiny_bundle, tmp_path, capsys):
    scans = tmp_path / "lane"
    shutil.copytree(demo_data / "test" / "anomalous", scans)
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    scan = sorted(scans.iterdir())[0]
    cases = [
        (["--input", str(scan), "--output", str(scan)], "is the input scan"),
        (["--input", str(scan), "--output", str(scans)], "is the input scan"),  # a folder: the scan's own name
        (["--input", str(scans), "--output", str(scans / "sub" / "..")], "is the input folder"),
    ]
    (scans / "sub").mkdir()
    for argv, expected in cases:
        assert main(["detect", *argv, "--model", str(tiny_bundle), "--quiet"]) == 2, argv
        assert expected in _one_line_error(capsys)
    (scans / "sub").rmdir()
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before


@pytest.mark.parametrize("flag, name", [("--report", "manifest.json"), ("--heatmap", "memory_bank.npy"),
                                        ("--output", "overlay.png"), ("--csv", "triage.csv")])
def test_detect_never_writes_into_the_model_bundle(demo_data, tiny_bundle, tmp_path, capsys, flag, name):
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    argv = {"--input": str(scan), "--output": str(tmp_path / "o.png"), flag: str(bundle / name)}
    assert main(["detect", *itertools.chain(*argv.items()), "--model", str(bundle), "--quiet"]) == 2
    assert "is inside the model bundle" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_detect_notes_a_scan_scored_on_the_host_after_the_gpu_ran_out_of_memory(demo_data, tiny_bundle, tmp_path,
                                                                             capsys, monkeypatch):
    import torch

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Detector, "_on_gpu", property(lambda self: not self._pixel_work_on_host))
    monkeypatch.setattr(Detector, "_device_scan", out_of_memory)
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    report = tmp_path / "report.json"
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
                 "--report", str(report), "--quiet"]) == 0
    assert f"rtg-anomaly: note: {scan}: the GPU ran out of memory" in capsys.readouterr().err
    entry = json.loads(report.read_text())["images"][0]
    assert entry["fallback"].startswith("the GPU ran out of memory") and (tmp_path / "o.png").is_file()


def test_folder_heatmaps_of_scans_with_one_stem_do_not_overwrite_each_other(demo_data, tiny_bundle, tmp_path):
    scans = tmp_path / "lane"
    scans.mkdir()
    first, second = sorted((demo_data / "test" / "anomalous").iterdir())[:2]
    shutil.copy(first, scans / "a.bmp")
    with Image.open(second) as image:
        image.save(scans / "a.png")
    shutil.copy(second, scans / "b.bmp")
    assert main(["detect", "--input", str(scans), "--output", str(tmp_path / "out"), "--model", str(tiny_bundle),
                 "--heatmap", str(tmp_path / "maps"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a.bmp.npy", "a.png.npy", "b.npy"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    maps = {Path(e["input"]).name: np.load(e["heatmap"]) for e in report["images"]}
    assert not np.array_equal(maps["a.bmp"], maps["a.png"]) and np.array_equal(maps["a.png"], maps["b.bmp"])


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt, 130), (MemoryError, 1)])
def test_a_folder_run_stopped_part_way_keeps_the_triage_of_the_scans_done(demo_data, tiny_bundle, tmp_path, capsys,
                                                                         monkeypatch, stop, code):
    from rtg_anomaly.outputs import scan_outputs

    scans = sorted((demo_data / "test" / "anomalous").iterdir())
    assert len(scans) >= 2
    real = scan_outputs.score_scan
    done = []

    def score_scan(detector, path, *args):
        if len(done) == 1:
            raise stop()
        done.append(path)
        return real(detector, path, *args)

    monkeypatch.setattr(scan_outputs, "score_scan", score_scan)
    out = tmp_path / "out"
    argv = ["detect", "--input", str(demo_data / "test" / "anomalous"), "--output", str(out),
            "--model", str(tiny_bundle), "--quiet"]
    assert main(argv) == code
    assert f"stopped after 1 of {len(scans)} scans" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False and [e["input"] for e in report["images"]] == [str(scans[0])]
    assert len((out / "triage.csv").read_text().strip().splitlines()) == 1 + 1
    monkeypatch.undo()
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True and len(report["images"]) == len(scans)


def test_folder_outputs_written_in_the_background_match_one_scan_runs(demo_data, tiny_bundle, tmp_path):
    """Each scan's regions, overlay, heatmap and sorted copy are written while the next scan is scored: the
    files and report entries are those of scoring each scan on its own, in input order."""
    scans = sorted((demo_data / "test").rglob("*.bmp"))
    folder = tmp_path / "lane"
    folder.mkdir()
    for index, scan in enumerate(scans):
        shutil.copy(scan, folder / f"{index:02d}_{scan.name}")
    common = ["--model", str(tiny_bundle), "--device", "cpu", "--draw-regions", "--threshold", "calibrated", "--quiet"]
    assert main(["detect", "--input", str(folder), "--output", str(tmp_path / "out"), "--heatmap",
                 str(tmp_path / "maps"), "--sort-into", str(tmp_path / "sorted"), *common]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    names = sorted(p.name for p in folder.iterdir())
    assert [Path(e["input"]).name for e in report["images"]] == names and report["errors"] == []
    for entry in report["images"]:
        name = Path(entry["input"]).name
        single = tmp_path / "single" / name
        single.parent.mkdir(exist_ok=True)
        assert main(["detect", "--input", entry["input"], "--output", str(single), "--heatmap",
                     str(single.with_suffix(".npy")), "--report", str(single.with_suffix(".json")), *common]) == 0
        alone = json.loads(single.with_suffix(".json").read_text())["images"][0]
        keys = set(alone) - {"output", "heatmap", "seconds"}
        assert {k: entry[k] for k in keys} == {k: alone[k] for k in keys} and entry["seconds"] > 0
        assert (tmp_path / "out" / name).read_bytes() == single.read_bytes()
        assert np.array_equal(np.load(entry["heatmap"]), np.load(single.with_suffix(".npy")))
        assert Path(entry["sorted_to"]) == tmp_path / "sorted" / ("suspect" if entry["anomalous"] else "clean") / name
        assert Path(entry["sorted_to"]).read_bytes() == (folder / name).read_bytes()
    rows = (tmp_path / "out" / "triage.csv").read_text().splitlines()[1:]
    assert [Path(row.split(",")[0]).name for row in rows] == names


def test_folder_keeps_input_order_when_scans_fail_at_scoring_or_writing(demo_data, tiny_bundle, tmp_path, capsys):
    """A scan that cannot be scored (truncated file) and one whose overlay cannot be written (a folder is in the
    way) are skipped with a warning; the report and the CSV list every scan in input order."""
    scans = sorted((demo_data / "test" / "anomalous").iterdir())[:2] + sorted((demo_data / "test" / "good").iterdir())[:2]
    folder = tmp_path / "lane"
    folder.mkdir()
    for index, scan in enumerate(scans):
        shutil.copy(scan, folder / f"{index}.bmp")
    (folder / "1.bmp").write_bytes((folder / "1.bmp").read_bytes()[:200])  # truncated: fails when scored
    out = tmp_path / "out"
    (out / "2.bmp").mkdir(parents=True)  # the overlay of 2.bmp cannot be written: fails in the writer
    assert main(["detect", "--input", str(folder), "--output", str(out), "--model", str(tiny_bundle),
                 "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "1.bmp" in err and "2.bmp" in err
    report = json.loads((out / "report.json").read_text())
    assert [Path(e["input"]).name for e in report["images"]] == ["0.bmp", "3.bmp"] and report["complete"] is True
    assert [Path(e["input"]).name for e in report["errors"]] == ["1.bmp", "2.bmp"]
    rows = [row.split(",") for row in (out / "triage.csv").read_text().splitlines()[1:]]
    assert [(Path(row[0]).name, row[2]) for row in rows] == [("0.bmp", rows[0][2]), ("1.bmp", "error"),
                                                            ("2.bmp", "error"), ("3.bmp", rows[3][2])]
    assert rows[0][2] in ("clean", "suspect") and sorted(p.name for p in out.iterdir()) == [
        "0.bmp", "2.bmp", "3.bmp", "report.json", "triage.csv"]


def test_a_failed_write_stops_the_run_and_keeps_the_scans_done(demo_data, tiny_bundle, tmp_path, capsys, monkeypatch):
    """An unexpected error in the background writer (a full disk, say) ends the run like one in scoring."""
    from rtg_anomaly.outputs import scan_outputs

    real, written = scan_outputs.write_scan, []

    def write_scan(scored, *args):
        if written:
            raise OSError(28, "No space left on device")
        written.append(scored.path)
        return real(scored, *args)

    monkeypatch.setattr(scan_outputs, "write_scan", write_scan)
    out = tmp_path / "out"
    code = main(["detect", "--input", str(demo_data / "test" / "anomalous"), "--output", str(out),
                 "--model", str(tiny_bundle), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "No space left on device" in err and "stopped after 1 of" in err
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False and [e["input"] for e in report["images"]] == [str(written[0])]


def test_model_env_variable_is_the_default(demo_data, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("RTG_ANOMALY_MODEL", str(tiny_bundle))
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png")]) == 0


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "rtg_anomaly", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "fit" in result.stdout and "detect" in result.stdout


def test_damaged_tiff_metadata_gives_one_line(tiny_bundle, tmp_path):
    """Pillow warns (two lines) about a TIFF directory past the end of the file; the CLI prints only its error.

    A subprocess, because pytest records warnings instead of printing them."""
    scan = tmp_path / "cut.tif"
    scan.write_bytes(b"II*\x00\x10\x00\x00\x00abcd")  # little-endian TIFF, first directory beyond the end
    result = subprocess.run([sys.executable, "-m", "rtg_anomaly", "detect", "--input", str(scan), "--output",
                             str(tmp_path / "o.png"), "--model", str(tiny_bundle), "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"rtg-anomaly: error: cannot read image {scan}: not a recognised image file"]
    assert not (tmp_path / "o.png").exists()


def test_scans_of_another_kind_warn_once_per_folder(demo_data, tiny_bundle, tmp_path, capsys):
    """A folder of raw 16-bit scans scored with a model fitted on 8-bit ones: warned once at the first,
    counted at the end, and listed per scan in the report."""
    from PIL import Image

    folder = tmp_path / "lane"
    folder.mkdir()
    scans = sorted((demo_data / "test" / "good").iterdir())
    for index, path in enumerate(scans[:2]):
        Image.fromarray(np.asarray(Image.open(path)).astype(np.uint16) * 257).save(folder / f"{index}_raw16.png")
    shutil.copy(scans[0], folder / "2_export8.bmp")
    assert main(["detect", "--input", str(folder), "--output", str(tmp_path / "out"), "--model", str(tiny_bundle),
                 "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "uint16 grey scan" in line]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"rtg-anomaly: warning: {folder / '0_raw16.png'}: uint16 grey scan, but the model")
    assert warnings[0].endswith("(said once for the folder)")
    assert warnings[1].startswith("rtg-anomaly: warning: 2 of 3 scans: uint16 grey scan, but the model")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [len(entry["warnings"]) for entry in report["images"]] == [1, 1, 0]
    assert main(["detect", "--input", str(folder / "1_raw16.png"), "--output", str(tmp_path / "one.png"),
                 "--model", str(tiny_bundle), "--report", str(tmp_path / "one.json")]) == 0
    err = capsys.readouterr().err
    assert f"rtg-anomaly: warning: {folder / '1_raw16.png'}: uint16 grey scan" in err
    assert json.loads((tmp_path / "one.json").read_text())["images"][0]["warnings"] == report["images"][1]["warnings"]


@pytest.mark.parametrize("bad", [["--report", "{tmp}/report.txt"], ["--csv", "{tmp}/triage.txt"],
                                 ["--report", "{model}/x.json"], ["--model", "{tmp}/no_model"]])
def test_a_refused_folder_run_creates_no_folder(demo_data, tiny_bundle, tmp_path, bad):
    args = {"--model": str(tiny_bundle)}
    flag, value = bad
    args[flag] = value.format(tmp=tmp_path, model=tiny_bundle)
    argv = ["detect", "--input", str(demo_data / "test" / "good"), "--output", str(tmp_path / "out"),
            "--heatmap", str(tmp_path / "out" / "maps"), "--sort-into", str(tmp_path / "sorted"), "--quiet"]
    assert main(argv + [item for pair in args.items() for item in pair]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_output_folders_nest_in_new_folders(demo_data, tiny_bundle, tmp_path):
    out = tmp_path / "out"
    assert main(["detect", "--input", str(demo_data / "test" / "good"), "--output", str(out), "--heatmap",
                 str(out / "maps"), "--sort-into", str(out / "sorted"), "--model", str(tiny_bundle), "--quiet"]) == 0
    scans = sorted((demo_data / "test" / "good").iterdir())
    assert sorted(p.name for p in (out / "maps").iterdir()) == [f"{p.stem}.npy" for p in scans]
    assert (out / "report.json").is_file() and (out / "sorted").is_dir()


def test_detect_checks_each_scan_once(demo_data, tiny_bundle, tmp_path, monkeypatch):
    """The CLI no longer checks a scan and then has score() check it again (a full NaN pass on float scans)."""
    from rtg_anomaly.pipeline.detector import Detector

    checked, original = [], Detector._check_usable

    def counting_check(self, image, item):
        checked.append(item)
        return original(self, image, item)

    monkeypatch.setattr(Detector, "_check_usable", counting_check)
    folder = demo_data / "test" / "good"
    assert main(["detect", "--input", str(folder), "--output", str(tmp_path / "out"), "--model", str(tiny_bundle),
                 "--quiet"]) == 0
    assert checked == sorted(folder.iterdir())


def test_folder_triage_csv_regions_and_sorting(demo_data, tiny_bundle, tmp_path, capsys):
    import csv

    folder = tmp_path / "lane"
    folder.mkdir()
    clean = sorted((demo_data / "train" / "good").iterdir())[:2]
    suspicious = sorted((demo_data / "test" / "anomalous").iterdir())
    for path in clean + suspicious:
        shutil.copy(path, folder / path.name.replace(".bmp", f"_{path.parent.name}.bmp"))
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out, sorted_dir = tmp_path / "out", tmp_path / "sorted"
    code = main(["detect", "--input", str(folder), "--output", str(out), "--model", str(tiny_bundle),
                 "--sort-into", str(sorted_dir), "--sort-mode", "link", "--draw-regions", "--min-region-area", "4",
                 "--threshold", "calibrated"])
    assert code == 0
    summary = capsys.readouterr().out
    rows = list(csv.DictReader((out / "triage.csv").open()))
    assert [r["path"] for r in rows] == [str(p) for p in sorted(folder.iterdir())]
    report = json.loads((out / "report.json").read_text())
    by_path = {e["input"]: e for e in report["images"]}
    for row in rows:
        if row["path"].endswith("zz_broken.png"):
            assert row["decision"] == "error" and row["error"] and row["score"] == ""
            continue
        entry = by_path[row["path"]]
        assert row["decision"] == ("suspect" if entry["anomalous"] else "clean")
        assert float(row["score"]) == pytest.approx(entry["score"])
        assert int(row["n_regions"]) == len(entry["regions"])
        for region in entry["regions"]:
            assert region["peak"] > entry["pixel_threshold"] and region["area"] >= 4
        if entry["regions"]:
            assert row["top_region"] == " ".join(str(v) for v in entry["regions"][0]["bbox"])
        assert (sorted_dir / row["decision"] / Path(row["path"]).name).is_file()
    n_suspect = sum(r["decision"] == "suspect" for r in rows)
    n_clean = sum(r["decision"] == "clean" for r in rows)
    assert f"{n_suspect} suspect, {n_clean} clean, 1 skipped (unreadable or unusable)" in summary
    assert not (sorted_dir / "error").exists()


def test_calibrate_updates_thresholds_in_the_bundle(demo_data, tiny_bundle, tmp_path, capsys):
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    before = json.loads((bundle / "manifest.json").read_text())["calibration"]
    code = main(["calibrate", "--clean-dir", str(demo_data / "test" / "good"), "--model", str(bundle),
                 "--false-alarm-rate", "0.2"])
    assert code == 0
    captured = capsys.readouterr()
    assert "calibrated on 2 clean scans" in captured.out
    assert "needs at least 5" in captured.err
    after = json.loads((bundle / "manifest.json").read_text())["calibration"]
    assert after["n_scans"] == 2 and after["false_alarm_rate"] == 0.2
    assert after["clean_level"] == before["clean_level"]
    assert main(["calibrate", "--clean-dir", str(demo_data / "test" / "good"), "--model", str(bundle),
                 "--false-alarm-rate", "2"]) == 2
    assert "argument --false-alarm-rate: expected a number in (0, 1)" in _one_line_error(capsys)


def test_evaluate_fits_and_writes_metrics(demo_data, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--data", str(demo_data), "--output", str(out), "--save-model", str(tmp_path / "m"),
                 "--worst", "1", *TINY_CLI_FLAGS])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["aupro"] <= 1.0
    assert "image_auroc" in (out / "metrics.md").read_text().lower().replace(" ", "_") or "AUROC" in printed
    for name in ("roc.png", "pr.png", "score_histogram.png"):
        assert (out / name).stat().st_size > 1000
    assert (tmp_path / "m" / "manifest.json").is_file()
    # The saved model evaluates to the same image scores.
    assert main(["evaluate", "--data", str(demo_data), "--model", str(tmp_path / "m"), "--output",
                 str(tmp_path / "eval2"), "--quiet"]) == 0
    again = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert [i["score"] for i in again["images"]] == [i["score"] for i in metrics["images"]]


@pytest.mark.parametrize("flag", ["--model", "--save-model"])
def test_evaluate_never_writes_its_metrics_into_the_model_bundle(demo_data, tiny_bundle, tmp_path, capsys, flag):
    bundle = _copy_bundle(tiny_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    extra = [] if flag == "--model" else TINY_CLI_FLAGS
    assert main(["evaluate", "--data", str(demo_data), "--output", str(bundle), flag, str(bundle), *extra]) == 2
    assert f"is the {flag} folder" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_evaluate_bad_layout_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path), *TINY_CLI_FLAGS]) == 2
    assert "train" in _one_line_error(capsys)


def test_single_scan_into_existing_folders(demo_data, tiny_bundle, tmp_path):
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    (tmp_path / "maps").mkdir()
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path), "--heatmap", str(tmp_path / "maps"),
                 "--model", str(tiny_bundle)]) == 0
    assert (tmp_path / scan.name).is_file() and (tmp_path / "maps" / f"{scan.stem}.npy").is_file()


def test_fit_default_model_path_in_a_fresh_folder(demo_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RTG_ANOMALY_MODEL", raising=False)
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), *TINY_CLI_FLAGS]) == 0
    assert (tmp_path / "model_artifacts" / "default" / "manifest.json").is_file()


def test_fit_and_detect_with_the_global_image_score(demo_data, tmp_path):
    model, report = tmp_path / "model", tmp_path / "report.json"
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(model),
                 "--image-score", "global", *TINY_CLI_FLAGS]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["config"]["image_score"] == "global" and "descriptor_bank" in manifest["arrays"]
    assert manifest["calibration"]["image_level"] > 0
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(model),
                 "--report", str(report), "--device", "cpu", "--quiet"]) == 0
    entry = json.loads(report.read_text())["images"][0]
    assert entry["score"] == pytest.approx(Detector.load(model, device="cpu").score(scan).score, rel=1e-6)


def test_fit_and_detect_with_the_centroid_method_and_its_per_scan_rule(demo_data, tmp_path):
    model, report = tmp_path / "model", tmp_path / "report.json"
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(model),
                 "--method", "centroid", "--image-score", "scan_centroid", *TINY_CLI_FLAGS]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["method"]["name"] == "centroid" and manifest["config"]["image_score"] == "scan_centroid"
    assert manifest["calibration"]["image_level"] > 0
    scans = sorted((demo_data / "test" / "anomalous").iterdir())[:2]
    assert main(["detect", "--input", str(scans[0].parent), "--output", str(tmp_path / "out"), "--model",
                 str(model), "--report", str(report), "--device", "cpu", "--quiet"]) in (0, 1)
    entries = {Path(entry["input"]).name: entry for entry in json.loads(report.read_text())["images"]}
    detector = Detector.load(model, device="cpu")
    for scan in scans:
        assert entries[scan.name]["score"] == pytest.approx(detector.score(scan).score, rel=1e-6)


def test_fit_and_detect_with_a_whitened_pca(demo_data, tmp_path):
    model, plain, report = tmp_path / "model", tmp_path / "plain", tmp_path / "report.json"
    clean = str(demo_data / "train" / "good")
    assert main(["fit", "--clean-dir", clean, "--model", str(model), "--pca-whiten", "0.5", *TINY_CLI_FLAGS]) == 0
    assert main(["fit", "--clean-dir", clean, "--model", str(plain), *TINY_CLI_FLAGS]) == 0
    assert json.loads((model / "manifest.json").read_text())["config"]["pca_whiten"] == 0.5
    whitened, reference = Detector.load(model, device="cpu"), Detector.load(plain, device="cpu")
    # same directions, rescaled: the leading (highest-variance) direction shrinks the most
    norms = np.linalg.norm(whitened.method_.pca_.components, axis=1)
    assert np.allclose(whitened.method_.pca_.components / norms[:, None], reference.method_.pca_.components, atol=1e-4)
    assert norms[0] < 1.0 and norms[0] == norms.min()
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(model),
                 "--report", str(report), "--device", "cpu", "--quiet"]) == 0
    entry = json.loads(report.read_text())["images"][0]
    assert entry["score"] == pytest.approx(whitened.score(scan).score, rel=1e-6)
    assert entry["score"] != pytest.approx(reference.score(scan).score, rel=1e-3)


def test_a_detect_that_fails_after_decoding_began_leaves_no_decoder_thread(demo_data, tmp_path, capsys):
    """The scans' decoder threads are shut down when detect returns, not whenever the garbage collector
    finalises their generator: finalised inside another thread's start-up, it deadlocked the test suite once."""
    import gc
    import threading

    gc.disable()  # only an explicit close may end the decoders here
    try:
        code = main(["detect", "--input", str(demo_data / "test" / "good"), "--output", str(tmp_path / "out"),
                     "--model", str(tmp_path / "no_such_model")])
        alive = [t.name for t in threading.enumerate() if t.name.startswith("rtg-prefetch")]
    finally:
        gc.enable()
    assert code != 0 and "no_such_model" in capsys.readouterr().err
    assert alive == []
