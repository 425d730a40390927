"""Optional OpenVINO execution of the backbone's feature path on the CPU.

The same float32 graph (blocks up to the deepest requested one, resizing,
concatenation and neighbourhood pooling) is converted from torch in memory
and compiled for the CPU with float32 inference precision, so features agree
with torch to about 1e-5. On the 2-core benchmark machine it ran the DINOv2
backbone over a 2000x6000 scan in 16.36 s against torch's 21.96 s (1.34x;
docs/performance.md, section 2).
Conversion costs a few seconds once per process, so it pays off on large
scans and folders, not on one small image.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from .errors import InputError


class RuntimeUnavailable(InputError):
    """The requested execution runtime cannot be used here."""


def compile_for_cpu(forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
                    threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Convert ``forward`` with OpenVINO and compile it for the CPU.

    forward: maps a float32 batch (B, 3, S, S) to float32 features (B, h, w, D).
    example: a float32 batch of that shape (B >= 1) used to trace the graph;
        the batch axis stays dynamic.
    threads: inference threads (the torch thread count, so ``--threads`` holds).
    Returns a function with the same contract, run by OpenVINO.
    Raises RuntimeUnavailable (one line) when openvino is missing or cannot
    convert the model.
    """
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailable("the openvino runtime needs the openvino package: "
                                 "pip install 'rtg-anomaly[openvino]'") from None

    class _Forward(torch.nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return forward(batch)

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
            model = ov.convert_model(_Forward().eval(), example_input=example,
                                     input=[ov.PartialShape([-1, *example.shape[1:]])])
        compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": int(threads)})
    except Exception as exc:  # conversion failures come from many layers of OpenVINO and torch
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeUnavailable(f"OpenVINO cannot convert this backbone: {first_line}") from None
    request = compiled.create_infer_request()

    def run(batch: torch.Tensor) -> torch.Tensor:
        # share_outputs=False: OpenVINO hands back a copy, as the request rewrites its buffer on the next call.
        output = request.infer({0: batch.detach().float().contiguous().numpy()}, share_outputs=False)[0]
        return torch.from_numpy(output)

    return run
