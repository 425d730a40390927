"""Where a large scan's detect time goes on a GPU: stage times, folder throughput and torch.profiler tables.

    python scripts/profile_gpu.py --device cuda --out /tmp/profile     # prints, and writes profile.txt there

The detector is fitted as benchmark_speed.py fits it (2 synthetic 2000x2000 crops: only timings matter);
the scan is ``make_vehicle_scan(0, height=2000, length=6000, anomaly=True)``, 16-bit, read back from a
PNG (zlib decode) and from an uncompressed TIFF. Each stage is timed over 5 repeats after a warm-up (the
median is printed), then one ``score`` + ``overlay`` runs under ``torch.profiler`` and ``cProfile``.
``profile_detect.py`` beside it measures the backbone's share of the end-to-end time and the device's busy time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from rtg_anomaly.config import DetectorConfig  # noqa: E402
from rtg_anomaly.pipeline.detector import Detector  # noqa: E402
from rtg_anomaly.scans.io import save_image  # noqa: E402
from rtg_anomaly.scans.synthetic import make_vehicle_scan  # noqa: E402

REPEATS = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(step, device, repeats=REPEATS) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--height", type=int, default=2000, help="scan height in pixels (smaller: a smoke test)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    height = args.height
    crops = [make_vehicle_scan(seed, height=height, length=2 * height)[0][:, :height] for seed in (1, 2)]
    detector = Detector(DetectorConfig(), device=args.device).fit(crops)
    device = detector.extractor.device
    say(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"torch {torch.__version__}, runtime {detector.extractor.runtime}")
    scan = make_vehicle_scan(0, height=height, length=3 * height, anomaly=True)[0]
    tmp = Path(tempfile.mkdtemp())
    from PIL import Image

    png, tiff = tmp / "scan.png", tmp / "scan.tif"
    Image.fromarray(scan).save(png)
    Image.fromarray(scan).save(tiff)
    for _ in range(2):  # warm-up: kernels, caches, allocator
        result = detector.score(scan)
        detector.overlay(scan, result, threshold="calibrated")

    stages = {
        "load PNG (16-bit, zlib)": lambda: detector.load_scan(png),
        "load TIFF (16-bit, uncompressed)": lambda: detector.load_scan(tiff),
        "score": lambda: detector.score(scan),
    }
    measured = {name: _median_time(step, device) for name, step in stages.items()}
    detail = []
    for _ in range(REPEATS):
        stage = {}
        detector.score(scan, timings=stage)
        detail.append(stage)
    for key in sorted(detail[0]):
        measured[f"  score: {key}"] = statistics.median(d[key] for d in detail)
    result = detector.score(scan)
    measured["overlay (calibrated)"] = _median_time(lambda: detector.overlay(scan, result, threshold="calibrated"), device)
    measured["overlay (percentile)"] = _median_time(lambda: detector.overlay(scan, result), device)
    picture = detector.overlay(scan, result, threshold="calibrated")
    measured["write overlay BMP"] = _median_time(lambda: save_image(tmp / "o.bmp", picture), device)
    measured["write overlay PNG"] = _median_time(lambda: save_image(tmp / "o.png", picture), device)
    measured["write heatmap .npy"] = _median_time(lambda: np.save(tmp / "h.npy", result.heatmap), device)
    if device.type == "cuda":  # what page-locked host memory buys for the two large downloads
        from rtg_anomaly.backbone.transfer import to_host

        heat = torch.from_numpy(result.heatmap).to(device)
        rgb = torch.from_numpy(picture).to(device)
        measured["download map, pageable .cpu()"] = _median_time(lambda: heat.cpu(), device)
        measured["download map, to_host (pinned)"] = _median_time(lambda: to_host(heat), device)
        measured["download overlay, pageable .cpu()"] = _median_time(lambda: rgb.cpu(), device)
        measured["download overlay, to_host (pinned)"] = _median_time(lambda: to_host(rgb), device)
    say("\n## Stage medians (s)")
    for name, seconds in measured.items():
        say(f"{name:40s} {seconds:.4f}")
    backbone = measured.get("  score: backbone", float("nan"))
    for label, total in (("load PNG + score + overlay", measured["load PNG (16-bit, zlib)"]),
                         ("load TIFF + score + overlay", measured["load TIFF (16-bit, uncompressed)"]),
                         ("score + overlay", 0.0)):
        total += measured["score"] + measured["overlay (calibrated)"]
        say(f"backbone share of {label}: {backbone / total:.1%} of {total:.3f} s")

    say("\n## Folder runs (CLI, 6 copies, wall per scan after the first)")
    for suffix in ("png", "tif"):
        folder = tmp / f"folder_{suffix}"
        folder.mkdir()
        for i in range(6):
            (folder / f"{i}.{suffix}").write_bytes((png if suffix == "png" else tiff).read_bytes())
        model = tmp / "model"
        if not model.exists():
            detector.save(model)
        for outputs in (["--output", str(tmp / f"out_{suffix}")],
                        ["--output", str(tmp / f"out2_{suffix}"), "--heatmap", str(tmp / f"maps_{suffix}")]):
            started = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "rtg_anomaly", "detect", "--model", str(model), "--input",
                                  str(folder), "--device", args.device, "--quiet", *outputs],
                                 capture_output=True, text=True, cwd=REPO_ROOT)
            wall = time.perf_counter() - started
            say(f"{suffix} {' '.join(o.split('/')[-1] for o in outputs)}: rc {run.returncode}, "
                f"{wall:.2f} s for 6 scans including process start and model load {run.stderr.strip()[-200:]}")

    say("\n## torch.profiler: one score + overlay")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        result = detector.score(scan)
        detector.overlay(scan, result, threshold="calibrated")
        _sync(device)
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    say(prof.key_averages().table(sort_by=sort_key, row_limit=25, max_name_column_width=60))
    say(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))

    say("\n## cProfile: one score + overlay (by self time)")
    profiler = cProfile.Profile()
    profiler.enable()
    result = detector.score(scan)
    detector.overlay(scan, result, threshold="calibrated")
    _sync(device)
    profiler.disable()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(30)
    say(buffer.getvalue())
    (args.out / "profile.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
