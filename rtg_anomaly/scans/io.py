"""Reading and writing scans: every common format, 8- and 16-bit, nothing clipped."""

from __future__ import annotations

import os
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..atomic import output_problem, replacing
from ..errors import InputError
from .bmp16 import read_grey16_bmp
from .codec_noise import quiet_codecs

_T = TypeVar("_T")

IMAGE_SUFFIXES = (".bmp", ".png", ".tif", ".tiff", ".jpg", ".jpeg")
DEFAULT_MAX_PIXELS = 1_000_000_000
MAX_PIXELS_VARIABLE = "RTG_ANOMALY_MAX_PIXELS"


class ImageReadError(InputError):
    """An image file is missing, unreadable, truncated or not an image."""


def _max_pixels_setting() -> int:
    """The largest scan, in pixels, that is decoded: ``$RTG_ANOMALY_MAX_PIXELS`` or 1 Gpx.

    Vehicle scans are large (4000 x 12000 and more), so Pillow's default bomb guard (89 Mpx) would
    refuse legitimate scans; a file whose header declares more than this is refused before any pixel
    memory is allocated (a 1 Gpx 16-bit scan decodes to 2 GB).
    """
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        value = 0
    if not 1 <= value <= 1 << 40:
        raise InputError(f"{MAX_PIXELS_VARIABLE}={text!r} must be a pixel count between 1 and {1 << 40}")
    return value


MAX_PIXELS = _max_pixels_setting()
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own guard, a second line behind _check_pixel_count
# OpenCV reads its limit once, at its first decode; without this it refuses scans over 2**30 pixels
# even when the setting allows them.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read one scan with its full dynamic range.

    Returns an array of shape (H, W) for grey or (H, W, 3) for colour, in the
    file's own dtype: uint8, uint16 (16-bit grey or 16 bits a channel colour PNG/TIFF,
    16-bit grey BMP, see ``bmp16``) or float32 (float or signed integer TIFF).
    Alpha channels are dropped; palette images become RGB. Of a file holding several images (a multi-page
    TIFF) only the first is read; ``page_count`` tells how many there are.

    max_pixels: a file whose header declares more pixels is refused before its pixels are decoded
    (default ``MAX_PIXELS``: ``$RTG_ANOMALY_MAX_PIXELS`` or 1 Gpx), so a decompression bomb (a small
    file declaring 10**10 pixels) costs no memory. PNG files are decoded by libpng (through OpenCV),
    which refuses image data that stops early; Pillow would return the missing rows as black.
    Raises ImageReadError with a one-line reason; decoders' own messages are kept off stderr.
    """
    path = Path(path)
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if not path.is_file():
        raise ImageReadError(f"cannot read image {path}: no such file")
    try:
        with quiet_codecs():  # libpng, libjpeg and libtiff print their complaints to stderr from C
            return _decode(path, max_pixels)
    except Image.DecompressionBombError:  # Pillow's own guard (its limit is MAX_PIXELS, ours may be lower)
        raise ImageReadError(f"cannot read image {path}: it declares more than {max_pixels:,} pixels "
                             f"(the {MAX_PIXELS_VARIABLE} limit)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not a recognised image file"
        raise ImageReadError(f"cannot read image {path}: {reason}") from None


def image_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of an image file from its header alone (nothing decoded); None when the header
    cannot be read (the full read reports why, later)."""
    return _from_header(path, lambda img: (img.height, img.width), None)


def page_count(path: str | os.PathLike) -> int:
    """How many images (pages, frames) a file holds, from its headers alone: more than 1 for a multi-page TIFF
    (a stack, or a dual-energy scan's two images), of which ``load_image`` reads only the first; 1 when the
    file holds one image or its headers cannot be read (the full read reports why)."""
    return _from_header(path, lambda img: max(1, int(getattr(img, "n_frames", 1))), 1)


