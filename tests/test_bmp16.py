"""Tests for 16-bit grey BMP files (plain 16-bit pixels or one 16-bit channel mask)."""
import struct

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly.scans.bmp16 import grey16_mask, read_grey16_bmp, write_grey16_bmp
from rtg_anomaly.scans.io import ImageReadError, load_image

BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS = 0, 3, 6


def write_bmp16(path, values, compression=BI_RGB, masks=None, info_size=40, top_down=False):
    """Write uint16 (H, W) ``values`` as a 16-bit BMP the way detector software does (rows padded to 4 bytes)."""
    height, width = values.shape
    padding = b"\0" * ((-2 * width) % 4)
    order = range(height) if top_down else range(height - 1, -1, -1)
    pixels = b"".join(values[row].astype("<u2").tobytes() + padding for row in order)
    info = struct.pack("<IiiHHIIiiII", info_size, width, -height if top_down else height, 1, 16, compression,
                       len(pixels), 2835, 2835, 0, 0)
    after_info = b""
    if masks is not None and info_size == 40:
        after_info = struct.pack("<3I", *masks)
    elif info_size > 40:
        info += struct.pack("<4I", *(masks or (0, 0, 0)), 0) + b"\0" * (info_size - 56)
    pixel_offset = 14 + len(info) + len(after_info)
    file_header = b"BM" + struct.pack("<IHHI", pixel_offset + len(pixels), 0, 0, pixel_offset)
    path.write_bytes(file_header + info + after_info + pixels)
    return path


def _grey16(shape=(23, 37), seed=0):
    values = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    values[0, 0], values[-1, -1] = 0, 65535
    return values


@pytest.mark.parametrize("compression,masks,info_size,top_down", [
    (BI_RGB, None, 40, False),                                   # plain 16-bit pixels, bottom-up
    (BI_RGB, None, 40, True),                                    # top-down (negative height)
    (BI_BITFIELDS, (0xFFFF, 0xFFFF, 0xFFFF), 40, False),         # masks after a 40-byte header
    (BI_BITFIELDS, (0xFFFF, 0xFFFF, 0xFFFF), 108, False),        # masks inside a V4 header
    (BI_BITFIELDS, (0xFFFF, 0, 0), 124, True),                   # one channel mask, V5 header
    (BI_ALPHABITFIELDS, (0, 0xFFFF, 0), 56, False),
])
def test_grey16_layouts_read_exactly(tmp_path, compression, masks, info_size, top_down):
    values = _grey16()  # odd width: every row is padded
    path = write_bmp16(tmp_path / "scan.bmp", values, compression, masks, info_size, top_down)
    out = read_grey16_bmp(path, max_pixels=10**9)
    assert out.dtype == np.uint16 and out.shape == values.shape and out.flags.c_contiguous
    assert np.array_equal(out, values)
    assert np.array_equal(load_image(path), values)


@pytest.mark.parametrize("mask,stored", [(0x0FFF, lambda v: v | 0xF000),   # 12-bit detector, stray high bits
                                         (0xFFF0, lambda v: v << 4)])      # 12 bits left-aligned
def test_partial_mask_keeps_the_value_under_it(tmp_path, mask, stored):
    values = np.random.default_rng(1).integers(0, 4096, (9, 10), dtype=np.uint16)
    path = write_bmp16(tmp_path / "scan12.bmp", stored(values).astype(np.uint16), BI_BITFIELDS, (mask,) * 3)
    assert np.array_equal(load_image(path), values)


def test_colour_masks_are_left_to_pillow(tmp_path):
    colour = np.zeros((4, 6), dtype=np.uint16)
    colour[:, :3] = 0xF800  # pure red in 5-6-5
    colour[:, 3:] = 0x001F  # pure blue
    path = write_bmp16(tmp_path / "rgb565.bmp", colour, BI_BITFIELDS, (0xF800, 0x07E0, 0x001F))
    assert read_grey16_bmp(path, max_pixels=10**9) is None
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    assert out[0, 0, 0] >= 248 and out[0, 5, 2] >= 248  # red stays red, blue stays blue (5 bits scaled)
    assert out[0, 0, 1:].max() == 0 and out[0, 5, :2].max() == 0


