"""Command line: ``rtg-anomaly fit | detect | calibrate | evaluate | export``, a thin layer over the library API.

Exit codes: 0 success, 2 bad usage or bad input (one-line message on stderr),
1 unexpected failure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .config import GRAPH_FORMATS as FORMATS
from .config import GRAPH_PRECISIONS as PRECISIONS
from .config import IMAGE_SCORE_RULES, PIXEL_BACKBONE, PIXEL_INPUT_SIZE, PIXEL_TILE_SIZE, RUNTIMES
from .errors import InputError, first_line
from .outputs.regions import DEFAULT_MIN_AREA
from .ranges import FALSE_ALARM_RATE, FRACTION_OPEN_LOW, LAYER_INDEX, SETTING_RANGES, Range

DEFAULT_MODEL_DIR = "model_artifacts/default"
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C; SIGTERM gives the same


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager or batch scheduler stopping the run), handled exactly like Ctrl-C: a
    folder run keeps the report and CSV of the scans it finished, with "complete": false."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs, SIGTERM raises ``Terminated`` in the main thread (Python's default would
    end the process at once, leaving no report); the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of usage dumps."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _default_model() -> str:
    return os.environ.get("RTG_ANOMALY_MODEL", DEFAULT_MODEL_DIR)


# Flags that are not DetectorConfig settings; the settings' own ranges are ranges.SETTING_RANGES.
PERCENTILE = Range(0.0, 100.0)
OPACITY = Range(0.0, 1.0)
GAMMA = Range(0.0, 20.0, low_open=True)
BLUR_SIGMA = Range(0.0, 256.0)
COLOUR_VALUE = Range(-1e6, 1e6)
REGION_AREA = Range(0, 10**12, integer=True)
SUBSAMPLE = Range(1, 10**6, integer=True)
WORST_OVERLAYS = Range(0, 1000, integer=True)
SEED = Range(0, 2**32 - 1, integer=True)
WORKERS = Range(1, 100_000, integer=True)
GPUS_PER_WORKER = Range(0.0, 64.0)
CALIBRATION_TILES = Range(1, 4096, integer=True)


def _in(accepted: Range):
    """An argparse ``type``: the flag's text as an int or float within ``accepted`` (finite), else a
    one-line usage error that states the range."""
    def parse(text: str):
        try:
            value = int(text) if accepted.integer else float(text)
        except ValueError:
            value = None
        if value not in accepted:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
        return value

    parse.__name__ = "integer" if accepted.integer else "number"
    return parse


def _setting(name: str):
    return _in(SETTING_RANGES[name])


def _ranged(text: str, accepted: Range | str) -> str:
    """Help text with the accepted range stated; ``accepted``: a Range or a DetectorConfig setting's name."""
    return f"{text}; {SETTING_RANGES[accepted] if isinstance(accepted, str) else accepted}"


def _block_indices(text: str) -> tuple[int, ...]:
    try:
        indices = tuple(int(part) for part in text.split(","))
    except ValueError:
        indices = ()
    if not indices or not all(index in LAYER_INDEX for index in indices):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated block indices such as 6 or 4,6, each {LAYER_INDEX}, got {text!r}")
    return indices


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rtg-anomaly", description="Learn what clean X-ray scans look like; flag what departs from it.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = commands.add_parser("fit", help="fit a model on a folder of clean scans")
    fit.add_argument("--clean-dir", required=True, help="folder of clean scans (BMP, PNG, TIFF, JPEG)")
    fit.add_argument("--model", default=None, help="bundle folder to write (default: $RTG_ANOMALY_MODEL or model_artifacts/default)")
    _add_device(fit)
    _add_config_flags(fit)
    _add_engine(fit)
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(handler=_run_fit)

    detect = commands.add_parser("detect", help="score a scan or a folder of scans and write overlays")
    detect.add_argument("--input", required=True, help="scan file or folder of scans")
    detect.add_argument("--output", required=True, help="overlay file (format from its extension) or folder")
    detect.add_argument("--model", default=None, help="bundle folder (default: $RTG_ANOMALY_MODEL or model_artifacts/default)")
    _add_device(detect)
    detect.add_argument("--threshold", choices=("percentile", "calibrated"), default="percentile",
                        help="colour pixels above this scan's percentile (default) or above the calibrated pixel threshold")
    detect.add_argument("--threshold-percentile", type=_in(PERCENTILE), default=90.0,
                        help=_ranged("in percentile mode, pixels below this percentile of the scan's map stay "
                                     "uncoloured (default 90)", PERCENTILE))
    detect.add_argument("--heatmap", help="write the raw calibrated map as float32 .npy (a folder for folder input)")
    detect.add_argument("--report", help="write a JSON report")
    detect.add_argument("--color-range", type=_in(COLOUR_VALUE), nargs=2, metavar=("LOW", "HIGH"),
                        help=_ranged("calibrated values at the bottom and top of the colour scale, LOW < HIGH "
                                     "(default: 1.0 to twice the pixel threshold's excess over 1.0)", COLOUR_VALUE))
    _add_display_flags(detect)
    detect.add_argument("--min-region-area", type=_in(REGION_AREA), default=DEFAULT_MIN_AREA,
                        help=_ranged(f"suspicious regions smaller than this many pixels are dropped "
                                     f"(default {DEFAULT_MIN_AREA})", REGION_AREA))
    detect.add_argument("--draw-regions", action="store_true", help="outline the regions with their rank on the overlay")
    detect.add_argument("--csv", help="triage CSV, one row per scan (folder input: default OUTPUT/triage.csv)")
    detect.add_argument("--sort-into", help="folder input: copy or link each scan into SORT_INTO/clean or SORT_INTO/suspect")
    detect.add_argument("--sort-mode", choices=("copy", "link", "symlink"), default="copy",
                        help="how --sort-into places scans (default copy)")
    detect.add_argument("--triptych", metavar="FILE|DIR",
                        help="also write original | thresholded mask | overlay side by side with a caption "
                             "(a folder for folder input: one PNG per scan)")
    detect.add_argument("--html", metavar="FILE",
                        help="a self-contained HTML triage page (thumbnails embedded, overlays and triptychs "
                             "linked relatively), scans sorted by score, with filter and sort controls")
    detect.add_argument("--roi", default=None, metavar="off|auto|FILE",
                        help="region of interest (see fit --roi); default: the mode the model was fitted with. "
                             "Outside it nothing is scored or coloured and the heatmap is 0; the report gives the "
                             "share of each scan masked. Overriding the fit's mode keeps the fit's calibration")
    _add_engine(detect)
    detect.add_argument("--quiet", action="store_true", help="no progress bar")
    detect.set_defaults(handler=_run_detect)

    cal = commands.add_parser("calibrate", help="set the thresholds of a model from extra clean scans")
    cal.add_argument("--clean-dir", required=True, help="folder of clean scans not used to fit")
    cal.add_argument("--model", default=None, help="bundle folder to update (default: $RTG_ANOMALY_MODEL or model_artifacts/default)")
    _add_device(cal)
    cal.add_argument("--false-alarm-rate", type=_in(FALSE_ALARM_RATE), default=0.01,
                     help=_ranged("share of clean scans the thresholds may flag (default 0.01)", FALSE_ALARM_RATE))
    _add_threshold_rule_flags(cal, "default: the rule the model was calibrated with")
    cal.set_defaults(handler=_run_calibrate)

    ev = commands.add_parser("evaluate", help="image and pixel metrics on a labelled folder in MVTec AD layout")
    ev.add_argument("--data", required=True, help="folder with train/good, test/good, test/<type>, optional ground_truth/")
    ev.add_argument("--model", default=None, help="evaluate this bundle (default: fit first on DATA/train/good)")
    ev.add_argument("--output", help="folder for metrics.json, metrics.md and the plots")
    ev.add_argument("--save-model", help="when fitting, also save the bundle here")
    ev.add_argument("--max-per-class", type=_in(SUBSAMPLE),
                    help=_ranged("evenly subsample at most N test images per type", SUBSAMPLE))
    ev.add_argument("--worst", type=_in(WORST_OVERLAYS), default=0,
                    help=_ranged("write overlays of the N worst misses of each kind", WORST_OVERLAYS))
    _add_device(ev)
    _add_config_flags(ev)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(handler=_run_evaluate)

    ex = commands.add_parser("export", help="write the backbone's feature graph (ONNX or OpenVINO IR) into a bundle")
    ex.add_argument("--model", default=None, help="bundle folder to update (default: $RTG_ANOMALY_MODEL or model_artifacts/default)")
    ex.add_argument("--format", required=True, choices=FORMATS,
                    help="onnx (ONNX Runtime, OpenVINO, TensorRT...) or openvino (OpenVINO IR)")
    ex.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="fp32 (default), fp16 (float16 weights), bf16 (openvino only: bfloat16 arithmetic on "
                         "CPUs with AVX-512 BF16 or AMX, float32 elsewhere) or int8 (calibrated on --clean-dir's "
                         "tiles: "
                         "ONNX Runtime's static quantisation for onnx, NNCF's for openvino, pip install "
                         "'rtg-anomaly[int8]'; see docs/precision.md for how far each is from fp32)")
    ex.add_argument("--clean-dir", help="int8 only: clean scans to calibrate on (the ones the model was fitted on)")
    ex.add_argument("--calibration-tiles", type=_in(CALIBRATION_TILES), default=64,
                    help=_ranged("int8 only: tiles drawn (seeded) from --clean-dir to calibrate on (default 64)",
                                 CALIBRATION_TILES))
    ex.set_defaults(handler=_run_export)
    return parser


