"""Atomic outputs: complete or absent, and with the permissions a new file gets under the umask."""
import json
import os
import stat

import numpy as np
import pytest

from rtg_anomaly.atomic import replacing, staging_folder, write_text
from rtg_anomaly.bundle import save_bundle
from rtg_anomaly.scans.io import save_array, save_image
from rtg_anomaly.outputs.triage import write_triage_csv

UMASK = 0o027  # group may read, others nothing: neither tempfile's 0o600 nor a default 0o644


@pytest.fixture
def umask():
    previous = os.umask(UMASK)
    yield UMASK
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_replacing_writes_with_the_umask_mode_and_leaves_nothing_else(tmp_path, umask):
    target = tmp_path / "report.json"
    with replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.") and tmp.suffix == ".json"
        assert tmp.exists() and not target.exists()
        tmp.write_text("{}")
    assert target.read_text() == "{}" and mode(target) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_replacing_keeps_the_previous_file_on_error(tmp_path):
    target = tmp_path / "metrics.md"
    target.write_text("previous")
    with pytest.raises(RuntimeError, match="half-way"):
        with replacing(target, durable=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("half-way")
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["metrics.md"]


def test_write_text_durable_and_utf8(tmp_path, umask):
    write_text(tmp_path / "note.md", "µ-focus ✓\n", durable=True)
    assert (tmp_path / "note.md").read_text(encoding="utf-8") == "µ-focus ✓\n"
    assert mode(tmp_path / "note.md") == 0o640


def test_staging_folder_is_hidden_unique_and_not_private(tmp_path, umask):
    first, second = staging_folder(tmp_path / "model"), staging_folder(tmp_path / "model")
    assert first != second and first.name.startswith(".model.") and not any(first.iterdir())
    assert mode(first) == 0o777 & ~umask


def test_every_output_writer_gives_the_umask_mode(tmp_path, umask):
    """Overlays, heatmaps, triage tables and model bundles were 0o600 / 0o700 (tempfile's private modes):
    an operator's viewer or a service running as another user could not read them."""
    save_image(tmp_path / "overlay.png", np.zeros((4, 5, 3), np.uint8))
    save_array(tmp_path / "heatmap.npy", np.ones((4, 5), np.float32))
    write_triage_csv(tmp_path / "triage.csv", [{"path": "a.bmp", "score": 1.5, "decision": "suspect"}])
    bundle = save_bundle(tmp_path / "model", {"version": "x"}, {"a": np.zeros(3)})
    for name in ("overlay.png", "heatmap.npy", "triage.csv"):
        assert mode(tmp_path / name) == 0o640, name
    assert mode(bundle) == 0o750 and all(mode(p) == 0o640 for p in bundle.iterdir())
    assert np.array_equal(np.load(tmp_path / "heatmap.npy"), np.ones((4, 5), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmap.npy", "model", "overlay.png", "triage.csv"]


def test_cli_outputs_are_readable_by_the_group(demo_data, tiny_bundle, tmp_path, umask):
    """detect (overlay, heatmap, report, CSV, triptych, HTML page) and evaluate (metrics, plots) through the CLI."""
    from rtg_anomaly.cli import main

    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "overlay.png"), "--model",
                 str(tiny_bundle), "--device", "cpu", "--heatmap", str(tmp_path / "map.npy"), "--report",
                 str(tmp_path / "report.json"), "--csv", str(tmp_path / "triage.csv"), "--triptych",
                 str(tmp_path / "triptych.png"), "--html", str(tmp_path / "page.html"), "--quiet"]) == 0
    assert main(["evaluate", "--data", str(demo_data), "--model", str(tiny_bundle), "--device", "cpu",
                 "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"overlay.png", "map.npy", "report.json", "triage.csv", "triptych.png", "page.html", "metrics.json",
            "roc.png"} <= {p.name for p in written}
    assert {p.name: mode(p) for p in written} == {p.name: 0o640 for p in written}
    assert json.loads((tmp_path / "report.json").read_text())["complete"] is True


def test_the_longest_allowed_name_can_be_written(tmp_path):
    """The hidden temporary name stays short, so an output name at the file system's limit still works."""
    target = tmp_path / ("s" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 4) + ".png")
    save_image(target, np.zeros((3, 3, 3), np.uint8))
    write_text(tmp_path / ("r" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 5) + ".json"), "{}")
    assert sorted(len(p.name) for p in tmp_path.iterdir()) == [os.pathconf(tmp_path, "PC_NAME_MAX")] * 2
