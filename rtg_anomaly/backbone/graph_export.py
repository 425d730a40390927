"""Exported backbone graphs (ONNX, OpenVINO IR): made from the torch feature path, stored in the bundle,
and run by ONNX Runtime or OpenVINO.

The contract of every exported graph (recorded in the manifest under ``exported_graph``):
  input ``tiles``: float32 (B, 3, S, S), NCHW, B dynamic, S the bundle's input size: windowed scan tiles with
      values in [0, 1], resized to S (bilinear, antialiased), a grey tile repeated over the 3 channels.
      The backbone's normalisation ``(x - mean) / std`` is inside the graph, so an integrator feeds the
      windowed tiles as they are.
  output ``features``: float32 (B, h, w, D): the patch features after the stored layers (resized to the
      first layer's grid, concatenated, neighbourhood-pooled), before PCA.

Storage: a graph's files are uint8 arrays of the bundle (``graph_onnx``, or ``graph_openvino_xml`` and
``graph_openvino_bin``), so the bundle's own checks cover them: the size against the manifest before
reading, the sha256, the content seal. Runtimes get the verified bytes in memory, never a path; and before
a bundle graph is used it must reproduce the torch features on a seeded tile (``check_against``).

ONNX is written by torch's TorchScript exporter (``dynamo=False``): with torch 2.14 the dynamo exporter
needs the onnxscript package, while the TorchScript one exported DINOv2 ViT-S/14 and EfficientNet-Lite0
offline with features within 2e-6 and 5e-5 of torch (on feature scales of 0.94 and 31).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import tempfile
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..config import GRAPH_FORMATS, GRAPH_PRECISIONS
from ..errors import InputError, first_line, quiet_logger
from .openvino_runtime import RuntimeUnavailable, cpu_compile_properties, import_openvino, import_without_telemetry

GRAPH_KEY = "exported_graph"  # manifest section of a bundle's exported graph
FORMATS, PRECISIONS = GRAPH_FORMATS, GRAPH_PRECISIONS
GRAPH_ARRAYS = {"onnx": ("graph_onnx",), "openvino": ("graph_openvino_xml", "graph_openvino_bin")}
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "tiles", "features"
# Which runtimes can run a stored graph of each format (OpenVINO reads ONNX too).
RUNNERS = {"onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",)}
# A bundle graph is refused when its features on the seeded check tile differ from torch's by more than
# this many times the difference recorded at export (runtimes differ a little, int8 kernels most) ...
CHECK_FACTOR = 4.0
# ... or, whichever is larger, this share of the features' largest magnitude.
CHECK_FLOOR = 1e-3
# ... except for a bf16 graph, whose features stray from float32's by up to about 1.5 % of their largest
# magnitude (docs/precision.md), and whose export may have run in float32 on a CPU without bfloat16.
CHECK_FLOOR_BF16 = 0.03
INSTALL_HINT = "pip install 'rtg-anomaly[onnx]'"
# bf16 is a compute precision of OpenVINO's CPU plugin, not a storage format: the IR keeps float32 weights and
# is compiled with bfloat16 inference precision where the CPU computes in it natively (AVX-512 BF16 or AMX;
# OpenVINO lists "BF16" among the CPU's optimisation capabilities), elsewhere in float32.
BF16_FORMATS = ("openvino",)


class StoredGraph(NamedTuple):
    """A bundle's exported graph: its manifest entry and its verified uint8 arrays (name -> (N,) uint8)."""

    entry: dict
    arrays: dict[str, np.ndarray]


