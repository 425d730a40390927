#!/usr/bin/env python
"""Scaling of ``detect`` on Ray against the in-process engine, written as docs/scale.md.

    python scripts/benchmark_scale.py --output docs/scale.md                  # ~4-5 min on 2 shared cores
    python scripts/benchmark_scale.py --scans 6 --archive 200 --output /tmp/scale.md   # smoke test (~1 min)

What it measures (every number in the report comes from the run that wrote it):

1. scans/s of ``rtg-anomaly detect`` on a folder: in-process, Ray with 1 worker, Ray with 2 workers. Each
   engine runs on N and on 2N scans; the slope (extra seconds / extra scans) is the steady per-scan time,
   the intercept the start-up (model load; for Ray also the actors' start). Ray's overhead per scan is
   the 1-worker slope minus the in-process slope.
2. the driver's peak memory (``ru_maxrss`` of the driver process itself: Ray's own processes and the
   actors are other processes) on a large simulated archive of tiny scans.

The detector is the tests' tiny random ViT (2 blocks, 32 wide, 64 px tiles): the backbone costs little,
so the figures show what the engine adds, not what a real backbone costs (docs/performance_gpu.md has
that; docs/scale.md turns it into a cluster estimate). Every run is a fresh driver process.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TINY_FLAGS = ["--weights", "random", "--tile-size", "64", "--input-size", "56", "--layers", "1", "--pca-dim", "16"]
# The driver: the CLI in a fresh process that reports its own peak RSS (KiB on Linux) on its last stderr line.
DRIVER = ("import resource, sys; from rtg_anomaly.cli import main; code = main(sys.argv[1:]); "
          "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def write_scans(folder: Path, count: int, height: int, width: int, seed: int) -> None:
    """``count`` synthetic 8-bit grey PNG scans (vehicle-like, see synthetic.py) named 00000.png, ..."""
    from rtg_anomaly.io import save_image
    from rtg_anomaly.synthetic import make_vehicle_scan, to_8bit

    folder.mkdir(parents=True)
    base = [to_8bit(make_vehicle_scan(seed + i, height=max(64, height), length=max(2 * height, width),
                                      anomaly=i % 4 == 3)[0]) for i in range(min(count, 8))]
    for i in range(count):
        save_image(folder / f"{i:05d}.png", base[i % len(base)][:height, :width])


def run_driver(argv: list[str], env: dict) -> tuple[float, int]:
    """Run the CLI in a fresh process; (wall seconds, peak RSS MiB). Fails loudly on a non-zero exit."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"driver failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-3000:]}")
    rss = [line for line in done.stderr.splitlines() if line.startswith("MAXRSS")][-1]
    return seconds, int(rss.split()[1]) // 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=24, help="N: scans of the throughput runs (also run on 2N)")
    parser.add_argument("--size", default="256x768", help="throughput scans, HEIGHTxWIDTH px (default 256x768)")
    parser.add_argument("--archive", type=int, default=10_000, help="tiny scans of the driver-memory run")
    parser.add_argument("--output", default="docs/scale.md")
    args = parser.parse_args(argv)
    command = shlex.join(sys.argv[1:] if argv is None else argv)
    height, width = (int(v) for v in args.size.split("x"))

    import ray

    started = time.time()
    load_start = os.getloadavg()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="rtg-scale-") as tmp:
        tmp = Path(tmp)
        write_scans(tmp / "clean", 5, height, width, seed=100)
        model = tmp / "model"
        run_driver(["fit", "--clean-dir", str(tmp / "clean"), "--model", str(model), "--device", "cpu", "--quiet",
                    *TINY_FLAGS], env)
        write_scans(tmp / "n", args.scans, height, width, seed=0)
        write_scans(tmp / "2n", 2 * args.scans, height, width, seed=0)
        write_scans(tmp / "archive", args.archive, 64, 128, seed=0)

        ray_env = {key: value for key, value in env.items() if key != "RAY_ADDRESS"}  # a local Ray per run
        engines = [("in-process", [], env), ("Ray, 1 worker", ["--engine", "ray", "--workers", "1"], ray_env),
                   ("Ray, 2 workers", ["--engine", "ray", "--workers", "2"], ray_env)]
        rows = []
        for name, flags, run_env in engines:
            timings = {}
            for size in ("n", "2n"):
                argv = ["detect", "--input", str(tmp / size), "--output", str(tmp / f"out-{name}-{size}"), "--model",
                        str(model), "--device", "cpu", "--quiet", *flags]
                timings[size] = run_driver(argv, run_env)
            per_scan = (timings["2n"][0] - timings["n"][0]) / args.scans
            startup = timings["n"][0] - args.scans * per_scan
            rows.append((name, timings["n"][0], timings["2n"][0], per_scan, startup, timings["2n"][1]))
        archive_runs = []
        for name, flags, run_env in engines[2:]:
            argv = ["detect", "--input", str(tmp / "archive"), "--output", str(tmp / "out-archive"), "--model",
                    str(model), "--device", "cpu", "--quiet", *flags]
            seconds, rss = run_driver(argv, run_env)
            archive_runs.append((name, seconds, rss))

    in_process = rows[0][3]
    lines = [
        "# Scaling: detect on Ray",
        "",
        f"Generated by `scripts/benchmark_scale.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"command: `python scripts/benchmark_scale.py {command}`. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
        f"(load average {load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end), "
        f"Ray {ray.__version__}, run time {time.time() - started:.0f} s. No GPU was lent to this run.",
        "",
        "## 1. Throughput on this machine",
        "",
        f"`rtg-anomaly detect` on a folder of synthetic 8-bit PNG scans of {width}x{height} px, with the tests' tiny "
        "random ViT (64 px tiles, 2 blocks, 32 wide), so the backbone is cheap and the engine's own cost shows. "
        f"Each engine runs on N = {args.scans} and on 2N scans, each run a fresh driver process; per-scan = "
        "(t(2N) - t(N)) / N, start-up = t(N) - N x per-scan (model load; for Ray also starting a local Ray for the "
        "run and the actors, which load the bundle each; joining a running cluster saves the first part).",
        "",
        "| engine | t(N) s | t(2N) s | per scan s | scans/s | start-up s | vs in-process | driver peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t_n, t_2n, per_scan, startup, rss in rows:
        lines.append(f"| {name} | {t_n:.1f} | {t_2n:.1f} | {per_scan:.3f} | {1 / per_scan:.2f} | {startup:.1f} | "
                     f"{in_process / per_scan:.2f}x | {rss:,} |")
    overhead = rows[1][3] - in_process
    lines += [
        "",
        f"Ray's overhead per scan (1-worker per-scan minus in-process per-scan): **{overhead * 1000:.0f} ms**. It "
        "is not only Ray's call and object-store round trip (about a millisecond): a Ray actor gets 1 CPU "
        "(OMP/torch threads = 1) and works through its scan serially, while the in-process run scores on 2 "
        "threads and decodes and writes the next and previous scans in background threads; "
        "on this 2-core machine, shared with other jobs, 2 workers cannot be twice as fast as one either.",
        "",
        "## 2. Driver memory on a large archive",
        "",
        f"{args.archive:,} synthetic 128x64 px PNG scans, `detect --engine ray --workers 2` (overlays, report, "
        "triage CSV written as usual). Peak RSS of the driver process itself (Ray's processes and the actors are "
        "separate processes):",
        "",
        "| engine | scans | wall s | scans/s | driver peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, rss in archive_runs:
        lines.append(f"| {name} | {args.archive:,} | {seconds:.0f} | {args.archive / seconds:.1f} | {rss:,} |")
    lines += [
        "",
        "The driver never reads a scan: it lists the paths, hands them out (at most 8 per worker ahead of the "
        "first unfinished one) and keeps each finished scan's report entry and CSV row (about 1 KiB), so its "
        "memory grows with the report, not with the scans' pixels.",
        "",
    ]
    Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
