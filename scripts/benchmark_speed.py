#!/usr/bin/env python
"""Speed and memory benchmark of rtg-anomaly, written as a Markdown report.

    python scripts/benchmark_speed.py --output docs/performance.md          # full run (~10-15 min on 2 cores)
    python scripts/benchmark_speed.py --quick --tiny-backbone --output /tmp/perf.md   # smoke test (< 1 min)

What it measures (every number in the report comes from the run that wrote it):

1. detect per scan, split into load / backbone / kNN / stitch+smooth / overlay, megapixels per second,
   peak RSS and peak GPU memory, on a synthetic 16-bit scan saved as PNG and on real GDXray castings;
   the same scan end to end without stage timings, from its PNG and from a 16-bit grey BMP;
2. our implementation against "plain" references computing the same math naively (unbatched full-depth
   backbone, one full ``torch.cdist``, an exact greedy coreset) and the plain end-to-end pipeline, with a
   check that both heatmaps agree;
3. where the detect time goes (cProfile);
4. fit scaling (per-scan time and peak RSS of the fit's memory path for 10 / 100 / 1000 clean scans, each in
   a fresh process), plus a real ``Detector.fit`` with a one-block backbone of the real width;
5. greedy coreset time against bank size;
6. kNN: our chunked torch matmul against faiss ``IndexFlatL2`` (when faiss is importable);
7. measured candidate speed-ups;
8. on the CPU, the runtime x precision table (plain reference, torch fp32, OpenVINO fp32 / int8 (NNCF's, and
   ONNX Runtime's graph), ONNX Runtime fp32 / int8; each row a fresh process: score seconds, peak RSS, heatmap difference). ``--runtime-table``
   runs this section alone (~8 min on 2 cores).

Heavy stages run in fresh subprocesses (this script with ``--worker SPEC``) so that ``ru_maxrss`` is the
peak of that stage alone. Nothing here changes the library.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import importlib.util
import json
import math
import os
import platform
import pstats
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from rtg_anomaly import Detector, DetectorConfig  # noqa: E402
from rtg_anomaly.pipeline.fitting import holdout_count  # noqa: E402
from rtg_anomaly.scans.tiling import tile_grid  # noqa: E402

TINY_BACKBONE = dict(weights="random", model_kwargs=dict(depth=2, embed_dim=32, num_heads=2), layers=(1,),
                     tile_size=64, input_size=56, pca_dim=16)
# Largest temporary distance matrix a plain reference may allocate (bytes); beyond it queries are subsampled.
PLAIN_CDIST_LIMIT = 2 << 30
HEATMAP_TOLERANCE = 1e-3
# Heatmap tolerance of a bf16 or int8 graph against torch fp32, calibrated units (the issue's).
REDUCED_HEATMAP_TOLERANCE = 0.05


# ---------------------------------------------------------------------------------------------- sizes
def run_sizes(quick: bool) -> dict:
    """Workload sizes of a full or a quick run."""
    if quick:
        return dict(
            scan=(128, 384), fit_scan=(128, 256), n_fit=2, profile_cols=128, ff_tiles=2, prop_tiles=2,
            exact=(1000, 100), gemm=512, coreset=[(100, 1_000), (500, 5_000)], coreset_timed_max=None,
            scan_reduction=(6_000, (300, 60), 2_500),
            knn_queries=1024, knn_banks=[5_000], fit_counts=(5, 10), fit_patches=256, fit_measured=None,
            fit_max_selections=None, tinyfit_scans=3, tinyfit_shape=(128, 384), tinyfit_tile=(128, 112),
        )
    return dict(
        scan=(2000, 6000), fit_scan=(2000, 4000), n_fit=2, profile_cols=1152, ff_tiles=2, prop_tiles=8,
        exact=(5000, 500), gemm=4096, coreset=[(1_000, 10_000), (5_000, 50_000), (20_000, 200_000)],
        coreset_timed_max=500,
        scan_reduction=(None, (8_192, 2_000), None),
        knn_queries=8192, knn_banks=[50_000, 200_000], fit_counts=(10, 100, 1000), fit_patches=None,
        fit_measured=1, fit_max_selections=1000, tinyfit_scans=10, tinyfit_shape=(512, 1536), tinyfit_tile=(512, 448),
    )


def bench_config(tiny: bool) -> DetectorConfig:
    return DetectorConfig(**TINY_BACKBONE) if tiny else DetectorConfig()


def real_scan_patches(config: DetectorConfig | None = None) -> tuple[int, int, int]:
    """(tiles, patches per tile, patches) of a 2000x6000 scan with the default configuration."""
    config = config or DetectorConfig()
    tiles = len(tile_grid(2000, 6000, config.tile_size, config.stride))
    per_tile = (config.input_size // 14) ** 2  # DINOv2 ViT-S/14
    return tiles, per_tile, tiles * per_tile


# ---------------------------------------------------------------------------------------------- helpers
def ru_maxrss_mib() -> float:
    """``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    On Linux this is ``VmHWM`` from /proc/self/status, the high-water mark of this process's own address
    space. ``ru_maxrss`` is not used there because Linux carries the parent's RSS at fork over into the
    child's ``ru_maxrss`` across exec: a worker started by a 1 GiB parent would report at least 1 GiB.
    Elsewhere it falls back to ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return ru_maxrss_mib()


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def low_rank_features(n: int, dim: int, seed: int, rank: int = 32, basis_seed: int = 12345) -> torch.Tensor:
    """(n, dim) float32 rows from a seeded low-rank Gaussian plus isotropic noise (patch-feature-like)."""
    basis = torch.randn(rank, dim, generator=torch.Generator().manual_seed(basis_seed)) / math.sqrt(rank)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=generator) @ basis + 0.1 * torch.randn(n, dim, generator=generator)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(1, digits - 1)}f}"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(ours: float | None, plain: float | None) -> float | None:
    return None if not ours or not plain else ours / plain