def import_onnxruntime():
    """The onnxruntime module; RuntimeUnavailable (one line) saying how to install it when missing."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailable(f"the onnxruntime runtime needs the onnxruntime package: {INSTALL_HINT}") from None
    return onnxruntime


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise RuntimeUnavailable(f"exporting to ONNX needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def check_tiles(input_size: int, count: int = 1) -> torch.Tensor:
    """Seeded float32 (count, 3, S, S) values in [0, 1]: the batch graphs are checked against torch on."""
    return torch.rand(count, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))


class _FeatureGraph(torch.nn.Module):
    """The extractor's float32 feature path with its normalisation in front: (B, 3, S, S) in [0, 1] ->
    (B, h, w, D)."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor
        # Registered so the exporter stores the weights as initialisers, not Constant nodes (int8
        # quantisation only quantises initialiser weights).
        self.backbone = extractor.model
        self.register_buffer("mean", extractor.mean.detach().cpu().clone())
        self.register_buffer("std", extractor.std.detach().cpu().clone())

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.extractor._forward_in((tiles - self.mean) / self.std, autocast=False)


def reference_features(extractor, tiles: torch.Tensor) -> torch.Tensor:
    """Torch float32 features (B, h, w, D) of un-normalised tiles (B, 3, S, S) in [0, 1], on the CPU."""
    with torch.inference_mode():
        return _FeatureGraph(extractor).to(extractor.device)(tiles.to(extractor.device)).float().cpu()


def onnx_graph(extractor) -> bytes:
    """The extractor's float32 feature graph (normalisation included) as ONNX bytes, batch axis dynamic,
    checked by ``onnx.checker``."""
    onnx = _import_onnx()
    buffer = io.BytesIO()
    device = extractor.device  # traced where the backbone lives (CUDA too); the graph is the same
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings of the TorchScript exporter
            torch.onnx.export(_FeatureGraph(extractor).to(device).eval(),
                              (check_tiles(extractor.input_size, 2).to(device),), buffer,
                              dynamo=False, opset_version=ONNX_OPSET, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"},
                                                                        OUTPUT_NAME: {0: "batch"}})
        data = buffer.getvalue()
        onnx.checker.check_model(onnx.load_from_string(data))
    except RuntimeUnavailable:
        raise
    except Exception as exc:  # tracer and exporter failures come from many places
        raise RuntimeUnavailable(f"cannot export {extractor.config.backbone!r} to ONNX: {first_line(exc)}") from None
    return data


def onnx_to_fp16(model: bytes) -> bytes:
    """float16 weights and arithmetic, float32 input and output (ONNX Runtime's converter)."""
    onnx = _import_onnx()
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(onnx.load_from_string(model), keep_io_types=True)
    return converted.SerializeToString()


class _TileReader:
    """ONNX Runtime's calibration data reader over (N, 3, S, S) float32 tiles, ``batch`` at a time."""

    def __init__(self, tiles: np.ndarray, batch: int):
        self._batches = iter([{INPUT_NAME: tiles[i : i + batch]} for i in range(0, len(tiles), batch)])

    def get_next(self):
        return next(self._batches, None)


# Static post-training quantisation settings (see docs/performance.md, int8): QDQ nodes (portable: ONNX
# Runtime and OpenVINO both run them as int8), per-channel int8 weights, uint8 activations.
INT8_OP_TYPES = ("MatMul", "Gemm", "Conv")


