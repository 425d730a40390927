"""The ``rtg-anomaly`` argument parser: every command's flags, their accepted ranges and help."""

from __future__ import annotations

import argparse
import sys

from ..config import GRAPH_FORMATS as FORMATS
from ..config import GRAPH_PRECISIONS as PRECISIONS
from ..config import IMAGE_SCORE_RULES, PIXEL_BACKBONE, PIXEL_INPUT_SIZE, PIXEL_TILE_SIZE, RUNTIMES
from ..outputs.regions import DEFAULT_MIN_AREA
from ..ranges import FALSE_ALARM_RATE, FRACTION_OPEN_LOW, LAYER_INDEX, SETTING_RANGES, Range
from . import calibrate, detect, evaluate, export, fit
from .exit_codes import EXIT_BAD_INPUT


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of usage dumps."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


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


def _augment_names(value: str) -> tuple[str, ...]:
    """``--augment`` value: comma-separated augmentation names, or ``none``."""
    from ..config import AUGMENTATION_NAMES

    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in AUGMENTATION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown augmentation {', '.join(unknown) or value!r} "
                                         f"(choose from {', '.join(AUGMENTATION_NAMES)}, or none)")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rtg-anomaly",
                     description="Learn what clean X-ray scans look like; flag what departs from it.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit_flags = commands.add_parser("fit", help="fit a model on a folder of clean scans")
    fit_flags.add_argument("--clean-dir", required=True, help="folder of clean scans (BMP, PNG, TIFF, JPEG)")
    fit_flags.add_argument("--model", default=None,
                           help="bundle folder to write (default: $RTG_ANOMALY_MODEL or model_artifacts/default)")
    _add_device(fit_flags)
    _add_config_flags(fit_flags)
    _add_engine(fit_flags)
    fit_flags.add_argument("--quiet", action="store_true", help="no progress bar")
    fit_flags.set_defaults(handler=fit.run)

    detect_flags = commands.add_parser("detect", help="score a scan or a folder of scans and write overlays")
    detect_flags.add_argument("--input", required=True, help="scan file or folder of scans")
    detect_flags.add_argument("--output", required=True, help="overlay file (format from its extension) or folder")
    detect_flags.add_argument("--model", default=None,
                              help="bundle folder (default: $RTG_ANOMALY_MODEL or model_artifacts/default)")
    _add_device(detect_flags)
    detect_flags.add_argument("--threshold", choices=("percentile", "calibrated"), default="percentile",
                        help="colour pixels above this scan's percentile (default) or above the calibrated pixel "
                                   "threshold")
    detect_flags.add_argument("--threshold-percentile", type=_in(PERCENTILE), default=90.0,
                        help=_ranged("in percentile mode, pixels below this percentile of the scan's map stay "
                                     "uncoloured (default 90)", PERCENTILE))
    detect_flags.add_argument("--heatmap",
                              help="write the raw calibrated map as float32 .npy (a folder for folder input)")
    detect_flags.add_argument("--report", help="write a JSON report")
    detect_flags.add_argument("--color-range", type=_in(COLOUR_VALUE), nargs=2, metavar=("LOW", "HIGH"),
                        help=_ranged("calibrated values at the bottom and top of the colour scale, LOW < HIGH "
                                     "(default: 1.0 to twice the pixel threshold's excess over 1.0)", COLOUR_VALUE))
    _add_display_flags(detect_flags)
    detect_flags.add_argument("--min-region-area", type=_in(REGION_AREA), default=DEFAULT_MIN_AREA,
                        help=_ranged(f"suspicious regions smaller than this many pixels are dropped "
                                     f"(default {DEFAULT_MIN_AREA})", REGION_AREA))
    detect_flags.add_argument("--draw-regions", action="store_true",
                              help="outline the regions with their rank on the overlay")
    detect_flags.add_argument("--csv", help="triage CSV, one row per scan (folder input: default OUTPUT/triage.csv)")
    detect_flags.add_argument("--sort-into",
                              help="folder input: copy or link each scan into SORT_INTO/clean or SORT_INTO/suspect")
    detect_flags.add_argument("--sort-mode", choices=("copy", "link", "symlink"), default="copy",
                        help="how --sort-into places scans (default copy)")
    detect_flags.add_argument("--triptych", metavar="FILE|DIR",
                        help="also write original | thresholded mask | overlay side by side with a caption "
                             "(a folder for folder input: one PNG per scan)")
    detect_flags.add_argument("--html", metavar="FILE",
                        help="a self-contained HTML triage page (thumbnails embedded, overlays and triptychs "
                             "linked relatively), scans sorted by score, with filter and sort controls")
    detect_flags.add_argument("--roi", default=None, metavar="off|auto|FILE",
                        help="region of interest (see fit --roi); default: the mode the model was fitted with. "
                             "Outside it nothing is scored or coloured and the heatmap is 0; the report gives the "
                             "share of each scan masked. Overriding the fit's mode keeps the fit's calibration")
    _add_engine(detect_flags)
    detect_flags.add_argument("--quiet", action="store_true", help="no progress bar")
    detect_flags.set_defaults(handler=detect.run)

    cal = commands.add_parser("calibrate", help="set the thresholds of a model from extra clean scans")
    cal.add_argument("--clean-dir", required=True, help="folder of clean scans not used to fit")
    cal.add_argument("--model", default=None,
                     help="bundle folder to update (default: $RTG_ANOMALY_MODEL or model_artifacts/default)")
    _add_device(cal)
    cal.add_argument("--false-alarm-rate", type=_in(FALSE_ALARM_RATE), default=0.01,
                     help=_ranged("share of clean scans the thresholds may flag (default 0.01)", FALSE_ALARM_RATE))
    _add_threshold_rule_flags(cal, "default: the rule the model was calibrated with")
    cal.set_defaults(handler=calibrate.run)

    ev = commands.add_parser("evaluate", help="image and pixel metrics on a labelled folder in MVTec AD layout")
    ev.add_argument("--data", required=True,
                    help="folder with train/good, test/good, test/<type>, optional ground_truth/")
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
    ev.set_defaults(handler=evaluate.run)

    ex = commands.add_parser("export", help="write the backbone's feature graph (ONNX or OpenVINO IR) into a bundle")
    ex.add_argument("--model", default=None,
                    help="bundle folder to update (default: $RTG_ANOMALY_MODEL or model_artifacts/default)")
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
    ex.set_defaults(handler=export.run)
    return parser