def _from_header(path: str | os.PathLike, read: Callable[[Image.Image], _T], unreadable: _T) -> _T:
    """``read`` of the file as Pillow opens it (headers only, no pixels decoded), or ``unreadable`` when it cannot
    be opened or read: the caller goes on without the figure, and the full read reports why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bomb's header is refused by the real read, not warned about here
            with quiet_codecs(), Image.open(path) as img:
                return read(img)
    except Exception:  # any unreadable header
        return unreadable


def _decode(path: Path, max_pixels: int) -> np.ndarray:
    """``load_image``'s decode; raises what the decoders raise (OSError, ValueError, ...)."""
    grey16 = read_grey16_bmp(path, max_pixels=max_pixels)
    if grey16 is not None:
        return grey16
    try:
        opened = Image.open(path)
    except UnidentifiedImageError:
        array = _read_with_opencv(path)  # a few layouts Pillow does not know, e.g. float64 TIFF
        if array is None:
            raise
        return _from_opencv(array)
    with opened as img:
        _check_pixel_count(img.size, max_pixels)  # the header only: nothing is decoded yet
        if img.format != "PNG":
            sixteen_bit_channels = _has_16bit_channels(img)  # before load(), which clears img.tile
            img.load()  # decodes and checks the whole file, also when OpenCV reads it below
            if not sixteen_bit_channels:
                return _to_array(img)
    array = _read_with_opencv(path)
    if array is None:
        raise ValueError("the image data is truncated or corrupt")
    return _from_opencv(array)


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    """ValueError when a header's (width, height) is empty or declares more than ``max_pixels`` pixels."""
    width, height = size
    if width * height > max_pixels:
        raise ValueError(f"its header declares {width} x {height} = {width * height:,} pixels, more than the "
                         f"{max_pixels:,} allowed ({MAX_PIXELS_VARIABLE}); a decompression bomb or a damaged file")
    if width < 1 or height < 1:
        raise ValueError("image has no pixels")


def _to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        array = np.asarray(img).astype(np.uint16)
    elif mode == "I":
        array = np.asarray(img)
        # 16-bit PNGs may decode as 32-bit "I"; keep them uint16 when they fit.
        array = array.astype(np.uint16) if array.min() >= 0 and array.max() <= 65535 else array.astype(np.float32)
    elif mode == "F":
        array = np.asarray(img, dtype=np.float32)
    elif mode in ("L", "1", "LA", "La"):
        array = np.asarray(img.convert("L"))
    else:  # RGB, RGBA, P, CMYK, YCbCr ...: 8 bits per channel
        array = np.asarray(img.convert("RGB"))
    if array.ndim == 3 and array.shape[2] == 3 and _is_grey(array):
        array = array[..., 0]
    if array.size == 0:
        raise ValueError("image has no pixels")
    return np.ascontiguousarray(array)


def _has_16bit_channels(img: Image.Image) -> bool:
    """True for a colour or grey + alpha file with 16 bits a channel, which Pillow cuts to 8 bits."""
    if img.mode not in ("RGB", "RGBA", "RGBX", "LA"):
        return False
    raw_modes = [tile[3] if isinstance(tile[3], str) else tile[3][0] for tile in img.tile if tile[3]]
    return any(isinstance(raw_mode, str) and ";16" in raw_mode for raw_mode in raw_modes)


def _read_with_opencv(path: Path) -> np.ndarray | None:
    """The file as OpenCV decodes it (channels in BGR(A) order, any dtype), or None if it cannot.

    OpenCV's log lines and libpng's messages about a broken file are kept off stderr (``quiet_codecs``):
    the caller reports one line.
    """
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    with quiet_codecs():
        try:
            return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error:  # e.g. an empty file, or more pixels than OPENCV_IO_MAX_IMAGE_PIXELS
            return None


def _from_opencv(array: np.ndarray) -> np.ndarray:
    """An OpenCV decode as ``load_image`` returns it: alpha dropped, RGB order, grey collapsed to (H, W);
    uint8 and uint16 kept, other dtypes (signed integers, float64) as float32."""
    if array.ndim == 3:
        array = array[..., 0] if array.shape[2] <= 2 else array[..., 2::-1]  # drop alpha; BGR -> RGB
    if array.ndim == 3 and _is_grey(array):
        array = array[..., 0]
    if array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.float32)
    if array.size == 0:
        raise ValueError("image has no pixels")
    return np.ascontiguousarray(array)


