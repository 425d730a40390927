#!/usr/bin/env python
"""Where a scan's detect time goes on a device: the GPU share of issue 26, profiled.

    python scripts/profile_detect.py --device cuda --output docs/profile_gpu.json     # on a GPU (~1 min)
    python scripts/profile_detect.py --device cpu --tiny-backbone --quick             # smoke test

It fits the benchmark detector of ``benchmark_speed.py`` (2 synthetic clean crops), then on a synthetic
16-bit 2000x6000 scan read from a 16-bit BMP (the cheapest file to decode, so the time left is ours):

1. end to end (load + score + overlay, no stage timings), median of ``--repeats``, and the backbone alone on
   the same scan (its tiles cut and embedded, the device synchronised once at the end): the backbone's share;
2. ``cProfile`` of the end-to-end runs: cumulative seconds per library function, so the host work that keeps
   the device waiting is named (on a GPU, a host function that waits for the device is charged that wait);
3. ``torch.profiler`` of one run: the device's busy time (sum of its kernels and copies) over the wall time,
   and the operators with the most host and device time;
4. folder throughput: seconds per scan through ``io.prefetch`` with 2 decoder threads and with the default;
5. with ``--batch-sizes``: end to end and the backbone alone at each batch size (tiles per backbone call), and
   the heatmap's largest difference from the fitted batch size's (the launch count falls with larger batches).

Prints a short summary last and writes everything as JSON to ``--output``. ``profile_gpu.py`` beside it times
the stages one by one, the file formats, the downloads and the CLI's folder runs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from rtg_anomaly import Detector, DetectorConfig  # noqa: E402

TINY = dict(weights="random", model_kwargs=dict(depth=2, embed_dim=32, num_heads=2), layers=(1,),
            tile_size=64, input_size=56, pca_dim=16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def end_to_end(detector: Detector, path: Path) -> float:
    """Seconds to load, score and overlay one scan (the overlay is a host array: the device has finished)."""
    _sync(detector.extractor.device)
    t0 = time.perf_counter()
    image = detector.load_scan(path)
    detector.overlay(image, detector.score(image))
    return time.perf_counter() - t0


def backbone_alone(detector: Detector, path: Path) -> float:
    """Seconds of the scan's tiles cut and embedded batch after batch, the device synchronised once."""
    image = detector.load_scan(path)
    window = detector.window_limits(image)
    scan = detector.device_scan(image, window)
    device = detector.extractor.device
    _sync(device)
    t0 = time.perf_counter()
    for _origins, _features in detector.patch_features(image, window=window, device_scan=scan):
        pass
    _sync(device)
    return time.perf_counter() - t0


