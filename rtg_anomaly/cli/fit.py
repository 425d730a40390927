"""``rtg-anomaly fit``: learn a bundle from a folder of clean scans."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import InputError
from . import checks, options
from .exit_codes import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Fit a bundle on ``--clean-dir`` (the zoom chosen first unless ``--select off``) and save it; the exit code."""
    from ..pipeline.detector import Detector
    from ..backbone.features import resolve_device
    from ..scans.io import list_images

    config = options.config_from_args(args)  # bad settings are refused before anything is read
    options.check_engine(args)
    if args.engine == "ray":
        from ..ray_engine.fit import check_ray_fit

        check_ray_fit(config)
        if args.select == "auto":
            raise InputError("--select auto runs in-process only; drop --engine ray or pass --select off")
    options.check_rate(args.false_alarm_rate)
    options.threshold_rule(args)  # a bad rule value fails before any work
    model_dir = Path(args.model or options.default_model())
    if args.model is None:  # the default place may not exist yet in a fresh working folder
        model_dir.parent.mkdir(parents=True, exist_ok=True)
    checks.check_model_destination(model_dir)
    roi_mask = options.roi_mask(args.roi)
    paths = list_images(args.clean_dir)
    device = resolve_device(args.device)
    started = time.perf_counter()
    config, selection = options.config_and_selection(args, paths, device, args.quiet)
    detector = Detector(config, device=device, runtime=args.runtime)
    detector.selection_ = selection
    detector.roi_mask = roi_mask
    options.note_runtime(detector)
    with options.engine_session(args) as ray:
        if ray is None:
            detector.fit(paths, progress=not args.quiet, on_bad_image=options.warn_skipped,
                         false_alarm_rate=args.false_alarm_rate, threshold_rule=options.threshold_rule(args))
        else:
            from ..ray_engine.fit import fit_on_ray

            fit_on_ray(ray, detector, paths, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                       progress=not args.quiet, on_bad_image=options.warn_skipped,
                       false_alarm_rate=args.false_alarm_rate,
                       threshold_rule=options.threshold_rule(args))
    detector.save(model_dir)
    curve = _write_loss_curve(detector, model_dir)
    info, calibration = detector.fit_info_, detector.calibration_
    for warning in calibration.warnings:
        print(f"rtg-anomaly: warning: {warning}", file=sys.stderr)
    print(f"fitted on {info['n_train_scans']} clean scans ({_calibration_note(info)}): "
          f"{detector.method_.name}, {detector.method_.describe()} from {info['patches_seen']} patches, "
          f"image threshold {calibration.image_threshold:.3f}, {time.perf_counter() - started:.1f} s on {device} "
          f"({detector.extractor.runtime}){_scale_note(info)}{_image_score_note(info)}; "
          f"saved to {model_dir}" + (f"; loss curve {curve}" if curve else ""))
    return EXIT_OK


def _calibration_note(fit_info: dict) -> str:
    """How the fit calibrated, for its summary line."""
    n = fit_info["n_calibration_scans"]
    if fit_info.get("calibration") == "leave_one_out":
        return f"{n} of them scored leave-one-scan-out to calibrate"
    if fit_info.get("calibration") == "training":
        return "calibrated on training scans"
    return f"+{n} held out to calibrate"


def _scale_note(fit_info: dict) -> str:
    """', tile N px seen at M px (fitted to the scans)' when the fit shrank the tile to small scans."""
    scale = fit_info.get("scale") or {}
    if not scale.get("fitted_to_scans"):
        return ""
    return f", tile {scale['tile_size']} px seen at {scale['input_size']} px (fitted to the clean scans' size)"


def _image_score_note(fit_info: dict) -> str:
    """', judged by patches and as a whole (patch_or_global)' when the fit scores scans that way."""
    fused = (fit_info.get("image_score") or {}).get("rule") == "patch_or_global"
    return ", judged by patches and as a whole (patch_or_global)" if fused else ""


def _write_loss_curve(detector, model_dir: Path) -> Path | None:
    """For a method that trains, its per-epoch losses as ``<bundle>.loss.png`` beside the bundle (a bundle
    folder holds its manifest and arrays only); None for the others."""
    history = detector.fit_info_.get("loss_history")
    if not history or not any(history.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..atomic import replacing

    path = model_dir.parent / f"{model_dir.name}.loss.png"
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, losses in history.items():
        if losses:
            axis.plot(range(1, len(losses) + 1), losses, marker="o", label=name)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel("mean loss")
    axis.set_yscale("log")
    axis.set_title(f"{detector.method_.name}: training loss")
    axis.legend()
    figure.tight_layout()
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