def _add_display_flags(parser: argparse.ArgumentParser) -> None:
    """How the overlay looks (display only: the heatmap file, scores and regions never change)."""
    from ..outputs.display import DisplayStyle

    style = DisplayStyle()
    parser.add_argument("--colormap", default=style.cmap,
                        help=f"matplotlib colour map of the overlay (default {style.cmap}); whatever the map, pixels "
                             "at or above the calibrated pixel threshold take its warm end")
    parser.add_argument("--alpha-min", type=_in(OPACITY), default=style.alpha_min,
                        help=_ranged(f"overlay opacity at the bottom of the colour scale (default {style.alpha_min})",
                                     OPACITY))
    parser.add_argument("--alpha-max", type=_in(OPACITY), default=None,
                        help=_ranged(f"overlay opacity at the top of the colour scale (default {style.alpha_max})",
                                     OPACITY))
    parser.add_argument("--alpha", type=_in(OPACITY), default=None, help=_ranged("older name of --alpha-max", OPACITY))
    parser.add_argument("--gamma", type=_in(GAMMA), default=style.gamma,
                        help=_ranged(f"power on the position within the colour scale; below 1 lifts weak responses "
                                     f"(default {style.gamma:g})", GAMMA))
    parser.add_argument("--clip-quantile", type=_in(FRACTION_OPEN_LOW), default=style.clip_quantile,
                        help=_ranged("show values above this quantile of the scan's map at that quantile, never below "
                                     f"the pixel threshold (default {style.clip_quantile:g}: off)", FRACTION_OPEN_LOW))
    parser.add_argument("--blur", type=_in(BLUR_SIGMA), default=style.blur, metavar="SIGMA",
                        help=_ranged("Gaussian smoothing of the displayed map, sigma in scan pixels (default 0: off; "
                                     "the heatmap file, scores and regions are unchanged)", BLUR_SIGMA))
    parser.add_argument("--outline", action=argparse.BooleanOptionalAction, default=style.outline,
                        help="ring the pixels at or above the calibrated pixel threshold in magenta (default on)")
    parser.add_argument("--colorbar", action="store_true",
                        help="add a legend strip of the colour scale, in calibrated units, under each overlay")


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
                                     "of its encoder; epochs are added until reached (default 1000)",
                                     "recon_min_steps"))
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
    parser.add_argument("--patch-norm", choices=("none", "l2"),
                        help="patchcore: none (default) keeps the patch features as they come; l2 divides each by "
                             "its length before the PCA and the memory bank, so the kNN distance follows the angle "
                             "between features (cosine distance)")
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
                        help=_ranged("side of the average pooling over the patch grid, odd (default 1: off)",
                                     "neighbourhood"))
    parser.add_argument("--smoothing-sigma", type=_setting("smoothing_sigma"),
                        help=_ranged("Gaussian sigma of the map, in backbone patches (default 0: none)",
                                     "smoothing_sigma"))
    parser.add_argument("--image-score", choices=IMAGE_SCORE_RULES,
                        help="image score rule: max of the map, top_mean of the map, patch_top_mean of the "
                             "raw patch scores, or global: distance of the whole scan's feature "
                             "statistics to the nearest clean scan's (for small crops judged as a whole), or "
                             "patch_or_global: the more surprising of the two against the held-out clean scans, "
                             "or scan_centroid: cosine distance of the scan's mean feature from the clean scans' "
                             "centroid (the good-only baseline); default auto: patch_or_global on scans small "
                             "enough to be fitted whole into one tile, else patch_top_mean")
    parser.add_argument("--top-fraction", type=_setting("top_fraction"),
                        help=_ranged("with --image-score top_mean: share of map pixels averaged (default 0.001)",
                                     "top_fraction"))
    parser.add_argument("--top-patches", type=_setting("top_patches"),
                        help=_ranged("with --image-score patch_top_mean: number of highest patch scores averaged "
                                     "(default 5)", "top_patches"))
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


def _version() -> str:
    from .. import __version__

    return __version__
