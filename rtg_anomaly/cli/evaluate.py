"""``rtg-anomaly evaluate``: image and pixel metrics on a labelled folder in MVTec AD layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from . import checks, options
from .exit_codes import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Fit on ``DATA/train/good`` (or load ``--model``), score the test set, print the metrics; the exit code."""
    from ..pipeline.detector import Detector
    from ..evaluation.mvtec import evaluate, load_mvtec_folder, markdown_report

    options.check_rate(args.false_alarm_rate)
    options.threshold_rule(args)  # a bad rule value fails before any work
    eval_set = load_mvtec_folder(args.data)
    if args.output:
        checks.check_writable_folder(Path(args.output))
        for flag, model in (("--model", args.model), ("--save-model", args.save_model)):
            if model and checks.same_path(args.output, model):
                raise InputError(f"--output {args.output} is the {flag} folder: the metrics would be written into "
                                 "the model bundle; name another folder")
    roi_mask = options.roi_mask(args.roi)
    if args.model:
        detector = Detector.load(args.model, device=args.device, runtime=args.runtime)
        if args.roi is not None:  # an explicit --roi overrides the bundle's (its calibration stays the fit's)
            options.override_roi(detector, args.roi, roi_mask)
        options.note_runtime(detector)
    else:
        if args.save_model:
            checks.check_model_destination(Path(args.save_model))
        config, selection = options.config_and_selection(args, eval_set.train_paths, args.device, args.quiet)
        detector = Detector(config, device=args.device, runtime=args.runtime)
        detector.selection_ = selection
        detector.roi_mask = roi_mask
        options.note_runtime(detector)
        detector.fit(eval_set.train_paths, progress=not args.quiet, on_bad_image=options.warn_skipped,
                     false_alarm_rate=args.false_alarm_rate, threshold_rule=options.threshold_rule(args))
        if args.save_model:
            detector.save(args.save_model)
    metrics = evaluate(detector, eval_set, output_dir=args.output, max_per_class=args.max_per_class,
                       worst_overlays=max(0, args.worst), progress=not args.quiet)
    print(markdown_report(metrics))
    if args.output:
        print(f"metrics, curves and histogram written to {args.output}")
    return EXIT_OK