def run_worker(spec: dict, workdir: Path, name: str) -> dict:
    """Run this script with ``--worker`` in a fresh process; returns its JSON result."""
    spec = dict(spec, result=str(workdir / f"{name}.result.json"), threads=torch.get_num_threads())
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log(f"worker {name} ...")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                          capture_output=True, text=True, cwd=str(REPO_ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    log(f"worker {name} done in {time.perf_counter() - started:.1f} s")
    return json.loads(Path(spec["result"]).read_text())


# ---------------------------------------------------------------------------------------------- references
def forward_variant(extractor, batch: torch.Tensor, stop_early: bool = True, bf16: bool = False) -> torch.Tensor:
    """``FeatureExtractor._forward`` with the depth and precision as parameters.

    stop_early=False runs every block of the ViT (the plain reference) but takes the same block's tokens,
    so the features are the same math as ours (on CUDA under the library's autocast dtype). bf16=True turns on
    CPU bfloat16 autocast (a proposal).
    """
    import torch.nn.functional as F

    from rtg_anomaly.backbone.features import CUDA_AUTOCAST_DTYPE

    config = extractor.config
    device_type = extractor.device.type
    with torch.inference_mode(), torch.autocast(device_type=device_type,
                                                dtype=CUDA_AUTOCAST_DTYPE if device_type == "cuda" else torch.bfloat16,
                                                enabled=device_type == "cuda" or bf16):
        maps = extractor.model.forward_intermediates(batch, indices=list(config.layers), intermediates_only=True,
                                                     stop_early=stop_early, output_fmt="NCHW")
        size = maps[0].shape[-2:]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps]
        features = torch.cat(maps, dim=1).float()
        n = config.neighbourhood
        if n > 1:
            features = F.avg_pool2d(features, n, stride=1, padding=n // 2, count_include_pad=False)
    return features.permute(0, 2, 3, 1).contiguous()


def tile_gflop(extractor, stop_early: bool) -> float:
    """Floating-point operations (GFLOP) of one tile through ``forward_variant``, counted by torch's
    ``FlopCounterMode`` (matrix products, attention and convolutions; element-wise work is not counted, so
    this is a floor)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = torch.zeros(1, 3, extractor.input_size, extractor.input_size, device=extractor.device)
    with FlopCounterMode(display=False) as counter:
        forward_variant(extractor, batch, stop_early=stop_early)
    return counter.get_total_flops() / 1e9


def gemm_peak_gflops(device: torch.device, size: int, repeats: int = 5) -> tuple[float, str]:
    """Best rate (GFLOP/s) of a size x size matrix product in the backbone's compute dtype on this device:
    what the hardware and BLAS reach on the most favourable shape, a practical ceiling for a transformer's layers.
    Returns (rate, dtype name)."""
    from rtg_anomaly.backbone.features import CUDA_AUTOCAST_DTYPE

    dtype = CUDA_AUTOCAST_DTYPE if device.type == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    with torch.inference_mode():
        a @ b  # warm-up
        best = math.inf
        for _ in range(repeats):
            synchronise(device)
            t0 = time.perf_counter()
            a @ b
            synchronise(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9, str(dtype).replace("torch.", "")


def openvino_gemm_peak_gflops(size: int, repeats: int = 5) -> float | None:
    """``gemm_peak_gflops`` for OpenVINO's CPU plugin (float32, torch's thread count); None without openvino.

    Its kernels are not torch's BLAS: on some CPUs (MKL on AMD) they reach about twice the rate, so the
    machine's peak is the larger of the two."""
    if importlib.util.find_spec("openvino") is None:
        return None
    from rtg_anomaly.backbone.openvino_runtime import cpu_compile_properties, import_openvino

    ov = import_openvino()
    import openvino.opset13 as ops

    left, right = ops.parameter([size, size], np.float32), ops.parameter([size, size], np.float32)
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(left, right, False, False)], [left, right]), "CPU",
                                       cpu_compile_properties(torch.get_num_threads()))
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    inputs = {0: rng.standard_normal((size, size), np.float32), 1: rng.standard_normal((size, size), np.float32)}
    request.infer(inputs)  # warm-up
    best = min(_timed(lambda: request.infer(inputs)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def knn_topk_before(queries: torch.Tensor, bank: torch.Tensor, bank_squared_norms: torch.Tensor | None = None,
                    block: int = 1 << 25, k: int = 1) -> torch.Tensor:
    """The library's kNN before the k = 1 change: same chunking, but matmul, two adds and ``topk`` (the
    "before" side of the applied addmm + amin speed-up in section 7)."""
    queries = queries.to(bank.dtype)
    if bank_squared_norms is None:
        bank_squared_norms = (bank.float() ** 2).sum(1)
    bank_chunk = min(bank.shape[0], 65536)
    query_chunk = max(1, block // bank_chunk)
    result = torch.empty(queries.shape[0], device=queries.device, dtype=torch.float32)
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0 : q0 + query_chunk]
        q_norms = (q.float() ** 2).sum(1, keepdim=True)
        best = None
        for b0 in range(0, bank.shape[0], bank_chunk):
            chunk = bank[b0 : b0 + bank_chunk]
            distance = q_norms - 2.0 * (q @ chunk.T) + bank_squared_norms[b0 : b0 + bank_chunk]
            nearest = torch.topk(distance, min(k, distance.shape[1]), dim=1, largest=False).values
            best = nearest if best is None else torch.topk(torch.cat([best, nearest], 1), k, dim=1,
                                                           largest=False).values
        result[q0 : q0 + query_chunk] = best.clamp_min_(0.0).sqrt_().mean(1)
    return result


def exact_greedy_coreset(features: torch.Tensor, n_select: int, start: int) -> torch.Tensor:
    """Plain k-centre greedy: full N x N distance matrix in the original space, no projection."""
    distances = torch.cdist(features, features)
    selected = torch.empty(n_select, dtype=torch.long)
    min_distance = torch.full((features.shape[0],), float("inf"))
    index = start
    for step in range(n_select):
        selected[step] = index
        torch.minimum(min_distance, distances[index], out=min_distance)
        min_distance[index] = -math.inf
        index = int(torch.argmax(min_distance))
    return selected


def coverage_radius(features: torch.Tensor, selected: torch.Tensor) -> float:
    """Largest distance from any row to its nearest selected row (the k-centre objective)."""
    from rtg_anomaly.methods.memory_bank import knn_distance

    return float(knn_distance(features, features[selected], 1).max())


def greedy_start(n: int, dim: int, seed: int = 0, projection_dim: int = 128) -> int:
    """The first index ``greedy_coreset`` picks (it draws the projection first, then the start)."""
    generator = torch.Generator().manual_seed(seed)
    if dim > projection_dim:
        torch.randn(dim, projection_dim, generator=generator)
    return int(torch.randint(n, (1,), generator=generator))


def plain_detect(detector, image: np.ndarray, keep_queries: bool = False, keep_raw: int = 0):
    """The plain end-to-end reference: same math as ``Detector.score``, naive execution.

    One tile at a time through the whole ViT (every block; the configured block's tokens are taken),
    one ``torch.cdist`` per tile followed by min (top-k mean for k > 1), the library's stitching and smoothing.
    Returns (heatmap in calibrated units, stage seconds, projected queries, first raw features).
    """
    from rtg_anomaly.scans.intensity import apply_window, window_limits
    from rtg_anomaly.pipeline.stitching import MapStitcher, gaussian_smooth
    from rtg_anomaly.scans.tiling import extract_tiles, pad_to_tile

    config, extractor = detector.config, detector.extractor
    device = extractor.device
    times = dict(backbone=0.0, knn=0.0, stitch=0.0, smooth=0.0)
    started = time.perf_counter()
    padded = pad_to_tile(image, config.tile_size)
    low, high = window_limits(image, config.intensity_window, config.window_percentiles)
    origins = tile_grid(padded.shape[0], padded.shape[1], config.tile_size, config.stride)
    stitcher = MapStitcher(max(image.shape[0], config.tile_size), max(image.shape[1], config.tile_size),
                           config.tile_size, config.stride)
    bank = torch.from_numpy(detector.method_.memory_bank_).to(device)
    queries, raw, n_raw = [], [], 0
    for y, x in origins:
        tile = apply_window(extract_tiles(padded, np.array([[y, x]]), config.tile_size), low, high)
        t0 = time.perf_counter()
        features = forward_variant(extractor, extractor.to_input(tile), stop_early=False)
        synchronise(device)
        t1 = time.perf_counter()
        _, h, w, d = features.shape
        flat = features.reshape(-1, d)
        projected = detector.method_.pca_.transform(flat)
        distance = torch.cdist(projected, bank)
        if config.k == 1:
            nearest = distance.min(1).values
        else:
            nearest = distance.topk(min(config.k, bank.shape[0]), dim=1, largest=False).values.mean(1)
        scores = nearest.reshape(h, w).cpu().numpy()
        t2 = time.perf_counter()
        stitcher.add(int(y), int(x), scores)
        t3 = time.perf_counter()
        times["backbone"] += t1 - t0
        times["knn"] += t2 - t1
        times["stitch"] += t3 - t2
        if keep_queries:
            queries.append(projected.cpu())
        if n_raw < keep_raw:
            raw.append(flat[: keep_raw - n_raw].cpu())
            n_raw += raw[-1].shape[0]
    t0 = time.perf_counter()
    anomaly_map = stitcher.result()[: image.shape[0], : image.shape[1]]
    anomaly_map = gaussian_smooth(np.ascontiguousarray(anomaly_map), detector.smoothing_pixels)
    anomaly_map /= np.float32(detector.calibration_.clean_level)
    times["smooth"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - started
    times["tiles"] = len(origins)
    return (anomaly_map, times, torch.cat(queries) if queries else None, torch.cat(raw) if raw else None)


# ---------------------------------------------------------------------------------------------- workers
def time_detect(detector, path, device: torch.device) -> tuple[dict, np.ndarray, np.ndarray]:
    """Load, score and overlay one scan with stage timings: (timings row, heatmap, overlay)."""
    gpu_reset(device)
    t0 = time.perf_counter()
    image = detector.load_scan(path)
    t1 = time.perf_counter()
    timings: dict = {}
    result = detector.score(image, timings=timings)
    t2 = time.perf_counter()
    picture = detector.overlay(image, result)
    t3 = time.perf_counter()
    config = detector.config
    padded = (max(image.shape[0], config.tile_size), max(image.shape[1], config.tile_size))
    row = dict(name=Path(path).name, height=int(image.shape[0]), width=int(image.shape[1]), dtype=str(image.dtype),
               tiles=len(tile_grid(padded[0], padded[1], config.tile_size, config.stride)),
               load=t1 - t0, score=t2 - t1, overlay=t3 - t2, total=t3 - t0,
               backbone=timings.get("backbone", 0.0), knn=timings.get("knn", 0.0),
               stitch=timings.get("stitch", 0.0), smooth=timings.get("smooth", 0.0),
               gpu_peak_mib=gpu_peak_mib(device))
    row["other"] = row["score"] - row["backbone"] - row["knn"] - row["stitch"] - row["smooth"]
    row["mpix_per_s"] = image.shape[0] * image.shape[1] / 1e6 / row["total"]
    return row, result.heatmap, picture


def profile_score(detector, image: np.ndarray, n_tiles: int) -> dict:
    """cProfile of ``detector.score`` on one scan: top functions and Python self time per tile."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    detector.score(image)
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats
    entries = []
    python_self = 0.0
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
        builtin = filename == "~" or filename.startswith("<")
        label = func if builtin else f"{Path(filename).parent.name}/{Path(filename).name}:{line}({func})"
        if not builtin:
            python_self += tottime
        entries.append(dict(label=label, ncalls=ncalls, tottime=tottime, cumtime=cumtime))
    entries.sort(key=lambda e: e["tottime"], reverse=True)
    watched = ["stitching.py:add", "stitching.py:upsample_patch_map", "tiling.py:extract_tiles",
               "intensity.py:apply_window", "intensity.py:window_limits", "features.py:to_input",
               "features.py:_forward", "pca.py:transform", "memory_bank.py:knn_distance"]
    per_function = []
    for key in watched:
        file_part, func = key.split(":")
        for (filename, _line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
            if filename.endswith(file_part) and name == func:
                per_function.append(dict(label=key, ncalls=ncalls, tottime=tottime, cumtime=cumtime))
    return dict(wall=wall, tiles=n_tiles, shape=list(image.shape), python_self=python_self,
                python_self_per_tile=python_self / max(1, n_tiles), top=entries[:14], watched=per_function)


def folder_throughput(detector, path, n_scans: int) -> dict:
    """Seconds per scan when a folder of ``n_scans`` scans (here one file, listed n times) goes through
    ``prefetch`` as in ``rtg-anomaly detect --input DIR``: the next scan is decoded while this one is scored and
    its overlay rendered."""
    from rtg_anomaly.scans.io import prefetch

    synchronise(detector.extractor.device)
    t0 = time.perf_counter()
    for loaded in prefetch(detector.load_scan, [Path(path)] * n_scans):
        image = loaded.result()
        detector.overlay(image, detector.score(image))
    return dict(scans=n_scans, per_scan=(time.perf_counter() - t0) / n_scans)


def decode_times(detector, image: np.ndarray, png: Path, bmp: Path, repeats: int = 3) -> dict:
    """Seconds to decode the scan from its compressed PNG, its 16-bit grey BMP and an uncompressed TIFF copy
    (best of repeats)."""
    from PIL import Image

    tiff = png.with_name(png.stem + "_uncompressed.tif")
    Image.fromarray(image).save(tiff, format="TIFF", compression="raw")
    times = {}
    for name, path in (("png", png), ("bmp", bmp), ("tiff", tiff)):
        times[name] = min(_timed(lambda: detector.load_scan(path)) for _ in range(repeats))
        times[f"{name}_mib"] = path.stat().st_size / 2**20
        if not np.array_equal(detector.load_scan(path), image):
            raise RuntimeError(f"the {name.upper()} copy does not decode to the same scan")
    tiff.unlink()
    return times


def uninstrumented_times(detector, scans: dict[str, Path], repeats: int) -> dict:
    """Seconds per scan end to end (load + score + overlay) without stage timings, per file format (median of
    ``repeats``), and the backbone's own time on the same scan: its tiles cut and embedded batch after batch,
    the device synchronised once at the end (median of ``repeats``). With stage timings every stage waits for
    the device, so a GPU can no longer run ahead of the Python that feeds it; these are the times a user sees."""
    device = detector.extractor.device
    out = {}
    for name, path in scans.items():
        totals = []
        for _ in range(repeats):
            synchronise(device)
            t0 = time.perf_counter()
            image = detector.load_scan(path)
            detector.overlay(image, detector.score(image))  # returns a host array: the device has finished
            totals.append(time.perf_counter() - t0)
        out[name] = float(np.median(totals))
    image = detector.load_scan(next(iter(scans.values())))
    window = detector.window_limits(image)
    device_scan = detector.device_scan(image, window)
    backbone = []
    for _ in range(repeats):
        synchronise(device)
        t0 = time.perf_counter()
        for _origins, features in detector.patch_features(image, window=window, device_scan=device_scan):
            pass
        synchronise(device)
        backbone.append(time.perf_counter() - t0)
    out["backbone_alone"] = float(np.median(backbone))
    out["repeats"] = repeats
    return out


def write_times(picture: np.ndarray, heatmap: np.ndarray, pixel_threshold: float, folder: Path,
                repeats: int = 5) -> dict:
    """Seconds for what ``detect`` does after scoring, best of repeats: the heatmap's regions
    (``find_regions`` at the calibrated pixel threshold), the overlay (uint8 RGB) written with
    ``io.save_image`` per format, PNG and BMP also with Pillow's encoder (what ``save_image`` used before),
    and the heatmap written with ``io.save_array``; with file sizes in MiB. The steps take turns within each
    repeat, so a slow spell of a shared machine does not fall on one side of a comparison."""
    from PIL import Image

    from rtg_anomaly.scans.io import save_array, save_image
    from rtg_anomaly.outputs.regions import find_regions

    actions = [("regions", lambda: find_regions(heatmap, pixel_threshold))]
    actions += [(f"ours_{ext}", lambda ext=ext: save_image(folder / f"overlay.{ext}", picture))
                for ext in ("png", "bmp", "jpg", "tif")]
    actions += [(f"pillow_{ext}", lambda ext=ext: Image.fromarray(picture).save(folder / f"pillow.{ext}"))
                for ext in ("png", "bmp")]
    actions += [("heatmap_npy", lambda: save_array(folder / "heatmap.npy", heatmap))]
    runs = {name: [] for name, _ in actions}
    for _ in range(repeats):
        for name, action in actions:
            runs[name].append(_timed(action))
    times = {name: min(seconds) for name, seconds in runs.items()}
    for path in folder.iterdir():
        times[f"{path.stem}_{path.suffix[1:]}_mib"] = path.stat().st_size / 2**20
        path.unlink()
    return times


def _timed(action) -> float:
    t0 = time.perf_counter()
    action()
    return time.perf_counter() - t0


def load_detector(spec: dict, runtime: str) -> tuple[Detector, float]:
    """The bundle with its backbone built (and converted, for openvino), and the seconds that took."""
    t0 = time.perf_counter()
    detector = Detector.load(spec["bundle"], device=spec["device"], runtime=runtime)
    _ = detector.extractor
    return detector, time.perf_counter() - t0


def warm_up_backbone(detector: Detector) -> None:
    """One full batch of blank tiles through the backbone (kernel choice, allocator)."""
    config = detector.config
    detector.extractor.embed(np.zeros((config.batch_size, config.tile_size, config.tile_size), np.float32))


def worker_detect(spec: dict) -> dict:
    """Our detect path: real images, then the synthetic scan, then a cProfile of a crop."""
    device = torch.device(spec["device"])
    out: dict = {}
    detector, out["model_load_s"] = load_detector(spec, "torch")
    out["rss_after_load_mib"] = peak_rss_mib()
    real_rows = []
    config = detector.config
    # warm-up: a full batch through the backbone, and the whole score path on one tile of the first image
    warm_up_backbone(detector)
    if spec["real"]:
        first = detector.load_scan(spec["real"][0])
        detector.score(np.ascontiguousarray(first[: config.tile_size, : config.tile_size]))
        for path in spec["real"]:
            row, _, _ = time_detect(detector, path, device)
            real_rows.append(row)
        out["real_peak_rss_mib"] = peak_rss_mib()
    out["real"] = real_rows
    # Repeated runs of the synthetic scan; the run with the median total is reported (GPU timings vary more).
    runs = []
    for _ in range(max(1, spec.get("repeats", 1))):
        picture = None  # only the last overlay is kept (for the write timings), so peak RSS holds one at most
        *timed_run, picture = time_detect(detector, spec["scan"], device)
        runs.append(timed_run)
    totals = [r[0]["total"] for r in runs]
    row, heatmap = runs[int(np.argsort(totals)[len(totals) // 2])]
    row["repeats"], row["totals"] = len(totals), totals
    row["peak_rss_mib"] = peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix="rtg_bench_write_") as folder:  # after the peak: not part of detect
        out["writes"] = write_times(picture, heatmap, detector.calibration_.pixel_threshold, Path(folder))
    del runs, picture
    out["folder"] = folder_throughput(detector, spec["scan"], n_scans=max(2, spec.get("repeats", 1)))
    out["synthetic"] = row
    np.save(spec["heatmap"], heatmap)
    out["uninstrumented"] = uninstrumented_times(
        detector, {"BMP": Path(spec["scan_bmp"]), "PNG": Path(spec["scan"])}, max(1, spec.get("repeats", 1)))
    image = detector.load_scan(spec["scan"])
    out["decode"] = decode_times(detector, image, Path(spec["scan"]), Path(spec["scan_bmp"]))
    crop = np.ascontiguousarray(image[:, : spec["profile_cols"]])
    n_tiles = len(tile_grid(max(crop.shape[0], config.tile_size), max(crop.shape[1], config.tile_size),
                            config.tile_size, config.stride))
    out["profile"] = profile_score(detector, crop, n_tiles)
    return out


def worker_detect_openvino(spec: dict) -> dict:
    """Our detect path with ``--runtime openvino``: conversion once, then the synthetic scan.

    The model is loaded first with an empty converted-model cache (conversion), and again at the end
    with the cache that load filled (what every later process pays).
    """
    os.environ["RTG_ANOMALY_CACHE_DIR"] = tempfile.mkdtemp(prefix="ov-cache-", dir=Path(spec["heatmap"]).parent)
    detector, load_s = load_detector(spec, "openvino")
    warm_up_backbone(detector)
    row, heatmap, _ = time_detect(detector, spec["scan"], torch.device(spec["device"]))
    np.save(spec["heatmap"], heatmap)
    peak = peak_rss_mib()
    del detector
    _, cached_load_s = load_detector(spec, "openvino")
    _, torch_reload_s = load_detector(spec, "torch")  # the same warm process, for a like-for-like comparison
    return dict(synthetic=row, model_load_s=load_s, cached_model_load_s=cached_load_s,
                torch_reload_s=torch_reload_s, peak_rss_mib=peak)


def worker_plain(spec: dict) -> dict:
    """The plain references: end-to-end pipeline, backbone variants, full cdist, exact coreset, proposals."""
    from rtg_anomaly.methods.memory_bank import greedy_coreset, knn_distance

    device = torch.device(spec["device"])
    out: dict = {}
    detector = Detector.load(spec["bundle"], device=spec["device"], runtime="torch")  # the reference is torch eager
    extractor, config = detector.extractor, detector.config
    clean_level = float(detector.calibration_.clean_level)
    # warm-up: one tile through the whole ViT
    forward_variant(extractor, extractor.to_input(np.zeros((1, config.tile_size, config.tile_size), np.float32)),
                    stop_early=False)
    gpu_reset(device)
    t0 = time.perf_counter()
    image = detector.load_scan(spec["scan"])
    load_s = time.perf_counter() - t0
    n_raw = spec["exact"][0]
    heatmap, times, queries, raw = plain_detect(detector, image, keep_queries=True, keep_raw=n_raw)
    times["load"] = load_s
    times["peak_rss_mib"] = peak_rss_mib()
    times["gpu_peak_mib"] = gpu_peak_mib(device)
    out["e2e"] = times
    np.save(spec["heatmap"], heatmap)

    # (a) the literal reference: forward_features (all blocks + final norm) one tile at a time
    rng = np.random.default_rng(0)
    tiles = rng.random((max(spec["ff_tiles"], spec["prop_tiles"]), config.tile_size, config.tile_size),
                       dtype=np.float32)
    ff_times, ff_diff = [], None
    for i in range(spec["ff_tiles"]):
        batch = extractor.to_input(tiles[i : i + 1])
        t0 = time.perf_counter()
        with torch.inference_mode():
            tokens = extractor.model.forward_features(batch)
        synchronise(device)
        ff_times.append(time.perf_counter() - t0)
        if i == 0:
            prefix = getattr(extractor.model, "num_prefix_tokens", 0)
            final = tokens[:, prefix:].float().reshape(-1, tokens.shape[-1])
            ours = extractor.embed(tiles[:1]).reshape(-1, extractor.feature_dim)
            if final.shape == ours.shape:
                ff_diff = float((final - ours).norm() / ours.norm())
    out["forward_features"] = dict(per_tile=float(np.mean(ff_times)), tiles=len(ff_times), relative_l2_diff=ff_diff)

    # backbone decomposition on the same tiles: batching and depth
    n = spec["prop_tiles"]
    sel = tiles[:n]

    def timed(fn):
        synchronise(device)
        t0 = time.perf_counter()
        value = fn()
        synchronise(device)
        return time.perf_counter() - t0, value

    extractor.embed(sel[: config.batch_size])  # warm-up of both batch shapes (kernel choice, allocator)
    extractor.embed(sel[:1])
    batched_s, batched = timed(lambda: extractor.embed(sel))
    unbatched_s, _ = timed(lambda: [extractor.embed(sel[i : i + 1]) for i in range(n)])
    full_s, _ = timed(lambda: [forward_variant(extractor, extractor.to_input(sel[i : i + 1]), stop_early=False)
                               for i in range(n)])
    decomposition = dict(tiles=n, batch_size=config.batch_size, batched_stop_early=batched_s,
                         unbatched_stop_early=unbatched_s, unbatched_full_depth=full_s)
    if device.type == "cpu":  # on CUDA ours already runs under float16 autocast
        forward_variant(extractor, extractor.to_input(sel[:1]), bf16=True)  # warm-up
        bf16_s, bf16 = timed(lambda: torch.cat([forward_variant(extractor, extractor.to_input(
            sel[i : i + config.batch_size]), bf16=True) for i in range(0, n, config.batch_size)]))
        bank, norms = detector.method_.device_bank(device)
        d = extractor.feature_dim
        s32 = knn_distance(detector.method_.pca_.transform(batched.reshape(-1, d)), bank, config.k, norms)
        s16 = knn_distance(detector.method_.pca_.transform(bf16.reshape(-1, d)), bank, config.k, norms)
        decomposition["bf16_batched_stop_early"] = bf16_s
        decomposition["bf16_max_patch_score_diff"] = float((s32 - s16).abs().max()) / clean_level
    out["backbone_decomposition"] = decomposition
    peak, peak_dtype = gemm_peak_gflops(device, spec["gemm"])
    openvino_peak = openvino_gemm_peak_gflops(spec["gemm"]) if device.type == "cpu" else None
    out["compute_floor"] = dict(ours_gflop_per_tile=tile_gflop(extractor, stop_early=True),
                                plain_gflop_per_tile=tile_gflop(extractor, stop_early=False),
                                gemm_peak_gflops=max(peak, openvino_peak or 0.0), torch_gemm_gflops=peak,
                                openvino_gemm_gflops=openvino_peak, gemm_size=spec["gemm"], gemm_dtype=peak_dtype)

    # (c) exact greedy coreset vs ours, on real patch features of this scan
    n_points, n_select = spec["exact"]
    points = raw[:n_points].float().cpu()
    with torch.inference_mode():
        start = greedy_start(points.shape[0], points.shape[1])
        t0 = time.perf_counter()
        exact = exact_greedy_coreset(points, n_select, start)
        exact_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        approx = greedy_coreset(points, n_select, seed=0)
        ours_s = time.perf_counter() - t0
        out["coreset"] = dict(n=int(points.shape[0]), dim=int(points.shape[1]), select=n_select, exact_s=exact_s,
                              ours_s=ours_s, exact_radius=coverage_radius(points, exact),
                              ours_radius=coverage_radius(points, approx))

    # (b) one full cdist over the scan's queries vs our chunked kNN (and the kNN as it was before addmm+amin)
    bank, norms = detector.method_.device_bank(device)
    queries = queries.to(device)
    limit_rows = max(1, PLAIN_CDIST_LIMIT // (4 * bank.shape[0]))
    q = queries[:limit_rows]
    with torch.inference_mode():
        knn_distance(q[:1024], bank, config.k, norms)  # warm-up
        t_cdist, plain_scores = timed(lambda: torch.cdist(q, bank).min(1).values if config.k == 1 else
                                      torch.cdist(q, bank).topk(config.k, dim=1, largest=False).values.mean(1))
        t_ours, ours_scores = timed(lambda: knn_distance(q, bank, config.k, norms))
        knn = dict(queries=int(q.shape[0]), queries_total=int(queries.shape[0]), bank=int(bank.shape[0]),
                   dim=int(bank.shape[1]), cdist_s=t_cdist, ours_s=t_ours,
                   max_abs_diff=float((plain_scores - ours_scores).abs().max()) / clean_level)
        if config.k == 1:
            t_before, before_scores = timed(lambda: knn_topk_before(q, bank, norms))
            knn["topk_s"] = t_before
            knn["topk_max_abs_diff"] = float((before_scores - ours_scores).abs().max()) / clean_level
    out["knn"] = knn
    return out


def worker_fitscale(spec: dict) -> dict:
    """The fit's memory path for ``n_scans`` clean scans, with synthetic features of the real size.

    Mirrors ``Detector.fit``: StreamingCoreset with max_kept_per_scan = per_scan_share(max_bank_size, n_scans), PCA
    samples of max(256, 200000 // n_train) rows per training scan, PCA fit, finish, then the held-out scans
    join the pool and finish runs again. Scans beyond ``measured`` are fast-forwarded: their pool rows and
    PCA samples are allocated (random values of the exact sizes) without generating and reducing features.
    """
    from rtg_anomaly.methods.patchcore import PCA_SAMPLE_TOTAL
    from rtg_anomaly.methods.memory_bank import StreamingCoreset, per_scan_share, random_rows
    from rtg_anomaly.methods.pca import PCAProjection

    config = DetectorConfig()
    n_scans, patches, dim = spec["n_scans"], spec["patches"], spec["dim"]
    n_holdout = holdout_count(config.holdout_fraction, n_scans)
    n_train = n_scans - n_holdout
    max_kept = per_scan_share(config.max_bank_size, n_scans)
    keep_true = min(max(1, math.ceil(config.coreset_ratio * min(patches, config.max_patches_per_scan))), max_kept)
    keep_used = keep_true if spec["max_selections"] is None else min(keep_true, spec["max_selections"])
    per_scan_sample = max(256, PCA_SAMPLE_TOTAL // max(1, n_train))
    measured_all = spec["measured"] is None
    n_measured_train = n_train if measured_all else min(n_train, spec["measured"])
    builder = StreamingCoreset(config.coreset_ratio, seed=config.seed,
                               max_patches_per_scan=config.max_patches_per_scan, max_kept_per_scan=keep_used)
    pca_samples: list[np.ndarray] = []
    scan_times, add_times = [], []
    generator = torch.Generator().manual_seed(7)

    def fast_forward(with_sample: bool) -> None:
        builder._pool.append(torch.randn(keep_true, dim, generator=generator))
        builder._scans += 1
        builder.patches_seen += patches
        if with_sample:
            pca_samples.append(torch.randn(min(per_scan_sample, patches), dim, generator=generator).numpy())

    def measured_scan(index: int, with_sample: bool) -> None:
        t0 = time.perf_counter()
        features = low_rank_features(patches, dim, seed=1000 + index)
        if with_sample:
            rows = random_rows(features.shape[0], per_scan_sample, config.seed + index)
            pca_samples.append(features[torch.from_numpy(rows)].numpy())
        t1 = time.perf_counter()
        builder.add(features)
        if keep_used < keep_true:  # keep the pool at its true size
            builder._pool.append(torch.randn(keep_true - keep_used, dim, generator=generator))
        del features
        t2 = time.perf_counter()
        scan_times.append(t2 - t0)
        add_times.append(t2 - t1)

    started = time.perf_counter()
    for index in range(n_train - n_measured_train):
        fast_forward(True)
    for index in range(n_train - n_measured_train, n_train):
        measured_scan(index, True)
    t0 = time.perf_counter()
    samples = np.concatenate(pca_samples)
    pca = PCAProjection.fit(samples, spec["pca_dim"], seed=config.seed)
    pca_s = time.perf_counter() - t0
    pca_one_thread_s = None
    if spec.get("pca_one_thread"):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            t0 = time.perf_counter()
            PCAProjection.fit(samples, spec["pca_dim"], seed=config.seed)
            pca_one_thread_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bank = pca.transform_numpy(builder.finish(config.max_bank_size).numpy())
    finish_s = time.perf_counter() - t0
    for index in range(n_train, n_scans):
        measured_scan(index, False) if measured_all else fast_forward(False)
    t0 = time.perf_counter()
    bank = pca.transform_numpy(builder.finish(config.max_bank_size).numpy())
    finish_s += time.perf_counter() - t0
    wall = time.perf_counter() - started
    scan_s = float(np.mean(scan_times))
    add_s = float(np.mean(add_times))
    scan_est = scan_s - add_s + add_s * keep_true / keep_used
    return dict(n_scans=n_scans, n_train=n_train, n_holdout=n_holdout, patches=patches, dim=dim,
                max_kept_per_scan=max_kept, kept_per_scan=keep_true, selections_timed=keep_used,
                measured_scans=len(scan_times), per_scan_s=scan_s, per_scan_add_s=add_s, per_scan_est_s=scan_est,
                pca_samples=int(samples.shape[0]), pca_s=pca_s, pca_one_thread_s=pca_one_thread_s,
                finish_s=finish_s, pool=builder.pool_size,
                bank=int(bank.shape[0]), wall_s=wall,
                est_total_s=scan_est * n_scans + pca_s + finish_s, peak_rss_mib=peak_rss_mib())


def worker_tinyfit(spec: dict) -> dict:
    """A real Detector.fit with a one-block ViT of the real width (384) on small synthetic scans."""
    from rtg_anomaly.scans.synthetic import make_vehicle_scan

    tile, input_size = spec["tile"]
    config = DetectorConfig(weights="random", model_kwargs=dict(depth=1), layers=(0,), tile_size=tile,
                            input_size=input_size)
    height, length = spec["shape"]
    scans = [make_vehicle_scan(100 + i, height=height, length=length)[0] for i in range(spec["n_scans"])]
    detector = Detector(config, device=spec["device"], runtime="torch")
    t0 = time.perf_counter()
    _ = detector.extractor
    model_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    detector.fit(scans)
    fit_s = time.perf_counter() - t0
    tiles = len(tile_grid(max(height, tile), max(length, tile), tile, config.stride))
    return dict(n_scans=len(scans), shape=[height, length], tile=tile, input_size=input_size, tiles_per_scan=tiles,
                feature_dim=detector.extractor.feature_dim, model_s=model_s, fit_s=fit_s,
                per_scan_s=fit_s / len(scans), fit_info={k: v for k, v in detector.fit_info_.items()},
                peak_rss_mib=peak_rss_mib())


def worker_cli_folder(spec: dict) -> dict:
    """Seconds per scan of ``rtg-anomaly detect --input DIR`` itself (``--runtime torch --draw-regions``, BMP
    overlays, which the CLI writes in the background while it scores the next scan): the run on ``n_scans + 1``
    copies of the synthetic BMP minus the run on one copy, over ``n_scans``, so model load cancels; after an untimed
    run on one copy (first imports, kernel choices)."""
    import shutil

    from rtg_anomaly.cli import main as cli_main

    seconds = {}
    with tempfile.TemporaryDirectory(prefix="rtg_bench_cli_", dir=Path(spec["scan_bmp"]).parent) as tmp:
        for run, count in enumerate((1, 1, spec["n_scans"] + 1)):
            lane = Path(tmp) / f"lane_{run}"
            lane.mkdir()
            for index in range(count):
                shutil.copyfile(spec["scan_bmp"], lane / f"{index:03d}.bmp")
            argv = ["detect", "--input", str(lane), "--output", str(Path(tmp) / f"out_{run}"), "--model",
                    spec["bundle"], "--device", spec["device"], "--runtime", "torch", "--draw-regions", "--quiet"]
            with contextlib.redirect_stdout(sys.stderr):
                started = time.perf_counter()
                if cli_main(argv) != 0:
                    raise RuntimeError(f"rtg-anomaly {' '.join(argv)} failed")
                seconds[count] = time.perf_counter() - started
    return dict(scans=spec["n_scans"], per_scan=(seconds[spec["n_scans"] + 1] - seconds[1]) / spec["n_scans"],
                one_scan_run=seconds[1])


def worker_runtime_row(spec: dict) -> dict:
    """One row of the runtime x precision table: load the bundle with ``spec["runtime"]`` (its exported graph
    when it has one), warm up, then time ``score`` on the synthetic scan (decoded before the clock starts)."""
    if spec["runtime"] == "plain":
        detector, load_s = load_detector(spec, "torch")
        image = detector.load_scan(spec["scan"])
        plain_detect(detector, np.ascontiguousarray(image[: detector.config.tile_size, : detector.config.tile_size]))
        t0 = time.perf_counter()
        heatmap = plain_detect(detector, image)[0]
        score_s, label = time.perf_counter() - t0, "torch (plain reference)"
    else:
        detector, load_s = load_detector(spec, spec["runtime"])
        warm_up_backbone(detector)
        image = detector.load_scan(spec["scan"])
        detector.score(np.ascontiguousarray(image[: detector.config.tile_size, : detector.config.tile_size]))
        t0 = time.perf_counter()
        heatmap = detector.score(image).heatmap
        score_s, label = time.perf_counter() - t0, detector.extractor.runtime_label
    np.save(spec["heatmap"], heatmap)
    return dict(score_s=score_s, model_load_s=load_s, peak_rss_mib=peak_rss_mib(), label=label)


WORKERS = {"detect": worker_detect, "detect_openvino": worker_detect_openvino, "plain": worker_plain,
           "fitscale": worker_fitscale, "tinyfit": worker_tinyfit, "cli_folder": worker_cli_folder,
           "runtime_row": worker_runtime_row}

# The runtime x precision table (section 8): (row name, runtime, exported graph (format, precision) or None).
# None: the runtime's own float32 graph (torch itself, or converted from torch at load).
RUNTIME_ROWS = (("plain reference", "plain", None), ("torch fp32", "torch", None),
                ("OpenVINO fp32", "openvino", None), ("OpenVINO bf16", "openvino", ("openvino", "bf16")),
                ("OpenVINO int8 (NNCF)", "openvino", ("openvino", "int8")),
                ("OpenVINO int8 (ONNX Runtime's QDQ graph)", "openvino", ("onnx", "int8")),
                ("ONNX Runtime fp32", "onnxruntime", ("onnx", "fp32")),
                ("ONNX Runtime int8", "onnxruntime", ("onnx", "int8")))


def runtime_table(bundle: Path, clean: list, scan: Path, workdir: Path, device: torch.device,
                  calibration_tiles: int = 64) -> list[dict]:
    """Every row of ``RUNTIME_ROWS`` that is installed here, each in a fresh process: score seconds, peak RSS,
    largest heatmap difference from torch fp32 (calibrated units). The int8 graphs are calibrated on
    ``clean`` (the scans the bundle was fitted on)."""
    from rtg_anomaly.backbone.features import runtime_installed

    from rtg_anomaly.backbone.openvino_runtime import RuntimeUnavailable

    graphs, unavailable = {}, {}
    for graph in sorted({g for _, _, g in RUNTIME_ROWS if g}):
        log(f"exporting the {graph[0]} {graph[1]} graph ...")
        exporter = Detector.load(bundle, device="cpu", runtime="torch")
        t0 = time.perf_counter()
        try:
            exporter.export_graph(graph[0], graph[1], clean, calibration_tiles)
        except RuntimeUnavailable as exc:  # e.g. NNCF not installed: the row says so
            unavailable[graph] = str(exc)
            continue
        graphs[graph] = exporter.save(workdir / f"bundle-{graph[0]}-{graph[1]}")
        graphs[graph, "export_s"] = time.perf_counter() - t0
        del exporter
    rows = []
    for name, runtime, graph in RUNTIME_ROWS:
        precision = graph[1] if graph else None
        if runtime not in ("plain", "torch") and not runtime_installed(runtime):
            rows.append(dict(name=name, missing=f"{runtime} not installed"))
            continue
        if graph in unavailable:
            rows.append(dict(name=name, missing=unavailable[graph]))
            continue
        heatmap = workdir / f"runtime_{len(rows)}.npy"
        result = run_worker(dict(kind="runtime_row", device=str(device), runtime=runtime, scan=str(scan),
                                 bundle=str(graphs[graph] if graph else bundle), heatmap=str(heatmap)),
                            workdir, f"runtime_{len(rows)}")
        rows.append(dict(result, name=name, precision=precision, heatmap=str(heatmap),
                         export_s=graphs.get((graph, "export_s"))))
    reference = next(row for row in rows if row["name"] == "torch fp32")
    plain = next(row for row in rows if row["name"] == "plain reference")
    torch_map = np.load(reference["heatmap"])
    for row in rows:
        if "score_s" in row:
            row["vs_torch"] = reference["score_s"] / row["score_s"]
            row["vs_plain"] = plain["score_s"] / row["score_s"]
            row["max_abs_diff"] = float(np.abs(np.load(row["heatmap"]) - torch_map).max())
    return rows


def runtime_table_text(rows: list[dict], scan_shape: tuple[int, int], command: str, env: dict) -> str:
    """Section 8 of the report: the runtime x precision table and the moonshot line."""
    lines = ["## 8. Runtimes and precisions", "",
             f"`{command}`: the {scan_shape[0]}x{scan_shape[1]} synthetic scan, `score` only (decoded before the "
             "clock; one warm-up tile first), each row in a fresh process on the same bundle, one after the "
             f"other ({env.get('device', 'cpu')}, {torch.get_num_threads()} thread(s)). int8 rows run the bundle's "
             "int8 graph, calibrated on the bundle's clean scans: NNCF's OpenVINO IR (`rtg-anomaly export "
             "--format openvino --precision int8`) or ONNX Runtime's QDQ ONNX graph (`--format onnx`); fp32 ONNX Runtime runs the exported fp32 graph; OpenVINO fp32 converts from torch at "
             "load (as `--runtime openvino` does without an exported graph). Speed-up: torch fp32 (or the plain "
             "reference, section 2) seconds / the row's. Heatmap difference: max |row - torch fp32| in "
             "calibrated units (1.0 = the clean level).", "",
             "The bf16 row runs the bundle's OpenVINO IR (`rtg-anomaly export --format openvino --precision "
             "bf16`) compiled with bfloat16 inference precision where the CPU computes in it (the row's *what ran* "
             "says `openvino bf16`; `openvino fp32` on a CPU without AVX-512 BF16 or AMX).", "",
             f"Tolerance: {HEATMAP_TOLERANCE:g} for float32 rows, {REDUCED_HEATMAP_TOLERANCE:g} (the issue's) for "
             "bf16 and int8 rows.", "",
             "| runtime / precision | what ran | score s | speed-up vs torch fp32 | speed-up vs plain | peak RSS MiB "
             "| max heatmap diff | within tolerance | load avg start / end |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "score_s" not in row:
            lines.append(f"| {row['name']} | {row['missing']} | | | | | | | |")
            continue
        load = " / ".join("n/a" if v is None else f"{v:.1f}" for v in row.get("load_avg", [None, None]))
        row["within"] = row["max_abs_diff"] <= (REDUCED_HEATMAP_TOLERANCE if row.get("precision") in ("bf16", "int8")
                                                else HEATMAP_TOLERANCE)
        lines.append(f"| {row['name']} | {row['label']} | {row['score_s']:.2f} | {row['vs_torch']:.2f}x | "
                     f"{row['vs_plain']:.2f}x | {row['peak_rss_mib']:,.0f} | {row['max_abs_diff']:.2g} | "
                     f"{'yes' if row['within'] else 'NO'} | {load} |")
    best = min((row for row in rows if row.get("within")), key=lambda row: row["score_s"])
    lines += ["", f"Fastest within tolerance: {best['name']} at {best['vs_plain']:.2f}x the plain reference "
                  f"({best['vs_torch']:.2f}x torch fp32). **Moonshot (6x the plain reference with heatmaps within "
                  f"tolerance): {'REACHED' if best['vs_plain'] >= 6 else 'not reached'}.**", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- in-process sections
def coreset_scaling(sizes: list[tuple[int, int]], timed_max: int | None, device: torch.device) -> list[dict]:
    """Greedy coreset time for (select, out of N) 384-d features: the library (its loop pinned to one CPU
    thread) and, for comparison, the same function with the pin removed (torch's thread count)."""
    from rtg_anomaly.methods import memory_bank

    rows = []
    variants = [("cpu", True), ("cpu", False)] + ([("cuda", True)] if device.type == "cuda" else [])
    for n_select, n in sizes:
        features = low_rank_features(n, 384, seed=n)
        timed = n_select if timed_max is None else min(n_select, timed_max)
        for device_type, pinned in variants:
            points = features.to(device if device_type == "cuda" else "cpu")
            unpin = contextlib.nullcontext() if pinned else mock.patch.object(
                memory_bank, "_single_cpu_thread", lambda _device: contextlib.nullcontext())
            with unpin, torch.inference_mode():
                memory_bank.greedy_coreset(points[:2000], 10)  # warm-up
                synchronise(points.device)
                t0 = time.perf_counter()
                memory_bank.greedy_coreset(points, timed, seed=0)
                synchronise(points.device)
                seconds = time.perf_counter() - t0
            if device_type == "cuda":
                label = "cuda"
            else:
                label = "cpu, 1 thread (library)" if pinned else f"cpu, {torch.get_num_threads()} thread(s), pin removed"
            rows.append(dict(n=n, select=n_select, timed=timed, where=label, seconds=seconds,
                             est_seconds=seconds * n_select / timed, per_step_ms=1e3 * seconds / timed))
            log(f"coreset {n_select}/{n} {label}: {seconds:.2f} s for {timed}")
        del features
    return rows


def scan_reduction(n_patches: int | None, keeps: tuple[int, ...], part_rows: int | None) -> list[dict]:
    """One scan's per-scan coreset, as ``StreamingCoreset.add`` reduces it: one greedy run over all its patches
    (before) vs ``chunked_greedy_coreset`` (library), for the kept counts of a 10- and a 100-scan fit. Every pick
    is run; the coverage radius is the largest distance from a scan patch to its nearest kept one (384-d)."""
    from rtg_anomaly.methods.memory_bank import CORESET_PART_ROWS, chunked_greedy_coreset, greedy_coreset, knn_distance

    n = n_patches or real_scan_patches()[2]
    part_rows = part_rows or CORESET_PART_ROWS
    features = low_rank_features(n, 384, seed=4242)
    rows = []
    for keep in keeps:
        row = dict(patches=n, keep=keep, part_rows=part_rows, parts=math.ceil(n / part_rows))
        for name, select in (("whole", lambda: greedy_coreset(features, keep, seed=0)),
                             ("parts", lambda: chunked_greedy_coreset(features, keep, seed=0, part_rows=part_rows))):
            with torch.inference_mode():
                t0 = time.perf_counter()
                chosen = select()
                row[f"{name}_s"] = time.perf_counter() - t0
                row[f"{name}_radius"] = float(knn_distance(features, features[chosen]).max())
            log(f"scan reduction {keep}/{n} {name}: {row[f'{name}_s']:.2f} s")
        rows.append(row)
    return rows


def knn_comparison(real_bank: np.ndarray, n_queries: int, extra_banks: list[int], scan_patches: int,
                   device: torch.device, k: int = 1) -> dict:
    """Torch chunked kNN (library), the same with 128 MiB blocks and before addmm+amin, faiss IndexFlatL2,
    and plain cdist."""
    from rtg_anomaly.methods import memory_bank
    from rtg_anomaly.methods.memory_bank import knn_distance

    try:
        import faiss
        faiss_version = faiss.__version__
    except ImportError:
        faiss, faiss_version = None, None
    dim = real_bank.shape[1]
    queries = low_rank_features(n_queries, dim, seed=1, basis_seed=99) * 3.0
    banks = [("fitted bank", torch.from_numpy(real_bank))]
    banks += [(f"synthetic {m:,}", low_rank_features(m, dim, seed=m, basis_seed=99) * 3.0) for m in extra_banks]
    rows = []
    for name, bank in banks:
        bank = bank.contiguous()
        norms = (bank * bank).sum(1)
        row = dict(bank=name, rows=int(bank.shape[0]), queries=n_queries, dim=dim)
        with torch.inference_mode():
            knn_distance(queries[:256], bank, k, norms)
            t0 = time.perf_counter()
            reference = knn_distance(queries, bank, k, norms)
            row["torch_s"] = time.perf_counter() - t0
            # the library's block sizes for accelerators, used on the CPU before the CPU got cache-sized blocks
            with mock.patch.multiple(memory_bank, _CPU_DISTANCE_BLOCK=memory_bank._DISTANCE_BLOCK,
                                     _CPU_BANK_CHUNK=memory_bank._BANK_CHUNK):
                t0 = time.perf_counter()
                large_blocks = knn_distance(queries, bank, k, norms)
                row["large_block_s"] = time.perf_counter() - t0
            row["large_block_diff"] = float((large_blocks - reference).abs().max())
            if k == 1:
                t0 = time.perf_counter()
                before = knn_topk_before(queries, bank, norms)
                row["topk_s"] = time.perf_counter() - t0
                row["topk_diff"] = float((before - reference).abs().max())
            if n_queries * bank.shape[0] * 4 <= PLAIN_CDIST_LIMIT:
                t0 = time.perf_counter()
                torch.cdist(queries, bank).min(1)
                row["cdist_s"] = time.perf_counter() - t0
        if faiss is not None:
            index = faiss.IndexFlatL2(dim)
            t0 = time.perf_counter()
            index.add(bank.numpy())
            row["faiss_add_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            squared, _ = index.search(queries.numpy(), k)
            row["faiss_s"] = time.perf_counter() - t0
            faiss_scores = torch.from_numpy(np.sqrt(np.maximum(squared, 0.0)).mean(1))
            row["faiss_diff"] = float((faiss_scores - reference).abs().max())
        if device.type == "cpu" and k == 1 and importlib.util.find_spec("openvino") is not None:
            from rtg_anomaly.backbone.openvino_runtime import compile_nearest_distance

            nearest = compile_nearest_distance(torch.get_num_threads())
            nearest(queries[:256], bank, norms)  # warm-up
            t0 = time.perf_counter()
            openvino_scores = nearest(queries, bank, norms)
            row["openvino_s"] = time.perf_counter() - t0
            row["openvino_diff"] = float((openvino_scores - reference).abs().max())
        if device.type == "cuda":
            gb, gq, gn = bank.to(device), queries.to(device), norms.to(device)
            knn_distance(gq[:256], gb, k, gn)
            synchronise(device)
            t0 = time.perf_counter()
            knn_distance(gq, gb, k, gn)
            synchronise(device)
            row["cuda_s"] = time.perf_counter() - t0
        row["scale_to_scan"] = scan_patches / n_queries
        rows.append(row)
        log(f"knn {name}: torch {row['torch_s']:.2f} s, faiss {row.get('faiss_s')}")
    return dict(faiss_version=faiss_version, threads=torch.get_num_threads(),
                faiss_threads=faiss.omp_get_max_threads() if faiss is not None else None, rows=rows)


# ---------------------------------------------------------------------------------------------- report
def gpu_target_line(syn: dict, timed: dict, env: dict) -> str:
    """The GPU target's verdict: a 2000x6000 scan under 0.5 s end to end, backbone >= 60 % of the time. Judged on
    the scan read from its 16-bit BMP without stage timings (``timed``: ``uninstrumented_times``), with the
    backbone's own time on that scan; the instrumented run of section 1 is quoted beside it."""
    total, share = timed["BMP"], timed["backbone_alone"] / timed["BMP"]
    met = total < 0.5 and share >= 0.6
    return (f"**Target (GPU: 2000x6000 scan < 0.5 s end to end, backbone ≥ 60 % of it): "
            f"{'MET' if met else 'NOT MET'}** — {total:.3f} s end to end (load from the 16-bit BMP + score + "
            f"overlay, no stage timings, median of {timed['repeats']}) on {env['device_name']}, backbone "
            f"{100 * share:.0f} % of it ({timed['backbone_alone']:.4f} s on its own); from the PNG "
            f"{timed['PNG']:.3f} s, backbone {100 * timed['backbone_alone'] / timed['PNG']:.0f} %. With stage "
            f"timings (section 1, PNG): {syn['total']:.3f} s, backbone {100 * syn['backbone'] / syn['total']:.0f} %; "
            f"without decoding the file (score + overlay) {syn['score'] + syn['overlay']:.3f} s, backbone "
            f"{100 * syn['backbone'] / (syn['score'] + syn['overlay']):.0f} %; `score` alone {syn['score']:.3f} s, "
            f"backbone {100 * syn['backbone'] / syn['score']:.0f} %.\n")


def cpu_target_line(results: list[tuple[str, float | None, str]], env: dict) -> str:
    """The CPU target's verdict from (runtime, speed-up on ``score``, heatmap verdict) per runtime: ``score`` >= 3x
    faster than the plain reference, heatmaps within tolerance. Met when any runtime meets both."""
    met = [f"`--runtime {name}`" for name, speedup, agree in results if speedup and speedup >= 3 and agree == "PASS"]
    verdict_text = f"MET with {' and '.join(met)}" if met else "NOT MET"
    details = "; ".join(f"`--runtime {name}`{' (what the default `auto` runs here)' if name == 'openvino' else ''} "
                        f"{speedup or 0:.2f}x, heatmaps {agree}" for name, speedup, agree in results)
    return (f"**Target (CPU detect ≥ 3x faster than plain, identical heatmaps): {verdict_text}** — speed-up on "
            f"`score`: {details} ({env['device']}, {env['threads']} thread(s)).\n")


def environment(device: torch.device, argv: list[str]) -> dict:
    import timm

    cpu_name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        faiss_version = __import__("faiss").__version__
    except ImportError:
        faiss_version = None
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command="python scripts/benchmark_speed.py " + shlex.join(argv) if argv else "python scripts/benchmark_speed.py",
        cpu=cpu_name, cpu_count=os.cpu_count(),
        affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__, numpy=np.__version__,
        python=platform.python_version(), faiss=faiss_version,
        device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name,
        load_start=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )


def _cached_load_text(openvino: dict) -> str:
    """Model load time with the converted-model cache filled, beside a torch load in the same process."""
    cached = openvino["cached_model_load_s"]
    return (f"A second load in the same process read it back, checked it against torch on one tile and compiled "
            f"it: {cached:.1f} s ({openvino['model_load_s'] / cached:.2f}x faster than the first; loading the torch "
            f"runtime there took {openvino['torch_reload_s']:.1f} s).")


def _gemm_peaks_text(floor: dict) -> str:
    """Which library reached the peak, when both torch and OpenVINO were measured."""
    openvino_peak = floor.get("openvino_gemm_gflops")
    if openvino_peak is None:
        return ""
    return f" (torch {floor['torch_gemm_gflops']:.0f}, OpenVINO {openvino_peak:.0f})"


def compute_floor_text(floor: dict, tiles: int, syn: dict, e2e: dict, openvino: dict | None) -> str:
    """Section 2's bound: the fastest any exact implementation of our feature path could run here."""
    ours_total = floor["ours_gflop_per_tile"] * tiles
    floor_s = ours_total / floor["gemm_peak_gflops"]
    rest_s = syn["score"] - syn["backbone"]  # kNN, stitching and the rest, as ours measured them
    bound = e2e["total"] / (floor_s + rest_s)
    budget_s = e2e["total"] / 3 - rest_s  # backbone time left for 3x
    needed = (f"3x would need {fmt(ours_total / budget_s)} GFLOP/s over the whole backbone "
              f"({ours_total / budget_s / floor['gemm_peak_gflops']:.2f}x the measured peak)" if budget_s > 0 else
              "3x is out of reach even with a free backbone")
    rates = [f"ours {fmt(ours_total / syn['backbone'])} (torch)"]
    if openvino:
        rates.append(f"{fmt(ours_total / openvino['synthetic']['backbone'])} (openvino)")
    rates.append(f"the plain reference {fmt(floor['plain_gflop_per_tile'] * tiles / e2e['backbone'])}")
    return (
        f"\n**Compute floor.** Our feature path costs {fmt(floor['ours_gflop_per_tile'])} GFLOP per tile (the plain "
        f"reference's full depth: {fmt(floor['plain_gflop_per_tile'])}, counted by `FlopCounterMode`: matrix "
        f"products, attention, convolutions), {fmt(ours_total)} GFLOP for the scan's {tiles} tiles. The fastest "
        f"{floor['gemm_dtype']} matrix product this process ran ({floor['gemm_size']}x{floor['gemm_size']}, best "
        f"of 5) reached {floor['gemm_peak_gflops']:.0f} GFLOP/s{_gemm_peaks_text(floor)}. Even at that rate in "
        f"every operation the backbone "
        f"needs {fmt(floor_s)} s, so with our measured {fmt(rest_s)} s for the rest an exact implementation of this "
        f"pipeline can be at most **{bound:.2f}x** faster than the plain reference's {fmt(e2e['total'])} s here. "
        f"{needed}. Backbone rates in GFLOP/s: "
        f"{', '.join(rates)}.\n")


def build_report(env: dict, setup: dict, detect: dict, openvino: dict | None, plain: dict, agreement: dict,
                 fit_rows: list[dict] | None, tinyfit: dict | None, coreset_rows: list[dict], reduction_rows: list[dict],
                 knn: dict, sizes: dict, tiny: bool) -> str:
    syn = detect["synthetic"]
    e2e = plain["e2e"]
    parts = []
    parts.append("# Performance\n")
    parts.append("Generated by `scripts/benchmark_speed.py`; every number below comes from the run described here. "
                 "Times are wall-clock seconds on a machine shared with other jobs, so expect run-to-run noise "
                 "of 10-30 %; the load average is recorded below.\n")
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    parts.append(table(["item", "value"], [
        ["date", env["date"]],
        ["command", f"`{env['command']}`"],
        ["CPU", f"{env['cpu']} ({env['cpu_count']} logical CPUs, {env['affinity']} usable)"],
        ["torch / timm / numpy / python", f"{env['torch']} / {env['timm']} / {env['numpy']} / {env['python']}"],
        ["faiss", env["faiss"] or "not installed"],
        ["device", f"{env['device']} ({env['device_name']})"],
        ["torch threads", env["threads"]],
        ["load average (1/5/15 min) at start", " / ".join(f"{x:.2f}" for x in env["load_start"]) if env["load_start"] else "n/a"],
        ["load average at end", " / ".join(f"{x:.2f}" for x in load_end) if load_end else "n/a"],
        ["run time", f"{setup['run_s']:.0f} s"],
    ]))
    parts.append("\n## Setup\n")
    parts.append(
        f"* Backbone: {setup['backbone']}. Tiles {setup['tile_size']} px, overlap {setup['overlap']:.0%}, "
        f"input {setup['input_size']} px, {setup['grid']} patches per tile, feature dim {setup['feature_dim']}, "
        f"PCA {setup['pca_dim']}, k = {setup['k']}, batch size {setup['batch_size']}.\n"
        f"* The detector only needs a memory bank and a calibration to be timed, so it is fitted on "
        f"{setup['n_fit']} synthetic clean {setup['fit_shape'][0]}x{setup['fit_shape'][1]} crops "
        f"(not on full-size scans, which would take too long on this CPU): "
        f"{setup['fit_train']} training + {setup['fit_holdout']} held-out scan, bank of {setup['bank']:,} rows, "
        f"fit in {setup['fit_s']:.1f} s. Heatmap values on the real images are therefore meaningless; only "
        f"their timings matter here.\n"
        f"* Synthetic scan: `make_vehicle_scan(0, height={sizes['scan'][0]}, length={sizes['scan'][1]}, anomaly=True)`, "
        f"16-bit, written to a temporary PNG so that the load time is real decoding, and to a 16-bit grey BMP.\n"
        f"* Every detect stage runs in a fresh process (ours, then the plain reference), so peak RSS "
        f"(`VmHWM`, see Notes) is that process's own peak; it includes the Python runtime, torch and the model.\n"
    )
    if tiny:
        parts.append("* **Tiny random backbone** (`--tiny-backbone`): a smoke test, not a performance figure.\n")

    # 1. detect
    parts.append("\n## 1. Detect per scan\n")
    parts.append("Stages: `load` = `Detector.load_scan` (decode), `backbone`, `kNN` (PCA + chunked kNN + copy "
                 "back), `stitch+smooth` from `Detector.score(image, timings=...)`; `other` = the rest of `score` "
                 "(intensity window, tile cutting, image score); `overlay` = `Detector.overlay` (percentile mode). "
                 "MP/s = scan megapixels / total (load + score + overlay).\n")
    headers = ["scan", "size", "tiles", "load", "backbone", "kNN", "stitch+smooth", "other", "score", "overlay",
               "total", "MP/s", "peak RSS MiB", "peak GPU MiB"]
    rows = [[f"synthetic {syn['dtype']} PNG", f"{syn['height']}x{syn['width']}", syn["tiles"], syn["load"],
             syn["backbone"], syn["knn"], syn["stitch"] + syn["smooth"], syn["other"], syn["score"], syn["overlay"],
             syn["total"], syn["mpix_per_s"], syn["peak_rss_mib"], syn["gpu_peak_mib"]]]
    for r in detect["real"]:
        rows.append([f"real {r['name']} ({r['dtype']})", f"{r['height']}x{r['width']}", r["tiles"], r["load"],
                     r["backbone"], r["knn"], r["stitch"] + r["smooth"], r["other"], r["score"], r["overlay"],
                     r["total"], r["mpix_per_s"], detect.get("real_peak_rss_mib"), r["gpu_peak_mib"]])
    if detect["real"]:
        mean = {k: float(np.mean([r[k] for r in detect["real"]])) for k in
                ("load", "backbone", "knn", "stitch", "smooth", "other", "score", "overlay", "total", "mpix_per_s")}
        rows.append([f"real, mean of {len(detect['real'])}", "", "", mean["load"], mean["backbone"], mean["knn"],
                     mean["stitch"] + mean["smooth"], mean["other"], mean["score"], mean["overlay"], mean["total"],
                     mean["mpix_per_s"], "", ""])
    parts.append(table(headers, rows))
    folder = detect.get("folder")
    if folder:
        parts.append(f"\nFolder mode (`detect --input DIR`: the next scans are decoded in background threads while "
                     f"this one is scored and rendered), {folder['scans']} copies of the synthetic scan: "
                     f"**{folder['per_scan']:.3f} s per scan** against {syn['total']:.3f} s for one scan on its own "
                     f"({syn['total'] / folder['per_scan']:.2f}x the throughput).\n")
    cli = detect["cli_folder"]
    parts.append(f"\n`rtg-anomaly detect --input DIR` itself on copies of the synthetic scan as 16-bit BMPs "
                 f"(`--runtime torch --draw-regions`; regions, overlay files and triage written in a background "
                 f"thread while the next scan is scored): **{fmt(cli['per_scan'])} s per scan** (the run on "
                 f"{cli['scans'] + 1} copies minus the run on one, {fmt(cli['one_scan_run'])} s with model load, "
                 f"over {cli['scans']}; after an untimed run), against {fmt(folder['per_scan'])} s for decode + score + "
                 f"overlay in folder mode above; the difference is what the outputs cost beyond what the background "
                 f"writing hides.\n")
    decode = detect["decode"]
    tiff_total = syn["total"] - syn["load"] + decode["tiff"]
    parts.append(f"\nFile format: decoding the synthetic scan took {fmt(decode['png'])} s from its PNG "
                 f"({decode['png_mib']:.1f} MiB), {fmt(decode['bmp'])} s from a 16-bit grey BMP copy "
                 f"({decode['bmp_mib']:.1f} MiB, `bmp16.write_grey16_bmp`) and {fmt(decode['tiff'])} s from an "
                 f"uncompressed 16-bit TIFF copy ({decode['tiff_mib']:.1f} MiB); same pixels, best of 3 each. With "
                 f"the TIFF the scan's total would be {tiff_total:.3f} s (load swapped, the other stages as measured "
                 f"above), backbone {100 * syn['backbone'] / tiff_total:.0f} % of it.\n")
    writes = detect["writes"]
    parts.append(f"\nAfter scoring, `detect` finds the regions and writes its outputs (best of 5, taking turns; the "
                 f"overlay is {syn['height']}x{syn['width']} RGB): regions {fmt(writes['regions'])} s; overlay PNG "
                 f"{fmt(writes['ours_png'])} s ({writes['overlay_png_mib']:.1f} MiB; with Pillow's "
                 f"encoder {fmt(writes['pillow_png'])} s, {writes['pillow_png_mib']:.1f} MiB: ours "
                 f"{writes['pillow_png'] / writes['ours_png']:.1f}x faster), BMP {fmt(writes['ours_bmp'])} s (Pillow "
                 f"{fmt(writes['pillow_bmp'])} s, {writes['pillow_bmp'] / writes['ours_bmp']:.1f}x), JPEG "
                 f"{fmt(writes['ours_jpg'])} s ({writes['overlay_jpg_mib']:.1f} MiB), TIFF {fmt(writes['ours_tif'])} s "
                 f"({writes['overlay_tif_mib']:.1f} MiB); the heatmap (`.npy`, {writes['heatmap_npy_mib']:.1f} MiB) "
                 f"{fmt(writes['heatmap_npy'])} s. They are not part of the totals above.\n")
    timed = detect["uninstrumented"]
    parts.append(f"\nWithout stage timings (with them every stage waits for the device, so a GPU cannot run ahead "
                 f"of the Python that feeds it), load + score + overlay took **{fmt(timed['BMP'])} s from the BMP** "
                 f"and {fmt(timed['PNG'])} s from the PNG (median of {timed['repeats']}). The backbone on its own "
                 f"(the same scan's tiles cut and embedded batch after batch, one synchronisation at the end) took "
                 f"{fmt(timed['backbone_alone'])} s: {100 * timed['backbone_alone'] / timed['BMP']:.0f} % of the BMP "
                 f"run.\n")
    if syn.get("repeats", 1) > 1:
        parts.append(f"\nSynthetic scan: the run with the median total of {syn['repeats']} is shown (totals "
                     + ", ".join(f"{t:.3f}" for t in syn["totals"]) + " s).\n")
    parts.append(f"\nReal images: {setup['real_note']}. Model load (bundle + backbone) took "
                 f"{detect['model_load_s']:.1f} s, not counted above. Peak RSS baseline of the detect process "
                 f"after importing torch and the library: {detect['baseline_rss_mib']:.0f} MiB; after loading the "
                 f"model: {detect['rss_after_load_mib']:.0f} MiB. The real-image peak RSS is measured after "
                 f"all of them (before the synthetic scan); the synthetic scan's is measured after it.\n")

    # 2. ours vs plain
    dec = plain["backbone_decomposition"]
    ff = plain["forward_features"]
    tiles = e2e["tiles"]
    knn_p = plain["knn"]
    core = plain["coreset"]
    ours_e2e = syn["load"] + syn["score"]
    plain_e2e = e2e["load"] + e2e["total"]
    parts.append("\n## 2. Ours vs plain reference\n")
    parts.append(
        "The plain reference computes the same math with naive execution: one tile at a time through **all** "
        f"blocks of the ViT (`forward_intermediates(indices={list(setup['layers'])}, stop_early=False)`, the same "
        "block's tokens), one `torch.cdist(queries, bank)` per tile followed by min, and the library's own "
        "stitching and smoothing. The literal `forward_features` (all blocks + final norm, tokens) is timed "
        "too: it costs the same but gives other features (the last block's), so it cannot reproduce our "
        "heatmaps. Ratios are ours / plain (below 1 = ours is faster); speed-up = plain / ours.\n")
    rows = [
        ["(a) backbone, whole scan", f"{tiles} tiles", syn["backbone"], e2e["backbone"],
         ratio(syn["backbone"], e2e["backbone"]), ratio(e2e["backbone"], syn["backbone"])],
        ["(a) backbone per tile vs literal `forward_features`", f"{ff['tiles']} tiles, one at a time",
         syn["backbone"] / syn["tiles"], ff["per_tile"], ratio(syn["backbone"] / syn["tiles"], ff["per_tile"]),
         ratio(ff["per_tile"], syn["backbone"] / syn["tiles"])],
        ["(b) kNN: chunked `knn_distance` vs one `cdist` + min", f"{knn_p['queries']:,} queries x {knn_p['bank']:,} bank",
         knn_p["ours_s"], knn_p["cdist_s"], ratio(knn_p["ours_s"], knn_p["cdist_s"]),
         ratio(knn_p["cdist_s"], knn_p["ours_s"])],
        ["(b') kNN inside detect: chunked per batch vs `cdist` per tile", f"{tiles} tiles", syn["knn"], e2e["knn"],
         ratio(syn["knn"], e2e["knn"]), ratio(e2e["knn"], syn["knn"])],
        ["(c) coreset: `greedy_coreset` vs exact greedy", f"{core['n']:,} x {core['dim']} real features, select {core['select']}",
         core["ours_s"], core["exact_s"], ratio(core["ours_s"], core["exact_s"]), ratio(core["exact_s"], core["ours_s"])],
        ["(d) end-to-end detect (score)", f"{syn['height']}x{syn['width']}", syn["score"], e2e["total"],
         ratio(syn["score"], e2e["total"]), ratio(e2e["total"], syn["score"])],
        ["(d) end-to-end detect (load + score)", f"{syn['height']}x{syn['width']}", ours_e2e, plain_e2e,
         ratio(ours_e2e, plain_e2e), ratio(plain_e2e, ours_e2e)],
    ]
    if openvino:
        ov_score = openvino["synthetic"]["score"]
        rows.insert(1, ["(a') backbone, whole scan, `--runtime openvino`", f"{tiles} tiles",
                        openvino["synthetic"]["backbone"], e2e["backbone"],
                        ratio(openvino["synthetic"]["backbone"], e2e["backbone"]),
                        ratio(e2e["backbone"], openvino["synthetic"]["backbone"])])
        rows.append(["(d') end-to-end detect (score), `--runtime openvino`", f"{syn['height']}x{syn['width']}",
                     ov_score, e2e["total"], ratio(ov_score, e2e["total"]), ratio(e2e["total"], ov_score)])
    parts.append(table(["comparison", "input", "ours s", "plain s", "ours/plain", "speed-up"], rows))
    speedup = ratio(e2e["total"], syn["score"])
    verdict = "PASS" if agreement["max_abs_diff"] < HEATMAP_TOLERANCE else "FAIL"
    parts.append(
        f"\n**Heatmap agreement: {verdict}** — max |ours − plain| = {agreement['max_abs_diff']:.2e} calibrated units "
        f"(tolerance {HEATMAP_TOLERANCE:g}; mean {agreement['mean_abs_diff']:.2e}; heatmap max "
        f"{agreement['max_value']:.3f}). kNN scores of (b) agree to {knn_p['max_abs_diff']:.2e} calibrated units.\n")
    if openvino:
        ov_speedup = ratio(e2e["total"], openvino["synthetic"]["score"])
        ov_verdict = "PASS" if openvino["max_abs_diff"] < HEATMAP_TOLERANCE else "FAIL"
        parts.append(
            f"\nWith `--runtime openvino` (OpenVINO runs the same float32 graph on the CPU; the default `--runtime "
            f"auto` picks it on the CPU when the openvino package is installed): heatmap "
            f"agreement **{ov_verdict}**, max |openvino − plain| = {openvino['max_abs_diff']:.2e} calibrated units; "
            f"speed-up {ov_speedup:.2f}x on `score`. Converting and compiling the backbone took "
            f"{openvino['model_load_s']:.1f} s at model load (bundle + backbone + conversion; torch: "
            f"{detect['model_load_s']:.1f} s) the first time; the converted graph is cached on disk. "
            f"{_cached_load_text(openvino)} Peak RSS {openvino['peak_rss_mib']:,.0f} MiB.\n")
    if env["device"].startswith("cuda"):
        parts.append(gpu_target_line(syn, detect['uninstrumented'], env))
    else:
        results = [("torch", speedup, verdict)] + ([("openvino", ov_speedup, ov_verdict)] if openvino else [])
        parts.append(cpu_target_line(results, env))
    parts.append(compute_floor_text(plain["compute_floor"], tiles, syn, e2e, openvino))
    parts.append(
        "\nThe speed-up depends on the thread count and on the machine's load. With several threads on a busy "
        "machine each operator's OpenMP barrier waits for descheduled threads; the unbatched plain reference runs "
        "8x more, smaller operators and suffers far more from that than ours, so part of the batching gain below "
        "is contention relief, not arithmetic. Run with `--threads 1` to see the intrinsic ratio (then only the "
        "depth cut and the kNN remain).\n")
    if knn_p["queries"] < knn_p["queries_total"]:
        parts.append(f"(b) used the first {knn_p['queries']:,} of the scan's {knn_p['queries_total']:,} queries: "
                     f"a full cdist over all of them would exceed {PLAIN_CDIST_LIMIT / 2**30:.0f} GiB.\n")
    parts.append(
        f"\nLiteral `forward_features` features differ from the block-{setup['layers'][0]} features we use "
        f"(relative L2 difference {fmt(ff['relative_l2_diff'])}), which is why the plain pipeline takes the same "
        f"block from a full-depth pass.\n")
    parts.append(
        f"\nWhere the backbone speed-up comes from ({dec['tiles']} random tiles, same process):\n\n")
    drows = [["batched (batch size %d), stop early (ours)" % dec["batch_size"], dec["batched_stop_early"], 1.0],
             ["one tile at a time, stop early", dec["unbatched_stop_early"],
              dec["unbatched_stop_early"] / dec["batched_stop_early"]],
             ["one tile at a time, all blocks (plain)", dec["unbatched_full_depth"],
              dec["unbatched_full_depth"] / dec["batched_stop_early"]]]
    parts.append(table(["backbone variant", "seconds", "x ours"], drows))
    parts.append(
        f"\n\nBatching gains {dec['unbatched_stop_early'] / dec['batched_stop_early']:.2f}x, stopping after "
        f"block {setup['layers'][0]} gains {dec['unbatched_full_depth'] / dec['unbatched_stop_early']:.2f}x.\n")
    parts.append(
        f"\n(c) coverage radius (largest distance from a feature to its nearest kept feature, original space): "
        f"exact {core['exact_radius']:.3f}, ours {core['ours_radius']:.3f} (random projection to 128 dims).\n")
    parts.append(f"\nPeak RSS: ours {syn['peak_rss_mib']:.0f} MiB, plain {e2e['peak_rss_mib']:.0f} MiB "
                 f"(each in its own process, after detecting the synthetic scan).\n")

    # 3. profile
    prof = detect["profile"]
    knn_self = sum(e["tottime"] for e in prof["watched"] if e["label"] == "memory_bank.py:knn_distance")
    knn_free = prof["python_self"] - knn_self
    parts.append("\n## 3. Where the detect time goes (cProfile)\n")
    parts.append(
        f"`cProfile` of `Detector.score` on a {prof['shape'][0]}x{prof['shape'][1]} crop of the synthetic scan "
        f"({prof['tiles']} tiles, {prof['wall']:.1f} s under the profiler). Self time in Python frames: "
        f"{prof['python_self']:.3f} s in all, {1e3 * prof['python_self_per_tile']:.1f} ms per tile "
        f"({100 * prof['python_self'] / prof['wall']:.1f} % of the wall time). That is an upper bound on the "
        "interpreter overhead: tensor operators written inline (`a @ b`, `x * gamma`) are charged to the Python "
        "function that calls them, so `knn_distance`'s self time is mostly its matmul and arithmetic. Without "
        f"`knn_distance`: **{1e3 * knn_free / prof['tiles']:.1f} ms per tile** "
        f"({100 * knn_free / prof['wall']:.1f} % of the wall time), still including LayerScale's multiply and "
        "the attention reshapes.\n\n")
    parts.append(table(["function (by self time)", "calls", "self s", "cumulative s"],
                       [[f"`{e['label']}`", e["ncalls"], e["tottime"], e["cumtime"]] for e in prof["top"]]))
    parts.append("\n\nPer-tile helpers of the detect path:\n\n")
    parts.append(table(["function", "calls", "cumulative s", "ms per call"],
                       [[f"`{e['label']}`", e["ncalls"], e["cumtime"], 1e3 * e["cumtime"] / max(1, e["ncalls"])]
                        for e in prof["watched"]]))
    parts.append("\n")

    # 4. fit scaling
    parts.append("\n## 4. Fit scaling\n")
    if fit_rows is None:
        parts.append("Skipped (`--skip-fit-scaling`).\n")
    else:
        first = fit_rows[0]
        parts.append(
            "Running the real backbone on 1000 full-size scans is impossible on this CPU, so this measures the fit's "
            "**memory path** with synthetic features of the real size: per clean scan "
            f"{first['patches']:,} patch features x {first['dim']} dims "
            f"({first['patches'] * first['dim'] * 4 / 2**20:.0f} MiB float32; "
            + ("a 2000x6000 scan = %d tiles of 512 px at 25 %% overlap x 32x32 patches at 448 px input"
               % real_scan_patches()[0] if sizes["fit_patches"] is None else "quick-run size")
            + "), drawn from a seeded rank-32 Gaussian plus noise. Each scan count runs in a fresh process "
            "that mirrors `Detector.fit`: `StreamingCoreset(0.1, max_kept_per_scan=200000 // n_scans)`, "
            "PCA samples of max(256, 200000 // n_train) rows per training scan, PCA fit (128 dims), `finish`, "
            "then the held-out scans (20 %) join the pool and `finish` runs again. The backbone is not run.\n")
        if sizes["fit_measured"] is not None:
            parts.append(
                f"\nTo fit the time budget, only the last {sizes['fit_measured']} training scan(s) of each run are "
                "generated and reduced for real; the other scans are *fast-forwarded*: their pool rows "
                "(kept-per-scan x 384 float32) and PCA samples are allocated with random values of exactly the "
                "size the real path would keep, so the pool, the PCA sample and the peak RSS are those of the full "
                "run, while the per-scan time is measured on the real scans. "
                + (f"The greedy selection of a measured scan is capped at {sizes['fit_max_selections']:,} picks "
                   "(the rest of its share is padded with random rows) and its time scaled linearly to the true "
                   "pick count (each greedy step costs the same), marked *est.*.\n"
                   if sizes["fit_max_selections"] else "\n"))
        rows = []
        for r in fit_rows:
            est = r["selections_timed"] < r["kept_per_scan"]
            rows.append([r["n_scans"], f"{r['n_train']} + {r['n_holdout']}", r["kept_per_scan"],
                         r["measured_scans"], r["per_scan_s"],
                         (fmt(r["per_scan_est_s"]) + " est.") if est else r["per_scan_est_s"],
                         r["pca_samples"], r["pca_s"], r["pca_one_thread_s"], r["finish_s"], r["bank"],
                         r["est_total_s"], r["peak_rss_mib"], r["peak_rss_mib"] - r["baseline_rss_mib"]])
        parts.append(table(["clean scans", "train + held out", "kept per scan", "scans measured",
                            "measured s / scan", "s / scan (full picks)", "PCA sample rows", "PCA fit s",
                            "PCA fit s, 1 BLAS thread", "finish s", "bank rows", "memory path total s (est.)",
                            "peak RSS MiB", "over baseline MiB"], rows))
        parts.append(f"\n\n*Baseline* = peak RSS of the fresh process right after importing torch and the library "
                     f"({fit_rows[0]['baseline_rss_mib']:.0f} MiB); *over baseline* is what the fit's memory path "
                     "added. The second PCA fit (same samples, `threadpoolctl.threadpool_limits(1)`) shows how much "
                     "BLAS threads help or hurt on this shared 2-core machine (timed once: the PCA sample has about "
                     "the same size for every scan count).")
        backbone_scan = syn["backbone"] * real_scan_patches()[0] / max(1, syn["tiles"]) if not tiny else None
        if backbone_scan:
            parts.append(
                f"\n\nAdd the backbone to relate this to a real fit: {backbone_scan:.2g} s per 2000x6000 scan on this "
                f"{'GPU' if env['device'].startswith('cuda') else 'CPU'} (section 1), plus scoring each held-out scan. "
                "The real fit also holds one scan's features twice for a moment (`torch.cat` of the batches) and "
                "the backbone activations of one batch.\n")
            if env["device"].startswith("cuda"):
                parts.append("\nThe memory path above runs its greedy selections on the CPU; `Detector.fit` on this "
                             "machine runs them on the GPU, where the scan's features already are (section 5 compares "
                             "the two), so its per-scan times are an upper bound here.\n")
        if tinyfit:
            info = tinyfit["fit_info"]
            parts.append(
                f"\nReal `Detector.fit` with a one-block ViT of the real width "
                f"(`DetectorConfig(weights='random', model_kwargs=dict(depth=1), layers=(0,), tile_size={tinyfit['tile']}, "
                f"input_size={tinyfit['input_size']})`, feature dim {tinyfit['feature_dim']}) on {tinyfit['n_scans']} "
                f"synthetic clean {tinyfit['shape'][0]}x{tinyfit['shape'][1]} scans ({tinyfit['tiles_per_scan']} tiles "
                f"each), fresh process: {tinyfit['fit_s']:.1f} s ({tinyfit['per_scan_s']:.2f} s per scan, model "
                f"creation {tinyfit['model_s']:.1f} s excluded), {info.get('n_train_scans')} training + "
                f"{info.get('n_calibration_scans')} calibration scans, {info.get('patches_seen'):,} patches, bank "
                f"{info.get('memory_bank_size'):,} rows, peak RSS {tinyfit['peak_rss_mib']:.0f} MiB.\n")

    # 5. coreset
    parts.append("\n## 5. Coreset selection time vs bank size\n")
    parts.append("`greedy_coreset` (seeded 128-d random projection) on rank-32 + noise 384-d features. "
                 + ("Where `picks timed` is below `select`, the run was stopped there and the time scaled linearly "
                    "(every greedy step costs the same at a given N), marked *est.*. " if sizes["coreset_timed_max"] else "")
                 + "The library runs the greedy loop on one CPU thread; the *pin removed* rows run the same "
                   "function with that pin patched out (torch's thread count).\n\n")
    rows = []
    for r in coreset_rows:
        est = r["timed"] < r["select"]
        rows.append([r["select"], r["n"], r["where"], r["timed"], r["seconds"],
                     (fmt(r["est_seconds"]) + " est.") if est else r["est_seconds"], r["per_step_ms"]])
    parts.append(table(["select", "out of N", "where", "picks timed", "s timed", "s for all picks", "ms per pick"], rows))
    parts.append("\n")
    first = reduction_rows[0]
    parts.append(f"\nOne scan's reduction in `StreamingCoreset.add`: {first['patches']:,} patches (synthetic, 384-d), "
                 "kept counts of a 10- and a 100-scan fit. *Whole* is one greedy run over all of them (before); "
                 f"*in parts* is the library's `chunked_greedy_coreset`: {first['parts']} seeded random parts of at "
                 f"most {first['part_rows']:,} rows, each keeping its share. Each greedy step reads every row of its "
                 "run, so parts cut the cost from keep x N to keep x part size. Every pick is run. *Radius* is the "
                 "largest distance from a patch of the scan to its nearest kept patch (lower covers better).\n\n")
    rows = [[r["keep"], r["patches"], r["whole_s"], r["parts_s"], r["whole_s"] / r["parts_s"], r["whole_radius"],
             r["parts_radius"]] for r in reduction_rows]
    parts.append(table(["keep", "out of N", "whole s", "in parts s", "speed-up", "radius whole", "radius in parts"],
                       rows))
    parts.append("\n")

    # 6. knn
    parts.append("\n## 6. kNN on the CPU: torch chunked matmul vs faiss and OpenVINO\n")
    if knn["faiss_version"] is None:
        parts.append("faiss is not importable here: only torch is timed (`pip install faiss-cpu` to compare).\n\n")
    else:
        parts.append(f"faiss-cpu {knn['faiss_version']} (`IndexFlatL2`, exact, {knn['faiss_threads']} OpenMP "
                     "threads) is **not** a declared dependency; it was installed only to measure it. ")
    parts.append(f"{knn['rows'][0]['queries']:,} queries of {knn['rows'][0]['dim']} dims (the PCA output), k = 1, "
                 f"torch with {knn['threads']} threads. *per scan* scales the library time to the "
                 f"{real_scan_patches()[2]:,} patches of a 2000x6000 scan.\n\n")
    rows = []
    for r in knn["rows"]:
        rows.append([r["bank"], r["rows"], r["torch_s"], r.get("large_block_s"), r.get("topk_s"), r.get("faiss_s"),
                     r.get("faiss_add_s"), r.get("openvino_s"), r.get("cdist_s", "too big"), r.get("cuda_s"),
                     ratio(r.get("faiss_s"), r["torch_s"]), ratio(r.get("openvino_s"), r["torch_s"]),
                     r["torch_s"] * real_scan_patches()[2] / r["queries"],
                     max(r.get("faiss_diff", 0.0), r.get("topk_diff", 0.0), r.get("large_block_diff", 0.0),
                         r.get("openvino_diff", 0.0))])
    parts.append(table(["bank", "rows", "torch `knn_distance` s", "128 MiB blocks s", "before (matmul+topk) s",
                        "faiss search s", "faiss add s", "OpenVINO s", "cdist+min s", "CUDA s", "faiss / torch",
                        "OpenVINO / torch", "torch s per scan", "max abs diff"], rows))
    parts.append("\n*OpenVINO* is `compile_nearest_distance`, what the detector runs for k = 1 when OpenVINO runs "
                 "the backbone (the default on a CPU with openvino installed).\n")
    parts.append("\n")

    # 7. proposals
    parts.append("\n## 7. Speed-ups: applied, and measured candidates\n")
    props = []
    if "topk_s" in knn_p:
        props.append(f"* **Applied — kNN for k = 1 without `topk`**: one `addmm` + `amin` per block (library) instead "
                     f"of matmul, two adds and `topk(1)` (before): {knn_p['topk_s']:.2f} s → {knn_p['ours_s']:.2f} s "
                     f"on the scan's queries ({knn_p['topk_s'] / knn_p['ours_s']:.2f}x, max difference "
                     f"{knn_p['topk_max_abs_diff']:.1e} calibrated units).")
        big = knn["rows"][-1]
        if "topk_s" in big:
            props.append(f"  With a {big['rows']:,}-row bank: {big['topk_s']:.2f} s → {big['torch_s']:.2f} s per "
                         f"{big['queries']:,} queries ({big['topk_s'] / big['torch_s']:.2f}x).")
    big = knn["rows"][-1]
    if "large_block_s" in big:
        from rtg_anomaly.methods import memory_bank

        cpu_rows, cpu_block = memory_bank._CPU_BANK_CHUNK, memory_bank._CPU_DISTANCE_BLOCK
        props.append(f"* **Applied — cache-sized kNN blocks on the CPU** ({cpu_rows:,} bank rows x "
                     f"{cpu_block // cpu_rows:,} queries, {cpu_block * 4 >> 20} MiB) "
                     f"instead of the accelerator's 128 MiB blocks: {big['large_block_s']:.2f} s → "
                     f"{big['torch_s']:.2f} s per {big['queries']:,} queries with a {big['rows']:,}-row bank "
                     f"({big['large_block_s'] / big['torch_s']:.2f}x; "
                     + ", ".join(f"{r['rows']:,} rows {r['large_block_s'] / r['torch_s']:.2f}x" for r in knn["rows"][:-1])
                     + "; identical to " + f"{max(r['large_block_diff'] for r in knn['rows']):.1e}).")
    if knn["faiss_version"] is not None:
        props.append(f"* **faiss `IndexFlatL2`**: {big['faiss_s']:.2f} s vs torch {big['torch_s']:.2f} s with a "
                     f"{big['rows']:,}-row bank ({big['torch_s'] / big['faiss_s']:.2f}x for faiss); see section 6.")
    if big.get("openvino_s") is not None:
        props.append(f"* **Applied — OpenVINO kNN with the OpenVINO runtime** (k = 1): {big['torch_s']:.2f} s → "
                     f"{big['openvino_s']:.2f} s per {big['queries']:,} queries with a {big['rows']:,}-row bank "
                     f"({big['torch_s'] / big['openvino_s']:.2f}x; max difference {big['openvino_diff']:.1e}).")
    if "bf16_batched_stop_early" in dec:
        props.append(f"* **bfloat16 autocast on the CPU backbone**: {dec['batched_stop_early']:.2f} s → "
                     f"{dec['bf16_batched_stop_early']:.2f} s for {dec['tiles']} tiles "
                     f"({dec['batched_stop_early'] / dec['bf16_batched_stop_early']:.2f}x); patch scores move by "
                     f"up to {dec['bf16_max_patch_score_diff']:.1e} calibrated units (the heatmap is a weighted "
                     f"average of them, so this bounds its change).")
    pinned = {(r["n"], r["select"]): r for r in coreset_rows if r["where"].endswith("(library)")}
    unpinned = {(r["n"], r["select"]): r for r in coreset_rows if r["where"].endswith("pin removed")}
    pairs = [(key, unpinned[key], pinned[key]) for key in pinned if key in unpinned]
    if pairs and torch.get_num_threads() > 1:
        props.append("* **Applied — greedy coreset loop on one CPU thread**, ms per pick with "
                     f"{torch.get_num_threads()} threads → 1 thread (library): "
                     + "; ".join(f"N = {key[0]:,}: {u['per_step_ms']:.2f} → {p['per_step_ms']:.2f} "
                                 f"({u['per_step_ms'] / p['per_step_ms']:.2f}x)" for key, u, p in pairs)
                     + ". The loop is a chain of small vector operations, whose OpenMP fork/join costs most "
                     "when other jobs share the cores (see the load averages in the notes).")
    backbone_share = syn["backbone"] / syn["score"]
    biggest = knn["rows"][-1]
    on_gpu = biggest.get("cuda_s") is not None
    big_scan = (biggest["cuda_s"] if on_gpu else biggest["torch_s"]) * biggest["scale_to_scan"]
    props.append(f"* The backbone is {100 * backbone_share:.0f} % of `score` on the synthetic scan; kNN "
                 f"{100 * syn['knn'] / syn['score']:.0f} % with this {setup['bank']:,}-row bank, but kNN grows "
                 f"linearly with the bank (section 6): with {biggest['rows']:,} rows it would take about "
                 f"{big_scan:.2g} s per 2000x6000 scan{' on the GPU' if on_gpu else ''} against "
                 f"{syn['backbone']:.2g} s of backbone.")
    parts.append("\n".join(props) + "\n")
    workers = [("detect", detect), ("plain", plain)] + [(f"fit {r['n_scans']}", r) for r in (fit_rows or [])]
    if tinyfit:
        workers.append(("tiny fit", tinyfit))
    worker_ru = ", ".join(f"{name} {w['ru_maxrss_mib']:.0f} MiB ru_maxrss vs {w['baseline_rss_mib']:.0f} MiB "
                          f"VmHWM at start" for name, w in workers[:2])
    worker_loads = ", ".join(f"{name} {fmt(w['load_avg'][0])} / {fmt(w['load_avg'][1])}" for name, w in workers)
    parts.append("\n## Notes\n")
    parts.append(
        "* `ours/plain` below 1 means ours is faster. Plain and ours run in separate processes on the same input, "
        "each after a warm-up forward pass.\n"
        "* Peak RSS is the process's own high-water mark, `VmHWM` in /proc/self/status (no psutil). "
        "`resource.getrusage(RUSAGE_SELF).ru_maxrss` is recorded too but is not usable for the workers: Linux "
        "carries the parent's RSS at fork into the child's `ru_maxrss` across exec, so every worker would report "
        f"at least the parent's size (here: {worker_ru}). Peak GPU memory is "
        "`torch.cuda.max_memory_allocated` when CUDA is used, else n/a.\n"
        f"* 1-minute load average at the start / end of each worker: {worker_loads}.\n"
        f"* The machine's {env['affinity']} cores may be shared with other jobs: small vector operations (coreset "
        "loop) are the most sensitive to that; batched matrix products the least.\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO_ROOT / "docs" / "performance.md"), help="Markdown report to write")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads in every process (default: torch's choice)")
    parser.add_argument("--skip-fit-scaling", action="store_true", help="skip section 4 (fit scaling)")
    parser.add_argument("--tiny-backbone", action="store_true",
                        help="2-block, 32-wide random ViT on 64 px tiles (tests only)")
    parser.add_argument("--real-images", type=int, default=5, help="first N real images to detect on (default 5)")
    parser.add_argument("--data-root", default=None, help="shared data root ($RTG_ANOMALY_DATA or ../shared/data)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed detect runs of the synthetic scan, median reported (default 5 on CUDA, 1 on CPU)")
    parser.add_argument("--runtime-table", action="store_true",
                        help="only section 8: the runtime x precision table (CPU), written to --output")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        baseline = peak_rss_mib()  # after importing torch and the library
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        result = WORKERS[spec["kind"]](spec)
        result["baseline_rss_mib"] = baseline
        result["ru_maxrss_mib"] = ru_maxrss_mib()
        result["load_avg"] = [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None]
        Path(spec["result"]).write_text(json.dumps(result))
        return 0
    threads_before = torch.get_num_threads()
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another process (the tests)


def _run(args, argv: list[str]) -> int:
    from rtg_anomaly.scans.bmp16 import write_grey16_bmp
    from rtg_anomaly.backbone.features import resolve_device
    from rtg_anomaly.scans.synthetic import make_vehicle_scan
    import cv2

    run_started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    env = environment(device, argv)
    sizes = run_sizes(args.quick)
    config = bench_config(args.tiny_backbone)
    data_root = Path(args.data_root or os.environ.get("RTG_ANOMALY_DATA", REPO_ROOT.parent / "shared" / "data"))
    real_dir = data_root / "gdxray_castings" / "test" / "defect"
    real_paths = []
    if args.real_images > 0 and real_dir.is_dir():
        real_paths = sorted(p for p in real_dir.iterdir() if p.suffix.lower() in (".png", ".bmp", ".tif", ".jpg"))
        real_paths = real_paths[: args.real_images]
    real_note = (f"the first {len(real_paths)} of `{real_dir}` (sorted by name)" if real_paths
                 else f"none ({real_dir} not found or --real-images 0)")

    with tempfile.TemporaryDirectory(prefix="rtg_bench_") as tmp:
        workdir = Path(tmp)
        log(f"device {device}, threads {torch.get_num_threads()}, {'quick' if args.quick else 'full'} run")
        height, length = sizes["scan"]
        scan, _ = make_vehicle_scan(0, height=height, length=length, anomaly=True)
        scan_path, scan_bmp = workdir / "synthetic_scan.png", workdir / "synthetic_scan.bmp"
        cv2.imwrite(str(scan_path), scan)
        write_grey16_bmp(scan_bmp, scan)
        del scan
        fit_h, fit_l = sizes["fit_scan"]
        crops = []
        for seed in range(1, sizes["n_fit"] + 1):
            clean, _ = make_vehicle_scan(seed, height=fit_h, length=fit_l, anomaly=False)
            crops.append(np.ascontiguousarray(clean[:, :fit_h]))
        log(f"fitting the benchmark detector on {len(crops)} clean {fit_h}x{fit_h} crops ...")
        t0 = time.perf_counter()
        detector = Detector(config, device=str(device), runtime="torch").fit(crops)
        fit_s = time.perf_counter() - t0
        bundle = detector.save(workdir / "bundle")
        extractor = detector.extractor
        setup = dict(
            backbone=("tiny random ViT (depth 2, width 32)" if args.tiny_backbone
                      else f"{config.backbone} (bundled DINOv2 ViT-S/14 weights), block {list(config.layers)}"),
            tile_size=config.tile_size, overlap=config.overlap, input_size=extractor.input_size,
            grid=f"{extractor.grid[0]}x{extractor.grid[1]}", feature_dim=extractor.feature_dim, pca_dim=config.pca_dim,
            k=config.k, batch_size=config.batch_size, layers=list(config.layers), n_fit=len(crops),
            fit_shape=(fit_h, fit_h), fit_train=detector.fit_info_["n_train_scans"],
            fit_holdout=detector.fit_info_["n_calibration_scans"], bank=int(detector.method_.memory_bank_.shape[0]),
            fit_s=fit_s, real_note=real_note)
        real_bank = detector.method_.memory_bank_.copy()
        del detector, extractor

        base = dict(device=str(device), bundle=str(bundle), scan=str(scan_path))
        runtimes_text = None
        if device.type == "cpu" and (args.runtime_table or not args.quick):  # quick runs: too slow for the tests
            log("runtime x precision table ...")
            runtimes_text = runtime_table_text(runtime_table(bundle, crops, scan_path, workdir, device, 32),
                                               sizes["scan"], env.get("command", "python scripts/benchmark_speed.py"),
                                               {"device": str(device)})
        if args.runtime_table:
            output = Path(args.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(runtimes_text or "no runtime table: it is measured on the CPU only\n")
            print(runtimes_text)
            return 0
        repeats = args.repeats or (5 if device.type == "cuda" else 1)
        detect = run_worker(dict(base, kind="detect", real=[str(p) for p in real_paths], repeats=repeats,
                                 scan_bmp=str(scan_bmp),
                                 heatmap=str(workdir / "ours.npy"), profile_cols=sizes["profile_cols"]),
                            workdir, "detect")
        detect["synthetic"]["device"] = str(device)
        detect["cli_folder"] = run_worker(dict(base, kind="cli_folder", scan_bmp=str(scan_bmp),
                                               n_scans=max(2, repeats)), workdir, "cli_folder")
        plain = run_worker(dict(base, kind="plain", heatmap=str(workdir / "plain.npy"), exact=sizes["exact"],
                                ff_tiles=sizes["ff_tiles"], prop_tiles=sizes["prop_tiles"], gemm=sizes["gemm"]),
                           workdir, "plain")
        ours_map, plain_map = np.load(workdir / "ours.npy"), np.load(workdir / "plain.npy")
        difference = np.abs(ours_map.astype(np.float64) - plain_map)
        agreement = dict(max_abs_diff=float(difference.max()), mean_abs_diff=float(difference.mean()),
                         max_value=float(ours_map.max()))
        openvino = None
        if device.type == "cpu" and importlib.util.find_spec("openvino") is not None:
            log("detect with --runtime openvino ...")
            openvino = run_worker(dict(base, kind="detect_openvino", heatmap=str(workdir / "openvino.npy")),
                                  workdir, "detect_openvino")
            openvino["max_abs_diff"] = float(np.abs(np.load(workdir / "openvino.npy").astype(np.float64)
                                                    - plain_map).max())
        del ours_map, plain_map, difference

        fit_rows, tinyfit = None, None
        if not args.skip_fit_scaling:
            patches = sizes["fit_patches"] or real_scan_patches()[2]
            fit_rows = []
            for index, n_scans in enumerate(sizes["fit_counts"]):
                # The PCA sample is ~200,000 rows for every count: its 1-thread timing is needed once.
                fit_rows.append(run_worker(dict(kind="fitscale", n_scans=n_scans, patches=patches, dim=384,
                                                pca_dim=128, measured=sizes["fit_measured"],
                                                pca_one_thread=args.quick or index == 0,
                                                max_selections=sizes["fit_max_selections"]),
                                           workdir, f"fitscale_{n_scans}"))
            tinyfit = run_worker(dict(kind="tinyfit", device=str(device), n_scans=sizes["tinyfit_scans"], shape=sizes["tinyfit_shape"],
                                      tile=sizes["tinyfit_tile"]), workdir, "tinyfit")

        log("coreset scaling ...")
        coreset_rows = coreset_scaling(sizes["coreset"], sizes["coreset_timed_max"], device)
        log("one scan's coreset, whole vs in parts ...")
        reduction_rows = scan_reduction(*sizes["scan_reduction"])
        log("kNN comparison ...")
        knn = knn_comparison(real_bank, sizes["knn_queries"], sizes["knn_banks"],
                             real_scan_patches()[2], device, k=config.k)

    setup["run_s"] = time.perf_counter() - run_started
    report = build_report(env, setup, detect, openvino, plain, agreement, fit_rows, tinyfit, coreset_rows,
                          reduction_rows, knn, sizes, args.tiny_backbone)
    if runtimes_text:
        report = report.rstrip("\n") + "\n\n" + runtimes_text
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(report)
    log(f"wrote {output} in {setup['run_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
