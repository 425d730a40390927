"""Frozen timm backbone: device choice, weights, preprocessing and batched patch embedding."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DEFAULT_BACKBONE, RUNTIMES, DetectorConfig
from ..errors import InputError, first_line, quiet_logger
from .graph_export import import_onnxruntime
from .openvino_runtime import RuntimeUnavailable, compile_for_cpu
from .pixel_backbone import PIXEL_BACKBONE, PIXEL_INPUT_SIZE, PixelCells

# The backbone's autocast dtype on CUDA. On an H100, bfloat16 and float16 ran equally fast (80 DINOv2 tiles:
# 0.059 s vs 0.062 s; float32 0.102 s), but bfloat16's 8-bit mantissa cost gdxray_welds 0.013 image AUROC
# (0.956 vs 0.968 in float32); float16 gave the float32 and CPU figures (0.967 / 0.955 / 0.810).
CUDA_AUTOCAST_DTYPE = torch.float16
# Weights shipped with the project so the default works offline on a fresh machine.
BUNDLED_WEIGHTS = {DEFAULT_BACKBONE: "vit_small_patch14_dinov2.imgfocus_fp16.safetensors",
                   "tf_efficientnet_lite0": "tf_efficientnet_lite0.in1k_fp16.safetensors",
                   "mobilenetv2_100": "mobilenetv2_100.in1k_nohead_fp16.safetensors"}


class BackboneError(InputError):
    """The backbone or its weights cannot be created or loaded."""


class DeviceError(InputError):
    """The requested compute device is not available."""


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into an available torch device."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was requested but CUDA is not available on this machine")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise DeviceError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA device(s) found)")
        return torch.device(name)
    raise DeviceError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")


def cuda_device_of(name: str = "auto") -> torch.device | None:
    """The CUDA device ``name`` resolves to (``auto``: when CUDA is present), else None: where the pixel work
    (tiling, stitching, overlays) can run on the GPU."""
    resolved = resolve_device(name)
    return resolved if resolved.type == "cuda" else None


def backbones_dirs() -> list[Path]:
    """Folders searched for bundled backbone weights, in order."""
    dirs = []
    if os.environ.get("RTG_ANOMALY_BACKBONES"):
        dirs.append(Path(os.environ["RTG_ANOMALY_BACKBONES"]))
    dirs.append(Path(__file__).resolve().parents[2] / "model_artifacts" / "backbones")  # the checkout's root
    dirs.append(Path.cwd() / "model_artifacts" / "backbones")
    return dirs


def resolve_weights(config: DetectorConfig) -> str | None:
    """Where the backbone's weights come from.

    Returns a local file path, ``"random"`` (no pretrained weights) or ``None``
    (the timm hub weights). An explicit file must exist.
    """
    if config.weights == "random":
        return "random"
    if config.weights:
        path = Path(config.weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"weights file {path} does not exist")
        return str(path.resolve())
    bundled = BUNDLED_WEIGHTS.get(config.backbone)
    if bundled:
        for folder in backbones_dirs():
            if (folder / bundled).is_file():
                return str((folder / bundled).resolve())
    return None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_digest(model: torch.nn.Module) -> str:
    """Hex sha256 over every parameter and buffer (names and float32 values).

    Identifies the backbone's actual weights whatever their source (file, hub
    or seeded random init), so a bundle can refuse a different backbone.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _create_model(timm, name: str, kwargs: dict) -> torch.nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:  # CNNs take no img_size
        if "img_size" not in str(exc):
            raise
        return timm.create_model(name, **{key: value for key, value in kwargs.items() if key != "img_size"})