def _add_display_flags(detect: argparse.ArgumentParser) -> None:
    """How the overlay looks (display only: the heatmap file, scores and regions never change)."""
    from .outputs.display import DisplayStyle

    style = DisplayStyle()
    detect.add_argument("--colormap", default=style.cmap,
                        help=f"matplotlib colour map of the overlay (default {style.cmap}); whatever the map, pixels "
                             "at or above the calibrated pixel threshold take its warm end")
    detect.add_argument("--alpha-min", type=_in(OPACITY), default=style.alpha_min,
                        help=_ranged(f"overlay opacity at the bottom of the colour scale (default {style.alpha_min})",
                                     OPACITY))
    detect.add_argument("--alpha-max", type=_in(OPACITY), default=None,
                        help=_ranged(f"overlay opacity at the top of the colour scale (default {style.alpha_max})",
                                     OPACITY))
    detect.add_argument("--alpha", type=_in(OPACITY), default=None, help=_ranged("older name of --alpha-max", OPACITY))
    detect.add_argument("--gamma", type=_in(GAMMA), default=style.gamma,
                        help=_ranged(f"power on the position within the colour scale; below 1 lifts weak responses "
                                     f"(default {style.gamma:g})", GAMMA))
    detect.add_argument("--clip-quantile", type=_in(FRACTION_OPEN_LOW), default=style.clip_quantile,
                        help=_ranged("show values above this quantile of the scan's map at that quantile, never below "
                                     f"the pixel threshold (default {style.clip_quantile:g}: off)", FRACTION_OPEN_LOW))
    detect.add_argument("--blur", type=_in(BLUR_SIGMA), default=style.blur, metavar="SIGMA",
                        help=_ranged("Gaussian smoothing of the displayed map, sigma in scan pixels (default 0: off; "
                                     "the heatmap file, scores and regions are unchanged)", BLUR_SIGMA))
    detect.add_argument("--outline", action=argparse.BooleanOptionalAction, default=style.outline,
                        help="ring the pixels at or above the calibrated pixel threshold in magenta (default on)")
    detect.add_argument("--colorbar", action="store_true",
                        help="add a legend strip of the colour scale, in calibrated units, under each overlay")


