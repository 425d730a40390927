"""The ``pixels`` backbone: no network, each tile's grey pixels cut into square cells.

A method that works on the pixels themselves (``reconstruction`` with ``recon_target="pixels"``) sees them
through the same pipeline as backbone features: tiles resized to the input size (64 px by default), one
"patch feature" per ``PIXEL_CELL`` x ``PIXEL_CELL`` cell holding that cell's grey values, row by row. So a
64 px input gives an 8 x 8 grid of 64-value features, the stitching, calibration and outputs work
unchanged, and ``torch.nn.functional.pixel_shuffle`` turns the features back into the tile image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import PIXEL_BACKBONE, PIXEL_CELL, PIXEL_INPUT_SIZE

__all__ = ["PIXEL_BACKBONE", "PIXEL_CELL", "PIXEL_INPUT_SIZE", "PixelCells", "cells_to_images", "images_to_cells"]


class PixelCells(torch.nn.Module):
    """(B, 3, S, S) tiles in [0, 1] -> [(B, PIXEL_CELL^2, S / PIXEL_CELL, S / PIXEL_CELL)] grey cells.

    Offers the part of timm's interface the feature extractor uses (``forward_intermediates``,
    ``pretrained_cfg`` with mean 0 and std 1, so the values reach the method as they are in [0, 1]).
    """

    def __init__(self, input_size: int = PIXEL_INPUT_SIZE):
        super().__init__()
        self.pretrained_cfg = {"input_size": (3, input_size, input_size), "mean": (0.0, 0.0, 0.0),
                               "std": (1.0, 1.0, 1.0)}

    def forward_intermediates(self, x: torch.Tensor, indices=None, intermediates_only: bool = True,
                              stop_early: bool = True, output_fmt: str = "NCHW") -> list[torch.Tensor]:
        if x.shape[-1] % PIXEL_CELL or x.shape[-2] % PIXEL_CELL:
            raise ValueError(f"the pixels backbone needs an input size that is a multiple of {PIXEL_CELL}")
        return [F.pixel_unshuffle(x.float().mean(1, keepdim=True), PIXEL_CELL)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[0]


def cells_to_images(features: torch.Tensor) -> torch.Tensor:
    """(B, h, w, PIXEL_CELL^2) cell features -> (B, 1, h * PIXEL_CELL, w * PIXEL_CELL) grey tiles."""
    return F.pixel_shuffle(features.permute(0, 3, 1, 2), PIXEL_CELL)


def images_to_cells(images: torch.Tensor) -> torch.Tensor:
    """Inverse of ``cells_to_images``: (B, 1, H, W) -> (B, H / PIXEL_CELL, W / PIXEL_CELL, PIXEL_CELL^2)."""
    return F.pixel_unshuffle(images, PIXEL_CELL).permute(0, 2, 3, 1)