def create_backbone(config: DetectorConfig) -> tuple[torch.nn.Module, dict]:
    """Build the frozen timm model in eval mode on the CPU.

    Returns ``(model, info)`` where info holds ``weights`` (source) and
    ``weights_sha256`` (of the file, when there is one).
    """
    if config.backbone == PIXEL_BACKBONE:
        if config.weights not in (None, "random"):
            raise BackboneError("the pixels backbone has no weights: leave out --weights")
        return PixelCells(config.input_size or PIXEL_INPUT_SIZE).eval(), {"weights": "none", "weights_sha256": None}
    import timm  # imported here: timm is slow to import and not needed to load arrays

    weights = resolve_weights(config)
    kwargs = dict(num_classes=0, **config.model_kwargs)
    if weights == "random":
        kwargs["pretrained"] = False
        torch.manual_seed(config.seed)
    elif weights is None:
        kwargs["pretrained"] = True
    else:
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = dict(file=weights)
    if config.input_size is not None:
        kwargs.setdefault("img_size", config.input_size)
    try:
        with quiet_logger("huggingface_hub"):
            model = _create_model(timm, config.backbone, kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise BackboneError(f"unknown timm model {config.backbone!r}") from None
        raise BackboneError(f"cannot create backbone {config.backbone!r}: {first_line(exc)}") from None
    except Exception as exc:  # hub download failures, bad weight files
        hint = " (no internet? pass --weights FILE)" if weights is None else ""
        raise BackboneError(f"cannot load weights for {config.backbone!r}{hint}: {first_line(exc)}") from None
    if not hasattr(model, "forward_intermediates"):
        raise BackboneError(f"backbone {config.backbone!r} does not expose intermediate features")
    model.eval().requires_grad_(False)
    info = {"weights": weights or "hub", "weights_sha256": sha256_file(weights) if weights not in (None, "random") else None}
    return model, info


# Runtimes ``auto`` tries on the CPU, fastest first (measured on the benchmark CPU, docs/performance.md,
# "Runtimes and precisions"): the first one installed that can run the bundle's graph, if it has one.
CPU_RUNTIME_PREFERENCE = ("openvino", "onnxruntime", "torch")


def runtime_installed(name: str) -> bool:
    """Whether the package of runtime ``name`` can be imported here (torch always)."""
    if name == "torch":
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # sys.modules[name] is None: imports of it are blocked
        return False


def resolve_runtime(runtime: str, device: torch.device, graph_format: str | None = None,
                    graph_precision: str | None = None) -> str:
    """``"auto"`` -> on the CPU, the fastest installed runtime (``CPU_RUNTIME_PREFERENCE``) that can run
    the bundle's exported graph of ``graph_format`` (``"onnx"``, ``"openvino"``) or, without one, any;
    on CUDA, torch (float16 autocast; ONNX Runtime's CUDA provider is unmeasured, so only on request).
    An int8 ONNX graph goes to ONNX Runtime: OpenVINO's execution of it lost up to 0.55 image AUROC
    (docs/precision.md); an int8 OpenVINO IR graph (NNCF's) is OpenVINO's. Any other name is returned as it is.
    """
    if runtime != "auto":
        return runtime
    if device.type != "cpu":
        return "torch"
    from .graph_export import RUNNERS

    for name in CPU_RUNTIME_PREFERENCE:
        if graph_format is not None and name not in RUNNERS[graph_format]:
            continue
        if graph_format == "onnx" and graph_precision == "int8" and name == "openvino":
            continue
        if runtime_installed(name):
            return name
    # A graph no installed runtime runs: the fastest runtime that converts the backbone itself.
    return next(name for name in CPU_RUNTIME_PREFERENCE if runtime_installed(name))


class FeatureExtractor:
    """Patch features of image tiles from intermediate blocks of a frozen backbone.

    Attributes:
      device: torch device the model runs on.
      input_size: side of the square model input, in pixels.
      grid: (h, w) patch grid per tile.
      feature_dim: D, channels per patch feature.
      digest: sha256 of the backbone weights as loaded (see ``state_dict_digest``).
      runtime: ``"torch"``, ``"openvino"`` (CPU only, see openvino_runtime.py) or ``"onnxruntime"``:
        what executes the feature path. Asked for ``"auto"``, this is the runtime it resolved to.
      graph_info: what the non-torch runtime runs: ``{"format", "precision", "source"}`` with source
        ``"bundle"`` (the bundle's exported graph, see graph_export.py) or ``"converted"`` (float32,
        made from torch in this process); None with torch.
      runtime_fallback: why ``"auto"`` fell back to torch although another runtime is
        installed (it could not convert this backbone or run the bundle's graph), else None.

    ``graph``: the bundle's exported graph; used when the runtime can run it, after it reproduced the torch
    features on a seeded tile (``graph_export.check_against``).
    """

    def __init__(self, config: DetectorConfig, device: torch.device | str = "cpu", runtime: str = "torch",
                 graph=None):
        self.config = config
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        if runtime not in RUNTIMES:
            raise RuntimeUnavailable(f"unknown runtime {runtime!r} (use {', '.join(RUNTIMES)})")
        if runtime == "openvino" and self.device.type != "cpu":
            raise RuntimeUnavailable(f"the openvino runtime runs on the CPU only, not on {self.device}: "
                                     "use --device cpu or --runtime torch")
        if runtime == "auto" and config.backbone == PIXEL_BACKBONE:
            runtime = "torch"  # no network to accelerate
        stored = (graph.entry["format"], graph.entry["precision"]) if graph else ()
        requested, runtime = runtime, resolve_runtime(runtime, self.device, *stored)
        if runtime == "onnxruntime":
            import_onnxruntime()  # a missing package is refused before the backbone is built
        self.runtime, self.runtime_fallback, self.graph_info = runtime, None, None
        self._compiled, self._compiled_normalises = None, False
        model, self.weights_info = create_backbone(config)
        self.digest = state_dict_digest(model)
        data_cfg = model.pretrained_cfg
        self.input_size = int(config.input_size or data_cfg.get("input_size", (3, 224, 224))[-1])
        self.mean = torch.tensor(data_cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(data_cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(1, 3, 1, 1)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        if patch is not None and self.input_size % int(patch[0]) != 0:
            raise BackboneError(f"input size {self.input_size} is not a multiple of the patch size {patch[0]}")
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        try:
            probe = self._forward(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device))
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # e.g. model_kwargs whose sizes do not fit each other
            raise BackboneError(f"backbone {config.backbone!r} cannot embed a {self.input_size} px tile: "
                                f"{first_line(exc)}") from None
        self.grid = (int(probe.shape[1]), int(probe.shape[2]))
        self.feature_dim = int(probe.shape[3])
        if runtime != "torch":
            try:
                self._compiled, self._compiled_normalises, self.graph_info = self._runner(runtime, graph)
            except RuntimeUnavailable as exc:
                if requested != "auto":
                    raise
                self.runtime, self.runtime_fallback = "torch", str(exc)

    def _runner(self, runtime: str, graph) -> tuple:
        """(run, whether run normalises its input itself, graph_info) for a non-torch runtime: the bundle's
        graph when the runtime can run it, else a float32 graph converted from torch here."""
        from .graph_export import (RUNNERS, check_against, cpu_computes_bf16, graph_mismatch, graph_runner, onnx_graph,
                                   onnxruntime_runner)

        threads = torch.get_num_threads()
        if graph is not None and runtime in RUNNERS[graph.entry["format"]]:
            problem = graph_mismatch(graph, self.config, self.digest, self.input_size)
            run = None if problem else graph_runner(graph, runtime, self.device, threads)
            problem = problem or check_against(run, self, graph.entry, runtime)
            if problem:
                raise RuntimeUnavailable(f"the bundle's exported graph cannot be used: {problem}")
            precision = graph.entry["precision"]
            if precision == "bf16" and not cpu_computes_bf16():
                precision = "fp32"  # the bf16 graph's float32 weights, run in float32 on this CPU
            return run, True, {"format": graph.entry["format"], "precision": precision, "source": "bundle"}
        if runtime == "onnxruntime":
            run = onnxruntime_runner(onnx_graph(self), self.device, threads)
            return run, True, {"format": "onnx", "precision": "fp32", "source": "converted"}
        # Seeded noise, not zeros: a cached graph is checked against torch on it.
        example = torch.rand(2, 3, self.input_size, self.input_size, generator=torch.Generator().manual_seed(0))
        run = compile_for_cpu(lambda batch: self._forward_in(batch, autocast=False), example, threads,
                              cache_key=self._graph_key())
        return run, False, {"format": "openvino", "precision": "fp32", "source": "converted"}

    @property
    def runtime_label(self) -> str:
        """The runtime and what it runs, for summary lines: ``torch``, ``openvino fp32``,
        ``onnxruntime int8 (bundle onnx graph)``."""
        info = self.graph_info
        if info is None:
            return self.runtime
        return f"{self.runtime} {info['precision']}" + (f" (bundle {info['format']} graph)"
                                                         if info["source"] == "bundle" else "")

    def _graph_key(self) -> str:
        """sha256 of everything that shapes the feature graph: weights, architecture, layers, sizes, versions."""
        import timm

        config = self.config
        identity = dict(format=1, digest=self.digest, backbone=config.backbone, model_kwargs=config.model_kwargs,
                        layers=list(config.layers), input_size=self.input_size, neighbourhood=config.neighbourhood,
                        torch=torch.__version__, timm=timm.__version__)
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def uses_autocast(self) -> bool:
        """Whether the backbone runs under ``CUDA_AUTOCAST_DTYPE`` autocast (on CUDA only)."""
        return self.device.type == "cuda"

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised input -> (B, h, w, D) float32 features.

        Under autocast, a batch whose features are not all finite (float16 overflow) is run again in float32.
        """
        if self._compiled is not None:
            return self._compiled(batch)
        if not self.uses_autocast:
            return self._forward_in(batch, autocast=False)
        features = self._forward_in(batch, autocast=True)
        if not bool(torch.isfinite(features).all()):
            features = self._forward_in(batch, autocast=False)
        return features

    def _forward_in(self, batch: torch.Tensor, autocast: bool) -> torch.Tensor:
        layers = list(self.config.layers)
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=CUDA_AUTOCAST_DTYPE, enabled=autocast
        ):
            try:
                maps = self.model.forward_intermediates(
                    batch, indices=layers, intermediates_only=True, stop_early=True, output_fmt="NCHW"
                )
            except (IndexError, AssertionError, ValueError) as exc:
                raise BackboneError(f"layers {layers} not available in {self.config.backbone!r}: {exc}") from None
            size = maps[0].shape[-2:]
            maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                    for m in maps]
            features = torch.cat(maps, dim=1).float()
            n = self.config.neighbourhood
            if n > 1:
                features = F.avg_pool2d(features, n, stride=1, padding=n // 2, count_include_pad=False)
        return features.permute(0, 2, 3, 1).contiguous()

    def graph_input(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(T, S, S) or (T, S, S, 3) float32 tiles in [0, 1] -> (T, 3, s, s) at the input size on the device,
        not normalised: what an exported graph takes (graph_export.py)."""
        batch = (tiles if isinstance(tiles, torch.Tensor)
                 else torch.from_numpy(np.ascontiguousarray(tiles))).to(self.device, non_blocking=True)
        batch = batch.unsqueeze(1).expand(-1, 3, -1, -1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
        if batch.shape[-1] != self.input_size or batch.shape[-2] != self.input_size:
            batch = F.interpolate(batch, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        return batch

    def to_input(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(T, S, S) or (T, S, S, 3) float32 tiles in [0, 1] (numpy, or a tensor already on the device)
        -> normalised (T, 3, s, s) on the device (not normalised when an exported graph runs: it does
        that itself)."""
        batch = self.graph_input(tiles)
        if not (self._compiled is not None and self._compiled_normalises):  # exported graphs normalise inside
            batch = (batch - self.mean) / self.std
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def embed(self, tiles: np.ndarray) -> torch.Tensor:
        """Patch features of tiles, in batches of ``config.batch_size``.

        tiles: float32 array or tensor (T, S, S) or (T, S, S, 3), values in [0, 1].
        Returns a float32 tensor (T, h, w, D) on ``self.device``.
        """
        outputs = [self._forward(self.to_input(tiles[i : i + self.config.batch_size]))
                   for i in range(0, len(tiles), self.config.batch_size)]
        return torch.cat(outputs)