def _display_style(args: argparse.Namespace):
    """The checked DisplayStyle of ``detect``'s flags; InputError (one line) on a bad value."""
    from .outputs.display import DisplayStyle

    if args.alpha is not None and args.alpha_max is not None:
        raise InputError("--alpha is the older name of --alpha-max: give one of them")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    alpha_max = next((a for a in (args.alpha_max, args.alpha) if a is not None), DisplayStyle.alpha_max)
    return DisplayStyle(cmap=args.colormap, color_range=tuple(args.color_range) if args.color_range else None,
                        alpha_min=args.alpha_min, alpha_max=alpha_max, gamma=args.gamma,
                        clip_quantile=args.clip_quantile, blur=args.blur, outline=args.outline).check()


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The detector's hyper-parameters, shared by fit and evaluate (None = the DetectorConfig default)."""
    parser.add_argument("--method", help="detection method: patchcore (default: memory bank of clean patches, "
                                         "kNN), padim (a Gaussian per patch cell of a tile), centroid (cosine "
                                         "distance of each tile to the clean tiles' mean), svdd (Deep SVDD head), "
                                         "reconstruction (a small transformer rebuilds each tile's clean patch "
                                         "features; what it cannot rebuild scores); stored in the bundle")
    parser.add_argument("--padim-features", type=_setting("padim_features"),
                        help=_ranged("with --method padim: random feature channels kept (default 100)",
                                     "padim_features"))
    parser.add_argument("--epochs", type=_setting("svdd_epochs"),
                        help=_ranged("with --method svdd or reconstruction: training epochs over the cached clean "
                                     "patch features (default 10 for svdd, 20 for reconstruction)", "svdd_epochs"))
    parser.add_argument("--target", choices=("features", "pixels"),
                        help="with --method reconstruction: what is rebuilt: features (the backbone's patch "
                             "features, default) or pixels (a transformer GAN with an f-AnoGAN encoder draws "
                             f"clean {PIXEL_INPUT_SIZE} px tiles; sets --backbone {PIXEL_BACKBONE}, tiles of "
                             f"{PIXEL_TILE_SIZE} px seen at {PIXEL_INPUT_SIZE} px unless given)")
    parser.add_argument("--latent", type=_setting("recon_latent"),
                        help=_ranged("with --target pixels: the GAN's latent size (default 64)", "recon_latent"))
    parser.add_argument("--min-steps", type=_setting("recon_min_steps"),
                        help=_ranged("with --target pixels: the least number of training batches of the GAN and "
                                     "of its encoder; epochs are added until reached (default 1000)", "recon_min_steps"))
    parser.add_argument("--refine-steps", type=_setting("recon_refine_steps"),
                        help=_ranged("with --target pixels: AnoGAN latent refinement steps per tile at detect "
                                     "time, for small images (default 0: the encoder's latent)", "recon_refine_steps"))
    parser.add_argument("--pretrain", choices=("none", "rotation"),
                        help="with --method svdd: rotation: first train the head to tell how a clean tile was "
                             "rotated (4 backbone passes per training scan); none: off (default)")
    parser.add_argument("--backbone", help="timm model name (default vit_small_patch14_dinov2)")
    parser.add_argument("--weights", help="local weights file for the backbone ('random': untrained, for tests)")
    parser.add_argument("--tile-size", type=_setting("tile_size"),
                        help=_ranged("tile side in scan pixels (default 512)", "tile_size"))
    parser.add_argument("--overlap", type=_setting("overlap"),
                        help=_ranged("fraction of a tile shared with its neighbour (default 0.25)", "overlap"))
    parser.add_argument("--input-size", type=_setting("input_size"),
                        help=_ranged("backbone input side each tile is resized to (default 448)", "input_size"))
    parser.add_argument("--scale-to-scans", action=argparse.BooleanOptionalAction, default=None,
                        help="when the clean scans are under half a tile (median shorter side), shrink the tile "
                             "to them and the input with it, at least 224 px, so that a small scan is seen whole "
                             "instead of mirror-padded (default on; --no-scale-to-scans keeps the configured "
                             "tile; the bundle keeps the sizes chosen)")
    parser.add_argument("--pca-dim", type=_setting("pca_dim"),
                        help=_ranged("feature dimension kept by PCA (default 128)", "pca_dim"))
    parser.add_argument("--pca-whiten", type=_setting("pca_whiten"), metavar="POWER",
                        help=_ranged("divide each PCA direction by its standard deviation to this power "
                                     "(0: plain PCA, default; 0.5: half-whitening; 1: full whitening)", "pca_whiten"))
    bank = parser.add_mutually_exclusive_group()
    bank.add_argument("--coreset-ratio", type=_setting("coreset_ratio"),
                      help=_ranged("memory bank size as a fraction of clean patches (default 0.1)", "coreset_ratio"))
    bank.add_argument("--memory-bank-size", type=_setting("memory_bank_size"),
                      help=_ranged("memory bank size in patches", "memory_bank_size"))
    parser.add_argument("--k", type=_setting("k"),
                        help=_ranged("nearest neighbours averaged per patch (default 1)", "k"))
    parser.add_argument("--seed", type=_in(SEED), help=_ranged("seed of every random choice (default 0)", SEED))
    parser.add_argument("--batch-size", type=_setting("batch_size"),
                        help=_ranged("tiles per backbone batch (default 8)", "batch_size"))
    parser.add_argument("--layers", type=_block_indices,
                        help=f"comma-separated backbone block indices (default 6), each {LAYER_INDEX}")
    parser.add_argument("--neighbourhood", type=_setting("neighbourhood"),
                        help=_ranged("side of the average pooling over the patch grid, odd (default 1: off)", "neighbourhood"))
    parser.add_argument("--smoothing-sigma", type=_setting("smoothing_sigma"),
                        help=_ranged("Gaussian sigma of the map, in backbone patches (default 0.5)", "smoothing_sigma"))
    parser.add_argument("--image-score", choices=IMAGE_SCORE_RULES,
                        help="image score rule: max of the map, top_mean of the map, patch_top_mean of the "
                             "raw patch scores, or global: distance of the whole scan's feature "
                             "statistics to the nearest clean scan's (for small crops judged as a whole), or "
                             "patch_or_global: the more surprising of the two against the held-out clean scans, "
                             "or scan_centroid: cosine distance of the scan's mean feature from the clean scans' "
                             "centroid (the good-only baseline); default auto: patch_or_global on scans small "
                             "enough to be fitted whole into one tile, else patch_top_mean")
    parser.add_argument("--top-fraction", type=_setting("top_fraction"),
                        help=_ranged("with --image-score top_mean: share of map pixels averaged (default 0.001)", "top_fraction"))
    parser.add_argument("--top-patches", type=_setting("top_patches"),
                        help=_ranged("with --image-score patch_top_mean: number of highest patch scores averaged (default 5)", "top_patches"))
    parser.add_argument("--intensity-window", choices=("auto", "dtype", "percentile", "clean"),
                        help="how raw values map to [0, 1]: dtype (the dtype's range), percentile (each scan's "
                             "0.5-99.5 percentiles), clean (the range the clean scans use, learned at fit); "
                             "default auto: 8-bit by the dtype's range, deeper by percentiles")
    parser.add_argument("--augment", type=_augment_names, metavar="NAMES",
                        help="flips/rotations of each clean scan added to the memory bank, comma-separated from "
                             "hflip, vflip, rot90, rot180, rot270 ('none': off, the default)")
    parser.add_argument("--calibration", choices=("leave-one-out", "holdout"), default=None,
                        help="how clean scans are scored for the thresholds. holdout (default): a share of the "
                             "scans (--holdout-fraction) is scored against a model of the rest, then learned; "
                             "conservative thresholds. leave-one-out (patchcore): every clean scan trains, then "
                             "up to 100 are scored again each against the model without its own patches (one "
                             "more backbone pass over them); see docs/calibration.md")
    parser.add_argument("--holdout-fraction", type=_setting("holdout_fraction"),
                        help=_ranged("with --calibration holdout: share of clean scans held out to calibrate "
                                     "(default 0.2)", "holdout_fraction"))
    parser.add_argument("--false-alarm-rate", type=_in(FALSE_ALARM_RATE), default=0.01,
                        help=_ranged("share of clean scans the calibrated thresholds may flag (default 0.01)",
                                     FALSE_ALARM_RATE))
    _add_threshold_rule_flags(parser, "default false-alarm-rate")
    parser.add_argument("--roi", default=None, metavar="off|auto|FILE",
                        help="region of interest: patches outside it stay out of the model and the score. auto: "
                             "each scan's object against open air (the bright, flat plateau of a transmission "
                             "scan; a scan without one is not masked); FILE: a mask image, nonzero = inside, the "
                             "size of every scan (one lane geometry), saved in the bundle; off: every patch "
                             "(default). Stored in the bundle: detect uses it unless given --roi")
    parser.add_argument("--select", choices=("off", "scale", "auto"), default=None,
                        help="scale (default): choose the zoom (tile and input size: 12, 16, 22 or 32 scan px "
                             "per feature cell) from the clean scans alone, by how well each finds synthetic objects "
                             "projected into held-out clean scans (pixel level; skipped with --tile-size or "
                             "--input-size, for scans fitted to their own size and for methods other than "
                             "patchcore; 3-4x a plain fit's time on 2 CPU cores); auto: choose backbone, scale, PCA "
                             "whitening, intensity window and top-patch count the same way (a few times a plain "
                             "fit; its synthetic objects favour EfficientNet-Lite0, which loses on shape defects "
                             "such as castings' and screws': docs/defaults.md); off: use the given settings. The "
                             "choice is recorded in the bundle")


