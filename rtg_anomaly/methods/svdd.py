"""Deep SVDD on frozen backbone patch features: a small head pulls clean patches towards a centre; a
patch's distance from the centre is its score.

Ruff et al., "Deep One-Class Classification", ICML 2018. The head has no bias terms and the centre is
fixed before training (the mean of the untrained head's outputs, kept away from zero), so the head cannot
map everything onto the centre with constant output: that collapse is what the bias-free design rules out.

Training reads the clean patch features from a **bounded feature cache** in memory, never the backbone
again: each training view contributes an equal, seeded share of at most ``svdd_cache_rows`` rows in all
(float16, so 100,000 rows of 384 dims take 73 MiB). With ``svdd_pretrain="rotation"`` the head is first
trained, with a throw-away linear classifier, to tell which of four rotations (0/90/180/270 degrees) a
clean tile was turned by, from its patches' mean head output (self-supervised rotation prediction,
Golan & El-Yaniv 2018, Hendrycks et al. 2019); the rotated tiles' features come through the pipeline
(``auxiliary_views``) into a cache of their own. Held-out clean scans do not retrain the head after
calibration (that would change the unit the calibration measured); they are only scored.

Seeded and deterministic on the CPU (same machine and thread count); the GPU is used when the backbone
runs there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import FitPlan, PatchMethod, tile_means

HIDDEN = 256
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-6
BATCH_ROWS = 4096
CENTRE_MIN = 0.1  # centre coordinates closer to zero than this are pushed out (Ruff et al.)
ROTATIONS = ("rot90", "rot180", "rot270")
ROTATION_LABELS = ("upright",) + ROTATIONS


class SVDDHead(torch.nn.Module):
    """Bias-free two-layer head: (n, D) -> (n, svdd_dim), after a fixed standardisation of the input."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.first = torch.nn.Linear(in_dim, HIDDEN, bias=False)
        self.second = torch.nn.Linear(HIDDEN, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.nn.functional.leaky_relu(self.first(x), 0.1))


