"""Tests for reading and writing scans (8/16-bit, grey/colour, broken files, atomic writes)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rtg_anomaly.errors import InputError
from rtg_anomaly.scans.io import (ImageReadError, check_output_path, list_images, load_image, page_count, save_array,
                                  save_image)


def _grey8(shape=(23, 37), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _grey16(shape=(23, 37), seed=0):
    image = np.random.default_rng(seed).integers(0, 60001, shape, dtype=np.uint16)
    image[0, 0], image[0, 1], image[0, 2] = 0, 60000, 65535  # extremes survive
    return image


# ---------------------------------------------------------------- load_image

@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_load_grey8_lossless(tmp_path, suffix):
    image = _grey8()
    path = tmp_path / f"scan{suffix}"
    Image.fromarray(image).save(path)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out, image)


def test_load_grey8_jpeg(tmp_path):
    image = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))  # smooth: small JPEG error
    path = tmp_path / "scan.jpg"
    Image.fromarray(image).save(path, quality=95)
    out = load_image(str(path))  # str paths work too
    assert out.dtype == np.uint8 and out.shape == (48, 64)
    assert np.abs(out.astype(int) - image).max() <= 4


@pytest.mark.parametrize("writer", ["pil", "cv2"])
@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_load_16bit_preserves_values(tmp_path, writer, suffix):
    image = _grey16()
    path = tmp_path / f"scan16{suffix}"
    if writer == "pil":
        Image.fromarray(image).save(path)
    else:
        assert cv2.imwrite(str(path), image)
    out = load_image(path)
    assert out.dtype == np.uint16 and out.shape == image.shape
    assert np.array_equal(out, image)
    assert out.max() == 65535 and (out > 255).mean() > 0.9


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_load_16bit_channels_keep_16_bits(tmp_path, suffix):
    """Colour, grey-in-RGB and RGBA files with 16 bits a channel: Pillow alone would keep only the high byte."""
    rng = np.random.default_rng(4)
    colour = rng.integers(0, 65536, (23, 37, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / f"rgb48{suffix}"), colour[..., ::-1])  # OpenCV writes BGR
    out = load_image(tmp_path / f"rgb48{suffix}")
    assert out.dtype == np.uint16 and out.shape == colour.shape and np.array_equal(out, colour)
    grey = _grey16()
    assert cv2.imwrite(str(tmp_path / f"grey48{suffix}"), np.stack([grey] * 3, axis=2))
    assert np.array_equal(load_image(tmp_path / f"grey48{suffix}"), grey)
    alpha = rng.integers(0, 65536, grey.shape, dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / f"rgba64{suffix}"), np.stack([grey, grey, grey, alpha], axis=2))
    out = load_image(tmp_path / f"rgba64{suffix}")
    assert out.dtype == np.uint16 and np.array_equal(out, grey)


def test_load_16bit_grey_alpha_png(tmp_path):
    import struct
    import zlib

    grey = _grey16()
    pixels = np.stack([grey, np.full_like(grey, 65535)], axis=2).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)  # filter byte 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", grey.shape[1], grey.shape[0], 16, 4, 0, 0, 0)  # 16-bit grey + alpha
    path = tmp_path / "la16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    out = load_image(path)
    assert out.dtype == np.uint16 and np.array_equal(out, grey)


def test_truncated_16bit_colour_png(tmp_path):
    path = tmp_path / "cut48.png"
    assert cv2.imwrite(str(path), np.random.default_rng(5).integers(0, 65536, (64, 64, 3), dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-5000])
    _assert_read_error(path)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_layouts_pillow_does_not_know_are_read_by_opencv(tmp_path, capfd):
    image = np.random.default_rng(6).normal(size=(9, 11)) * 1e3  # float64 TIFF: Pillow cannot identify it
    assert cv2.imwrite(str(tmp_path / "f64.tif"), image)
    out = load_image(tmp_path / "f64.tif")
    assert out.dtype == np.float32 and np.array_equal(out, image.astype(np.float32))
    (tmp_path / "cut.tif").write_bytes((tmp_path / "f64.tif").read_bytes()[:500])
    _assert_read_error(tmp_path / "cut.tif", "not a recognised image file")
    assert capfd.readouterr().err == ""  # libtiff's complaints, printed by OpenCV, are silenced


def test_multi_page_tiff_reads_its_first_page(tmp_path):
    """As the README says: a dual-energy pair saved as two pages gives its first page."""
    first, second = _grey16(seed=1), _grey16(seed=2)
    Image.fromarray(first).save(tmp_path / "pair.tif", save_all=True, append_images=[Image.fromarray(second)])
    assert Image.open(tmp_path / "pair.tif").n_frames == 2
    assert np.array_equal(load_image(tmp_path / "pair.tif"), first)
    assert page_count(tmp_path / "pair.tif") == 2


def test_page_count_is_one_for_single_images_and_unreadable_headers(tmp_path):
    Image.fromarray(_grey16(seed=1)).save(tmp_path / "one.tif")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "one.png")
    (tmp_path / "text.tif").write_text("not an image")
    for name in ("one.tif", "one.png", "text.tif", "missing.tif"):
        assert page_count(tmp_path / name) == 1, name


def test_load_float_tiff(tmp_path):
    image = np.random.default_rng(1).random((9, 11), dtype=np.float32) * 3.0 - 1.0
    path = tmp_path / "float.tif"
    Image.fromarray(image).save(path)
    out = load_image(path)
    assert out.dtype == np.float32 and np.array_equal(out, image)


def test_rgb_with_equal_channels_is_grey(tmp_path):
    grey = _grey8()
    path = tmp_path / "rgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(path)
    out = load_image(path)
    assert out.shape == grey.shape and out.dtype == np.uint8
    assert np.array_equal(out, grey)


def test_real_colour_stays_colour(tmp_path):
    colour = np.random.default_rng(2).integers(0, 256, (15, 20, 3), dtype=np.uint8)
    for suffix in (".png", ".bmp", ".tif"):
        path = tmp_path / f"colour{suffix}"
        Image.fromarray(colour).save(path)
        out = load_image(path)
        assert out.shape == (15, 20, 3) and out.dtype == np.uint8
        assert np.array_equal(out, colour)
        assert out.flags.c_contiguous


def test_rgba_drops_alpha(tmp_path):
    rng = np.random.default_rng(3)
    colour = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (10, 12, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([colour, alpha], axis=2), mode="RGBA").save(tmp_path / "c.png")
    out = load_image(tmp_path / "c.png")
    assert out.shape == (10, 12, 3) and np.array_equal(out, colour)  # not premultiplied
    grey = colour[..., 0]
    Image.fromarray(np.concatenate([np.stack([grey] * 3, 2), alpha], axis=2), mode="RGBA").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (10, 12) and np.array_equal(out, grey)
    Image.fromarray(np.stack([grey, alpha[..., 0]], axis=2), mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.shape == (10, 12) and np.array_equal(out, grey)


def test_palette_and_bilevel_images(tmp_path):
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[:4] = (255, 0, 0)
    colour[4:] = (0, 0, 255)
    Image.fromarray(colour).convert("P").save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.shape == (8, 8, 3) and np.array_equal(out, colour)
    bits = np.zeros((8, 8), dtype=bool)
    bits[:, 4:] = True
    Image.fromarray(bits).save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    assert out.dtype == np.uint8 and out.shape == (8, 8)
    assert set(np.unique(out)) == {0, 255} and np.array_equal(out == 255, bits)


def _assert_read_error(path, match=None):
    with pytest.raises(ImageReadError, match=match) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(info.value, InputError)


def test_missing_file(tmp_path):
    _assert_read_error(tmp_path / "nope.png", "no such file")


def test_folder_is_not_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    _assert_read_error(tmp_path / "dir.png")


def test_text_file_named_bmp(tmp_path):
    path = tmp_path / "fake.bmp"
    path.write_text("this is not an image\n" * 20)
    _assert_read_error(path, "not a recognised image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_read_error(path)


@pytest.mark.parametrize("suffix,image", [(".png", _grey8((64, 64))), (".png", _grey16((64, 64))),
                                          (".tif", _grey16((64, 64))), (".jpg", _grey8((64, 64))),
                                          (".bmp", _grey8((64, 64)))])
def test_truncated_file(tmp_path, suffix, image):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(image).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_read_error(path)


def test_bad_png_body(tmp_path):
    path = tmp_path / "bad.png"
    Image.fromarray(_grey8((64, 64))).save(path)
    data = bytearray(path.read_bytes())
    data[60:80] = b"\x00" * 20  # corrupt the compressed data / CRC
    path.write_bytes(bytes(data))
    _assert_read_error(path)


# ---------------------------------------------------------------- list_images

def test_list_images_sorted_and_filtered(tmp_path):
    for name in ["b.png", "a.BMP", "c.tif", "d.tiff", "e.jpeg", "f.jpg", "Z.png", "notes.txt", "noext", "x.npy",
                 "._b.png", ".b.k3j9.png"]:  # hidden: a macOS companion file, a partly written output
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # folders are skipped even with an image suffix
    (tmp_path / "folder.png" / "inner.png").write_bytes(b"x")  # not recursive
    found = list_images(tmp_path)
    names = [p.name for p in found]
    assert names == sorted(["b.png", "a.BMP", "c.tif", "d.tiff", "e.jpeg", "f.jpg", "Z.png"])
    assert all(isinstance(p, Path) and p.parent == tmp_path for p in found)


def test_list_images_missing_or_empty(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(ImageReadError, match="no images"):
        list_images(tmp_path)
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ImageReadError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(ImageReadError):
        list_images(tmp_path / "readme.txt")  # a file, not a folder
    (tmp_path / "._scan.bmp").write_bytes(b"x")
    with pytest.raises(ImageReadError, match=r"no images \(.*; 1 hidden file\(s\), whose names start with a dot"):
        list_images(tmp_path)


# ---------------------------------------------------------------- save_image

@pytest.mark.parametrize("suffix,fmt", [(".bmp", "BMP"), (".png", "PNG"), (".PNG", "PNG"), (".tif", "TIFF"),
                                        (".tiff", "TIFF"), (".jpg", "JPEG"), (".jpeg", "JPEG"), (".JPG", "JPEG")])
@pytest.mark.parametrize("colour", [False, True])
def test_save_image_format_by_extension(tmp_path, suffix, fmt, colour):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (12, 17, 3) if colour else (12, 17), dtype=np.uint8)
    if colour:
        image[..., 1] = 255 - image[..., 0]  # make sure it is not grey
    path = tmp_path / f"out{suffix}"
    save_image(path, image)
    with Image.open(path) as img:
        assert img.format == fmt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    out = load_image(path)
    assert out.shape == image.shape
    if fmt != "JPEG":
        assert np.array_equal(out, image)


def test_save_image_overwrites_atomically(tmp_path):
    path = tmp_path / "out.png"
    save_image(path, np.zeros((4, 4), np.uint8))
    save_image(path, np.full((5, 6), 9, np.uint8))
    assert np.array_equal(load_image(path), np.full((5, 6), 9, np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_save_image_failure_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.png"
    save_image(path, np.full((4, 4), 7, np.uint8))
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_image(path, np.zeros((4, 4), dtype=np.complex64))  # not an image
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
@pytest.mark.parametrize("image", [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8),
                                   np.zeros((4, 4, 3), np.float32), np.zeros(4, np.uint8)])
def test_save_image_refuses_what_is_not_uint8_grey_or_rgb(tmp_path, suffix, image):
    with pytest.raises(ValueError, match=r"expected uint8 \(H, W\) or \(H, W, 3\) pixels"):
        save_image(tmp_path / f"out{suffix}", image)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.gif", "out.npy", "out", "out.png.tmp"])
def test_save_image_unknown_extension_rejected(tmp_path, name):
    with pytest.raises(ImageReadError, match="cannot write"):
        save_image(tmp_path / name, np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_save_image_missing_parent_rejected(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        save_image(tmp_path / "missing" / "out.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_save_image_onto_folder_rejected(tmp_path):
    (tmp_path / "out.png").mkdir()
    with pytest.raises(ImageReadError, match="folder"):
        save_image(tmp_path / "out.png", np.zeros((4, 4), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_check_output_path_custom_suffixes(tmp_path):
    check_output_path(tmp_path / "report.json", suffixes=(".json",))
    with pytest.raises(ImageReadError):
        check_output_path(tmp_path / "report.png", suffixes=(".json",))


# ---------------------------------------------------------------- save_array

@pytest.mark.parametrize("array", [np.random.default_rng(5).random((7, 9), dtype=np.float32),
                                   np.arange(24, dtype=np.uint16).reshape(2, 3, 4), np.array(2.5)])
def test_save_array_round_trip(tmp_path, array):
    path = tmp_path / "heat.npy"
    save_array(path, np.zeros(3))  # overwrite an existing file
    save_array(path, array)
    out = np.load(path, allow_pickle=False)
    assert out.dtype == array.dtype and out.shape == array.shape and np.array_equal(out, array)
    assert [p.name for p in tmp_path.iterdir()] == ["heat.npy"]


def test_save_array_no_pickles_and_no_leftovers(tmp_path):
    with pytest.raises(ValueError):
        save_array(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object))
    assert list(tmp_path.iterdir()) == []


def test_save_array_missing_parent(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        save_array(tmp_path / "missing" / "heat.npy", np.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_prefetch_keeps_order_and_errors(tmp_path):
    import threading

    from rtg_anomaly.scans.io import prefetch

    calls = []

    def load(path):
        calls.append((path, threading.current_thread().name))
        if path == "bad":
            raise ImageReadError("cannot read image bad: broken")
        return path.upper()

    for ahead in (1, 2, 5):
        calls.clear()
        futures = prefetch(load, ["a", "bad", "c"], ahead=ahead)
        first = next(futures)
        assert first.result() == "A"
        with pytest.raises(ImageReadError):
            next(futures).result()
        assert next(futures).result() == "C"
        assert sorted(c[0] for c in calls) == ["a", "bad", "c"]
        assert all(name.startswith("rtg-prefetch") for _, name in calls)
        assert list(prefetch(load, [], ahead=ahead)) == []


@pytest.mark.parametrize("ahead", [1, 2, 3])
def test_prefetch_bounds_scans_in_flight(ahead):
    import threading
    import time

    from rtg_anomaly.scans.io import prefetch

    lock, started, most_ahead = threading.Lock(), [], [0]
    handed_out = [-1]

    def load(index):
        with lock:
            started.append(index)
            most_ahead[0] = max(most_ahead[0], index - handed_out[0])
        time.sleep(0.002)
        return index

    results = []
    for index, future in enumerate(prefetch(load, list(range(12)), ahead=ahead)):
        handed_out[0] = index
        results.append(future.result())
        if index == 0:  # while the caller works on scan 0, scans 1..ahead start decoding without being asked
            deadline = time.monotonic() + 10.0
            while not set(range(ahead + 1)) <= set(started) and time.monotonic() < deadline:
                time.sleep(0.001)
            assert set(range(ahead + 1)) <= set(started)
    assert results == list(range(12))
    # a scan starts decoding at most `ahead` places beyond the one handed out (ahead + 1 counting the
    # hand-out in progress), so at most ahead + 1 decoded scans are held
    assert most_ahead[0] <= ahead + 1