def _config_and_selection(args: argparse.Namespace, items, device, quiet: bool):
    """The config of a fit: from the flags, or with ``--select scale|auto`` chosen on ``items`` (clean scans).

    Returns (config, selection record or None). A flag that the selection chooses is refused when the mode
    was asked for; the default ``scale`` mode steps aside for it instead (the user's scale wins).
    """
    config = _config_from_args(args)
    mode = args.select or "scale"
    if mode == "off":
        return config, None
    from .pipeline.selection import SELECTED_FIELDS, select_config, select_scale

    chosen_here = SELECTED_FIELDS if mode == "auto" else ("tile_size", "input_size")
    given = [f"--{name.replace('_', '-')}" for name in chosen_here if getattr(args, name, None) is not None]
    if (given or config.roi == "file") and args.select is None:
        return config, None
    if config.roi == "file":
        raise InputError(f"--select {mode} does not take a --roi mask file; select first, or use --roi auto")
    if given:
        raise InputError(f"--select {mode} chooses {', '.join(given)} itself; drop {'it' if len(given) == 1 else 'them'} "
                         "or pass --select off")
    report = None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if mode == "scale":
        selection = select_scale(items, config, device=device, runtime=args.runtime, progress=report,
                                 on_bad_image=_warn_skipped)
        if not selection.candidates:
            if not quiet:
                print(f"select scale: {selection.notes[0]}", file=sys.stderr)
            return config, selection.to_dict()
    else:
        selection = select_config(items, config, device=device, runtime=args.runtime, progress=report,
                                  on_bad_image=_warn_skipped)
    print(f"selected {selection.chosen} from {len(selection.candidates)} candidates in {selection.seconds:.0f} s "
          f"({selection.n_train_scans} training, {selection.n_validation_scans} validation scans, "
          f"{selection.n_synthetic_scans} with synthetic objects):\n{selection.summary()}")
    return selection.config, selection.to_dict()


def _augment_names(value: str) -> tuple[str, ...]:
    """``--augment`` value: comma-separated augmentation names, or ``none``."""
    from .config import AUGMENTATION_NAMES

    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in AUGMENTATION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown augmentation {', '.join(unknown) or value!r} "
                                         f"(choose from {', '.join(AUGMENTATION_NAMES)}, or none)")
    return names


def _add_threshold_rule_flags(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--threshold-rule", choices=("false-alarm-rate", "mean-std", "percentile"),
                        help=f"how thresholds follow from the clean calibration scores ({default}): the score "
                             "--false-alarm-rate of clean scans exceed, mean + --std-multiple x std, or the "
                             "--clean-percentile-th percentile; recorded in the bundle and the report")
    parser.add_argument("--std-multiple", type=_in(Range(0.0, 100.0)), default=3.0,
                        help=_ranged("with --threshold-rule mean-std: standard deviations above the mean (default 3)",
                                     Range(0.0, 100.0)))
    parser.add_argument("--clean-percentile", type=_in(Range(0.0, 100.0)), default=99.0,
                        help=_ranged("with --threshold-rule percentile: percentile of clean scores (default 99)",
                                     Range(0.0, 100.0)))


def _threshold_rule(args: argparse.Namespace):
    """The ThresholdRule the flags ask for, or None when --threshold-rule is not given."""
    from .pipeline.calibration import ThresholdRule

    if args.threshold_rule is None:
        return None
    return ThresholdRule(args.threshold_rule.replace("-", "_"), args.std_multiple, args.clean_percentile)


def _config_from_args(args: argparse.Namespace):
    from .config import DetectorConfig

    overrides = {
        "method": args.method, "padim_features": args.padim_features,
        "svdd_epochs": None if args.method == "reconstruction" else args.epochs,
        "recon_epochs": args.epochs if args.method == "reconstruction" else None, "recon_target": args.target,
        "recon_latent": args.latent, "recon_refine_steps": args.refine_steps, "recon_min_steps": args.min_steps,
        "svdd_pretrain": args.pretrain,
        "backbone": args.backbone, "weights": args.weights, "tile_size": args.tile_size, "overlap": args.overlap,
        "input_size": args.input_size, "scale_to_scans": args.scale_to_scans, "pca_dim": args.pca_dim, "pca_whiten": args.pca_whiten,
        "coreset_ratio": args.coreset_ratio,
        "memory_bank_size": args.memory_bank_size, "k": args.k, "seed": args.seed, "batch_size": args.batch_size,
        "layers": args.layers, "neighbourhood": args.neighbourhood, "smoothing_sigma": args.smoothing_sigma,
        "image_score": args.image_score, "top_fraction": args.top_fraction, "top_patches": args.top_patches,
        "intensity_window": args.intensity_window,
        "calibration": args.calibration.replace("-", "_") if args.calibration is not None else None,
        "holdout_fraction": args.holdout_fraction, "augment": args.augment,
        "roi": _roi_mode(args.roi),
    }
    if args.target == "pixels" and args.method == "reconstruction":  # the pixel target's own defaults
        for key, value in (("backbone", PIXEL_BACKBONE), ("input_size", PIXEL_INPUT_SIZE),
                           ("tile_size", PIXEL_TILE_SIZE)):
            overrides[key] = value if overrides[key] is None else overrides[key]
    try:
        return DetectorConfig(**{k: v for k, v in overrides.items() if v is not None})
    except TypeError as exc:
        raise InputError(str(exc)) from None


def _roi_mode(value: str | None) -> str | None:
    """The config's ROI mode for a ``--roi`` value: off, auto, or file (any other value names a mask file)."""
    return None if value is None else value if value in ("off", "auto") else "file"


def _roi_mask(value: str | None):
    """The mask of ``--roi FILE`` as bool (H, W), or None for off, auto or no flag; InputError (one line) when
    the file is missing or unreadable."""
    if _roi_mode(value) != "file":
        return None
    from .scans.roi import load_roi_mask

    if not Path(value).is_file():
        raise InputError(f"--roi {value}: no such mask file (use off, auto or a mask image)")
    return load_roi_mask(value)