def _is_grey(rgb: np.ndarray) -> bool:
    """True when the three channels are equal (grey stored in an RGB container)."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 (H, W) grey or (H, W, 3) RGB image atomically, in the format of the suffix.

    The file appears complete or not at all (written to a temporary file in the
    same folder, then renamed). PNG and BMP are encoded by OpenCV: a 2000x6000 overlay took
    0.24 s as PNG against Pillow's 2.05 s (OpenCV's fastest zlib settings, so the file is 1.7x
    larger) and 0.015 s as BMP against 0.024 s (docs/performance.md, section 1). JPEG (quality
    75) and TIFF (uncompressed) are written by Pillow.
    """
    path = Path(path)
    check_output_path(path)
    fmt = _pil_format(path)
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"cannot write {path}: expected uint8 (H, W) or (H, W, 3) pixels, got {image.dtype} "
                         f"{image.shape}")
    with replacing(path) as tmp_path:
        if fmt in ("PNG", "BMP"):
            _encode_with_opencv(image, fmt).tofile(tmp_path)
        else:
            Image.fromarray(image).save(tmp_path, format=fmt)


def _encode_with_opencv(image: np.ndarray, fmt: str) -> np.ndarray:
    """The bytes of ``image`` (uint8 grey or RGB) encoded as ``fmt`` by OpenCV, as a uint8 array."""
    import cv2

    pixels = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV's channel order
    encoded, data = cv2.imencode(f".{fmt.lower()}", pixels)
    if not encoded:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return data


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a ``.npy`` file atomically (no pickles)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ImageReadError(f"cannot write {path}: folder {path.parent} does not exist")
    with replacing(path) as tmp_path, open(tmp_path, "wb") as handle:  # a file object: np.save adds no suffix
        np.save(handle, array, allow_pickle=False)  # a failed write (e.g. an object array) leaves no stray file


def _pil_format(path: Path) -> str:
    formats = {".bmp": "BMP", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}
    try:
        return formats[path.suffix.lower()]
    except KeyError:
        raise ImageReadError(
            f"cannot write {path}: unknown image format {path.suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})"
        ) from None


def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
                      new_folders: list[Path] = ()) -> None:
    """Fail early, before any work, if an output file cannot be written there.

    ``new_folders``: folders the caller will create before writing; a file in one of them is fine.
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ImageReadError(f"cannot write {path}: expected one of {', '.join(suffixes)}")
    if not path.parent.is_dir():
        if any(path.parent.resolve() == Path(folder).resolve() for folder in new_folders):
            return
        raise ImageReadError(f"cannot write {path}: {missing_folder_reason(path.parent)}")
    if path.is_dir():
        raise ImageReadError(f"cannot write {path}: it is a folder")
    problem = output_problem(path)
    if problem:
        raise ImageReadError(f"cannot write {path}: {problem}")


def missing_folder_reason(folder: Path) -> str:
    """Why ``folder``, which is not a folder, cannot hold an output: one of its parts is a file, or it is missing."""
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                return f"{part} is a file, not a folder"
            break
    return f"folder {folder} does not exist"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Hidden files (names starting with a dot) are left out: macOS writes a ``._scan.bmp`` companion of
    every scan copied onto a FAT or exFAT drive, and this library's own partly written outputs are
    hidden temporary files; neither is a scan.
    Raises ImageReadError when the folder is missing or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"folder {folder} does not exist")
    candidates = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    paths = sorted(p for p in candidates if not p.name.startswith("."))
    if not paths:
        hidden = len(candidates)
        note = f"; {hidden} hidden file(s), whose names start with a dot, are ignored" if hidden else ""
        raise ImageReadError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}{note})")
    return paths


def prefetch(load: Callable[[Path], np.ndarray], paths: list[Path], ahead: int | None = None) -> Iterator[Future]:
    """Yield one future per path, in order, decoding the next scans while the caller works on this one.

    ``ahead`` scans are decoded in parallel threads beyond the one handed out (default: 2, or 1 on a
    one-core machine), so at most ``ahead + 1`` decoded scans are held at any time. Decoding a large
    compressed scan (PNG, TIFF) can take as long as scoring it on a GPU; two decoders keep up with it.
    ``future.result()`` returns the array or raises the loader's error.
    """
    ahead = max(1, ahead if ahead is not None else min(2, (os.cpu_count() or 1) - 1))
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="rtg-prefetch") as pool:
        upcoming = deque(pool.submit(load, path) for path in paths[:ahead])
        for index in range(len(paths)):
            current = upcoming.popleft()
            if index + ahead < len(paths):
                upcoming.append(pool.submit(load, paths[index + ahead]))
            yield current
