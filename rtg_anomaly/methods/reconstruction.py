"""Feature reconstruction: a small transformer rebuilds the clean patch features of a tile through a noisy
bottleneck; a patch it cannot rebuild is anomalous (``--method reconstruction``, ``recon_target="features"``).

After Dinomaly (Guo et al., "Dinomaly: The Less Is More Philosophy in Multi-Class Unsupervised Anomaly
Detection", CVPR 2025), kept small for a CPU:

* the frozen backbone's patch features of a tile (the configured blocks, concatenated) are standardised
  per channel and projected to ``recon_dim`` by a bottleneck MLP with dropout (``recon_dropout``): the
  noise keeps the decoder from learning the identity, which would rebuild anomalies too;
* ``recon_layers`` transformer blocks with **linear attention** (an ELU + 1 kernel, as Dinomaly argues:
  attention that cannot focus on the token itself spreads over the tile's normal context) rebuild each
  patch from the whole tile; patches outside the scan are masked out of the attention and the loss;
* a linear head maps back to the feature size; the loss and the patch score are the cosine distance
  ``1 - cos(rebuilt, feature)`` of each standardised patch feature.

Left out of the paper: its group ("loose") reconstruction over several encoder blocks and its hard-patch
mining of the loss, and its 8-block decoder on a ViT-B (here 2 blocks of width 192).

Training reads the tiles from a **bounded feature cache** in memory (never the backbone again): each
training view gives an equal, seeded share of at most ``recon_cache_rows`` patch rows in all, whole tiles
(float16: 200,000 rows of 384 dims take 147 MiB). Held-out clean scans do not retrain the network after
calibration (that would change the unit the calibration measured); they are only scored. Seeded and
deterministic on the CPU (same machine and thread count): initial weights, the tile order and the dropout
masks all come from the config's seed; the GPU is used when the backbone runs there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import FitPlan, PatchMethod, TileCache

HEADS = 4
MLP_RATIO = 2
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
BATCH_TILES = 8


class LinearAttention(torch.nn.Module):
    """Multi-head linear attention (kernel ``elu(x) + 1``) over the tokens of a tile, O(tokens x dim^2)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C); keep: (B, N) float, 1 for a token that may be attended to, 0 for padding."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q = torch.nn.functional.elu(q) + 1.0
        k = (torch.nn.functional.elu(k) + 1.0) * keep[:, None, :, None]
        context = k.transpose(-2, -1) @ v  # (B, H, c/H, c/H)
        normaliser = q @ k.sum(2, keepdim=True).transpose(-2, -1)  # (B, H, N, 1)
        y = (q @ context) / normaliser.clamp_min(1e-6)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class DecoderBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attention = LinearAttention(dim, heads)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, MLP_RATIO * dim), torch.nn.GELU(),
                                       torch.nn.Linear(MLP_RATIO * dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class FeatureRebuilder(torch.nn.Module):
    """(B, N, D) standardised patch features -> (B, N, D) rebuilt ones, through a dropout bottleneck."""

    def __init__(self, feature_dim: int, dim: int, layers: int, dropout: float):
        super().__init__()
        self.bottleneck = torch.nn.Sequential(torch.nn.Linear(feature_dim, dim), torch.nn.GELU(),
                                              torch.nn.Dropout(dropout), torch.nn.Linear(dim, dim),
                                              torch.nn.Dropout(dropout))
        self.blocks = torch.nn.ModuleList(DecoderBlock(dim, HEADS) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, feature_dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.bottleneck(x)
        for block in self.blocks:
            h = block(h, keep)
        return self.head(self.norm(h))


def cosine_distance(rebuilt: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(..., D), (..., D) -> (...) ``1 - cos``, in [0, 2]."""
    return 1.0 - torch.nn.functional.cosine_similarity(rebuilt, features, dim=-1, eps=1e-6)


class FeatureReconstruction(PatchMethod):
    """Fitted state: input_mean_, input_scale_ float32 (D,); weights_ {parameter name: float32 array} of a
    ``FeatureRebuilder``; loss_history_ {"reconstruction": per-epoch mean loss}.
    Parameters (from the config): recon_target, recon_dim, recon_layers, recon_dropout, recon_epochs,
    recon_cache_rows, seed.
    """

    name = "reconstruction"

    def __init__(self, config):
        super().__init__(config)
        self._cache: TileCache | None = None
        self._trained = False
        self._network_on: dict[str, tuple[FeatureRebuilder, torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ fit
    def begin(self, plan: FitPlan) -> None:
        self._cache, self._trained = TileCache(self.config.recon_cache_rows, plan.training_views, self.config.seed), False
        self.loss_history_ = {"reconstruction": []}

    def learn(self, features: torch.Tensor, valid: torch.Tensor) -> None:
        """Cache whole tiles of this view (a seeded subset when they exceed its share of the bound)."""
        if self._trained:  # held-out scans after calibration: scored, not learned (see module docstring)
            return
        self._cache.add(features, valid)

    def finish(self, device: torch.device) -> None:
        if self._trained:
            return
        config = self.config
        tiles, valid = self._cache.take()
        b, h, w, d = tiles.shape
        tiles, valid = tiles.reshape(b, h * w, d), valid.reshape(b, h * w)
        rows = tiles[valid]
        mean, scale = rows.mean(0), rows.std(0).clamp_min(1e-6) if rows.shape[0] > 1 else torch.ones(d)
        tiles = (tiles - mean) / scale
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout draws from the global generator: seed it here only
            torch.manual_seed(config.seed)
            if device.type == "cuda":
                torch.cuda.manual_seed(config.seed)
            generator = torch.Generator().manual_seed(config.seed)
            network = FeatureRebuilder(d, config.recon_dim, config.recon_layers, config.recon_dropout)
            _init(network, generator)
            network = network.to(device).train()
            optimiser = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
            steps = config.recon_epochs * math.ceil(b / BATCH_TILES)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
            for _ in self._epochs(config.recon_epochs):
                order = torch.randperm(b, generator=generator)
                total, counted = 0.0, 0.0
                for i in range(0, b, BATCH_TILES):
                    batch, keep = tiles[order[i:i + BATCH_TILES]].to(device), valid[order[i:i + BATCH_TILES]].to(device)
                    weights = keep.float()
                    loss = (cosine_distance(network(batch, weights), batch) * weights).sum() / weights.sum().clamp_min(1)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                    total += float(loss.detach()) * float(weights.sum())
                    counted += float(weights.sum())
                self.loss_history_["reconstruction"].append(total / max(counted, 1.0))
        self.input_mean_, self.input_scale_ = mean.numpy().astype(np.float32), scale.numpy().astype(np.float32)
        self.weights_ = {name: value.detach().cpu().numpy().astype(np.float32).copy()
                         for name, value in network.state_dict().items()}
        self._trained = True
        self._network_on = {}

    def _epochs(self, n: int):
        from tqdm import tqdm

        return tqdm(range(n), desc="reconstruction", unit="epoch", disable=not self.show_progress, leave=False)

    # ------------------------------------------------------------------ score
    def _network(self, device: torch.device) -> tuple[FeatureRebuilder, torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._network_on:
            network = _network_for(self.config, self.input_mean_.shape[0])
            network.load_state_dict({name: torch.from_numpy(value) for name, value in self.weights_.items()})
            self._network_on[key] = (network.to(device).eval(), torch.from_numpy(self.input_mean_).to(device),
                                     torch.from_numpy(self.input_scale_).to(device))
        return self._network_on[key]

    def score(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        network, mean, scale = self._network(features.device)
        b, h, w, d = features.shape
        with torch.no_grad():
            x = (features.reshape(b, h * w, d).float() - mean) / scale
            keep = valid.reshape(b, h * w).float()
            return cosine_distance(network(x, keep), x).reshape(b, h, w).float()

    # ------------------------------------------------------------------ state
    def params(self) -> dict:
        config = self.config
        return {"recon_target": config.recon_target, "recon_dim": config.recon_dim,
                "recon_layers": config.recon_layers, "recon_dropout": config.recon_dropout,
                "recon_epochs": config.recon_epochs, "recon_cache_rows": config.recon_cache_rows,
                "heads": HEADS, "mlp_ratio": MLP_RATIO, "learning_rate": LEARNING_RATE,
                "weight_decay": WEIGHT_DECAY, "batch_tiles": BATCH_TILES, "seed": config.seed}

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"recon_input_mean": self.input_mean_, "recon_input_scale": self.input_scale_}
        arrays.update({_array_name(name): value for name, value in self.weights_.items()})
        return arrays

    @classmethod
    def from_arrays(cls, config, arrays: dict[str, np.ndarray], feature_dim: int) -> "FeatureReconstruction":
        mean, scale = arrays["recon_input_mean"], arrays["recon_input_scale"]
        expected = _network_for(config, feature_dim).state_dict()
        weights = {name: arrays[_array_name(name)] for name in expected}  # KeyError names a missing one
        if (mean.shape != (feature_dim,) or scale.shape != (feature_dim,)
                or any(weights[name].shape != tuple(tensor.shape) for name, tensor in expected.items())
                or not all(a.dtype.kind == "f" and np.isfinite(a).all() for a in (mean, scale, *weights.values()))
                or not (scale > 0).all()):
            raise ValueError("the reconstruction arrays do not fit each other, the stored architecture or the "
                             "backbone's feature size")
        method = cls(config)
        method.input_mean_ = np.ascontiguousarray(mean, np.float32)
        method.input_scale_ = np.ascontiguousarray(scale, np.float32)
        method.weights_ = {name: np.ascontiguousarray(value, np.float32) for name, value in weights.items()}
        method._trained = True
        return method

    def fit_info(self) -> dict:
        history = getattr(self, "loss_history_", None)
        return {"loss_history": history} if history else {}

    def describe(self) -> str:
        losses = getattr(self, "loss_history_", {}).get("reconstruction", [])
        tail = f", loss {losses[0]:.3g} -> {losses[-1]:.3g}" if losses else ""
        n = sum(value.size for value in self.weights_.values())
        return (f"feature rebuilder {self.input_mean_.shape[0]}->{self.config.recon_dim} x "
                f"{self.config.recon_layers} blocks ({n / 1e6:.2f} M weights){tail}")


def _network_for(config, feature_dim: int) -> FeatureRebuilder:
    return FeatureRebuilder(feature_dim, config.recon_dim, config.recon_layers, config.recon_dropout)


def _array_name(parameter: str) -> str:
    """Bundle array name of a network parameter (``blocks.0.mlp.0.weight`` -> ``recon_blocks_0_mlp_0_weight``)."""
    return "recon_" + parameter.replace(".", "_")


def _init(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded weights: linear layers uniform in +-1/sqrt(fan_in) (torch's bound), biases 0, LayerNorms 1/0."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            bound = 1.0 / math.sqrt(sub.in_features)
            with torch.no_grad():
                sub.weight.copy_(torch.rand(sub.weight.shape, generator=generator) * 2 * bound - bound)
                sub.bias.zero_()
        elif isinstance(sub, torch.nn.LayerNorm):
            with torch.no_grad():
                sub.weight.fill_(1.0)
                sub.bias.zero_()