def _override_roi(detector, value: str, mask) -> None:
    """Score with the ROI of ``--roi value`` (``mask``: its mask for a file) instead of the bundle's."""
    detector.config = detector.config.replace(roi=_roi_mode(value))
    detector.roi_mask = mask


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="what runs the backbone: auto (default: on the CPU the fastest installed runtime "
                             "that runs the bundle's exported graph, else openvino, onnxruntime, torch; on CUDA "
                             "torch), torch, openvino (CPU only; installed with the package on most platforms, "
                             "else pip install 'rtg-anomaly[openvino]') or onnxruntime (pip install "
                             "'rtg-anomaly[onnx]'); a bundle's exported graph is used by a runtime that runs it")


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess",
                        help="inprocess: this process does all the work (default); ray: Ray actors read and "
                             "process the scans (detect: folder input only), same outputs "
                             "(pip install 'rtg-anomaly[ray]')")
    parser.add_argument("--ray-address", help="with --engine ray: the Ray cluster to join (default: $RAY_ADDRESS, "
                                              "else a local Ray started for this run)")
    parser.add_argument("--workers", type=_in(WORKERS),
                        help=_ranged("with --engine ray: number of actors (default: one per CPU of the cluster, or "
                                     "per --gpus-per-worker GPUs)", WORKERS))
    parser.add_argument("--gpus-per-worker", type=_in(GPUS_PER_WORKER), default=0.0,
                        help=_ranged("with --engine ray: GPUs each actor reserves, fractions allowed (default 0: "
                                     "CPU actors)", GPUS_PER_WORKER))


