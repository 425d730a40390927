"""The HTML triage page, read back with html.parser: every scan, score, badge and link."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from rtg_anomaly.outputs.html_report import relative_link, render_html_report, thumbnail_uri, write_html_report


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.links, self.images, self.scripts, self.text = [], [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs)
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "script":
            self.scripts += 1
            assert "src" not in attrs  # inline only: works offline

    def handle_data(self, data):
        self.text.append(data)


def _entry(folder: Path, name: str, score: float, anomalous: bool, triptych: bool = True) -> dict:
    overlay = folder / "overlays" / name
    overlay.parent.mkdir(exist_ok=True)
    overlay.write_bytes(b"x")
    entry = {"input": f"/scans/{name}", "output": str(overlay), "score": score, "anomalous": anomalous,
             "threshold": 1.2, "pixel_threshold": 1.4, "warnings": [],
             "regions": [{"rank": 1, "bbox": [1, 2, 3, 4], "area": 9, "peak": 2.0, "mean": 1.6}] if anomalous else []}
    if triptych:
        path = folder / "triptychs" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
        entry["triptych"] = str(path)
    return entry


def test_page_lists_every_scan_sorted_with_badges_scores_and_working_links(tmp_path):
    names = ["b.png", "<script>alert('x')</script>&.png", "a b#c?.png"]
    entries = [_entry(tmp_path, names[0], 0.9, False), _entry(tmp_path, names[1], 3.5, True),
               _entry(tmp_path, names[2], 1.7, True, triptych=False)]
    errors = [{"input": "/scans/<bad>.png", "error": "cannot read image <bad>.png"}]
    thumb = thumbnail_uri(np.zeros((10, 2000, 3), np.uint8), 480)
    pictures = {e["input"]: {"overlay": thumb, "triptych": thumb} for e in entries}
    page = tmp_path / "report" / "triage.html"
    page.parent.mkdir()
    write_html_report(page, entries, errors, pictures, model="models/<m>", threshold_mode="calibrated")
    text = page.read_text(encoding="utf-8")
    assert "<script>alert" not in text  # the scan name is escaped, not run
    parsed = _Page()
    parsed.feed(text)
    sections = parsed.sections
    assert [s["data-decision"] for s in sections] == ["suspect", "suspect", "clean", "error"]
    assert [float(s["data-score"]) for s in sections[:3]] == [3.5, 1.7, 0.9]  # by score, most suspect first
    body = "".join(parsed.text)
    for name in names + ["<bad>.png"]:
        assert name in body  # shown as text, exactly
    for score in ("3.500", "1.700", "0.900"):
        assert score in body
    assert "models/<m>" in body and "pixel threshold 1.400" in body and "SUSPECT" in body and "ERROR" in body
    assert parsed.links, "no links"
    for href in parsed.links:  # every link resolves from the page's folder to a written file
        assert not href.startswith(("http", "/")), href
        assert (page.parent / unquote(href)).is_file(), href
    linked = {Path(unquote(h)).name for h in parsed.links}
    assert {Path(e["output"]).name for e in entries} <= linked
    assert {Path(e["triptych"]).name for e in entries if "triptych" in e} <= linked
    assert all(src.startswith("data:image/jpeg;base64,") for src in parsed.images) and len(parsed.images) == 6
    assert parsed.scripts == 1 and "http" not in text.split("<script>")[1]


def test_thumbnail_is_shrunk_to_the_width():
    import base64

    import cv2

    uri = thumbnail_uri(np.full((100, 1000, 3), 200, np.uint8), 250)
    data = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8)
    assert cv2.imdecode(data, cv2.IMREAD_COLOR).shape == (25, 250, 3)


def test_relative_link_is_percent_encoded(tmp_path):
    assert relative_link(tmp_path / "o" / "a b#.png", tmp_path / "page.html") == "o/a%20b%23.png"


def test_an_unfinished_run_says_so():
    text = render_html_report([], [], {}, Path("p.html"), "m", "calibrated", complete=False)
    assert "stopped early" in text


def test_thumbnail_keeps_a_small_flagged_region_visible():
    import base64

    import cv2

    picture = np.full((400, 2000, 3), 128, np.uint8)
    flagged = np.zeros((400, 2000), bool)
    flagged[200:206, 1000:1006] = True  # 6 px: about one pixel once shrunk to 400 wide
    uri = thumbnail_uri(picture, 400, flagged)
    data = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8)
    small = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)
    magenta = (small[..., 0] > 170) & (small[..., 1] < 100) & (small[..., 2] > 170)
    assert magenta[36:46, 196:206].sum() >= 8 and magenta.sum() == magenta[34:48, 194:208].sum()


def test_page_filters_and_sorts_in_chromium(tmp_path):
    """The inline script in a real browser (skipped where no Chromium is installed)."""
    import shutil
    import sys

    import pytest

    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")):
        pytest.skip("no Chromium on this machine")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from screenshot_html import check_page, rendered_dom, screenshot

    entries = [_entry(tmp_path, "b.png", 0.9, False), _entry(tmp_path, "a&<x>.png", 3.5, True)]
    page = tmp_path / "triage.html"
    write_html_report(page, entries, [{"input": "/scans/c.png", "error": "unreadable"}], {}, model="m",
                      threshold_mode="calibrated")
    check_page(page)  # every scan shown, the script finished, #suspect shows the suspect scans only
    dom = rendered_dom(page, fragment="#clean")
    assert 'class="scan clean"' in dom and 'class="scan suspect hidden"' in dom and 'class="scan error hidden"' in dom
    screenshot(page, tmp_path / "shot.png", width=800, height=600)
    assert (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