def host_profile(detector: Detector, path: Path, runs: int, top: int = 30) -> list[dict]:
    """Cumulative and self seconds per function over ``runs`` end-to-end runs, per run."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        end_to_end(detector, path)
    profiler.disable()
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in pstats.Stats(profiler).stats.items():
        builtin = filename == "~" or filename.startswith("<")
        ours = "rtg_anomaly" in filename
        if not (ours or builtin):
            continue
        label = func if builtin else f"{Path(filename).name}:{line}({func})"
        rows.append(dict(function=label, calls=ncalls / runs, cumulative_s=cumtime / runs, self_s=tottime / runs))
    rows.sort(key=lambda r: r["cumulative_s"], reverse=True)
    return rows[:top]


def device_profile(detector: Detector, path: Path, top: int = 15) -> dict:
    """``torch.profiler`` of one end-to-end run: wall seconds, device busy seconds, top operators."""
    from torch.profiler import ProfilerActivity, profile

    device = detector.extractor.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = end_to_end(detector, path)
    busy = 0.0
    if device.type == "cuda":
        # Kernels and copies as the device ran them (merged, so overlapping streams are not counted twice).
        spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                       if e.device_type == torch.autograd.DeviceType.CUDA)
        merged_end = None
        for start, end in spans:
            if merged_end is None or start > merged_end:
                busy += end - start
                merged_end = end
            elif end > merged_end:
                busy += end - merged_end
                merged_end = end
        busy /= 1e6  # microseconds
    averages = prof.key_averages()
    device_key = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"

    def rows(key: str) -> list[dict]:
        ordered = sorted(averages, key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
        return [dict(op=e.key, calls=e.count, host_s=e.self_cpu_time_total / 1e6,
                     device_s=getattr(e, device_key, 0.0) / 1e6) for e in ordered]

    return dict(wall_s=wall, device_busy_s=busy, by_host=rows("self_cpu_time_total"),
                by_device=rows(device_key) if device.type == "cuda" else [])


def folder_rate(detector: Detector, path: Path, n_scans: int, ahead: int | None) -> float:
    """Seconds per scan through ``io.prefetch`` (decoding ahead while this one is scored and overlaid)."""
    from rtg_anomaly.scans.io import prefetch

    _sync(detector.extractor.device)
    t0 = time.perf_counter()
    for loaded in prefetch(detector.load_scan, [path] * n_scans, ahead=ahead):
        image = loaded.result()
        detector.overlay(image, detector.score(image))
    return (time.perf_counter() - t0) / n_scans


def compare_batch_sizes(detector: Detector, path: Path, sizes: list[int], repeats: int) -> list[dict]:
    """End to end and backbone-alone medians at each batch size, and the heatmap's largest difference (calibrated
    units) from the one at the fitted batch size."""
    fitted = detector.config
    image = detector.load_scan(path)
    reference = detector.score(image).heatmap.copy()
    rows = []
    try:
        for size in sizes:
            detector.config = fitted.replace(batch_size=size)
            end_to_end(detector, path)  # warm-up: kernels for the new shapes
            rows.append(dict(batch_size=size,
                             end_to_end_s=float(np.median([end_to_end(detector, path) for _ in range(repeats)])),
                             backbone_s=float(np.median([backbone_alone(detector, path) for _ in range(repeats)])),
                             max_heatmap_difference=float(np.abs(detector.score(image).heatmap - reference).max())))
    finally:
        detector.config = fitted
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny-backbone", action="store_true", help="a tiny random ViT (smoke test)")
    parser.add_argument("--quick", action="store_true", help="a 256x768 scan instead of 2000x6000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="JSON file to write (default: none)")
    parser.add_argument("--batch-sizes", default="", help="comma-separated batch sizes to compare (default: none)")
    args = parser.parse_args(argv)

    from rtg_anomaly.scans.bmp16 import write_grey16_bmp
    from rtg_anomaly.scans.synthetic import make_vehicle_scan

    config = DetectorConfig(**TINY) if args.tiny_backbone else DetectorConfig()
    height, length = (256, 768) if args.quick else (2000, 6000)
    out: dict = dict(device=args.device, scan=[height, length], torch=torch.__version__,
                     device_name=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                     cpu_count=os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="rtg_profile_") as tmp:
        scan, _ = make_vehicle_scan(0, height=height, length=length, anomaly=True)
        path = Path(tmp) / "scan.bmp"
        write_grey16_bmp(path, scan)
        crops = [np.ascontiguousarray(make_vehicle_scan(seed, height=height, length=2 * height, anomaly=False)[0]
                                      [:, :height]) for seed in (1, 2)]
        t0 = time.perf_counter()
        detector = Detector(config, device=args.device, runtime="torch").fit(crops)
        out["fit_s"] = time.perf_counter() - t0
        for _ in range(2):  # warm-up: kernels chosen, allocator filled
            end_to_end(detector, path)
        totals = [end_to_end(detector, path) for _ in range(args.repeats)]
        backbones = [backbone_alone(detector, path) for _ in range(args.repeats)]
        out["end_to_end_s"], out["backbone_s"] = float(np.median(totals)), float(np.median(backbones))
        out["end_to_end_runs"], out["backbone_runs"] = totals, backbones
        out["backbone_share"] = out["backbone_s"] / out["end_to_end_s"]
        image = detector.load_scan(path)
        load = [0.0] * args.repeats
        for i in range(args.repeats):
            t0 = time.perf_counter()
            detector.load_scan(path)
            load[i] = time.perf_counter() - t0
        timings: dict = {}
        detector.score(image, timings=timings)
        out["stage_timings_s"] = {k: float(v) for k, v in timings.items()}
        out["load_s"] = float(np.median(load))
        out["host_profile"] = host_profile(detector, path, args.repeats)
        out["device_profile"] = device_profile(detector, path)
        n_folder = max(4, args.repeats)
        out["folder_s_per_scan"] = {"ahead 2": folder_rate(detector, path, n_folder, 2),
                                    "default": folder_rate(detector, path, n_folder, None)}
        out["batch_sizes"] = compare_batch_sizes(detector, path, [int(b) for b in args.batch_sizes.split(",") if b],
                                                 args.repeats)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=1))
    print(f"\n{out['device_name']}: scan {height}x{length} from a 16-bit BMP")
    print(f"end to end {out['end_to_end_s']:.4f} s (runs {', '.join(f'{t:.4f}' for t in totals)}); backbone alone "
          f"{out['backbone_s']:.4f} s = {100 * out['backbone_share']:.0f} % of it; load {out['load_s']:.4f} s")
    print("stage timings (synchronised):", ", ".join(f"{k} {v:.4f}" for k, v in out["stage_timings_s"].items()))
    dev = out["device_profile"]
    print(f"torch.profiler: wall {dev['wall_s']:.4f} s, device busy {dev['device_busy_s']:.4f} s")
    print("host functions (cumulative s per run, self s):")
    for row in out["host_profile"][:22]:
        print(f"  {row['cumulative_s']:.4f} {row['self_s']:.4f} x{row['calls']:.0f} {row['function']}")
    print("device ops (self device s):")
    for row in dev["by_device"][:10]:
        print(f"  {row['device_s']:.4f} host {row['host_s']:.4f} x{row['calls']} {row['op']}")
    print("folder s/scan:", ", ".join(f"{k} {v:.4f}" for k, v in out["folder_s_per_scan"].items()))
    for row in out["batch_sizes"]:
        print(f"batch {row['batch_size']}: end to end {row['end_to_end_s']:.4f} s, backbone {row['backbone_s']:.4f} s, "
              f"heatmap max difference {row['max_heatmap_difference']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