def test_other_files_are_not_grey16(tmp_path):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "grey8.bmp")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "rgb24.bmp")
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(tmp_path / "grey16.png")
    for name in ("grey8.bmp", "rgb24.bmp", "grey16.png"):
        assert read_grey16_bmp(tmp_path / name, max_pixels=10**9) is None
    assert grey16_mask(b"BM") is None and grey16_mask(b"") is None


@pytest.mark.parametrize("damage,match", [
    (lambda data: data[: len(data) - 10], "truncated"),
    (lambda data: data[:18] + struct.pack("<i", 0) + data[22:], "image size of 0 x"),
    (lambda data: data[:54] + struct.pack("<3I", 0x1FFFF, 0x1FFFF, 0x1FFFF) + data[66:], "wider than 16 bits"),
])
def test_broken_files_give_one_line_errors(tmp_path, damage, match):
    path = write_bmp16(tmp_path / "bad.bmp", _grey16((8, 8)), BI_BITFIELDS, (0xFFFF,) * 3)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        read_grey16_bmp(path, max_pixels=10**9)
    with pytest.raises(ImageReadError, match=match) as info:
        load_image(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_pixel_limit(tmp_path):
    path = write_bmp16(tmp_path / "big.bmp", _grey16((10, 10)))
    with pytest.raises(ValueError, match="more than the 99 allowed"):
        read_grey16_bmp(path, max_pixels=99)
    assert read_grey16_bmp(path, max_pixels=100).shape == (10, 10)
    assert read_grey16_bmp(path, max_pixels=None).shape == (10, 10)  # Pillow's "no limit"


@pytest.mark.parametrize("shape", [(1, 1), (23, 37), (4, 2), (7, 1)])  # odd widths need row padding
def test_written_grey16_bmp_reads_back_exactly(tmp_path, shape):
    values = _grey16(shape, seed=shape[1])
    path = tmp_path / "scan.bmp"
    write_grey16_bmp(path, values)
    header = path.read_bytes()[:66]
    assert grey16_mask(header) == 0xFFFF
    assert path.stat().st_size == 66 + shape[0] * ((shape[1] * 2 + 3) // 4 * 4)
    for read in (read_grey16_bmp(path, max_pixels=None), load_image(path)):
        assert read.dtype == np.uint16 and np.array_equal(read, values)


@pytest.mark.parametrize("values", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint16),
                                    np.zeros((0, 4), np.uint16), np.zeros((4, 4), np.int32)])
def test_write_grey16_bmp_refuses_other_arrays(tmp_path, values):
    with pytest.raises(ValueError, match="non-empty uint16 \\(H, W\\) array"):
        write_grey16_bmp(tmp_path / "scan.bmp", values)
    assert not (tmp_path / "scan.bmp").exists()


def test_detect_reads_a_16bit_bmp_scan_like_the_same_png(demo_data, tiny_bundle, tmp_path):
    """End to end: the CLI scores a 16-bit grey BMP exactly as the same scan stored as a 16-bit PNG."""
    from rtg_anomaly.cli import main

    scan8 = np.asarray(Image.open(sorted((demo_data / "test" / "anomalous").iterdir())[0]))
    scan16 = (scan8.astype(np.uint16) * 257 + np.arange(scan8.shape[1], dtype=np.uint16) % 7)
    Image.fromarray(scan16).save(tmp_path / "scan.png")
    write_bmp16(tmp_path / "scan.bmp", scan16)
    for name in ("scan.png", "scan.bmp"):
        assert main(["detect", "--input", str(tmp_path / name), "--output", str(tmp_path / f"overlay_{name}"),
                     "--model", str(tiny_bundle), "--device", "cpu", "--heatmap", str(tmp_path / f"{name}.npy"),
                     "--quiet"]) == 0
    from_png, from_bmp = np.load(tmp_path / "scan.png.npy"), np.load(tmp_path / "scan.bmp.npy")
    assert from_bmp.shape == scan16.shape and np.array_equal(from_bmp, from_png)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "overlay_scan.bmp")),
                          np.asarray(Image.open(tmp_path / "overlay_scan.png")))
