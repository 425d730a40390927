"""Per-tile patch maps -> one seamless full-resolution anomaly map."""

from __future__ import annotations

import cv2
import numpy as np

from .tiling import tile_origins


def blend_window(tile: int, ramp: int) -> np.ndarray:
    """1-D blending weights of shape (tile,), float64 in (0, 1].

    Flat 1 in the middle, falling linearly over ``ramp`` pixels to each edge,
    so overlapping tiles cross-fade instead of meeting at a visible seam.
    """
    t = np.arange(tile, dtype=np.float64) + 0.5
    distance_to_edge = np.minimum(t, tile - t)
    return np.clip(distance_to_edge / max(ramp, 1), 1e-3, 1.0)


def upsample_patch_map(patch_map: np.ndarray, tile: int) -> np.ndarray:
    """(h, w) patch scores -> (tile, tile) float32 by bilinear interpolation (pixel centres aligned)."""
    return cv2.resize(patch_map.astype(np.float32, copy=False), (tile, tile), interpolation=cv2.INTER_LINEAR)


class MapStitcher:
    """Accumulates weighted tile maps into one (height, width) float32 map.

    The tile grid is a product of 1-D grids and the window is separable, so the
    total weight at (y, x) is ``wy[y] * wx[x]``: the accumulated map is the only
    full-size array.
    """

    def __init__(self, height: int, width: int, tile: int, stride: int):
        self.height, self.width, self.tile = height, width, tile
        self.window = blend_window(tile, ramp=max(1, tile - stride))
        self.sum = np.zeros((height, width), dtype=np.float32)
        self._weight_y = self._axis_weight(height, tile, stride)
        self._weight_x = self._axis_weight(width, tile, stride)
        self._window_2d = np.outer(self.window, self.window).astype(np.float32)

    def _axis_weight(self, length: int, tile: int, stride: int) -> np.ndarray:
        weight = np.zeros(length, dtype=np.float64)
        for start in tile_origins(length, tile, stride):
            weight[start : start + tile] += self.window[: length - start]
        return weight

    def add(self, y: int, x: int, patch_map: np.ndarray) -> None:
        """Blend the map of the tile whose top-left corner is (y, x)."""
        full = upsample_patch_map(patch_map, self.tile)
        self.sum[y : y + self.tile, x : x + self.tile] += full * self._window_2d

    def result(self) -> np.ndarray:
        """The blended map, (height, width) float32 (normalised in place)."""
        self.sum /= self._weight_y[:, None].astype(np.float32)
        self.sum /= self._weight_x[None, :].astype(np.float32)
        return self.sum


def gaussian_smooth(anomaly_map: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in pixels (0: unchanged), in place on a contiguous float32 (H, W) map.

    In place, so smoothing a scan-sized map allocates no second full-size array.
    """
    if sigma <= 0:
        return anomaly_map
    return cv2.GaussianBlur(anomaly_map, (0, 0), dst=anomaly_map, sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT)