def onnx_to_int8(model: bytes, tiles: np.ndarray, batch: int = 8) -> tuple[bytes, dict]:
    """Static int8 quantisation (QDQ) of an fp32 ONNX feature graph calibrated on ``tiles``.

    tiles: float32 (N, 3, S, S) in [0, 1], the graph's input (the bundle's clean tiles).
    Returns (int8 ONNX bytes, a record of the settings for the manifest).
    """
    import_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx = _import_onnx()
    proto = onnx.load_from_string(model)
    weights = {initialiser.name for initialiser in proto.graph.initializer}
    # Products of two activations (attention's q.k and softmax.v) stay float: quantising them moved the
    # DINOv2 features most (their ranges vary from tile to tile).
    excluded = [node.name for node in proto.graph.node
                if node.op_type in INT8_OP_TYPES and not any(name in weights for name in node.input)]
    settings = dict(quant_format="QDQ", per_channel=True, activation_type="QUInt8", weight_type="QInt8",
                    calibrate_method="MinMax", op_types=list(INT8_OP_TYPES), float_activation_products=len(excluded),
                    calibration_tiles=int(len(tiles)))
    with tempfile.TemporaryDirectory(prefix="rtg-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(model)
        try:
            with warnings.catch_warnings(), quiet_logger():
                warnings.simplefilter("ignore")
                quantize_static(str(source), str(target), _TileReader(np.ascontiguousarray(tiles, np.float32), batch),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                                op_types_to_quantize=list(INT8_OP_TYPES), nodes_to_exclude=excluded)
        except Exception as exc:
            raise RuntimeUnavailable(f"int8 quantisation failed: {first_line(exc)}") from None
        return target.read_bytes(), settings


def import_nncf():
    """The nncf module (OpenVINO's quantiser), imported with its usage telemetry off like openvino's
    (``import_openvino``: it binds a no-op stub when ``openvino_telemetry`` cannot be imported);
    RuntimeUnavailable (one line) saying how to install it when it is missing."""
    import_openvino()
    import_without_telemetry("nncf.telemetry.wrapper")  # binds the stub
    try:
        import nncf
    except ImportError:
        raise RuntimeUnavailable("--format openvino --precision int8 quantises with NNCF: "
                                 "pip install 'rtg-anomaly[int8]'") from None
    return nncf


def openvino_int8(onnx_model: bytes, tiles: np.ndarray, batch: int = 8) -> tuple[bytes, bytes, dict]:
    """Post-training int8 quantisation of an fp32 ONNX feature graph with NNCF, as OpenVINO IR.

    tiles: float32 (N, 3, S, S) in [0, 1], the graph's input (the bundle's clean tiles).
    A graph with attention (a Softmax) is quantised with NNCF's transformer scheme, which keeps the
    activation-by-activation products and normalisations in float (the plain scheme moved DINOv2's features
    to a cosine of 0.35 with float32's); the MIXED preset gives activations asymmetric ranges. Statistics
    are min/max over the tiles, so the same tiles give the same graph.
    Returns (xml bytes, bin bytes, a record of the settings for the manifest).
    """
    ov = import_openvino()
    nncf = import_nncf()
    try:
        model = ov.Core().read_model(onnx_model, b"")
    except Exception as exc:
        raise RuntimeUnavailable(f"OpenVINO cannot read the ONNX graph: {first_line(exc)}") from None
    transformer = any(op.get_type_name() == "Softmax" for op in model.get_ops())
    tiles = np.ascontiguousarray(tiles, np.float32)
    batches = [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
    settings = dict(quantiser=f"nncf {nncf.__version__}", preset="mixed",
                    model_type="transformer" if transformer else "default", calibration_tiles=int(len(tiles)))
    options = dict(preset=nncf.QuantizationPreset.MIXED, subset_size=len(batches))
    if transformer:
        options["model_type"] = nncf.ModelType.TRANSFORMER
    with tempfile.TemporaryDirectory(prefix="rtg-nncf-") as folder:
        xml = Path(folder) / "graph.xml"
        try:
            # NNCF draws progress bars on stdout whatever its log level: the export prints one summary line.
            with warnings.catch_warnings(), quiet_logger(), quiet_logger("nncf"), \
                    contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                quantised = nncf.quantize(model, nncf.Dataset(batches), **options)
                ov.save_model(quantised, str(xml), compress_to_fp16=False)
        except Exception as exc:
            raise RuntimeUnavailable(f"int8 quantisation failed: {first_line(exc)}") from None
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes(), settings


def openvino_ir(onnx_model: bytes, precision: str) -> tuple[bytes, bytes]:
    """OpenVINO IR (xml, bin) of an ONNX feature graph; fp16 stores float16 weights (the CPU still
    computes in float32), an int8 QDQ graph keeps its int8 weights, bf16 keeps float32 weights (the
    precision is applied when the graph is compiled, ``openvino_runner``)."""
    ov = import_openvino()
    with tempfile.TemporaryDirectory(prefix="rtg-ir-") as folder:
        xml = Path(folder) / "graph.xml"
        try:
            model = ov.Core().read_model(onnx_model, b"")
            ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
        except Exception as exc:
            raise RuntimeUnavailable(f"OpenVINO cannot convert the ONNX graph: {first_line(exc)}") from None
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


# ---------------------------------------------------------------------------- runners
Runner = Callable[[torch.Tensor], torch.Tensor]


def onnxruntime_runner(model: bytes, device: torch.device, threads: int) -> Runner:
    """Run ONNX bytes with ONNX Runtime: ``run(tiles (B, 3, S, S) float32) -> (B, h, w, D) float32`` on
    ``device``. On a CUDA device the CUDAExecutionProvider is required (onnxruntime-gpu); on the CPU the
    CPU provider runs with ``threads`` threads."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the CPU provider warns about unused initialisers
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeUnavailable("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu), "
                                     "or use --device cpu")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:
        raise RuntimeUnavailable(f"onnxruntime cannot load the backbone graph: {first_line(exc)}") from None
    name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        output = session.run(None, {name: batch.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(output).to(device)

    return run


@functools.lru_cache(maxsize=1)
def cpu_computes_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 natively on this machine (False without openvino).
    Asked once per process: both the runner and the extractor's label read it at every load."""
    try:
        return "BF16" in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no openvino, or a plugin that cannot be queried: float32
        return False


def openvino_runner(model: bytes, weights: bytes, threads: int, precision: str = "fp32") -> Runner:
    """Run an OpenVINO IR (xml bytes, bin bytes) or ONNX bytes (``weights`` empty) on the CPU: float32
    arithmetic except where the graph itself is quantised, or bfloat16 for a ``"bf16"`` graph on a CPU that
    computes in it (``cpu_computes_bf16``)."""
    ov = import_openvino()
    core = ov.Core()
    properties = cpu_compile_properties(threads)
    if precision == "bf16" and cpu_computes_bf16():
        properties["INFERENCE_PRECISION_HINT"] = "bf16"
    try:
        compiled = core.compile_model(core.read_model(model, weights), "CPU", properties)
    except Exception as exc:
        raise RuntimeUnavailable(f"OpenVINO cannot load the backbone graph: {first_line(exc)}") from None
    request = compiled.create_infer_request()

    def run(batch: torch.Tensor) -> torch.Tensor:
        output = request.infer({0: batch.detach().float().contiguous().numpy()}, share_outputs=False)[0]
        return torch.from_numpy(output)

    return run


def graph_runner(graph: StoredGraph, runtime: str, device: torch.device, threads: int) -> Runner:
    """A runner of a stored graph with ``runtime`` (one of ``RUNNERS[format]``)."""
    fmt = graph.entry["format"]
    if fmt == "onnx" and runtime == "onnxruntime":
        return onnxruntime_runner(graph.arrays["graph_onnx"].tobytes(), device, threads)
    if fmt == "onnx" and runtime == "openvino":
        return openvino_runner(graph.arrays["graph_onnx"].tobytes(), b"", threads)
    if fmt == "openvino" and runtime == "openvino":
        return openvino_runner(graph.arrays["graph_openvino_xml"].tobytes(),
                               graph.arrays["graph_openvino_bin"].tobytes(), threads, graph.entry["precision"])
    raise RuntimeUnavailable(f"the {runtime} runtime cannot run a {fmt} graph")


def max_difference(runner: Runner, extractor, count: int = 1) -> tuple[float, float]:
    """(max abs difference of ``runner``'s features from torch float32's, max abs torch feature) on the
    seeded check tiles."""
    tiles = check_tiles(extractor.input_size, count)
    expected = reference_features(extractor, tiles)
    got = runner(tiles).float().cpu()
    if got.shape != expected.shape:
        return float("inf"), float(expected.abs().max())
    return float((got - expected).abs().max()), float(expected.abs().max())


def check_against(runner: Runner, extractor, entry: dict, runtime: str) -> str | None:
    """Why a bundle graph must not be used (its features stray from torch's on the check tile further than
    at export, with the same runtime when it was checked then), else None."""
    difference, scale = max_difference(runner, extractor)
    check = entry.get("check", {})
    recorded = check.get("max_abs_diff_by_runtime", {}).get(runtime, check.get("max_abs_diff", 0.0))
    floor = CHECK_FLOOR_BF16 if entry["precision"] == "bf16" else CHECK_FLOOR
    allowed = max(CHECK_FACTOR * float(recorded), floor * scale)
    if not difference <= allowed:
        return (f"the bundle's {entry['format']} {entry['precision']} graph gives features {difference:.3g} away "
                f"from the backbone's (allowed {allowed:.3g}): it was not exported from these weights")
    return None


# ---------------------------------------------------------------------------- export
def export_graph(extractor, fmt: str, precision: str, calibration_tiles: np.ndarray | None = None) -> StoredGraph:
    """Export ``extractor``'s feature graph (torch on the CPU) as a StoredGraph for the bundle.

    calibration_tiles: float32 (N, 3, S, S) in [0, 1], required for int8 (the bundle's clean tiles).
    The manifest entry records the input and output contract, the backbone it was made from, the
    exporter, the precision, and the check: features on the seeded check tiles against torch float32.
    """
    if fmt not in FORMATS or precision not in PRECISIONS:
        raise InputError(f"unknown export {fmt}/{precision} (formats {', '.join(FORMATS)}; "
                         f"precisions {', '.join(PRECISIONS)})")
    if precision == "int8" and (calibration_tiles is None or not len(calibration_tiles)):
        raise InputError("int8 needs clean tiles to calibrate on (--clean-dir)")
    if precision == "bf16" and fmt not in BF16_FORMATS:
        raise InputError("bf16 is a compute precision of OpenVINO on the CPU: export it with --format openvino")
    model = onnx_graph(extractor)
    quantisation = None
    if precision == "fp16" and fmt == "onnx":
        model = onnx_to_fp16(model)
    elif precision == "int8" and fmt == "onnx":
        model, quantisation = onnx_to_int8(model, calibration_tiles)
    if fmt == "onnx":
        arrays = {"graph_onnx": np.frombuffer(model, np.uint8).copy()}
        runtime = "onnxruntime"
    else:
        if precision == "int8":
            xml, weights, quantisation = openvino_int8(model, calibration_tiles)
        else:
            xml, weights = openvino_ir(model, precision)
        arrays = {"graph_openvino_xml": np.frombuffer(xml, np.uint8).copy(),
                  "graph_openvino_bin": np.frombuffer(weights, np.uint8).copy()}
        runtime = "openvino"
    graph = StoredGraph(_entry(extractor, fmt, precision, quantisation), arrays)
    threads, differences, scale = torch.get_num_threads(), {}, None
    # Each installed runtime that runs the graph is checked: their int8 kernels differ (OpenVINO and ONNX
    # Runtime fuse the quantised nodes differently), and a load is compared with its own runtime's figure.
    for name in RUNNERS[fmt]:
        if name == runtime or importlib.util.find_spec(name) is not None:
            run = graph_runner(graph, name, torch.device("cpu"), threads)
            differences[name], scale = max_difference(run, extractor, 2)
    graph.entry["check"] = {"runtime": runtime, "tiles": 2, "seed": 0, "max_abs_diff": differences[runtime],
                            "max_abs_diff_by_runtime": differences, "feature_scale": scale}
    return graph


def _entry(extractor, fmt: str, precision: str, quantisation: dict | None) -> dict:
    config = extractor.config
    versions = {"torch": torch.__version__.split("+")[0]}
    with contextlib.suppress(ImportError):
        import onnx

        versions["onnx"] = onnx.__version__
    h, w = extractor.grid
    return {
        "format": fmt,
        "precision": precision,
        "arrays": list(GRAPH_ARRAYS[fmt]),
        "exporter": f"torch.onnx.export (TorchScript, dynamo=False), opset {ONNX_OPSET}"
                    + (", then OpenVINO read_model/save_model" if fmt == "openvino" else "")
                    + (", quantised by NNCF" if fmt == "openvino" and precision == "int8" else ""),
        "versions": versions,
        "backbone_state_dict_sha256": extractor.digest,
        "backbone": config.backbone,
        "layers": list(config.layers),
        "neighbourhood": config.neighbourhood,
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, extractor.input_size,
                                                                                   extractor.input_size],
                  "channels": "grey tiles repeated over 3 channels (RGB scans: R, G, B)",
                  "values": "windowed tiles in [0, 1] (the scan's intensity window: the config's intensity_window, "
                            "with 'clean' the manifest's clean_window), resized to the input size (bilinear, antialiased)",
                  "normalisation": {"inside_graph": True, "mean": [float(v) for v in extractor.mean.flatten()],
                                    "std": [float(v) for v in extractor.std.flatten()]}},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "layout": "NHWC",
                   "shape": ["batch", h, w, extractor.feature_dim],
                   "meaning": "patch features after the stored layers, before PCA"},
        **({"quantisation": quantisation} if quantisation else {}),
    }


