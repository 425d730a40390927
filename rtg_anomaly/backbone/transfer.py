"""Copies from the GPU to the host through page-locked memory.

``tensor.cpu()`` into ordinary (pageable) memory goes through the driver's staging buffer: on the H200
it moved a 2000x6000 scan's float32 map and RGB overlay at about 2 GB/s, 38 ms of a 100 ms detect
(scripts/profile_gpu.py). A copy into page-locked memory runs at the bus's speed. PyTorch's caching
host allocator recycles those buffers once the arrays that view them are freed, so a folder run does not
allocate page-locked memory per scan.
"""

from __future__ import annotations

import numpy as np
import torch


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """The values of ``tensor`` (any device) as a numpy array of the same shape and dtype.

    From a CUDA tensor: a new array backed by page-locked memory (it stays valid after the tensor is
    freed). From a CPU tensor: ``tensor.numpy()`` (shares its memory, as ``.cpu().numpy()`` would).
    """
    global _pinned_available
    if tensor.device.type != "cuda":
        return tensor.detach().numpy()
    if _pinned_available:
        try:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        except RuntimeError:  # locked-memory limit (RLIMIT_MEMLOCK) or a sandbox without it: copy as usual
            _pinned_available = False
        else:
            host.copy_(tensor.detach())
            return host.numpy()
    return tensor.detach().cpu().numpy()


_pinned_available = True
