"""Pure tile-grid arithmetic: where tiles start, cutting them out, padding small scans."""

from __future__ import annotations

import numpy as np


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis so that tiles of ``tile`` px cover ``length`` px.

    The last tile is aligned to the far edge, so every pixel is covered and no
    tile reaches past the image. A length shorter than a tile gives ``[0]``.
    """
    if tile <= 0 or stride <= 0:
        raise ValueError("tile and stride must be positive")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, stride: int) -> np.ndarray:
    """Origins of all tiles, as an int array of shape (n_tiles, 2) with (y, x) rows."""
    ys = tile_origins(height, tile, stride)
    xs = tile_origins(width, tile, stride)
    return np.array([(y, x) for y in ys for x in xs], dtype=np.int64)


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """Mirror-pad an image that is smaller than a tile on either side.

    Works on (H, W) and (H, W, C) arrays; the original sits at the top-left, so
    maps computed on the padded image are cropped back with ``[:H, :W]``.
    Mirroring keeps the texture statistics of the scan near its edges.
    """
    pad_h = max(0, tile - image.shape[0])
    pad_w = max(0, tile - image.shape[1])
    if pad_h == 0 and pad_w == 0:
        return image
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="symmetric")


def extract_tiles(image: np.ndarray, origins: np.ndarray, tile: int) -> np.ndarray:
    """Cut square tiles: (n, tile, tile) or (n, tile, tile, C), same dtype as ``image``."""
    return np.stack([image[y : y + tile, x : x + tile] for y, x in origins])