def graph_from_bundle(folder, manifest: dict, arrays: dict[str, np.ndarray]) -> StoredGraph | None:
    """The bundle's exported graph, its entry checked (BundleError naming the problem), or None."""
    from ..bundle import BundleError

    entry = manifest.get(GRAPH_KEY)
    if entry is None:
        return None
    problem = None
    if not isinstance(entry, dict):
        problem = "must be an object"
    elif entry.get("format") not in FORMATS or entry.get("precision") not in PRECISIONS \
            or (entry.get("precision") == "bf16" and entry.get("format") not in BF16_FORMATS):
        problem = f"names an unknown format or precision ({entry.get('format')!r}, {entry.get('precision')!r})"
    elif entry.get("arrays") != list(GRAPH_ARRAYS[entry["format"]]):
        problem = f"must list the arrays {list(GRAPH_ARRAYS[entry['format']])}"
    elif not all(name in arrays and arrays[name].dtype == np.uint8 and arrays[name].ndim == 1
                 and arrays[name].size > 0 for name in entry["arrays"]):
        problem = "lacks its graph arrays (non-empty uint8 vectors)"
    elif not isinstance(entry.get("check"), dict) or not _number(entry["check"].get("max_abs_diff")) \
            or not isinstance(entry["check"].get("max_abs_diff_by_runtime", {}), dict) \
            or not all(_number(value) for value in entry["check"].get("max_abs_diff_by_runtime", {}).values()):
        problem = "has no export check"
    if problem:
        raise BundleError(f"model bundle {folder}: '{GRAPH_KEY}' in the manifest {problem}")
    return StoredGraph(entry, {name: arrays[name] for name in entry["arrays"]})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < 1e300


def graph_mismatch(graph: StoredGraph, config, digest: str, input_size: int) -> str | None:
    """Why a stored graph does not belong to this detector (other weights, layers or input size), else None."""
    entry = graph.entry
    if entry.get("backbone_state_dict_sha256") != digest:
        return "it was exported from other backbone weights"
    if entry.get("layers") != list(config.layers) or entry.get("neighbourhood") != config.neighbourhood:
        return "it was exported for other layers or neighbourhood"
    if entry.get("input", {}).get("shape", [None] * 4)[2:] != [input_size, input_size]:
        return "it was exported for another input size"
    return None
