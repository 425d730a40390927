"""The Ray engine (``--engine ray``) against the in-process one: the same files, report, CSV and bundle.

One local Ray (2 CPUs, no dashboard) is shared by the module: starting one takes seconds. The CLI uses
a Ray already initialised in the process as it is (``ray_session``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly.bundle import load_bundle
from rtg_anomaly.cli import main
from tests.conftest import TINY_CLI_FLAGS, shared_data_dir, write_crops



@pytest.fixture(scope="module")
def local_ray():
    import ray as ray_module

    ray_module.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray_module
    ray_module.shutdown()


def _lane(demo_data: Path, folder: Path, junk: str | None = "03_junk.bmp") -> Path:
    """The demo test scans copied into one folder (numbered, in input order), plus a file that is no image."""
    folder.mkdir()
    for index, scan in enumerate(sorted((demo_data / "test").rglob("*.bmp"))):
        shutil.copy(scan, folder / f"{index:02d}_{scan.name}")
    if junk:
        (folder / junk).write_bytes(b"not an image")
    return folder


def _detect(run: Path, lane: Path, model: Path, monkeypatch, *extra: str) -> int:
    """``detect`` into relative outputs inside ``run`` (so that the reports of two runs name the same paths)."""
    run.mkdir()
    monkeypatch.chdir(run)
    return main(["detect", "--input", str(lane), "--output", "out", "--heatmap", "maps", "--triptych", "trip",
                 "--model", str(model), "--device", "cpu", "--draw-regions", "--quiet", *extra])


def _report(run: Path) -> dict:
    report = json.loads((run / "out" / "report.json").read_text())
    for entry in report["images"]:
        entry.pop("seconds")
    return report


def _same_outputs(first: Path, second: Path) -> None:
    """The two runs wrote the same files, byte for byte, and the same report apart from timings and engine."""
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        if name.name != "report.json":
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    one, two = _report(first), _report(second)
    assert (one.pop("engine"), two.pop("engine")) == ("inprocess", "ray")
    assert one == two


@pytest.mark.ray
def test_detect_on_ray_writes_what_the_in_process_run_writes(local_ray, demo_data, tiny_bundle, tmp_path, monkeypatch,
                                                            capsys):
    """Same overlays, heatmaps, triptychs, sorted copies, CSV and report (apart from timings and the engine), in
    input order; an unreadable scan is reported and skipped; one actor's process ends abruptly on its second
    scan, Ray restarts it and runs the scans it held again: nothing lost, nothing left twice or half-written
    (no stray temporary file, one copy per sorted scan)."""
    lane = _lane(demo_data, tmp_path / "lane")
    assert _detect(tmp_path / "inprocess", lane, tiny_bundle, monkeypatch, "--sort-into", "sorted") == 0
    marker = tmp_path / "died"
    monkeypatch.setenv("RTG_ANOMALY_RAY_TEST_EXIT", f"2:{marker}")
    assert _detect(tmp_path / "ray", lane, tiny_bundle, monkeypatch, "--sort-into", "sorted",
                   "--engine", "ray", "--workers", "2") == 0
    assert marker.exists()  # a worker did die
    _same_outputs(tmp_path / "inprocess", tmp_path / "ray")
    report = _report(tmp_path / "ray")
    assert [Path(e["input"]).name for e in report["errors"]] == ["03_junk.bmp"]
    assert [Path(e["input"]).name for e in report["images"]] == sorted(p.name for p in lane.iterdir() if "junk" not in p.name)
    assert capsys.readouterr().err.count("skipped cannot read image") == 2  # once per run


@pytest.mark.ray
def test_detect_on_ray_takes_a_roi_override_as_the_in_process_run_does(local_ray, demo_data, tiny_bundle, tmp_path,
                                                                     monkeypatch):
    """``--roi auto`` on a bundle fitted without one: the workers mask the scans as the in-process run does."""
    lane = _lane(demo_data, tmp_path / "lane", junk=None)
    assert _detect(tmp_path / "inprocess", lane, tiny_bundle, monkeypatch, "--roi", "auto") == 0
    assert _detect(tmp_path / "ray", lane, tiny_bundle, monkeypatch, "--roi", "auto", "--engine", "ray") == 0
    _same_outputs(tmp_path / "inprocess", tmp_path / "ray")
    report = _report(tmp_path / "ray")
    assert report["roi_mode"] == "auto" and all(e["roi"]["mode"] == "auto" for e in report["images"])


@pytest.mark.ray
def test_an_interrupted_ray_run_keeps_the_report_of_what_finished(local_ray, demo_data, tiny_bundle, tmp_path,
                                                                 monkeypatch, capsys):
    """Ctrl-C on the driver once two scans are taken: the report and CSV list every scan that finished (in input
    order: the two, and any other that came back meanwhile), with "complete": false; exit code 130."""
    from rtg_anomaly.ray_engine.dispatch import OrderedMap

    lane = _lane(demo_data, tmp_path / "lane", junk=None)
    real = OrderedMap._submit

    def submit(self):  # runs once per step of the loop, whether a result is waited for or already there
        if self.next_out == 2 and not getattr(self, "interrupted", False):
            self.interrupted = True
            raise KeyboardInterrupt()
        return real(self)

    monkeypatch.setattr(OrderedMap, "_submit", submit)
    assert _detect(tmp_path / "ray", lane, tiny_bundle, monkeypatch, "--engine", "ray", "--workers", "2") == 130
    report = json.loads((tmp_path / "ray" / "out" / "report.json").read_text())
    inputs = [e["input"] for e in report["images"]]
    scans = [str(p) for p in sorted(lane.iterdir())]
    assert report["complete"] is False and inputs[:2] == scans[:2] and inputs == sorted(inputs)
    assert all((tmp_path / "ray" / e["output"]).is_file() for e in report["images"])
    rows = (tmp_path / "ray" / "out" / "triage.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == inputs
    assert f"stopped after {len(inputs)} of {len(scans)} scans" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.parametrize("calibration, window", [("holdout", "auto"), ("leave-one-out", "auto"), ("holdout", "clean")])
def test_fit_on_ray_writes_the_in_process_bundle_byte_for_byte(local_ray, demo_data, tmp_path, monkeypatch,
                                                               calibration, window):
    """With an unreadable clean scan (the scans after it get their places in the fit again), a two-page TIFF (its
    first page learned, the calibration warning of it), augmentation and a worker that dies during the fit; with the
    clean intensity window, the workers window by the driver's."""
    clean = tmp_path / "clean"
    clean.mkdir()
    for index, scan in enumerate(sorted((demo_data / "train" / "good").iterdir()) +
                                 sorted((demo_data / "test" / "good").iterdir())):
        shutil.copy(scan, clean / f"{index:02d}.bmp")
    (clean / "01b.bmp").write_bytes(b"truncated")
    pages = [Image.open(clean / name) for name in ("00.bmp", "01.bmp")]
    pages[0].save(clean / "02b.tif", save_all=True, append_images=pages[1:])
    flags = [*TINY_CLI_FLAGS, "--augment", "hflip", "--device", "cpu", "--clean-dir", str(clean),
             "--calibration", calibration, "--intensity-window", window]
    assert main(["fit", "--model", str(tmp_path / "inprocess"), *flags]) == 0
    monkeypatch.setenv("RTG_ANOMALY_RAY_TEST_EXIT", f"3:{tmp_path / 'died'}")
    assert main(["fit", "--model", str(tmp_path / "ray"), *flags, "--engine", "ray", "--workers", "2"]) == 0
    assert (tmp_path / "died").exists()
    files = sorted(p.name for p in (tmp_path / "inprocess").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ray").iterdir()) and "memory_bank.npy" in files
    for name in files:
        assert (tmp_path / "inprocess" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    # leave-one-scan-out on the workers: a scan scored with its own bank rows left in would score near 0 and
    # change the stored statistics
    manifest = load_bundle(tmp_path / "ray")[0]
    fit_info = manifest["fit"]
    assert fit_info["calibration"] == calibration.replace("-", "_") and fit_info["n_calibration_scans"] >= 1
    assert ("clean_window" in manifest) == (window == "clean")
    assert ("1 clean scan file(s) hold several images (pages): only the first page of each was learned"
            in manifest["calibration"]["warnings"])


@pytest.mark.ray
def test_fit_on_ray_fuses_small_crops_as_the_in_process_fit_does(local_ray, tmp_path):
    """Crops fitted whole into one tile resolve image_score auto to patch_or_global on either engine: the
    workers' held-out statistics give the same fusion, byte for byte."""
    write_crops(tmp_path / "clean", 40)
    flags = [*TINY_CLI_FLAGS, "--device", "cpu", "--clean-dir", str(tmp_path / "clean")]
    assert main(["fit", "--model", str(tmp_path / "inprocess"), *flags]) == 0
    assert main(["fit", "--model", str(tmp_path / "ray"), *flags, "--engine", "ray", "--workers", "2"]) == 0
    files = sorted(p.name for p in (tmp_path / "inprocess").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ray").iterdir()) and "descriptor_fusion.npy" in files
    for name in files:
        assert (tmp_path / "inprocess" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    assert load_bundle(tmp_path / "ray")[0]["config"]["image_score"] == "patch_or_global"


@pytest.mark.ray
@pytest.mark.realdata
def test_ray_and_in_process_agree_on_real_castings(local_ray, tmp_path, monkeypatch):
    """GDXray casting frames with the real DINOv2 weights (224 px input, torch runtime, one actor: quick): fit on 3
    clean frames gives the same bundle on either engine; detect on a clean and a defective frame the same files."""
    castings = shared_data_dir() / "gdxray_castings"
    clean, lane = tmp_path / "clean", tmp_path / "lane"
    clean.mkdir()
    lane.mkdir()
    for scan in sorted((castings / "train" / "good").iterdir())[::40][:3]:
        shutil.copy(scan, clean / scan.name)
    for scan in sorted((castings / "test" / "good").iterdir())[:1] + sorted((castings / "test" / "defect").iterdir())[:1]:
        shutil.copy(scan, lane / scan.name)
    flags = ["--clean-dir", str(clean), "--device", "cpu", "--input-size", "224", "--runtime", "torch", "--quiet"]
    assert main(["fit", "--model", str(tmp_path / "inprocess_model"), *flags]) == 0
    assert main(["fit", "--model", str(tmp_path / "ray_model"), *flags, "--engine", "ray", "--workers", "1"]) == 0
    files = sorted(p.name for p in (tmp_path / "inprocess_model").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ray_model").iterdir())
    for name in files:
        assert (tmp_path / "inprocess_model" / name).read_bytes() == (tmp_path / "ray_model" / name).read_bytes(), name
    assert _detect(tmp_path / "inprocess", lane, tmp_path / "inprocess_model", monkeypatch, "--runtime", "torch") == 0
    assert _detect(tmp_path / "ray", lane, tmp_path / "inprocess_model", monkeypatch, "--runtime", "torch",
                   "--engine", "ray", "--workers", "1") == 0
    _same_outputs(tmp_path / "inprocess", tmp_path / "ray")
    assert len(_report(tmp_path / "ray")["images"]) == 2


# ---------------------------------------------------------------------------- refusals (no Ray started)
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_engine_ray_without_ray_installed_says_how_to_install_it(demo_data, tiny_bundle, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    lane = demo_data / "test" / "good"
    assert main(["detect", "--input", str(lane), "--output", str(tmp_path / "out"), "--model", str(tiny_bundle),
                 "--engine", "ray"]) == 2
    assert "pip install 'rtg-anomaly[ray]'" in _one_line(capsys)
    assert main(["fit", "--clean-dir", str(lane), "--model", str(tmp_path / "m"), *TINY_CLI_FLAGS, "--engine", "ray"]) == 2
    assert "pip install 'rtg-anomaly[ray]'" in _one_line(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--workers", "2"], "--workers needs --engine ray"),
    (["--engine", "ray", "--workers", "0"], "expected an integer in [1, 100000]"),
    (["--engine", "ray", "--gpus-per-worker", "-1"], "expected a number in [0, 64]"),
    (["--engine", "ray", "--method", "padim"], "--engine ray fits patchcore only"),
    (["--engine", "ray", "--select", "auto"], "--select auto runs in-process only"),
    (["--engine", "ray", "--roi", "auto"], "--engine ray fits with --roi off only"),
])
def test_fit_refuses_what_the_ray_engine_cannot_do_in_one_line(demo_data, tmp_path, capsys, argv, expected):
    assert main(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(tmp_path / "m"),
                 *TINY_CLI_FLAGS, *argv]) == 2
    assert expected in _one_line(capsys)
    assert not (tmp_path / "m").exists()


def test_detect_on_ray_needs_a_folder(demo_data, tiny_bundle, tmp_path, capsys):
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
                 "--engine", "ray"]) == 2
    assert "--engine ray needs a folder as --input" in _one_line(capsys)


@pytest.mark.ray
def test_score_dataset_gives_the_scores_and_files_of_detect(local_ray, demo_data, tiny_bundle, tmp_path):
    """The Ray Data API: a Dataset of paths in, one result row per scan out, as ``detect`` scores and writes them."""
    from rtg_anomaly import Detector
    from rtg_anomaly.ray_engine import score_dataset

    lane = _lane(demo_data, tmp_path / "lane")
    paths = sorted(str(p) for p in lane.iterdir())
    rows = score_dataset(local_ray.data.from_items([{"path": p} for p in paths]), tiny_bundle, device="cpu",
                         output_dir=str(tmp_path / "out"), heatmap_dir=str(tmp_path / "maps"),
                         detect_flags=["--draw-regions"]).take_all()
    rows = {row["path"]: row for row in rows}
    assert sorted(rows) == paths and "not a recognised image" in rows[str(lane / "03_junk.bmp")]["error"]
    detector = Detector.load(tiny_bundle, device="cpu")
    for path in paths:
        if "junk" in path:
            continue
        result = detector.score(path)
        assert rows[path]["error"] is None and rows[path]["score"] == result.score
        assert rows[path]["anomalous"] == result.anomalous
        assert np.array_equal(np.load(rows[path]["heatmap"]), result.heatmap)
    assert main(["detect", "--input", str(lane), "--output", str(tmp_path / "cli"), "--model", str(tiny_bundle),
                 "--device", "cpu", "--draw-regions", "--quiet"]) == 0
    for path in paths:
        if "junk" not in path:
            name = Path(path).name
            assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()


@pytest.mark.ray
def test_fit_on_ray_with_the_default_zoom_selection_writes_the_in_process_bundle(local_ray, demo_data, tmp_path,
                                                                                 monkeypatch):
    """`--select scale` (the default) runs on the driver before the workers start; the chosen zoom and its record
    are the in-process fit's, byte for byte."""
    import rtg_anomaly.cli.options as cli_options
    from tests.conftest import TINY_MODEL

    clean = tmp_path / "clean"
    clean.mkdir()
    for index, scan in enumerate(sorted((demo_data / "train" / "good").iterdir()) +
                                 sorted((demo_data / "test" / "good").iterdir())):
        shutil.copy(scan, clean / f"{index:02d}.bmp")
    # The tiny random backbone at 64 px tiles, given as if it were the default scale (no --tile-size flag).
    real_config = cli_options.config_from_args
    monkeypatch.setattr(cli_options, "config_from_args",
                        lambda args: real_config(args).replace(model_kwargs=TINY_MODEL, tile_size=64, input_size=56))
    flags = ["--weights", "random", "--layers", "1", "--pca-dim", "16", "--quiet", "--device", "cpu",
             "--clean-dir", str(clean)]
    assert main(["fit", "--model", str(tmp_path / "inprocess"), *flags]) == 0
    assert main(["fit", "--model", str(tmp_path / "ray"), *flags, "--engine", "ray", "--workers", "2"]) == 0
    manifest = load_bundle(tmp_path / "ray")[0]
    assert manifest["selection"]["mode"] == "scale" and len(manifest["selection"]["candidates"]) == 4
    files = sorted(p.name for p in (tmp_path / "inprocess").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ray").iterdir())
    for name in files:
        assert (tmp_path / "inprocess" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
