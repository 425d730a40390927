"""Every hyper-parameter of the detector, in one frozen, self-validating dataclass."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .ranges import LAYER_INDEX, MODEL_KWARGS, SETTING_RANGES
from .scans.roi import ROI_MODES

DEFAULT_BACKBONE = "vit_small_patch14_dinov2"
IMAGE_SCORE_RULES = ("auto", "max", "top_mean", "patch_top_mean", "global", "patch_or_global", "scan_centroid")
PIXEL_BACKBONE = "pixels"  # no network: grey pixel cells as features (pixel_backbone.py)
PIXEL_CELL = 8  # pixels per cell side of the pixels backbone: a patch score covers PIXEL_CELL^2 input pixels
PIXEL_INPUT_SIZE = 64  # the tile side the pixel methods see by default (the TransGAN seed's 64 px tiles)
PIXEL_TILE_SIZE = 128  # scan pixels per tile for the pixel target by default: 2 scan px per input px
# The map's unit when the image score has its own (``global``): the default rule's clean median. Also what
# ``auto`` resolves to where it does not fuse, and the patch part of the fused rule.
MAP_SCORE_RULE = "patch_top_mean"
FUSED_RULE = "patch_or_global"  # the larger surprisal of the top patches and the whole-scan descriptor
# Image scores that need whole-scan descriptors (and so a held-out calibration set).
DESCRIPTOR_RULES = ("global", "patch_or_global", "scan_centroid")
INTENSITY_WINDOWS = ("auto", "dtype", "percentile", "clean")
PATCH_NORMS = ("none", "l2")  # PatchCore's patch features as they come, or divided by their norm
# How clean scans are scored for the thresholds (DetectorConfig.calibration).
CALIBRATION_MODES = ("leave_one_out", "holdout")
# Clean scans leave-one-scan-out calibration scores (a seeded sample beyond this): enough for a 1 % false-alarm
# rate to be read off the scores, and a bounded extra cost (one backbone pass over them) for large archives.
LEAVE_ONE_OUT_MAX_SCANS = 100
# Clean scans whose pooled values set the clean intensity window (evenly spaced beyond this): a second read of
# that many scans at fit, enough for the 0.5 % tails of a whole archive's range.
CLEAN_WINDOW_MAX_SCANS = 64
# image_score="auto" fuses the whole-scan score in only with at least this many held-out clean scans: the
# fusion divides each score by its spread over them, and fewer set no usable spread (8 scans: about 27 %).
FUSION_MIN_CALIBRATION_SCANS = 8
AUGMENTATION_NAMES = ("hflip", "vflip", "rot90", "rot180", "rot270")
# What executes the backbone (not a hyper-parameter: the features are the same either way, see openvino_runtime.py).
# "auto": on the CPU the fastest installed runtime that runs the bundle's exported graph (or converts the
# backbone), else torch; see features.resolve_runtime. "onnxruntime" needs the optional extra [onnx].
RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
# What ``rtg-anomaly export`` writes into a bundle (graph_export.py).
GRAPH_FORMATS = ("onnx", "openvino")
GRAPH_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
MAX_SEED = 2**32


class ConfigError(InputError):
    """A hyper-parameter has an invalid value."""


@dataclass(frozen=True)
class DetectorConfig:
    """Hyper-parameters of the detector: the pipeline's and the detection method's.

    Sizes are in pixels of the original scan unless stated otherwise.

    method: the detection method, a name from ``methods.METHODS`` (``"patchcore"``: the memory bank of
        clean patch features; pca_dim, pca_whiten, coreset_ratio, memory_bank_size, max_bank_size,
        max_patches_per_scan and k are its settings; ``"padim"``: a Gaussian per patch cell of a tile over
        ``padim_features`` seeded random channels; ``"centroid"``: cosine distance of each tile's mean
        embedding to the clean tiles' centroid).
    padim_features: channels PaDiM keeps (a seeded random subset; all when the backbone has fewer).
    svdd_dim, svdd_epochs, svdd_pretrain, svdd_cache_rows: Deep SVDD's output size, training epochs,
        ``"none"`` or ``"rotation"`` (self-supervised rotation pretraining of its head first), and the
        bound on the clean patch features cached for training (float16 rows).
    recon_target, recon_dim, recon_layers, recon_dropout, recon_epochs, recon_cache_rows: the
        reconstruction method's target (``"features"``: the backbone's patch features), its width (a
        multiple of 4, the attention heads), transformer blocks, bottleneck dropout, training epochs and
        the bound on the cached clean patch rows (whole tiles, float16); ``"pixels"``: a transformer GAN
        rebuilds the grey pixels of small tiles, with backbone ``"pixels"``, see
        ``methods/pixel_reconstruction.py``).
    recon_latent, recon_min_steps, recon_feature_weight, recon_refine_steps: the pixel target's latent
        size, the least number of training batches of its GAN and of its encoder (epochs are added until
        they are reached), the weight of
        the discriminator-feature term in its encoder loss and image score (f-AnoGAN's kappa), and the
        AnoGAN latent refinement steps per tile at detect time (0: the encoder's latent as it is).
    backbone: timm model name.
    weights: local weights file; ``None`` picks the bundled file for the default
        backbone (else the hub weights the normal timm way); ``"random"`` means
        no pretrained weights (tests and ablations only).
    model_kwargs: extra keyword arguments passed to ``timm.create_model``.
    layers: indices of the backbone blocks whose patch tokens are used; several
        are concatenated along the feature axis.
    tile_size, overlap: square tiles cut from the scan; neighbours overlap by
        ``overlap * tile_size`` pixels.
    input_size: side of the square backbone input each tile is resized to
        (``None``: the backbone's default).
    scale_to_scans: at fit time, when the clean scans' median shorter side is below half ``tile_size``, the tile
        shrinks to it and the input with it (same scan pixels per feature cell, at least 224 px): small
        scans are seen whole instead of mirror-padded (``scale.fit_scale_to_scans``). The bundle stores
        the sizes it chose.
    neighbourhood: side of the average-pooling window applied to the patch grid
        (1 = off); gives every patch feature some local context.
    pca_dim: dimension kept after PCA (``None`` or >= feature dim: no reduction).
    pca_whiten: power w in [0, 1]: each PCA direction is divided by its standard
        deviation (relative to the mean variance of the kept directions) to the
        power w, so that a few high-variance directions weigh less in the kNN
        distance. 0: plain PCA; 1: full whitening; 0.5: half-whitening.
    patch_norm: ``"none"`` (default) or ``"l2"``: PatchCore divides every patch feature by its
        Euclidean norm before the PCA and the bank, so the kNN distance follows the angle between
        features (cosine distance, as AnomalyDINO scores DINOv2 patches) and not their length.
    coreset_ratio / memory_bank_size: size of the memory bank, as a fraction of
        all clean patches or as an absolute count (the count wins when given).
    k: neighbours averaged for the patch score.
    smoothing_sigma: Gaussian sigma of the anomaly map, in backbone patches
        (converted to scan pixels through the tile scale). 0 (default): the
        patch grid upsampled bilinearly and nothing more, so a defect one cell
        wide keeps its peak (AUPRO +0.03 on castings and welds, docs/defaults.md).
    image_score: ``"max"`` of the smoothed map, ``"top_mean"`` (mean of the top
        ``top_fraction`` of map pixels) or ``"patch_top_mean"`` (mean of the
        ``top_patches`` highest patch kNN distances, before stitching and
        smoothing, which would dilute a defect one or two patches wide) or
        ``"global"`` (centred cosine distance from the whole scan's descriptor,
        the mean and spread of its patch features, to the nearest clean scan's;
        for image-level data such as small crops, see descriptor.py) or
        ``"scan_centroid"`` (cosine distance ``1 - f . c`` of the scan's
        unit-length mean patch feature from the unit-length centroid of the
        clean scans' ones: the good-only per-scan baseline) or
        ``"patch_or_global"`` (the more surprising of ``patch_top_mean`` and
        ``global``: each turned into its tail probability under a normal fit to the
        held-out clean scans' values, the score is the surprisal ``-log p`` of the
        less likely; methods/global_descriptor.py) or ``"auto"`` (the default,
        resolved at fit: ``patch_or_global`` for PatchCore on scans fitted whole
        into one tile by ``scale_to_scans`` with a held-out calibration of at least
        ``FUSION_MIN_CALIBRATION_SCANS`` scans, else ``patch_top_mean``; a fitted
        model records the rule it resolved to). The heatmap is the patch map
        whatever the rule.
    intensity_window: ``"auto"`` (8-bit: full range; deeper: percentile window),
        ``"dtype"`` (divide by the dtype maximum), ``"percentile"`` (each scan's own percentiles) or
        ``"clean"`` (the ``window_percentiles`` of the clean scans' pooled values, learned at fit and kept
        in the bundle: one range for every scan, which no defect moves; intensity.py). ``"clean"`` is not
        the default: it lifts fish and welds and costs screw and castings (docs/defaults.md).
    window_percentiles: low/high percentiles of the percentile and clean windows.
    augment: flips/rotations of every clean scan added to the memory bank
        (names from ``AUGMENTATION_NAMES``); for objects whose orientation
        varies, or when clean scans are few. Calibration scores only the
        scans as they are.
    calibration: how clean scans are scored for the thresholds (``CALIBRATION_MODES``).
        ``"holdout"`` (default): a seeded share ``holdout_fraction`` is held out, scored against a model
        built from the rest, then learned. Held-out scans meet a smaller model than test scans do, so they
        score higher and the thresholds come out conservative (castings: held-out median 1.0, test clean
        median 0.87 in the same unit at the zoom --select scale chooses; docs/calibration.md).
        ``"leave_one_out"`` (PatchCore; other methods and the ``global`` image score hold out): every clean
        scan trains; then up to ``LEAVE_ONE_OUT_MAX_SCANS`` of them (a seeded sample) are scored again,
        each against the model without its own contribution, at one more backbone pass over them. Not the
        default: on the shared sets it lowered the mean image AUROC (0.9038 -> 0.9030) and the mean recall
        at the calibrated threshold (welds 78 % -> 16 %, screw 66 % -> 60 %; castings 42 % -> 51 % at the
        zoom --select scale chooses; the casting crops' false alarms 14/281 -> 22/281; docs/calibration.md).
    holdout_fraction: share of the clean scans held out to calibrate (``"holdout"`` calibration).
    max_bank_size: hard cap on the memory bank (a final greedy pass enforces it).
    max_patches_per_scan: cap on patches one scan contributes before its
        per-scan coreset (bounded memory at fit time).
    seed: the one seed for every random choice.
    batch_size: tiles per backbone batch.
    roi: region of interest (``roi.py``): ``"off"`` (every patch counts), ``"auto"`` (each scan's object
        against open air) or ``"file"`` (one fixed mask, held by the bundle as ``roi_mask``). Patches
        outside it are left out of what the method learns and out of the score.
    """

    method: str = "patchcore"
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    layers: tuple[int, ...] = (6,)
    tile_size: int = 512
    overlap: float = 0.25
    input_size: int | None = 448
    scale_to_scans: bool = True
    neighbourhood: int = 1
    pca_dim: int | None = 128
    pca_whiten: float = 0.0
    patch_norm: str = "none"
    coreset_ratio: float = 0.1
    memory_bank_size: int | None = None
    k: int = 1
    padim_features: int = 100
    svdd_dim: int = 128
    svdd_epochs: int = 10
    svdd_pretrain: str = "none"
    svdd_cache_rows: int = 100_000
    recon_target: str = "features"
    recon_dim: int = 192
    recon_layers: int = 2
    recon_dropout: float = 0.2
    recon_epochs: int = 20
    recon_cache_rows: int = 200_000
    recon_latent: int = 64
    recon_min_steps: int = 1000
    recon_feature_weight: float = 1.0
    recon_refine_steps: int = 0
    smoothing_sigma: float = 0.0
    image_score: str = "auto"
    top_fraction: float = 0.001
    top_patches: int = 5
    intensity_window: str = "auto"
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    augment: tuple[str, ...] = ()
    calibration: str = "holdout"
    holdout_fraction: float = 0.2
    max_bank_size: int = 200_000
    max_patches_per_scan: int = 100_000
    seed: int = 0
    batch_size: int = 8
    roi: str = "off"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        object.__setattr__(self, "window_percentiles", tuple(float(p) for p in self.window_percentiles))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "augment", tuple(str(name) for name in self.augment))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field (ranges: ``ranges.SETTING_RANGES``)."""
        from .methods import METHODS

        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        for name, accepted in SETTING_RANGES.items():
            value = getattr(self, name)
            if value is None and name in ("input_size", "pca_dim", "memory_bank_size"):
                continue
            if value not in accepted:
                raise ConfigError(f"{name} must be {accepted}, got {value!r}")
        checks = [
            (isinstance(self.backbone, str) and bool(self.backbone), "backbone must be a timm model name"),
            (isinstance(self.scale_to_scans, bool), "scale_to_scans must be true or false"),
            (self.weights is None or isinstance(self.weights, str), "weights must be a file name or null"),
            (all(index in LAYER_INDEX for index in self.layers), f"layers must each be {LAYER_INDEX}"),
            (all(key in MODEL_KWARGS and value in MODEL_KWARGS[key] for key, value in self.model_kwargs.items()),
             f"model_kwargs may only set {', '.join(f'{key} ({accepted})' for key, accepted in MODEL_KWARGS.items())}"),
            (len(self.layers) >= 1, "layers must name at least one block"),
            (self.tile_size >= 8, "tile_size must be >= 8 pixels"),
            (0.0 <= self.overlap < 1.0, "overlap must be in [0, 1)"),
            (self.input_size is None or self.input_size >= 8, "input_size must be >= 8"),
            (self.neighbourhood >= 1 and self.neighbourhood % 2 == 1, "neighbourhood must be an odd integer >= 1"),
            (self.pca_dim is None or self.pca_dim >= 1, "pca_dim must be >= 1"),
            (0.0 <= self.pca_whiten <= 1.0, "pca_whiten must be in [0, 1]"),
            (self.patch_norm in PATCH_NORMS, f"patch_norm must be one of {PATCH_NORMS}"),
            (0.0 < self.coreset_ratio <= 1.0, "coreset_ratio must be in (0, 1]"),
            (self.memory_bank_size is None or self.memory_bank_size >= 1, "memory_bank_size must be >= 1"),
            (self.k >= 1, "k must be >= 1"),
            (self.svdd_pretrain in ("none", "rotation"), "svdd_pretrain must be 'none' or 'rotation'"),
            (self.recon_target in ("features", "pixels"), "recon_target must be 'features' or 'pixels'"),
            (self.recon_target != "pixels" or self.method != "reconstruction" or self.backbone == PIXEL_BACKBONE,
             f"recon_target 'pixels' needs backbone {PIXEL_BACKBONE!r} (the CLI's --target pixels sets it)"),
            (self.backbone != PIXEL_BACKBONE or (self.input_size or PIXEL_INPUT_SIZE) % PIXEL_CELL == 0,
             f"the {PIXEL_BACKBONE} backbone needs an input_size that is a multiple of {PIXEL_CELL}"),
            (self.recon_dim % 4 == 0, "recon_dim must be a multiple of 4 (the attention heads)"),
            (self.smoothing_sigma >= 0.0, "smoothing_sigma must be >= 0"),
            (self.image_score in IMAGE_SCORE_RULES, f"image_score must be one of {IMAGE_SCORE_RULES}"),
            (0.0 < self.top_fraction <= 1.0, "top_fraction must be in (0, 1]"),
            (self.top_patches >= 1, "top_patches must be >= 1"),
            (self.intensity_window in INTENSITY_WINDOWS, f"intensity_window must be one of {INTENSITY_WINDOWS}"),
            (len(self.window_percentiles) == 2
             and 0.0 <= self.window_percentiles[0] < self.window_percentiles[1] <= 100.0,
             "window_percentiles must be (low, high) with 0 <= low < high <= 100"),
            (all(name in AUGMENTATION_NAMES for name in self.augment)
             and len(set(self.augment)) == len(self.augment),
             f"augment must list distinct names from {AUGMENTATION_NAMES}"),
            (self.calibration in CALIBRATION_MODES, f"calibration must be one of {CALIBRATION_MODES}"),
            (0.0 <= self.holdout_fraction < 1.0, "holdout_fraction must be in [0, 1)"),
            (self.max_bank_size >= 1, "max_bank_size must be >= 1"),
            (self.max_patches_per_scan >= 1, "max_patches_per_scan must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.roi in ROI_MODES, f"roi must be one of {ROI_MODES}"),
            # Per-scan seeds are seed + a scan index; numpy wants them >= 0, torch within 64 bits.
            (isinstance(self.seed, numbers.Integral) and 0 <= self.seed < MAX_SEED,
             f"seed must be an integer in [0, {MAX_SEED})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def stride(self) -> int:
        """Distance between neighbouring tile origins, in pixels."""
        return max(1, int(round(self.tile_size * (1.0 - self.overlap))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        out["window_percentiles"] = list(self.window_percentiles)
        out["augment"] = list(self.augment)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DetectorConfig":
        """Inverse of ``to_dict``; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "DetectorConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)
