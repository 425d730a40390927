"""``detect``'s display flags, triptychs and HTML page through main([...])."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly.cli import main
from tests.test_cli import _one_line_error


@pytest.mark.parametrize("flags,expected", [
    (["--colormap", "nope"], "unknown colour map 'nope'"),
    (["--alpha-min", "2"], "argument --alpha-min: expected a number in [0, 1]"),
    (["--alpha-max", "-1"], "argument --alpha-max: expected a number in [0, 1]"),
    (["--alpha-min", "0.9", "--alpha-max", "0.2"], "must not exceed --alpha-max"),
    (["--alpha", "0.5", "--alpha-max", "0.6"], "--alpha is the older name of --alpha-max"),
    (["--gamma", "0"], "argument --gamma: expected a number in (0, 20]"),
    (["--gamma", "nan"], "argument --gamma: expected a number in (0, 20]"),
    (["--clip-quantile", "0"], "argument --clip-quantile: expected a number in (0, 1]"),
    (["--blur", "-2"], "argument --blur: expected a number in [0, 256]"),
    (["--color-range", "2", "1"], "--color-range needs LOW < HIGH"),
    (["--gamma", "abc"], "argument --gamma: expected a number in (0, 20], got 'abc'"),
    (["--html", "page.txt"], "expected one of .html, .htm"),
])
def test_bad_display_values_are_refused_before_the_model_loads(demo_data, tmp_path, capsys, flags, expected):
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    flags = [str(tmp_path / f) if f.endswith(".txt") else f for f in flags]
    # The model does not exist: the flag's error comes first, so it is checked before any loading.
    code = main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"),
                 "--model", str(tmp_path / "no_model"), *flags])
    assert code == 2
    assert expected in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_display_flags_change_the_overlay_but_not_the_heatmap_or_scores(demo_data, tiny_bundle, tmp_path):
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    runs = {"plain": [], "tuned": ["--blur", "3", "--gamma", "0.5", "--clip-quantile", "0.99", "--colormap",
                                   "inferno", "--alpha-min", "0.1", "--alpha-max", "0.9", "--no-outline"]}
    results = {}
    for name, flags in runs.items():
        out = tmp_path / name
        out.mkdir()
        assert main(["detect", "--input", str(scan), "--output", str(out / "o.png"), "--model", str(tiny_bundle),
                     "--heatmap", str(out / "m.npy"), "--report", str(out / "r.json"), "--threshold", "percentile",
                     "--quiet", *flags]) == 0
        report = json.loads((out / "r.json").read_text())["images"][0]
        results[name] = (np.asarray(Image.open(out / "o.png")), (out / "m.npy").read_bytes(), report)
    (plain, plain_map, plain_report), (tuned, tuned_map, tuned_report) = results["plain"], results["tuned"]
    assert plain_map == tuned_map
    assert plain_report["score"] == tuned_report["score"] and plain_report["regions"] == tuned_report["regions"]
    assert plain.shape == tuned.shape and not np.array_equal(plain, tuned)


def test_colorbar_adds_a_legend_strip_under_the_overlay(demo_data, tiny_bundle, tmp_path):
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
                 "--colorbar", "--threshold", "calibrated", "--quiet"]) == 0
    width, height = Image.open(scan).size
    overlay = np.asarray(Image.open(tmp_path / "o.png"))
    assert overlay.shape[1] == width and overlay.shape[0] > height


def test_single_scan_triptych(demo_data, tiny_bundle, tmp_path):
    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    report = tmp_path / "r.json"
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
                 "--triptych", str(tmp_path / "t.png"), "--report", str(report), "--quiet"]) == 0
    width, height = Image.open(scan).size
    picture = np.asarray(Image.open(tmp_path / "t.png"))
    assert picture.shape[1] > 3 * width and picture.shape[0] > height
    overlay = np.asarray(Image.open(tmp_path / "o.png"))
    np.testing.assert_array_equal(picture[:height, -width:], overlay)  # the third panel is the overlay written
    assert json.loads(report.read_text())["images"][0]["triptych"] == str(tmp_path / "t.png")


def test_triptych_refuses_to_overwrite_the_scan(demo_data, tiny_bundle, tmp_path, capsys):
    scan = tmp_path / "scan.png"
    Image.open(sorted((demo_data / "test" / "good").iterdir())[0]).save(scan)
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
                 "--triptych", str(scan)]) == 2
    assert "--triptych" in _one_line_error(capsys)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.sections, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs)["href"])
        if tag == "section":
            self.sections.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_folder_run_writes_triptychs_and_an_html_page_with_every_scan(demo_data, tiny_bundle, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(demo_data / "test" / "anomalous", folder)
    for scan in sorted((demo_data / "test" / "good").iterdir()):
        shutil.copy(scan, folder / f"good_{scan.name}")
    odd = folder / "<b>&'quote\".bmp"
    shutil.copy(sorted((demo_data / "test" / "good").iterdir())[0], odd)
    (folder / "broken.bmp").write_text("not an image")
    page = tmp_path / "site" / "triage.html"
    page.parent.mkdir()
    assert main(["detect", "--input", str(folder), "--output", str(tmp_path / "out"), "--model", str(tiny_bundle),
                 "--triptych", str(tmp_path / "trip"), "--html", str(page), "--threshold", "calibrated",
                 "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    scanned = [Path(e["input"]).name for e in report["images"]]
    assert sorted(p.name for p in (tmp_path / "trip").iterdir()) == sorted(f"{Path(n).stem}.png" for n in scanned)
    parsed = _Links()
    parsed.feed(page.read_text(encoding="utf-8"))
    body = "".join(parsed.text)
    for entry in report["images"]:
        assert Path(entry["input"]).name in body and f"{entry['score']:.3f}" in body
    assert "broken.bmp" in body
    by_score = sorted(report["images"], key=lambda e: -e["score"])
    shown = [s for s in parsed.sections if s["data-decision"] != "error"]
    assert [s["data-name"] for s in shown] == [Path(e["input"]).name.lower() for e in by_score]
    targets = {(page.parent / unquote(href)).resolve() for href in parsed.links}
    assert all(t.is_file() for t in targets)
    assert {Path(e["output"]).resolve() for e in report["images"]} <= targets
    assert {Path(e["triptych"]).resolve() for e in report["images"]} <= targets


@pytest.mark.parametrize("threshold", ["percentile", "calibrated"])
@pytest.mark.parametrize("out_of_memory", [False, True])
def test_overlay_blended_on_the_device_equals_the_host_one(demo_data, tiny_bundle, tmp_path, monkeypatch,
                                                           out_of_memory, threshold):
    """The GPU path, run on CPU tensors: the overlay is blended from the scan's and heatmap's device copies
    that ``score`` left (nothing uploaded again, the percentile mask taken there), and it equals the host
    one; out of GPU memory, the writer draws it on the host."""
    import torch

    import rtg_anomaly.backbone.features as features
    import rtg_anomaly.pipeline.detector as detector_module
    from rtg_anomaly import Detector

    scan = sorted((demo_data / "test" / "anomalous").iterdir())[0]
    common = ["--input", str(scan), "--model", str(tiny_bundle), "--device", "cpu", "--quiet", "--draw-regions",
              "--colorbar", "--threshold", threshold]
    assert main(["detect", "--output", str(tmp_path / "host.png"), *common]) == 0
    calls = []
    real = detector_module.render_display_torch

    def on_device(scan, *args, **kwargs):
        calls.append((isinstance(scan, torch.Tensor), kwargs["device_map"] is not None,
                      isinstance(kwargs["display_mask"], torch.Tensor)))
        if out_of_memory:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(scan, *args, **kwargs)

    monkeypatch.setattr(features, "cuda_device_of", lambda device: torch.device("cpu"))
    monkeypatch.setattr(Detector, "_on_gpu", property(lambda self: not self._pixel_work_on_host))
    monkeypatch.setattr(detector_module, "render_display_torch", on_device)
    assert main(["detect", "--output", str(tmp_path / "device.png"), *common]) == 0
    assert calls == [(True, True, threshold == "percentile")]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "device.png")),
                                  np.asarray(Image.open(tmp_path / "host.png")))


def test_triptych_of_a_16bit_scan_shows_it_windowed(demo_data, tiny_bundle, tmp_path):
    scan8 = np.asarray(Image.open(sorted((demo_data / "test" / "anomalous").iterdir())[0]))
    raw = (scan8.astype(np.uint16) * 16 + 1000)  # 12-bit counts: unwindowed they would all be white
    scan = tmp_path / "scan16.png"
    Image.fromarray(raw).save(scan)
    assert main(["detect", "--input", str(scan), "--output", str(tmp_path / "o.png"), "--model", str(tiny_bundle),
                 "--triptych", str(tmp_path / "t.png"), "--quiet"]) == 0
    original = np.asarray(Image.open(tmp_path / "t.png"))[:raw.shape[0], :raw.shape[1], 0].astype(float)
    assert original.min() < 30 and original.max() > 225  # the window spreads the counts over black..white
    assert np.corrcoef(original.ravel(), raw.ravel())[0, 1] > 0.95
