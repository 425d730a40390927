"""Builders of hostile and damaged files for the hardening tests (issue #24): decompression bombs,
PNGs whose image data stops early, PNGs with broken chunks. Plain bytes, no fixtures."""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk: length, type, body and CRC (the right one unless ``crc`` is given)."""
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_header(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    """Signature and IHDR of a non-interlaced PNG (colour 0: grey, 2: RGB)."""
    return PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def png_bomb(width: int = 100_000, height: int = 100_000, depth: int = 8, colour: int = 0) -> bytes:
    """A PNG of a few kB whose header declares ``width * height`` pixels (10**10 by default)."""
    return (png_header(width, height, depth, colour) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1_000_000, 9))
            + png_chunk(b"IEND", b""))


def png_with_rows(width: int, height: int, rows: int, depth: int = 8, colour: int = 0) -> bytes:
    """A well-formed PNG (valid zlib stream, CRCs, IEND) whose image data holds only ``rows`` of its
    ``height`` rows: the data stops early, as in a file cut by a transfer and re-wrapped."""
    channels = {0: 1, 2: 3}[colour]
    row = b"\0" + bytes([100]) * (width * channels * depth // 8)
    return (png_header(width, height, depth, colour) + png_chunk(b"IDAT", zlib.compress(row * rows))
            + png_chunk(b"IEND", b""))


def insert_bad_text_chunk(png: bytes) -> bytes:
    """``png`` with an ancillary tEXt chunk whose CRC is wrong after the IHDR (libpng warns and goes on)."""
    return png[:33] + png_chunk(b"tEXt", b"a\0b", crc=0) + png[33:]


def bmp_bomb(width: int = 100_000, height: int = 100_000, bits: int = 8) -> bytes:
    """A BMP of about 1 kB whose header declares ``width * height`` pixels."""
    palette = bytes(1024) if bits == 8 else struct.pack("<3I", 0xFFF, 0xFFF, 0xFFF)
    compression = 0 if bits == 8 else 3
    offset = 54 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, 0, 2835, 2835,
                       256 if bits == 8 else 0, 0)
    return b"BM" + struct.pack("<IHHI", offset + 100, 0, 0, offset) + info + palette + bytes(100)


def tiff_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A little-endian TIFF of one strip whose header declares ``width * height`` 8-bit grey pixels."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 100)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, count, value, 0)
        for tag, kind, count, value in entries) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + bytes(100)
