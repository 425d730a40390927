"""Outputs checked before the work (issue #24, point 5): an output that cannot be written is refused with
one line and exit code 2 before the model loads, and in a folder run before the first scan."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rtg_anomaly.cli import main

LONG = "x" * 300


@pytest.fixture
def readonly_dir(tmp_path) -> Path:
    """A folder that refuses new files: a chmod 0o555 folder, or /sys when running as root (root ignores
    permission bits, not a read-only file system)."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if Path("/sys").is_dir() and not os.access("/sys", os.W_OK) or _refuses_files(Path("/sys")):
        yield Path("/sys")
        return
    pytest.skip("no read-only folder available to root here")


def _refuses_files(folder: Path) -> bool:
    try:
        (folder / ".rtg-probe").touch()
    except OSError:
        return True
    (folder / ".rtg-probe").unlink()
    return False


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model is loaded or fitted: every refusal must come before that."""
    from rtg_anomaly.pipeline import detector

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(detector.Detector, "load", classmethod(refuse))
    monkeypatch.setattr(detector.Detector, "fit", refuse)


def _refused(argv, capfd, expected: str) -> str:
    assert main(argv) == 2, argv
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    return err


def _scan(demo_data) -> Path:
    return sorted((demo_data / "test" / "good").iterdir())[0]


def _detect(demo_data, tiny_bundle, source=None, **flags):
    argv = ["detect", "--input", str(source or _scan(demo_data)), "--model", str(tiny_bundle), "--device", "cpu"]
    for flag, value in flags.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    return argv


def test_single_scan_output_in_read_only_folder(demo_data, tiny_bundle, readonly_dir, no_model_load, capfd):
    _refused(_detect(demo_data, tiny_bundle, output=readonly_dir / "o.png"), capfd, "does not accept new files")


@pytest.mark.parametrize("flag, name", [("output", "o.png"), ("heatmap", "h.npy"), ("report", "r.json"),
                                        ("csv", "t.csv")])
def test_single_scan_outputs_in_read_only_folder(demo_data, tiny_bundle, tmp_path, readonly_dir, no_model_load,
                                                 capfd, flag, name):
    flags = {"output": tmp_path / "o.png", flag: readonly_dir / name}
    _refused(_detect(demo_data, tiny_bundle, **flags), capfd, "does not accept new files")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("flag, suffix", [("output", ".png"), ("heatmap", ".npy"), ("report", ".json"),
                                          ("csv", ".csv")])
def test_name_too_long(demo_data, tiny_bundle, tmp_path, no_model_load, capfd, flag, suffix):
    flags = {"output": tmp_path / "o.png", flag: tmp_path / f"{LONG}{suffix}"}
    _refused(_detect(demo_data, tiny_bundle, **flags), capfd, "is longer than the")


@pytest.mark.parametrize("flag, suffix", [("output", ".png"), ("heatmap", ".npy"), ("report", ".json")])
def test_path_under_a_file(demo_data, tiny_bundle, tmp_path, no_model_load, capfd, flag, suffix):
    (tmp_path / "plain.txt").write_text("a file")
    flags = {"output": tmp_path / "o.png", flag: tmp_path / "plain.txt" / "deeper" / f"x{suffix}"}
    _refused(_detect(demo_data, tiny_bundle, **flags), capfd, "plain.txt is a file, not a folder")


def test_folder_run_into_read_only_folder(demo_data, tiny_bundle, readonly_dir, no_model_load, capfd):
    source = demo_data / "test" / "good"
    _refused(_detect(demo_data, tiny_bundle, source, output=readonly_dir), capfd, "does not accept new files")
    _refused(_detect(demo_data, tiny_bundle, source, output=readonly_dir / "new"), capfd,
             "does not accept new files")


@pytest.mark.parametrize("flag", ["heatmap", "sort_into"])
def test_folder_run_other_outputs_in_read_only_folder(demo_data, tiny_bundle, tmp_path, readonly_dir,
                                                      no_model_load, capfd, flag):
    source = demo_data / "test" / "good"
    _refused(_detect(demo_data, tiny_bundle, source, output=tmp_path / "out", **{flag: readonly_dir / "new"}),
             capfd, "does not accept new files")
    assert not (tmp_path / "out").exists()


def test_folder_run_heatmap_names_too_long(demo_data, tiny_bundle, tmp_path, no_model_load, capfd):
    """A scan named with 252 characters is fine, its heatmap (name + .npy) is not: refused before any scan."""
    source = tmp_path / "scans"
    source.mkdir()
    shutil.copy(_scan(demo_data), source / f"{'s' * 248}.bmp")
    shutil.copy(_scan(demo_data), source / f"{'s' * 248}.png")  # the same stem twice: a.bmp.npy, a.png.npy
    _refused(_detect(demo_data, tiny_bundle, source, output=tmp_path / "out", heatmap=tmp_path / "maps"), capfd,
             "is longer than the")


def test_folder_run_output_under_a_file(demo_data, tiny_bundle, tmp_path, no_model_load, capfd):
    (tmp_path / "plain.txt").write_text("a file")
    _refused(_detect(demo_data, tiny_bundle, demo_data / "test" / "good", output=tmp_path / "plain.txt" / "out"),
             capfd, "plain.txt is a file, not a folder")


def test_fit_model_in_read_only_folder(demo_data, readonly_dir, no_model_load, capfd):
    _refused(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(readonly_dir / "model"),
              "--weights", "random"], capfd, "does not accept new files")


def test_fit_model_name_too_long(demo_data, tmp_path, no_model_load, capfd):
    _refused(["fit", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(tmp_path / LONG),
              "--weights", "random"], capfd, "is longer than the")


def test_evaluate_output_in_read_only_folder(demo_data, tiny_bundle, readonly_dir, no_model_load, capfd):
    _refused(["evaluate", "--data", str(demo_data), "--model", str(tiny_bundle), "--output",
              str(readonly_dir / "metrics")], capfd, "does not accept new files")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes a chmod 0o555 folder; no read-only bundle to make")
def test_calibrate_read_only_bundle_before_the_scans(demo_data, tiny_bundle, tmp_path, no_model_load, capfd):
    holder = tmp_path / "holder"
    holder.mkdir()
    shutil.copytree(tiny_bundle, holder / "model")
    holder.chmod(0o555)
    try:
        _refused(["calibrate", "--clean-dir", str(demo_data / "train" / "good"), "--model", str(holder / "model")],
                 capfd, "does not accept new files")
    finally:
        holder.chmod(0o755)
