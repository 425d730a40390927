"""Render an HTML triage page in headless Chromium and save a screenshot (checks the page in a real browser).

    python scripts/screenshot_html.py triage.html [--out docs/images/triage_page.png] [--size 1280x1400]

Needs Chromium (Debian: apt-get install chromium). The page is opened from disk (file://), offline, with
its script running; the dumped DOM is checked to hold one section per scan, the script to have finished, and
``#suspect`` to show the suspect scans only, before the screenshot is taken.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str:
    """Path of a Chromium-family browser on PATH, else SystemExit with how to install one."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("screenshot_html: no Chromium found (Debian/Ubuntu: apt-get install chromium)")


def _flags(width: int, height: int) -> list[str]:
    # --no-sandbox: Chromium refuses to run as root otherwise (containers, CI).
    return ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
            "--allow-file-access-from-files", f"--window-size={width},{height}"]


def rendered_dom(page: Path, width: int = 1280, height: int = 1400, browser: str | None = None,
                 fragment: str = "") -> str:
    """The page's DOM after its script ran, as Chromium serialises it (``fragment``: e.g. ``#suspect``)."""
    browser = browser or find_browser()
    result = subprocess.run([browser, *_flags(width, height), "--dump-dom", page.resolve().as_uri() + fragment],
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


def check_page(page: Path, width: int = 1280, height: int = 1400) -> None:
    """SystemExit unless Chromium shows every scan of ``page``, its script ran to the end, and ``#suspect``
    hides every scan that is not suspect."""
    expected = page.read_text(encoding="utf-8").count("<section class='scan")
    dom = rendered_dom(page, width, height)
    if dom.count('<section class="scan') != expected or 'data-ready="1"' not in dom:
        raise SystemExit(f"screenshot_html: Chromium's DOM of {page} does not hold the {expected} scans, or its "
                         "script did not finish")
    filtered = rendered_dom(page, width, height, fragment="#suspect")
    for section in re.findall(r'<section class="([^"]*)"', filtered):
        classes = section.split()
        if ("suspect" in classes) == ("hidden" in classes):
            raise SystemExit(f"screenshot_html: {page}#suspect does not show exactly the suspect scans")


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 1400, browser: str | None = None) -> None:
    """Save a PNG screenshot of ``page`` to ``out``, atomically (written beside it, then renamed)."""
    browser = browser or find_browser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".shot-") as tmp:
        shot = Path(tmp) / "page.png"
        subprocess.run([browser, *_flags(width, height), f"--screenshot={shot}", page.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
        if not shot.is_file():
            raise SystemExit(f"screenshot_html: {browser} wrote no screenshot of {page}")
        os.replace(shot, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/triage_page.png"))
    parser.add_argument("--size", default="1280x1400", help="window WIDTHxHEIGHT in CSS pixels")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if not args.page.is_file():
        raise SystemExit(f"screenshot_html: {args.page} does not exist")
    check_page(args.page, width, height)
    expected = args.page.read_text(encoding="utf-8").count("<section class='scan")
    screenshot(args.page, args.out, width, height)
    print(f"wrote {args.out} ({expected} scans on the page)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
