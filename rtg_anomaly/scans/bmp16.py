"""16-bit grey BMP files, which X-ray systems write but Pillow and OpenCV read as colour or refuse.

BMP has no standard 16-bit grey layout. Detector software writes its 16-bit values either as plain
16-bit pixels (compression ``BI_RGB``, which the BMP standard defines as 5-5-5 colour: Pillow and
OpenCV then show noise-like colours) or with one 16-bit channel mask (``BI_BITFIELDS``, which Pillow
refuses as an unsupported layout). Both are read here as grey, with the value under the mask kept.
A 16-bit BMP whose masks name different colour channels (5-6-5, 5-5-5) is left to Pillow as colour.
"""

from __future__ import annotations

import os
import struct

import numpy as np

_FILE_HEADER_SIZE = 14
_MASKS_OFFSET = 54  # the three channel masks follow a 40-byte info header, or sit at the same place inside a longer one
_BI_RGB, _BI_BITFIELDS, _BI_ALPHABITFIELDS = 0, 3, 6


def _row_values(width: int) -> int:
    """16-bit values per stored row of ``width`` pixels: rows are padded to 4 bytes."""
    return (width * 16 + 31) // 32 * 2


def grey16_mask(header: bytes) -> int | None:
    """The 16-bit grey channel mask of a BMP file that starts with ``header`` (its first 66 bytes or
    more), or None when the file is not a 16-bit grey BMP (another format, another depth, or colour masks).
    Raises ValueError for a single channel mask wider than 16 bits (a broken header).
    """
    if len(header) < _MASKS_OFFSET or header[:2] != b"BM":
        return None
    info_size, = struct.unpack_from("<I", header, _FILE_HEADER_SIZE)
    bits_per_pixel, compression = struct.unpack_from("<HI", header, 28)
    if info_size < 40 or bits_per_pixel != 16:
        return None
    if compression == _BI_RGB:
        return 0xFFFF
    if compression not in (_BI_BITFIELDS, _BI_ALPHABITFIELDS) or len(header) < _MASKS_OFFSET + 12:
        return None
    channel_masks = {mask for mask in struct.unpack_from("<3I", header, _MASKS_OFFSET) if mask}
    if len(channel_masks) != 1:
        return None
    mask = channel_masks.pop()
    if mask > 0xFFFF:
        raise ValueError(f"16-bit BMP with a channel mask wider than 16 bits (0x{mask:X})")
    return mask


def read_grey16_bmp(path: str | os.PathLike, max_pixels: int | None) -> np.ndarray | None:
    """uint16 (H, W) pixels of a 16-bit grey BMP file (top row first, the value under the mask
    shifted down to bit 0), or None when ``path`` is not one, so that another reader takes it.

    Raises ValueError with a one-line reason for a broken header, a truncated file, or more than
    ``max_pixels`` pixels (None: no limit, as with Pillow's ``Image.MAX_IMAGE_PIXELS``).
    """
    with open(path, "rb") as file:
        header = file.read(_MASKS_OFFSET + 12)
    mask = grey16_mask(header)
    if mask is None:
        return None
    pixel_offset, = struct.unpack_from("<I", header, 10)
    width, height = struct.unpack_from("<ii", header, 18)
    if width <= 0 or height == 0:
        raise ValueError(f"BMP header gives an image size of {width} x {abs(height)} pixels")
    rows = abs(height)
    if max_pixels is not None and width * rows > max_pixels:
        raise ValueError(f"image has {width * rows:,} pixels, more than the {max_pixels:,} allowed (RTG_ANOMALY_MAX_PIXELS)")
    row_values = _row_values(width)
    needed_bytes = pixel_offset + rows * row_values * 2
    if os.path.getsize(path) < needed_bytes:
        raise ValueError(f"image file is truncated ({os.path.getsize(path):,} bytes, the header needs {needed_bytes:,})")
    values = np.fromfile(path, dtype="<u2", count=rows * row_values, offset=pixel_offset)
    values = values.reshape(rows, row_values)[:, :width]
    if height > 0:  # a positive height means the bottom row is stored first
        values = values[::-1]
    if mask != 0xFFFF:
        shift = (mask & -mask).bit_length() - 1
        values = (values & mask) >> shift
    return np.ascontiguousarray(values, dtype=np.uint16)


def write_grey16_bmp(path: str | os.PathLike, values: np.ndarray) -> None:
    """Write uint16 (H, W) ``values`` as a 16-bit grey BMP that ``read_grey16_bmp`` reads back exactly:
    a 40-byte info header, ``BI_BITFIELDS`` with the mask 0xFFFF for all three channels (the value is
    grey), bottom row first, rows padded to 4 bytes. Few viewers show this layout, but it is how 16-bit
    X-ray exports are stored, and being uncompressed it loads much faster than a 16-bit PNG.
    Raises ValueError for anything but a non-empty uint16 (H, W) array.
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.dtype != np.uint16 or 0 in values.shape:
        raise ValueError(f"a 16-bit grey BMP holds a non-empty uint16 (H, W) array, got {values.dtype} {values.shape}")
    height, width = values.shape
    rows = np.zeros((height, _row_values(width)), dtype="<u2")
    rows[:, :width] = values[::-1]
    pixel_offset = _MASKS_OFFSET + 12
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 16, _BI_BITFIELDS, rows.nbytes, 2835, 2835, 0, 0)
    file_header = b"BM" + struct.pack("<IHHI", pixel_offset + rows.nbytes, 0, 0, pixel_offset)
    with open(path, "wb") as file:
        file.write(file_header + info + struct.pack("<3I", 0xFFFF, 0xFFFF, 0xFFFF))
        rows.tofile(file)
