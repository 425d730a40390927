"""to_host on the CPU (the CUDA path is measured by scripts/profile_gpu.py on a lent GPU)."""

import numpy as np
import torch

from rtg_anomaly.backbone.transfer import to_host


def test_cpu_tensor_comes_back_as_its_own_values():
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    array = to_host(tensor)
    assert array.dtype == np.float32 and array.shape == (3, 4)
    np.testing.assert_array_equal(array, tensor.numpy())


def test_uint8_overlay_keeps_its_dtype():
    tensor = torch.full((2, 5, 3), 7, dtype=torch.uint8)
    assert to_host(tensor).dtype == np.uint8 and int(to_host(tensor).sum()) == 7 * 30
