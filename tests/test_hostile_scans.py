"""Hostile and damaged scans (issue #24, point 1): decompression bombs, image data that stops early and
codec noise give one line of ours and exit code 2, before any large allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly.cli import main
from rtg_anomaly.scans.io import ImageReadError, load_image
from tests.conftest import REPO_ROOT
from tests.hostile import bmp_bomb, insert_bad_text_chunk, png_bomb, png_with_rows, tiff_bomb

HOSTILE = {
    "bomb.png": lambda: png_bomb(),
    "bomb16rgb.png": lambda: png_bomb(40_000, 40_000, depth=16, colour=2),  # 1.6 Gpx: over the limit, under 2x
    "bomb.bmp": lambda: bmp_bomb(),
    "bomb16.bmp": lambda: bmp_bomb(bits=16),
    "bomb.tif": lambda: tiff_bomb(),
    "short8.png": lambda: png_with_rows(200, 300, 30),
    "short16.png": lambda: png_with_rows(200, 300, 30, depth=16),
    "short16rgb.png": lambda: png_with_rows(200, 300, 30, depth=16, colour=2),
}


def _detect(scan, tmp_path, tiny_bundle, *extra):
    return main(["detect", "--input", str(scan), "--output", str(tmp_path / "out" / "overlay.png"),
                 "--model", str(tiny_bundle), "--device", "cpu", *extra])


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_scan_is_refused_in_one_line(name, tmp_path, tiny_bundle, capfd):
    scan = tmp_path / name
    scan.write_bytes(HOSTILE[name]())
    (tmp_path / "out").mkdir()
    assert _detect(scan, tmp_path, tiny_bundle, "--report", str(tmp_path / "out" / "r.json")) == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rtg-anomaly: error: cannot read image") and str(scan) in err
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name", ["bomb.png", "bomb16rgb.png", "bomb.bmp", "bomb.tif"])
def test_bomb_names_the_pixel_limit(name, tmp_path):
    scan = tmp_path / name
    scan.write_bytes(HOSTILE[name]())
    with pytest.raises(ImageReadError, match="RTG_ANOMALY_MAX_PIXELS"):
        load_image(scan)


@pytest.mark.parametrize("name", ["short8.png", "short16.png", "short16rgb.png"])
def test_png_whose_data_stops_early_is_not_decoded_as_black_rows(name, tmp_path):
    scan = tmp_path / name
    scan.write_bytes(HOSTILE[name]())
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        load_image(scan)


def test_png_rows_complete_still_read(tmp_path):
    scan = tmp_path / "full.png"
    scan.write_bytes(png_with_rows(20, 30, 30))
    assert np.array_equal(load_image(scan), np.full((30, 20), 100, np.uint8))


def test_pixel_limit_is_a_setting(tmp_path):
    scan = tmp_path / "scan.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(scan)
    with pytest.raises(ImageReadError, match="2,000 pixels, more than the 1,999 allowed"):
        load_image(scan, max_pixels=1999)
    assert load_image(scan, max_pixels=2000).shape == (40, 50)


@pytest.mark.parametrize("depth, colour", [(8, 0), (16, 2)])
def test_codec_warnings_stay_off_stderr(tmp_path, tiny_bundle, capfd, depth, colour):
    """libpng prints "libpng warning: tEXt: CRC error" from C for a damaged chunk; the scan itself is fine."""
    import cv2

    pixels = np.random.default_rng(0).integers(0, 2 ** depth, (96, 96, 3)[:3 if colour else 2],
                                               dtype=np.uint8 if depth == 8 else np.uint16)
    scan = tmp_path / "noisy.png"
    scan.write_bytes(insert_bad_text_chunk(cv2.imencode(".png", pixels)[1].tobytes()))
    (tmp_path / "out").mkdir()
    assert _detect(scan, tmp_path, tiny_bundle) == 0
    err = capfd.readouterr().err
    assert "libpng" not in err, err


def test_codec_error_is_one_line(tmp_path, tiny_bundle, capfd):
    scan = tmp_path / "cut.png"
    scan.write_bytes(png_with_rows(200, 300, 30, depth=16, colour=2))
    (tmp_path / "out").mkdir()
    assert _detect(scan, tmp_path, tiny_bundle) == 2
    err = capfd.readouterr().err
    assert "libpng" not in err and len(err.strip().splitlines()) == 1, err


def test_bomb_refusal_peak_memory_and_environment_setting(tmp_path):
    """In a fresh process: the refusal of a 10**10-pixel PNG, BMP and TIFF raises the peak resident memory
    by a few MB at most, and RTG_ANOMALY_MAX_PIXELS sets the limit."""
    for name in ("bomb.png", "bomb.bmp", "bomb.tif", "bomb16rgb.png"):
        (tmp_path / name).write_bytes(HOSTILE[name]())
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "small.png")
    script = textwrap.dedent(f"""
        import json, resource, sys
        from rtg_anomaly.scans.io import ImageReadError, load_image
        load_image({str(tmp_path / 'small.png')!r}, max_pixels=10**6)  # warm up the decoders
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for name in ("bomb.png", "bomb.bmp", "bomb.tif", "bomb16rgb.png"):
            try:
                load_image({str(tmp_path)!r} + "/" + name)
            except ImageReadError:
                pass
            else:
                sys.exit("not refused: " + name)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        try:
            load_image({str(tmp_path / 'small.png')!r})
            refused = False
        except ImageReadError as exc:
            refused = "1,999 allowed" in str(exc)
        print(json.dumps({{"grown_kb": grown, "small_refused": refused}}))
    """)
    env = {**os.environ, "RTG_ANOMALY_MAX_PIXELS": "1999", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["small_refused"]
    assert result["grown_kb"] < 20 * 1024, result  # ru_maxrss is in kB on Linux
