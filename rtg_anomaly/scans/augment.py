"""Flipped and rotated copies of clean scans, to widen the memory bank when clean scans are few."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# Each name maps an (H, W) or (H, W, C) array to a transformed view of it (no copy).
AUGMENTATIONS = {
    "hflip": lambda image: image[:, ::-1],
    "vflip": lambda image: image[::-1],
    "rot90": lambda image: np.rot90(image, 1),
    "rot180": lambda image: image[::-1, ::-1],
    "rot270": lambda image: np.rot90(image, 3),
}


def augmented_views(image: np.ndarray, names: Sequence[str]) -> Iterator[np.ndarray]:
    """The transformed copies of ``image`` named in ``names`` (the original is not included).

    Each is a C-contiguous array of the image's dtype; rotations by 90 and 270
    degrees swap height and width.
    """
    for name in names:
        yield np.ascontiguousarray(AUGMENTATIONS[name](image))
