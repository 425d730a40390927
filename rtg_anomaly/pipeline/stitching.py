"""Per-tile patch maps -> one seamless full-resolution anomaly map.

``MapStitcher`` and ``gaussian_smooth`` work on numpy arrays with OpenCV (the CPU path);
``DeviceMapStitcher`` and ``gaussian_smooth_torch`` compute the same maps with torch on the
detector's device, so on a GPU the map is built where the scores are and crosses to the host once.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..scans.tiling import tile_origins


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
        self._weight_y = self._axis_weight(height, tile, stride)
        self._weight_x = self._axis_weight(width, tile, stride)
        self._window_2d = np.outer(self.window, self.window).astype(np.float32)
        self.sum = self._zeros()

    def _zeros(self):
        return np.zeros((self.height, self.width), dtype=np.float32)

    def _axis_weight(self, length: int, tile: int, stride: int) -> np.ndarray:
        weight = np.zeros(length, dtype=np.float64)
        for start in tile_origins(length, tile, stride):
            weight[start : start + tile] += self.window[: length - start]
        return weight

    def add(self, y: int, x: int, patch_map: np.ndarray) -> None:
        """Blend the map of the tile whose top-left corner is (y, x)."""
        full = upsample_patch_map(patch_map, self.tile)
        self.sum[y : y + self.tile, x : x + self.tile] += full * self._window_2d

    def add_batch(self, origins: np.ndarray, patch_maps) -> None:
        """Blend (B, h, w) patch maps of the tiles with corners ``origins`` (int (B, 2), (y, x) rows)."""
        for (y, x), patch_map in zip(origins, patch_maps):
            self.add(int(y), int(x), patch_map)

    def result(self) -> np.ndarray:
        """The blended map, (height, width) float32 (normalised in place)."""
        self.sum /= self._weight_y[:, None].astype(np.float32)
        self.sum /= self._weight_x[None, :].astype(np.float32)
        return self.sum


class DeviceMapStitcher(MapStitcher):
    """``MapStitcher`` with the accumulated map a float32 tensor on ``device``.

    ``add_batch`` takes a (B, h, w) float32 tensor on the same device, upsamples the
    whole batch at once (bilinear, pixel centres aligned, as ``cv2.resize``) and
    ``result`` returns a (height, width) tensor; the weights are the same as the CPU
    stitcher's, so the maps agree to float32 rounding.
    """

    def __init__(self, height: int, width: int, tile: int, stride: int, device: torch.device | str):
        self.device = torch.device(device)
        super().__init__(height, width, tile, stride)
        self._window_2d_t = torch.from_numpy(self._window_2d).to(self.device)

    def _zeros(self):
        return torch.zeros((self.height, self.width), dtype=torch.float32, device=self.device)

    def add(self, y: int, x: int, patch_map) -> None:
        self.add_batch(np.array([[y, x]]), torch.as_tensor(patch_map, device=self.device)[None])

    def add_batch(self, origins: np.ndarray, patch_maps: torch.Tensor) -> None:
        tile = self.tile
        full = F.interpolate(patch_maps[:, None].float(), size=(tile, tile), mode="bilinear", align_corners=False)
        full = full[:, 0] * self._window_2d_t
        for (y, x), tile_map in zip(origins.tolist(), full):
            self.sum[y : y + tile, x : x + tile] += tile_map

    def result(self) -> torch.Tensor:
        self.sum /= torch.from_numpy(self._weight_y.astype(np.float32)).to(self.device)[:, None]
        self.sum /= torch.from_numpy(self._weight_x.astype(np.float32)).to(self.device)[None, :]
        return self.sum


def gaussian_smooth(anomaly_map: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in pixels (0: unchanged), in place on a contiguous float32 (H, W) map.

    In place, so smoothing a scan-sized map allocates no second full-size array.
    """
    if sigma <= 0:
        return anomaly_map
    return cv2.GaussianBlur(anomaly_map, (0, 0), dst=anomaly_map, sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT)


def gaussian_kernel_size(sigma: float) -> int:
    """OpenCV's kernel size for a float image: ``round(8 * sigma + 1) | 1`` taps."""
    return int(np.floor(sigma * 8 + 1 + 0.5)) | 1


def _reflect_indices(length: int, pad: int) -> np.ndarray:
    """Indices of a 1-D axis padded by ``pad`` on both sides, mirrored with the edge repeated
    (``cv2.BORDER_REFLECT``: fedcba|abcdefgh|hgfedcb), for any pad/length ratio."""
    index = np.arange(-pad, length + pad) % (2 * length)
    return np.where(index >= length, 2 * length - 1 - index, index)


def gaussian_smooth_torch(anomaly_map: torch.Tensor, sigma: float) -> torch.Tensor:
    """``gaussian_smooth`` on a (H, W) float32 tensor on any device: the same kernel (OpenCV's size
    and float32 taps), the same mirrored border, separable convolution in full float32
    (TF32 off). Returns a new (H, W) float32 tensor (the input itself for sigma 0)."""
    if sigma <= 0:
        return anomaly_map
    size = gaussian_kernel_size(sigma)
    pad = size // 2
    kernel = torch.from_numpy(cv2.getGaussianKernel(size, sigma, cv2.CV_32F).ravel()).to(anomaly_map.device)
    height, width = anomaly_map.shape
    rows = torch.from_numpy(_reflect_indices(height, pad)).to(anomaly_map.device)
    cols = torch.from_numpy(_reflect_indices(width, pad)).to(anomaly_map.device)
    padded = anomaly_map.float().index_select(0, rows).index_select(1, cols)[None, None]
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        smoothed = F.conv2d(padded, kernel.view(1, 1, 1, size))
        smoothed = F.conv2d(smoothed, kernel.view(1, 1, size, 1))
    return smoothed[0, 0]
