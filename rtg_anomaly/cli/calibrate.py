"""``rtg-anomaly calibrate``: set a bundle's thresholds from extra clean scans."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import checks, options
from .exit_codes import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Set the bundle's thresholds from ``--clean-dir`` and save it; the exit code."""
    from ..pipeline.detector import Detector
    from ..scans.io import list_images

    options.check_rate(args.false_alarm_rate)
    options.threshold_rule(args)  # a bad rule value fails before any work
    model_dir = Path(args.model or options.default_model())
    paths = list_images(args.clean_dir)
    if model_dir.is_dir():  # else Detector.load says there is no bundle
        checks.check_writable_folder(model_dir)  # the updated bundle replaces it: refused now, not after the scans
    detector = Detector.load(model_dir, device=args.device, runtime=args.runtime)
    options.note_runtime(detector)
    calibration = detector.calibrate(paths, args.false_alarm_rate, on_bad_image=options.warn_skipped,
                                     threshold_rule=options.threshold_rule(args))
    detector.save(model_dir)
    for warning in calibration.warnings:
        print(f"rtg-anomaly: warning: {warning}", file=sys.stderr)
    rule = calibration.rule.describe(calibration.false_alarm_rate)
    print(f"calibrated on {calibration.n_scans} clean scans at {rule} "
          f"({calibration.method}): image threshold {calibration.image_threshold:.3f}, "
          f"pixel threshold {calibration.pixel_threshold:.3f}; saved to {model_dir}")
    return EXIT_OK