def _check_engine(args: argparse.Namespace) -> None:
    """Ray flags without --engine ray are refused; with it, Ray must be importable."""
    if args.engine != "ray":
        given = [flag for flag, value in (("--ray-address", args.ray_address), ("--workers", args.workers),
                                          ("--gpus-per-worker", args.gpus_per_worker or None)) if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --engine ray")
        return
    from .ray_engine import import_ray

    import_ray()


def _engine_session(args: argparse.Namespace):
    """The connected ``ray`` module for the run with --engine ray, else a context giving None."""
    if args.engine != "ray":
        return contextlib.nullcontext()
    from .ray_engine import ray_session

    return ray_session(args.ray_address)


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0)
    try:
        with warnings.catch_warnings(), _sigterm_as_interrupt():
            # Pillow warns about damaged metadata before the decode fails or succeeds; either way the
            # outcome is reported in one line, so its two-line warning is noise here.
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            return args.handler(args)
    except InputError as exc:
        print(f"rtg-anomaly: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(f"rtg-anomaly: interrupted{' (SIGTERM)' if isinstance(exc, Terminated) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an environment failure: one line, details on request
        if os.environ.get("RTG_ANOMALY_DEBUG"):
            traceback.print_exc()
        message = first_line(exc) if str(exc).strip() else ""
        print(f"rtg-anomaly: unexpected error: {type(exc).__name__}: {message} "
              "(set RTG_ANOMALY_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


# ---------------------------------------------------------------------------- fit
def _run_fit(args: argparse.Namespace) -> int:
    from .pipeline.detector import Detector
    from .backbone.features import resolve_device
    from .scans.io import list_images

    config = _config_from_args(args)  # bad settings are refused before anything is read
    _check_engine(args)
    if args.engine == "ray":
        from .ray_engine.fit import check_ray_fit

        check_ray_fit(config)
        if args.select == "auto":
            raise InputError("--select auto runs in-process only; drop --engine ray or pass --select off")
    _check_rate(args.false_alarm_rate)
    _threshold_rule(args)  # a bad rule value fails before any work
    model_dir = Path(args.model or _default_model())
    if args.model is None:  # the default place may not exist yet in a fresh working folder
        model_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_model_destination(model_dir)
    roi_mask = _roi_mask(args.roi)
    paths = list_images(args.clean_dir)
    device = resolve_device(args.device)
    started = time.perf_counter()
    config, selection = _config_and_selection(args, paths, device, args.quiet)
    detector = Detector(config, device=device, runtime=args.runtime)
    detector.selection_ = selection
    detector.roi_mask = roi_mask
    _note_runtime(detector)
    with _engine_session(args) as ray:
        if ray is None:
            detector.fit(paths, progress=not args.quiet, on_bad_image=_warn_skipped,
                         false_alarm_rate=args.false_alarm_rate, threshold_rule=_threshold_rule(args))
        else:
            from .ray_engine.fit import fit_on_ray

            fit_on_ray(ray, detector, paths, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                       progress=not args.quiet, on_bad_image=_warn_skipped, false_alarm_rate=args.false_alarm_rate,
                       threshold_rule=_threshold_rule(args))
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

    from .atomic import replacing

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


def _note_runtime(detector) -> str:
    """Build the backbone now, say on stderr if ``--runtime auto`` had to fall back to torch, and return the
    runtime that runs it."""
    extractor = detector.extractor
    if extractor.runtime_fallback:
        print(f"rtg-anomaly: note: running the backbone with torch: {extractor.runtime_fallback}", file=sys.stderr)
    return extractor.runtime


def _check_model_destination(folder: Path) -> None:
    """Before any work: the bundle can be written at ``folder`` without replacing anything but a bundle."""
    from .bundle import check_bundle_destination

    _check_writable_folder(folder)
    check_bundle_destination(folder)


def _check_writable_folder(folder: Path) -> None:
    """InputError unless files can be written in ``folder`` (or it can be created): checked before any work."""
    from .atomic import name_problem, output_problem
    from .scans.io import missing_folder_reason

    problem = name_problem(folder)
    if problem:
        raise InputError(f"cannot write to {folder}: {problem}")
    parent = folder.resolve().parent
    if not parent.is_dir():
        raise InputError(f"cannot write to {folder}: {missing_folder_reason(parent)}")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"cannot write to {folder}: it is a file")
    # A bundle or a metrics folder is written beside itself and renamed: its parent must take new files.
    problem = output_problem(folder.resolve()) or (folder.is_dir() and output_problem(folder / "probe"))
    if problem:
        raise InputError(f"cannot write to {folder}: {problem}")


def _warn_skipped(item, error: Exception) -> None:
    print(f"rtg-anomaly: warning: skipped {error}", file=sys.stderr)


# ---------------------------------------------------------------------------- detect
def _plan_detect(args: argparse.Namespace):
    """Check every input and output before any work.

    Returns (jobs, folder_mode, output, report, csv_path, html, new_folders); each job is
    (scan path, overlay path, heatmap path or None, triptych path or None); new_folders are output folders still to be
    created, which the caller makes only once nothing else can fail first (no empty folder is left
    behind by a refused run).
    """
    from .scans.io import IMAGE_SUFFIXES, check_output_path, list_images

    from .atomic import name_problem

    for flag in ("output", "heatmap", "report", "csv", "sort_into"):
        value = getattr(args, flag)
        problem = value and name_problem(value)
        if problem:
            raise InputError(f"cannot write {value}: {problem}")
    source = Path(args.input)
    if not source.exists():
        raise InputError(f"input {source} does not exist")
    folder_mode = source.is_dir()
    if not 0.0 <= args.threshold_percentile <= 100.0:
        raise InputError("--threshold-percentile must be between 0 and 100")
    args.style = _display_style(args)
    output = Path(args.output)
    heatmap = Path(args.heatmap) if args.heatmap else None
    triptych = Path(args.triptych) if args.triptych else None
    report = Path(args.report) if args.report else None
    html = Path(args.html) if args.html else None
    if args.min_region_area < 0:
        raise InputError("--min-region-area must be >= 0")
    new_folders: list[Path] = []
    if folder_mode:
        report = report or output / "report.json"
        csv_path = Path(args.csv) if args.csv else output / "triage.csv"
        paths = list_images(source)
        for folder, flag in ((output, "--output"), (heatmap, "--heatmap"), (triptych, "--triptych"),
                             (Path(args.sort_into) if args.sort_into else None, "--sort-into")):
            if folder is not None and _check_output_folder(folder, flag, new_folders):
                new_folders.append(folder)
        if _same_path(output, source):
            raise InputError(f"--output {output} is the input folder: the overlays would overwrite the scans; "
                             "name another folder")
        # a.png and a.tif in one folder would both write heatmap a.npy: those keep their suffix (a.png.npy).
        stems = collections.Counter(p.stem for p in paths)
        names = {p: f"{p.stem if stems[p.stem] == 1 else p.name}.npy" for p in paths}
        for folder, flag in ((heatmap, "--heatmap"), (triptych, "--triptych")):
            if folder is not None and _same_path(folder, source):
                raise InputError(f"{flag} {folder} is the input folder; name another folder")
        triptych_names = {p: f"{names[p][:-len('.npy')]}.png" for p in paths}
        for folder, files in ((output, [p.name for p in paths]), (heatmap, list(names.values())),
                              (triptych, list(triptych_names.values()))):
            if folder is not None:
                _check_names_fit(folder, files)
        jobs = [(p, output / p.name, heatmap / names[p] if heatmap else None,
                 triptych / triptych_names[p] if triptych else None) for p in paths]
    else:
        if args.sort_into:
            raise InputError("--sort-into needs a folder as --input")
        csv_path = Path(args.csv) if args.csv else None
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"input {source} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        if output.is_dir():  # an existing folder: the overlay takes the scan's name there
            output = output / source.name
        if heatmap is not None and heatmap.is_dir():
            heatmap = heatmap / f"{source.stem}.npy"
        check_output_path(output)
        if _same_path(output, source):
            raise InputError(f"--output {output} is the input scan: the overlay would overwrite it; "
                             "name another file")
        if heatmap is not None:
            check_output_path(heatmap, suffixes=(".npy",))
        if triptych is not None:
            if triptych.is_dir():
                triptych = triptych / f"{source.stem}.png"
            check_output_path(triptych)
            if _same_path(triptych, source) or _same_path(triptych, output):
                raise InputError(f"--triptych {triptych} is the input scan or the overlay; name another file")
        jobs = [(source, output, heatmap, triptych)]
    for path, suffixes in ((report, (".json",)), (csv_path, (".csv",)), (html, (".html", ".htm"))):
        if path is not None:
            check_output_path(path, suffixes=suffixes, new_folders=new_folders)
    return jobs, folder_mode, output, report, csv_path, html, new_folders


def _same_path(a: Path | str, b: Path | str) -> bool:
    """Whether two paths name the same file or folder: through links and ``..`` when both exist, else by
    their resolved names (one of them is still to be written)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _run_detect(args: argparse.Namespace) -> int:
    _check_engine(args)
    plan = _plan_detect(args)
    args.roi_mask = _roi_mask(args.roi)
    if args.engine == "ray" and not plan[1]:
        raise InputError("--engine ray needs a folder as --input (one scan runs in-process)")
    model_dir = args.model or _default_model()
    outputs = [path for job in plan[0] for path in job[1:]] + list(plan[3:6])
    for path in (p for p in outputs if p is not None):
        if _same_path(path.parent, model_dir):  # even a new file there makes it "not a bundle" (bundle.py)
            raise InputError(f"cannot write {path}: it is inside the model bundle {model_dir}")
    with _engine_session(args) as ray:
        return _detect_jobs(args, plan, model_dir, ray)


def _detect_jobs(args: argparse.Namespace, plan: tuple, model_dir, ray) -> int:
    """Score the planned scans, in this process (``ray`` None) or on Ray actors, and write the report,
    CSV and page; the per-scan work and the bookkeeping are the same code either way."""
    from tqdm import tqdm

    from .outputs.triage import triage_row, write_triage_csv

    jobs, folder_mode, output, report, csv_path, html, new_folders = plan
    if ray is None:
        from .pipeline.detector import Detector
        from .scans.io import load_image, prefetch

        # The first scans decode in background threads while the model loads (a 16-bit PNG vehicle scan
        # takes a few tenths of a second); a decoding error surfaces only when that scan's turn comes.
        decoding = prefetch(load_image, [job[0] for job in jobs])
        scans = itertools.chain([next(decoding)], decoding)
        detector = Detector.load(model_dir, device=args.device, runtime=args.runtime)
        if args.roi is not None:
            _override_roi(detector, args.roi, args.roi_mask)
        runtime = _note_runtime(detector)
        calibration = detector.calibration_
        model_facts = {"runtime": runtime, "runtime_label": detector.extractor.runtime_label,
                       "backbone_graph": detector.extractor.graph_info,
                       "method": detector.method_.name, "roi_mode": detector.config.roi,
                       "threshold_rule": {**calibration.rule.to_dict(),
                                          "false_alarm_rate": calibration.false_alarm_rate}}
    else:
        from .ray_engine.detect import RayFolderDetect

        engine = RayFolderDetect(ray, model_dir, args, jobs, thumbnails=html is not None)  # loads the bundle
        model_facts = {key: engine.info[key] for key in ("runtime", "runtime_label", "backbone_graph", "method",
                                                         "roi_mode", "threshold_rule")}
        if engine.info["runtime_fallback"]:
            print(f"rtg-anomaly: note: the workers run the backbone with torch: {engine.info['runtime_fallback']}",
                  file=sys.stderr)
    for folder in new_folders:
        folder.mkdir(exist_ok=True)
    entries, errors, rows = [], [], []
    thumbnails: dict[str, dict] = {}  # scan path -> its pictures for the HTML page, small and encoded
    warned = collections.Counter()  # warning -> number of scans; each is printed for its first scan only

    def write_results(complete: bool) -> None:
        if report is not None:
            _write_json(report, {"model": str(model_dir), "runtime": model_facts["runtime"],
                                 "backbone_graph": model_facts["backbone_graph"],
                                 "engine": args.engine, "threshold_mode": args.threshold,
                                 "threshold_percentile": args.threshold_percentile,
                                 "method": model_facts["method"], "roi_mode": model_facts["roi_mode"],
                                 "threshold_rule": model_facts["threshold_rule"],
                                 "complete": complete, "images": entries, "errors": errors})
        if csv_path is not None:
            write_triage_csv(csv_path, rows)
        if html is not None:
            from .outputs.html_report import write_html_report

            write_html_report(html, entries, errors, thumbnails, model=str(model_dir), threshold_mode=args.threshold,
                              complete=complete)

    def skip(path: Path, exc: InputError) -> None:
        if not folder_mode:
            raise exc
        print(f"rtg-anomaly: warning: skipped {exc}", file=sys.stderr)
        errors.append({"input": str(path), "error": str(exc)})
        rows.append(triage_row(path, decision="error", error=exc))

    def take(path: Path, outcome) -> None:
        """Take a scan's outcome, in input order: (entry, pictures) as ``scan_outputs.write_scan`` returns them, or the
        InputError that made it a skipped scan."""
        if isinstance(outcome, InputError):
            skip(path, outcome)
            return
        entry, pictures = outcome
        entries.append(entry)
        if pictures:
            thumbnails[entry["input"]] = pictures
        for warning in entry["warnings"]:
            warned[warning] += 1
            if warned[warning] == 1:
                later = " (said once for the folder)" if folder_mode else ""
                print(f"rtg-anomaly: warning: {path}: {warning}{later}", file=sys.stderr)
        rows.append(triage_row(path, score=entry["score"], decision="suspect" if entry["anomalous"] else "clean",
                               regions=[r["bbox"] for r in entry["regions"]]))

    def record(path: Path, written: Future) -> None:
        """Take the entry of a scan whose outputs were being written (in input order)."""
        try:
            outcome = written.result()
        except InputError as exc:
            outcome = exc
        take(path, outcome)

    def keep_what_finished() -> None:
        if folder_mode and rows:
            try:
                write_results(complete=False)
                print(f"rtg-anomaly: stopped after {len(rows)} of {len(jobs)} scans; {report} and {csv_path} "
                      "list those (\"complete\": false)", file=sys.stderr)
            except OSError:
                pass  # the original error is the one to report

    progress = tqdm(total=len(jobs), unit="scan", desc="detect", leave=False, disable=args.quiet or len(jobs) < 2)
    if ray is not None:
        results = engine.results()
        try:
            for index, outcome in results:
                take(jobs[index][0], outcome)
                progress.update(1)
        except BaseException:  # Ctrl-C, a lost cluster: keep the triage of the scans that finished
            for index, outcome in results.finished():  # in input order, past any scan that did not
                take(jobs[index][0], outcome)
            keep_what_finished()
            raise
        finally:
            progress.close()
            engine.close()
        return _detect_summary(args, folder_mode, entries, errors, warned, output, csv_path, html, write_results,
                           model_facts["runtime_label"])

    from .outputs import scan_outputs

    gpu, options = _gpu_of(args.device), output_options(args)
    # A scan's regions, overlay file, heatmap file and sorted copy are written in a background thread while the
    # next scan is scored: on a GPU, finding the regions and writing the overlay take a third of the scoring time
    # or more (README, "It writes behind"). One write at a time, in input order.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtg-anomaly-write")
    writing: collections.deque[tuple[Path, Future]] = collections.deque()
    writes_behind = 1 if folder_mode else 0  # one scan: its entry is needed at once
    try:
        for (path, overlay_path, heatmap_path, triptych_path), loaded in zip(jobs, scans):
            progress.update(1)
            try:
                scored = scan_outputs.score_scan(detector, path, loaded.result(), options, gpu)
            except InputError as exc:
                while writing:  # the scans before this one first, so that the report keeps the input order
                    record(*writing.popleft())
                skip(path, exc)
                continue
            writing.append((path, writer.submit(scan_outputs.write_scan, scored, overlay_path, heatmap_path,
                                                triptych_path, options, html is not None)))
            while len(writing) > writes_behind:
                record(*writing.popleft())
        while writing:
            record(*writing.popleft())
    except BaseException:  # Ctrl-C or a failure hours into a folder: keep the triage of the scans done
        writer.shutdown(cancel_futures=True)  # waits for a write in progress: its files are complete
        for path, future in writing:  # writes that finished, or failed on a bad scan, are in the report
            if future.done() and not future.cancelled() and isinstance(future.exception(), (InputError, type(None))):
                record(path, future)
        keep_what_finished()
        raise
    finally:
        progress.close()
    writer.shutdown()
    return _detect_summary(args, folder_mode, entries, errors, warned, output, csv_path, html, write_results,
                           model_facts["runtime_label"])


def _detect_summary(args, folder_mode: bool, entries: list, errors: list, warned, output, csv_path, html,
                    write_results, runtime_label: str) -> int:
    """Write the complete report, CSV and page, print the summary line (``runtime_label``: what ran the
    backbone, ``FeatureExtractor.runtime_label``); the exit code."""
    write_results(complete=True)
    flagged = sum(e["anomalous"] for e in entries)
    if folder_mode:
        for warning, count in warned.items():
            print(f"rtg-anomaly: warning: {count} of {len(entries)} scans: {warning}", file=sys.stderr)
        print(f"scored {len(entries)} scans: {flagged} suspect, {len(entries) - flagged} clean, "
              f"{len(errors)} skipped (unreadable or unusable); overlays in {output}, triage in {csv_path}"
              f"{f', page {html}' if html else ''}; backbone on {runtime_label}")
        return EXIT_OK if entries else EXIT_BAD_INPUT
    entry = entries[0]
    print(f"{entry['input']}: score {entry['score']:.3f} (threshold {entry['threshold']:.3f}) -> "
          f"{'SUSPECT' if entry['anomalous'] else 'clean'}, {len(entry['regions'])} region(s); overlay {entry['output']}; "
          f"backbone on {runtime_label}")
    return EXIT_OK


def _gpu_of(device: str):
    """The CUDA torch device ``--device`` names (auto: when present), else None."""
    from .backbone.features import resolve_device

    resolved = resolve_device(device)
    return resolved if resolved.type == "cuda" else None


def _check_output_folder(folder: Path, flag: str, new_folders: list[Path]) -> bool:
    """InputError unless ``folder`` is a folder or can be created as one (in an existing folder or in one of
    ``new_folders``, which are created first, in order); True when it is still to be created."""
    from .atomic import output_problem
    from .scans.io import missing_folder_reason

    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {folder} must be a folder when --input is a folder")
    parent = folder.resolve().parent
    to_be_created = parent in {new.resolve() for new in new_folders}
    if not parent.is_dir() and not to_be_created:
        raise InputError(f"cannot write {folder}: {missing_folder_reason(parent)}")
    if not to_be_created:  # a folder inside a new one is as writable as that one, checked before
        problem = output_problem(folder / "probe") if folder.is_dir() else output_problem(folder)
        if problem:
            raise InputError(f"cannot write {folder}: {problem}")
    return not folder.exists()


def _check_names_fit(folder: Path, names: list[str]) -> None:
    """InputError when one of the files a folder run will write in ``folder`` has a name longer than its
    file system allows (a heatmap adds ``.npy`` to a scan's name), before the first scan."""
    existing = next((part for part in (folder, *folder.resolve().parents) if part.is_dir()), Path("/"))
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    too_long = next((name for name in names if len(os.fsencode(name)) > limit), None)
    if too_long:
        raise InputError(f"cannot write {folder / too_long}: the name is longer than the {limit} bytes "
                         "the file system allows")


def output_options(args: argparse.Namespace):
    """The ``OutputOptions`` of ``detect``'s flags (``args.style`` set by ``_display_style``)."""
    from .outputs.scan_outputs import OutputOptions

    return OutputOptions(style=args.style, threshold=args.threshold, threshold_percentile=args.threshold_percentile,
                         draw_regions=args.draw_regions, colorbar=args.colorbar, min_region_area=args.min_region_area,
                         sort_into=args.sort_into, sort_mode=args.sort_mode,
                         reconstruct=bool(getattr(args, "triptych", None) or getattr(args, "html", None)))


# ---------------------------------------------------------------------------- export
def _run_export(args: argparse.Namespace) -> int:
    from .pipeline.detector import Detector
    from .scans.io import list_images

    model_dir = Path(args.model or _default_model())
    if args.precision == "int8" and not args.clean_dir:
        raise InputError("--precision int8 needs --clean-dir: clean scans to calibrate the quantisation on")
    if args.precision != "int8" and args.clean_dir:
        raise InputError("--clean-dir is only used by --precision int8")
    paths = list_images(args.clean_dir) if args.clean_dir else []
    if model_dir.is_dir():  # else Detector.load says there is no bundle
        _check_writable_folder(model_dir)
    detector = Detector.load(model_dir, device="cpu", runtime="torch")
    started = time.perf_counter()
    graph = detector.export_graph(args.format, args.precision, paths, args.calibration_tiles)
    detector.save(model_dir)
    if args.precision == "int8":
        apart = "0.15" if args.format == "onnx" else "0.32"  # the larger of castings and welds, docs/precision.md
        print(f"rtg-anomaly: warning: int8 is not within tolerance of float32 on the benchmark sets (heatmaps up "
              f"to {apart} calibrated units apart; docs/precision.md): check it on your scans", file=sys.stderr)
    if args.precision == "bf16":
        from .backbone.graph_export import cpu_computes_bf16

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


def _check_rate(rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise InputError(f"--false-alarm-rate must be between 0 and 1, got {rate}")


# ---------------------------------------------------------------------------- calibrate
def _run_calibrate(args: argparse.Namespace) -> int:
    from .pipeline.detector import Detector
    from .scans.io import list_images

    _check_rate(args.false_alarm_rate)
    _threshold_rule(args)  # a bad rule value fails before any work
    model_dir = Path(args.model or _default_model())
    paths = list_images(args.clean_dir)
    if model_dir.is_dir():  # else Detector.load says there is no bundle
        _check_writable_folder(model_dir)  # the updated bundle replaces it: refused now, not after the scans
    detector = Detector.load(model_dir, device=args.device, runtime=args.runtime)
    _note_runtime(detector)
    calibration = detector.calibrate(paths, args.false_alarm_rate, on_bad_image=_warn_skipped,
                                     threshold_rule=_threshold_rule(args))
    detector.save(model_dir)
    for warning in calibration.warnings:
        print(f"rtg-anomaly: warning: {warning}", file=sys.stderr)
    print(f"calibrated on {calibration.n_scans} clean scans at {calibration.rule.describe(calibration.false_alarm_rate)} "
          f"({calibration.method}): image threshold {calibration.image_threshold:.3f}, "
          f"pixel threshold {calibration.pixel_threshold:.3f}; saved to {model_dir}")
    return EXIT_OK


# ---------------------------------------------------------------------------- evaluate
def _run_evaluate(args: argparse.Namespace) -> int:
    from .pipeline.detector import Detector
    from .evaluation.mvtec import evaluate, load_mvtec_folder, markdown_report

    _check_rate(args.false_alarm_rate)
    _threshold_rule(args)  # a bad rule value fails before any work
    eval_set = load_mvtec_folder(args.data)
    if args.output:
        _check_writable_folder(Path(args.output))
        for flag, model in (("--model", args.model), ("--save-model", args.save_model)):
            if model and _same_path(args.output, model):
                raise InputError(f"--output {args.output} is the {flag} folder: the metrics would be written into "
                                 "the model bundle; name another folder")
    roi_mask = _roi_mask(args.roi)
    if args.model:
        detector = Detector.load(args.model, device=args.device, runtime=args.runtime)
        if args.roi is not None:  # an explicit --roi overrides the bundle's (its calibration stays the fit's)
            _override_roi(detector, args.roi, roi_mask)
        _note_runtime(detector)
    else:
        if args.save_model:
            _check_model_destination(Path(args.save_model))
        config, selection = _config_and_selection(args, eval_set.train_paths, args.device, args.quiet)
        detector = Detector(config, device=args.device, runtime=args.runtime)
        detector.selection_ = selection
        detector.roi_mask = roi_mask
        _note_runtime(detector)
        detector.fit(eval_set.train_paths, progress=not args.quiet, on_bad_image=_warn_skipped,
                     false_alarm_rate=args.false_alarm_rate, threshold_rule=_threshold_rule(args))
        if args.save_model:
            detector.save(args.save_model)
    metrics = evaluate(detector, eval_set, output_dir=args.output, max_per_class=args.max_per_class,
                       worst_overlays=max(0, args.worst), progress=not args.quiet)
    print(markdown_report(metrics))
    if args.output:
        print(f"metrics, curves and histogram written to {args.output}")
    return EXIT_OK


def _write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as strict JSON: a NaN or infinite number (which JSON cannot hold; Python would write
    ``NaN``, which other readers refuse) becomes null."""
    from .atomic import write_text

    write_text(path, json.dumps(_finite_json(payload), indent=2, allow_nan=False) + "\n")


def _finite_json(value):
    """``value`` with every non-finite float, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(item) for item in value]
    return value