class DeepSVDD(PatchMethod):
    """Fitted state: input_mean_, input_scale_ float32 (D,); weights_ {"first": (256, D), "second": (d, 256)};
    centre_ float32 (d,); loss_history_ list of per-epoch mean losses (SVDD, and rotation pretraining).
    Parameters (from the config): svdd_dim, svdd_epochs, svdd_pretrain, svdd_cache_rows, seed.
    """

    name = "svdd"

    def __init__(self, config):
        super().__init__(config)
        self._cache: list[torch.Tensor] = []
        self._rotation_cache: list[tuple[torch.Tensor, int]] = []
        self._rows_per_view = 0
        self._views = 0
        self._trained = False
        self._head_on: dict[str, tuple[SVDDHead, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def auxiliary_views(self) -> tuple[str, ...]:
        """Extra views of each training scan the pipeline should pass to ``learn_auxiliary``."""
        return ROTATIONS if self.config.svdd_pretrain == "rotation" else ()

    # ------------------------------------------------------------------ fit
    def begin(self, plan: FitPlan) -> None:
        self._cache, self._rotation_cache, self._views, self._trained = [], [], 0, False
        self._rows_per_view = max(1, self.config.svdd_cache_rows // max(1, plan.training_views))
        self.loss_history_ = {"svdd": [], "rotation": []}

    def _sample(self, features: torch.Tensor, valid: torch.Tensor, salt: int) -> torch.Tensor:
        rows = features[valid]
        if rows.shape[0] > self._rows_per_view:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + salt)
            keep = torch.randperm(rows.shape[0], generator=generator)[: self._rows_per_view]
            rows = rows[keep.to(rows.device)]
        return rows.to(torch.float16).cpu()

    def learn(self, features: torch.Tensor, valid: torch.Tensor) -> None:
        if self._trained:  # held-out scans after calibration: scored, not learned (see module docstring)
            return
        self._cache.append(self._sample(features, valid, self._views))
        self._views += 1

    def learn_auxiliary(self, view: str, features: torch.Tensor, valid: torch.Tensor) -> None:
        """A training scan ("upright") or one of its rotated views (``auxiliary_views``): per tile, the
        mean of its patches inside the scan, labelled by the rotation (at most 4 x tiles rows)."""
        if self._trained:
            return
        seen = valid.flatten(1).any(1)  # tiles with a patch that counts (a ROI may leave a tile none)
        tiles = tile_means(features[seen], valid[seen])
        self._rotation_cache.append((tiles.to(torch.float16).cpu(), ROTATION_LABELS.index(view)))

    def finish(self, device: torch.device) -> None:
        if self._trained:
            return
        config = self.config
        data = torch.cat(self._cache).float()
        self._cache = []
        generator = torch.Generator().manual_seed(config.seed)  # every draw below comes from it
        mean = data.mean(0)
        scale = data.std(0).clamp_min(1e-6)
        head = SVDDHead(data.shape[1], config.svdd_dim)
        _init(head, generator)
        head = head.to(device)
        mean_d, scale_d = mean.to(device), scale.to(device)
        if self.auxiliary_views and self._rotation_cache:
            self._pretrain_rotation(head, mean_d, scale_d, device, generator)
        with torch.no_grad():
            outputs = torch.cat([head((data[i:i + BATCH_ROWS].to(device) - mean_d) / scale_d)
                                 for i in range(0, data.shape[0], BATCH_ROWS)])
            centre = outputs.mean(0)
            centre = torch.where(centre.abs() < CENTRE_MIN, torch.where(centre < 0, -CENTRE_MIN, CENTRE_MIN), centre)
        optimiser = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        for epoch in self._epochs(config.svdd_epochs, "svdd"):
            order = torch.randperm(data.shape[0], generator=generator)
            total = 0.0
            for i in range(0, data.shape[0], BATCH_ROWS):
                batch = (data[order[i:i + BATCH_ROWS]].to(device) - mean_d) / scale_d
                loss = ((head(batch) - centre) ** 2).sum(1).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * batch.shape[0]
            self.loss_history_["svdd"].append(total / data.shape[0])
        self.input_mean_, self.input_scale_ = mean.numpy(), scale.numpy()
        self.weights_ = {"first": head.first.weight.detach().cpu().numpy().copy(),
                         "second": head.second.weight.detach().cpu().numpy().copy()}
        self.centre_ = centre.detach().cpu().numpy().astype(np.float32)
        self._trained = True
        self._head_on = {}

    def _pretrain_rotation(self, head: SVDDHead, mean: torch.Tensor, scale: torch.Tensor, device, generator) -> None:
        """Train ``head`` (with a linear classifier dropped afterwards) to predict a tile's rotation."""
        tiles = torch.cat([t for t, _ in self._rotation_cache]).float()
        labels = torch.cat([torch.full((t.shape[0],), label, dtype=torch.long) for t, label in self._rotation_cache])
        self._rotation_cache = []
        classifier = torch.nn.Linear(head.second.out_features, len(ROTATION_LABELS))
        _init(classifier, generator)
        classifier = classifier.to(device)
        optimiser = torch.optim.Adam(list(head.parameters()) + list(classifier.parameters()), lr=LEARNING_RATE)
        tiles, labels = tiles.to(device), labels.to(device)
        for _ in self._epochs(self.config.svdd_epochs, "rotation pretraining"):
            order = torch.randperm(tiles.shape[0], generator=generator).to(device)
            total = 0.0
            for i in range(0, tiles.shape[0], 256):
                index = order[i:i + 256]
                logits = classifier(head((tiles[index] - mean) / scale))
                loss = torch.nn.functional.cross_entropy(logits, labels[index])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * index.shape[0]
            self.loss_history_["rotation"].append(total / tiles.shape[0])

    def _epochs(self, n: int, what: str):
        from tqdm import tqdm

        return tqdm(range(n), desc=what, unit="epoch", disable=not self.show_progress, leave=False)

    # ------------------------------------------------------------------ score
    def _head(self, device: torch.device) -> tuple[SVDDHead, torch.Tensor, torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._head_on:
            head = SVDDHead(self.weights_["first"].shape[1], self.weights_["second"].shape[0])
            with torch.no_grad():
                head.first.weight.copy_(torch.from_numpy(self.weights_["first"]))
                head.second.weight.copy_(torch.from_numpy(self.weights_["second"]))
            self._head_on[key] = (head.to(device).eval(), torch.from_numpy(self.input_mean_).to(device),
                                  torch.from_numpy(self.input_scale_).to(device),
                                  torch.from_numpy(self.centre_).to(device))
        return self._head_on[key]

    def score(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        head, mean, scale, centre = self._head(features.device)
        b, h, w, d = features.shape
        with torch.no_grad():
            out = head((features.reshape(-1, d).float() - mean) / scale)
            return ((out - centre) ** 2).sum(1).sqrt().reshape(b, h, w)

    # ------------------------------------------------------------------ state
    def params(self) -> dict:
        config = self.config
        return {"svdd_dim": config.svdd_dim, "svdd_epochs": config.svdd_epochs, "svdd_pretrain": config.svdd_pretrain,
                "svdd_cache_rows": config.svdd_cache_rows, "hidden": HIDDEN, "learning_rate": LEARNING_RATE,
                "weight_decay": WEIGHT_DECAY, "batch_rows": BATCH_ROWS, "seed": config.seed}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"svdd_input_mean": self.input_mean_, "svdd_input_scale": self.input_scale_,
                "svdd_first": self.weights_["first"], "svdd_second": self.weights_["second"],
                "svdd_centre": self.centre_}

    @classmethod
    def from_arrays(cls, config, arrays: dict[str, np.ndarray], feature_dim: int) -> "DeepSVDD":
        mean, scale = arrays["svdd_input_mean"], arrays["svdd_input_scale"]
        first, second, centre = arrays["svdd_first"], arrays["svdd_second"], arrays["svdd_centre"]
        if (mean.shape != (feature_dim,) or scale.shape != (feature_dim,) or first.ndim != 2
                or first.shape[1] != feature_dim or second.ndim != 2 or second.shape[1] != first.shape[0]
                or centre.shape != (second.shape[0],)
                or not all(a.dtype.kind == "f" and np.isfinite(a).all() for a in (mean, scale, first, second, centre))
                or not (scale > 0).all()):
            raise ValueError("the Deep SVDD arrays do not fit each other or the backbone's feature size")
        method = cls(config)
        method.input_mean_ = np.ascontiguousarray(mean, np.float32)
        method.input_scale_ = np.ascontiguousarray(scale, np.float32)
        method.weights_ = {"first": np.ascontiguousarray(first, np.float32),
                           "second": np.ascontiguousarray(second, np.float32)}
        method.centre_ = np.ascontiguousarray(centre, np.float32)
        method._trained = True
        return method

    def fit_info(self) -> dict:
        history = getattr(self, "loss_history_", None)
        return {"loss_history": history} if history else {}

    def describe(self) -> str:
        losses = getattr(self, "loss_history_", {}).get("svdd", [])
        tail = f", loss {losses[0]:.3g} -> {losses[-1]:.3g}" if losses else ""
        return f"head {self.weights_['first'].shape[1]}->{HIDDEN}->{self.centre_.shape[0]}{tail}"


def _init(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded Kaiming-uniform weights (torch's own default init draws from the global generator)."""
    for parameter in module.parameters():
        if parameter.ndim == 2:
            bound = 1.0 / math.sqrt(parameter.shape[1])
            with torch.no_grad():
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
        else:
            with torch.no_grad():
                parameter.zero_()
