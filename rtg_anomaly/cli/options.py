"""Parsed flags turned into library objects (config, selection, display style, output options, ROI,
threshold rule, Ray session), shared by the commands and by the Ray engine, which takes ``detect``'s flags."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from ..config import PIXEL_BACKBONE, PIXEL_INPUT_SIZE, PIXEL_TILE_SIZE
from ..errors import InputError


DEFAULT_MODEL_DIR = "model_artifacts/default"


def default_model() -> str:
    """The bundle folder used when ``--model`` is not given: ``$RTG_ANOMALY_MODEL``, else the default."""
    return os.environ.get("RTG_ANOMALY_MODEL", DEFAULT_MODEL_DIR)


def config_from_args(args: argparse.Namespace):
    """The ``DetectorConfig`` of the fit or evaluate flags (a flag not given keeps the config default); InputError
    (one line) on a bad combination."""
    from ..config import DetectorConfig

    overrides = {
        "method": args.method, "padim_features": args.padim_features,
        "svdd_epochs": None if args.method == "reconstruction" else args.epochs,
        "recon_epochs": args.epochs if args.method == "reconstruction" else None, "recon_target": args.target,
        "recon_latent": args.latent, "recon_refine_steps": args.refine_steps, "recon_min_steps": args.min_steps,
        "svdd_pretrain": args.pretrain,
        "backbone": args.backbone, "weights": args.weights, "tile_size": args.tile_size, "overlap": args.overlap,
        "input_size": args.input_size, "scale_to_scans": args.scale_to_scans, "pca_dim": args.pca_dim,
        "pca_whiten": args.pca_whiten, "patch_norm": args.patch_norm,
        "coreset_ratio": args.coreset_ratio,
        "memory_bank_size": args.memory_bank_size, "k": args.k, "seed": args.seed, "batch_size": args.batch_size,
        "layers": args.layers, "neighbourhood": args.neighbourhood, "smoothing_sigma": args.smoothing_sigma,
        "image_score": args.image_score, "top_fraction": args.top_fraction, "top_patches": args.top_patches,
        "intensity_window": args.intensity_window,
        "calibration": args.calibration.replace("-", "_") if args.calibration is not None else None,
        "holdout_fraction": args.holdout_fraction, "augment": args.augment,
        "roi": roi_mode(args.roi),
    }
    if args.target == "pixels" and args.method == "reconstruction":  # the pixel target's own defaults
        for key, value in (("backbone", PIXEL_BACKBONE), ("input_size", PIXEL_INPUT_SIZE),
                           ("tile_size", PIXEL_TILE_SIZE)):
            overrides[key] = value if overrides[key] is None else overrides[key]
    try:
        return DetectorConfig(**{k: v for k, v in overrides.items() if v is not None})
    except TypeError as exc:
        raise InputError(str(exc)) from None


def config_and_selection(args: argparse.Namespace, items, device, quiet: bool):
    """The config of a fit: from the flags, or with ``--select scale|auto`` chosen on ``items`` (clean scans).

    Returns (config, selection record or None). A flag that the selection chooses is refused when the mode
    was asked for; the default ``scale`` mode steps aside for it instead (the user's scale wins).
    """
    config = config_from_args(args)
    mode = args.select or "scale"
    if mode == "off":
        return config, None
    from ..pipeline.selection import SELECTED_FIELDS, select_config, select_scale

    chosen_here = SELECTED_FIELDS if mode == "auto" else ("tile_size", "input_size")
    given = [f"--{name.replace('_', '-')}" for name in chosen_here if getattr(args, name, None) is not None]
    if (given or config.roi == "file") and args.select is None:
        return config, None
    if config.roi == "file":
        raise InputError(f"--select {mode} does not take a --roi mask file; select first, or use --roi auto")
    if given:
        them = "it" if len(given) == 1 else "them"
        raise InputError(f"--select {mode} chooses {', '.join(given)} itself; drop {them} "
                         "or pass --select off")
    report = None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if mode == "scale":
        selection = select_scale(items, config, device=device, runtime=args.runtime, progress=report,
                                 on_bad_image=warn_skipped)
        if not selection.candidates:
            if not quiet:
                print(f"select scale: {selection.notes[0]}", file=sys.stderr)
            return config, selection.to_dict()
    else:
        selection = select_config(items, config, device=device, runtime=args.runtime, progress=report,
                                  on_bad_image=warn_skipped)
    print(f"selected {selection.chosen} from {len(selection.candidates)} candidates in {selection.seconds:.0f} s "
          f"({selection.n_train_scans} training, {selection.n_validation_scans} validation scans, "
          f"{selection.n_synthetic_scans} with synthetic objects):\n{selection.summary()}")
    return selection.config, selection.to_dict()


def threshold_rule(args: argparse.Namespace):
    """The ThresholdRule the flags ask for, or None when --threshold-rule is not given."""
    from ..pipeline.calibration import ThresholdRule

    if args.threshold_rule is None:
        return None
    return ThresholdRule(args.threshold_rule.replace("-", "_"), args.std_multiple, args.clean_percentile)


def display_style(args: argparse.Namespace):
    """The checked DisplayStyle of ``detect``'s flags; InputError (one line) on a bad value."""
    from ..outputs.display import DisplayStyle

    if args.alpha is not None and args.alpha_max is not None:
        raise InputError("--alpha is the older name of --alpha-max: give one of them")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    alpha_max = next((a for a in (args.alpha_max, args.alpha) if a is not None), DisplayStyle.alpha_max)
    return DisplayStyle(cmap=args.colormap, color_range=tuple(args.color_range) if args.color_range else None,
                        alpha_min=args.alpha_min, alpha_max=alpha_max, gamma=args.gamma,
                        clip_quantile=args.clip_quantile, blur=args.blur, outline=args.outline).check()


def output_options(args: argparse.Namespace):
    """The ``OutputOptions`` of ``detect``'s flags (``args.style`` set by ``display_style``)."""
    from ..outputs.scan_outputs import OutputOptions

    return OutputOptions(style=args.style, threshold=args.threshold, threshold_percentile=args.threshold_percentile,
                         draw_regions=args.draw_regions, colorbar=args.colorbar, min_region_area=args.min_region_area,
                         sort_into=args.sort_into, sort_mode=args.sort_mode,
                         reconstruct=bool(getattr(args, "triptych", None) or getattr(args, "html", None)))


def roi_mode(value: str | None) -> str | None:
    """The config's ROI mode for a ``--roi`` value: off, auto, or file (any other value names a mask file)."""
    return None if value is None else value if value in ("off", "auto") else "file"


def roi_mask(value: str | None):
    """The mask of ``--roi FILE`` as bool (H, W), or None for off, auto or no flag; InputError (one line) when
    the file is missing or unreadable."""
    if roi_mode(value) != "file":
        return None
    from ..scans.roi import load_roi_mask

    if not Path(value).is_file():
        raise InputError(f"--roi {value}: no such mask file (use off, auto or a mask image)")
    return load_roi_mask(value)


def override_roi(detector, value: str, mask) -> None:
    """Score with the ROI of ``--roi value`` (``mask``: its mask for a file) instead of the bundle's."""
    detector.config = detector.config.replace(roi=roi_mode(value))
    detector.roi_mask = mask


def check_engine(args: argparse.Namespace) -> None:
    """Ray flags without --engine ray are refused; with it, Ray must be importable."""
    if args.engine != "ray":
        given = [flag for flag, value in (("--ray-address", args.ray_address), ("--workers", args.workers),
                                          ("--gpus-per-worker", args.gpus_per_worker or None)) if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --engine ray")
        return
    from ..ray_engine import import_ray

    import_ray()


def engine_session(args: argparse.Namespace):
    """The connected ``ray`` module for the run with --engine ray, else a context giving None."""
    if args.engine != "ray":
        return contextlib.nullcontext()
    from ..ray_engine import ray_session

    return ray_session(args.ray_address)


def check_rate(rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise InputError(f"--false-alarm-rate must be between 0 and 1, got {rate}")


def note_runtime(detector) -> str:
    """Build the backbone now, say on stderr if ``--runtime auto`` had to fall back to torch, and return the
    runtime that runs it."""
    extractor = detector.extractor
    if extractor.runtime_fallback:
        print(f"rtg-anomaly: note: running the backbone with torch: {extractor.runtime_fallback}", file=sys.stderr)
    return extractor.runtime


def warn_skipped(item, error: Exception) -> None:
    print(f"rtg-anomaly: warning: skipped {error}", file=sys.stderr)
