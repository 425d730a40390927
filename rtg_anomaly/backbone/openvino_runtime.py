"""OpenVINO execution of the backbone's feature path on the CPU (what ``--runtime auto`` picks there when the
openvino package is installed; pyproject.toml installs it wherever OpenVINO publishes wheels).

The same float32 graph (blocks up to the deepest requested one, resizing,
concatenation and neighbourhood pooling) is converted from torch in memory
and compiled for the CPU with float32 inference precision, so features agree
with torch to about 1e-5. On the 2-core benchmark machine it ran the DINOv2
backbone over a 2000x6000 scan in 8.89 s against torch's 20.43 s (2.3x;
docs/performance.md, section 2): its float32 matrix products ran at twice
the rate of torch's MKL on that AMD CPU.
Conversion from torch costs a few seconds. The converted graph is therefore
kept in a disk cache (``model_cache_dir``) keyed by everything that shapes it;
a later process reads it back, checks it against torch on one seeded batch,
and only compiles it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..atomic import staging_folder
from ..errors import InputError, first_line


class RuntimeUnavailable(InputError):
    """The requested execution runtime cannot be used here."""


CACHE_ENV = "RTG_ANOMALY_CACHE_DIR"
# A cached graph whose features on the check batch differ from torch's by more than this share of
# their largest magnitude is discarded and converted again (a fresh conversion agrees to about 1e-5).
CACHE_CHECK_TOLERANCE = 1e-3


def cpu_compile_properties(threads: int) -> dict:
    """OpenVINO CPU-plugin settings for every graph here: float32 arithmetic, one request, ``threads`` threads."""
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads)}


_TELEMETRY_MODULE = "openvino_telemetry"


def import_without_telemetry(module: str) -> None:
    """Import ``module`` (when no one has yet) with the ``openvino_telemetry`` package unimportable, so that
    the Intel libraries that report usage (OpenVINO's converter, NNCF) bind their own no-op stubs, their
    fallback for when that package is missing. Afterwards it imports normally again for any other code.
    An ImportError of ``module`` itself is left to the caller's plain import to report."""
    if module.split(".")[0] in sys.modules:
        return
    previous = sys.modules.get(_TELEMETRY_MODULE)
    sys.modules[_TELEMETRY_MODULE] = None  # `import openvino_telemetry` raises ImportError
    try:
        importlib.import_module(module)
    except ImportError:
        pass
    finally:
        if previous is None:
            sys.modules.pop(_TELEMETRY_MODULE, None)
        else:
            sys.modules[_TELEMETRY_MODULE] = previous


def import_openvino():
    """The openvino module, imported with its usage telemetry off; RuntimeUnavailable (one line) saying how
    to install it when it is missing.

    OpenVINO's model converter sends usage events to Google Analytics, and writes a client id under
    ``~/intel``, unless the user has opted out with ``opt_in_out --opt_out``. A screening tool must not
    phone home, so the first import of openvino here runs with the ``openvino_telemetry`` package
    unimportable (``import_without_telemetry``). If the calling process imported openvino itself before,
    OpenVINO's own setting applies.
    """
    import_without_telemetry("openvino.tools.ovc")  # binds the telemetry stub in the converter's modules
    try:
        import openvino
    except ImportError:
        raise RuntimeUnavailable("the openvino runtime needs the openvino package: "
                                 "pip install 'rtg-anomaly[openvino]'") from None
    return openvino


def model_cache_dir() -> Path | None:
    """Root of the converted-model cache, or None when caching is switched off.

    ``$RTG_ANOMALY_CACHE_DIR`` when set (``off`` or empty: no cache), else
    ``$XDG_CACHE_HOME/rtg-anomaly`` or ``~/.cache/rtg-anomaly``.
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none", "0") else Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtg-anomaly"


def compile_for_cpu(forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
                    threads: int, cache_key: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Convert ``forward`` with OpenVINO (or read it from the cache) and compile it for the CPU.

    forward: maps a float32 batch (B, 3, S, S) to float32 features (B, h, w, D).
    example: a float32 batch of that shape (B >= 1) used to trace the graph;
        the batch axis stays dynamic. A graph read from the cache must give
        ``forward`` of its first item (see ``CACHE_CHECK_TOLERANCE``), so pass
        varied values, not zeros.
    threads: inference threads (the torch thread count, so ``--threads`` holds).
    cache_key: a string that changes whenever the traced graph would (weights,
        architecture, layers, input size, torch and timm versions); the
        OpenVINO version is added here. None converts without the cache.
        The cache is best effort: an unreadable, corrupt or unwritable entry
        costs a fresh conversion, never an error.
    Returns a function with the same contract, run by OpenVINO.
    Raises RuntimeUnavailable (one line) when openvino is missing or cannot
    convert the model.
    """
    ov = import_openvino()
    core = ov.Core()
    properties = cpu_compile_properties(threads)
    root = model_cache_dir() if cache_key else None
    entry = None
    if root is not None:
        entry = root / "openvino" / hashlib.sha256(f"{cache_key}|{ov.get_version()}".encode()).hexdigest()[:32]
    compiled = _read_cached(core, entry, properties, forward, example) if entry is not None else None
    if compiled is None:
        model = _convert(ov, forward, example)
        try:
            compiled = core.compile_model(model, "CPU", properties)
        except Exception as exc:
            raise RuntimeUnavailable(f"OpenVINO cannot compile this backbone: {first_line(exc)}") from None
        if entry is not None:
            _write_cached(ov, model, entry)
    request = compiled.create_infer_request()

    def run(batch: torch.Tensor) -> torch.Tensor:
        # share_outputs=False: OpenVINO hands back a copy, as the request rewrites its buffer on the next call.
        output = request.infer({0: batch.detach().float().contiguous().numpy()}, share_outputs=False)[0]
        return torch.from_numpy(output)

    return run


def _convert(ov, forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor):
    """The torch graph of ``forward`` as an OpenVINO model with a dynamic batch axis."""

    class _Forward(torch.nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return forward(batch)

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
            return ov.convert_model(_Forward().eval(), example_input=example,
                                    input=[ov.PartialShape([-1, *example.shape[1:]])])
    except Exception as exc:  # conversion failures come from many layers of OpenVINO and torch
        raise RuntimeUnavailable(f"OpenVINO cannot convert this backbone: {first_line(exc)}") from None


def _read_cached(core, entry: Path, properties: dict, forward, example: torch.Tensor):
    """The compiled model of a cache entry that reproduces ``forward`` on ``example[:1]``, else None.

    A corrupt or disagreeing entry is removed, so the caller's fresh conversion replaces it.
    """
    xml = entry / "model.xml"
    if not xml.is_file():
        return None
    try:
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", properties)
        check = example[:1].float().contiguous()
        got = compiled.create_infer_request().infer({0: check.numpy()})[0]
        with torch.no_grad():
            expected = forward(check).numpy()
        scale = float(abs(expected).max()) or 1.0
        if got.shape == expected.shape and float(abs(got - expected).max()) <= CACHE_CHECK_TOLERANCE * scale:
            return compiled
    except Exception:  # unreadable or truncated files: convert again
        pass
    shutil.rmtree(entry, ignore_errors=True)
    return None


def _write_cached(ov, model, entry: Path) -> None:
    """Save ``model`` as ``entry`` atomically: written beside it, then renamed; failures are ignored."""
    staging = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(entry)
        # float32 weights: the default (float16) would move the features by about 1e-3.
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        os.replace(staging, entry)  # fails if another process got there first: theirs is kept
        staging = None
    except Exception:  # a read-only home or a full disk only costs the next process a conversion
        pass
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


# Rows per call of the nearest-distance graph: 1,024 queries x 4,096 bank rows (a 16 MiB distance block),
# the fastest of 4,096 / 16,384 / 65,536 bank rows measured with a 200,000-row bank.
NEAREST_QUERY_BLOCK = 1024
NEAREST_BANK_BLOCK = 4096


def compile_nearest_distance(threads: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """OpenVINO twin of ``memory_bank.knn_distance`` for k = 1 on the CPU.

    The graph computes ``min_j (|b_j|^2 - 2 q.b_j)`` for a block of queries against a block of bank rows
    (float32); blocks keep the distance matrix at 16 MiB. OpenVINO's float32 matrix products ran twice
    as fast as torch's MKL on the benchmark CPU (docs/performance.md).
    threads: inference threads (the torch thread count).
    Returns ``run(queries (Q, d), bank (M, d), bank_squared_norms (M,))`` -> float32 (Q,) Euclidean
    distance of each query to its nearest bank row: CPU float32 tensors in and out.
    Raises RuntimeUnavailable when openvino is missing or cannot compile the graph.
    """
    import numpy as np

    ov = import_openvino()
    import openvino.opset13 as ops

    queries = ops.parameter([-1, -1], np.float32)
    bank = ops.parameter([-1, -1], np.float32)
    bank_norms = ops.parameter([-1], np.float32)
    products = ops.matmul(queries, bank, False, True)
    partial = ops.add(ops.multiply(products, ops.constant(np.float32(-2.0))), bank_norms)
    nearest = ops.reduce_min(partial, ops.constant(np.array([1], np.int64)), False)
    try:
        compiled = ov.Core().compile_model(ov.Model([nearest], [queries, bank, bank_norms]), "CPU",
                                           cpu_compile_properties(threads))
    except Exception as exc:
        raise RuntimeUnavailable(f"OpenVINO cannot compile the nearest-distance graph: {first_line(exc)}") from None
    request = compiled.create_infer_request()

    def run(query_rows: torch.Tensor, bank_rows: torch.Tensor, bank_squared_norms: torch.Tensor) -> torch.Tensor:
        q = query_rows.detach().float().contiguous().numpy()
        b = bank_rows.detach().float().contiguous().numpy()
        norms = bank_squared_norms.detach().float().contiguous().numpy()
        result = np.empty(len(q), np.float32)
        for q0 in range(0, len(q), NEAREST_QUERY_BLOCK):
            block = q[q0 : q0 + NEAREST_QUERY_BLOCK]
            best = np.full(len(block), np.inf, np.float32)
            for b0 in range(0, len(b), NEAREST_BANK_BLOCK):
                found = request.infer({0: block, 1: b[b0 : b0 + NEAREST_BANK_BLOCK],
                                       2: norms[b0 : b0 + NEAREST_BANK_BLOCK]}, share_inputs=True)[0]
                np.minimum(best, found, out=best)
            # |q|^2 is constant per row: added after the minimum, as knn_distance does.
            best += np.einsum("ij,ij->i", block, block)
            result[q0 : q0 + len(block)] = np.sqrt(np.maximum(best, 0.0, out=best), out=best)
        return torch.from_numpy(result)

    return run
