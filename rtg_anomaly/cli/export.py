"""``rtg-anomaly export``: write the backbone's feature graph into a bundle."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import InputError
from . import checks, options
from .exit_codes import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Write the backbone's graph (``--format``, ``--precision``) into the bundle; the exit code."""
    from ..pipeline.detector import Detector
    from ..scans.io import list_images

    model_dir = Path(args.model or options.default_model())
    if args.precision == "int8" and not args.clean_dir:
        raise InputError("--precision int8 needs --clean-dir: clean scans to calibrate the quantisation on")
    if args.precision != "int8" and args.clean_dir:
        raise InputError("--clean-dir is only used by --precision int8")
    paths = list_images(args.clean_dir) if args.clean_dir else []
    if model_dir.is_dir():  # else Detector.load says there is no bundle
        checks.check_writable_folder(model_dir)
    detector = Detector.load(model_dir, device="cpu", runtime="torch")
    started = time.perf_counter()
    graph = detector.export_graph(args.format, args.precision, paths, args.calibration_tiles)
    detector.save(model_dir)
    if args.precision == "int8":
        apart = "0.15" if args.format == "onnx" else "0.32"  # the larger of castings and welds, docs/precision.md
        print(f"rtg-anomaly: warning: int8 is not within tolerance of float32 on the benchmark sets (heatmaps up "
              f"to {apart} calibrated units apart; docs/precision.md): check it on your scans", file=sys.stderr)
    if args.precision == "bf16":
        from ..backbone.graph_export import cpu_computes_bf16

        print("rtg-anomaly: note: " + ("this CPU computes in bfloat16: heatmaps within 0.04 calibrated units of "
                                       "float32 on the benchmark sets (docs/precision.md)" if cpu_computes_bf16() else
                                       "this CPU has no native bfloat16 (AVX-512 BF16 or AMX): the graph runs in "
                                       "float32 here, in bfloat16 on a CPU that has it"), file=sys.stderr)
    check = graph.entry["check"]
    size = sum(array.nbytes for array in graph.arrays.values())
    print(f"exported {detector.config.backbone} (layers {','.join(map(str, detector.config.layers))}, "
          f"input {detector.extractor.input_size} px) as {args.format} {args.precision}, {size / 1e6:.1f} MB, "
          f"in {time.perf_counter() - started:.1f} s: features within {check['max_abs_diff']:.2g} of torch float32 "
          f"(largest feature {check['feature_scale']:.3g}) with {check['runtime']}; saved to {model_dir}")
    return EXIT_OK
