"""Pixel reconstruction: a transformer GAN learns to draw clean tiles, an encoder maps a tile to the latent
that draws it, and the residual ``|tile - drawing|`` is the anomaly map (``--method reconstruction
--target pixels``, the TransGAN / AnoGAN line; backbone ``"pixels"``, see ``pixel_backbone.py``).

* **Generator** (after TransGAN, Jiang et al. 2021, kept small): a latent ``z`` (``recon_latent`` values) is
  projected to one token per cell of the tile (8 x 8 for a 64 px tile), ``recon_layers`` transformer blocks
  of width ``recon_dim`` mix them, and each token is drawn as its 8 x 8 grey cell (sigmoid).
* **Discriminator**: a small strided CNN (DCGAN style, no normalisation); its last feature map is also the
  "perceptual" feature of f-AnoGAN's loss. Trained with the non-saturating GAN loss.
* **Encoder** (f-AnoGAN's izi_f, Schlegl et al. 2019): trained after the GAN, with the generator and the
  discriminator frozen, to minimise ``|x - G(E(x))|^2 + kappa |f(x) - f(G(E(x)))|^2`` (kappa:
  ``recon_feature_weight``), so a tile needs one encoder pass, not AnoGAN's iterative search.
* **Refinement** (AnoGAN, Schlegl et al. 2017), optional for small images: ``recon_refine_steps`` Adam steps
  on each tile's latent from the encoder's, minimising ``L1 + kappa x feature loss``.
* **Score** of a cell: the mean absolute residual of its pixels plus kappa times the tile's feature residual
  (the same for every cell of the tile, as f-AnoGAN's image score adds it), so maps stay local and the
  image score keeps f-AnoGAN's two terms.

Training reads the tiles from a bounded cache (at most ``recon_cache_rows`` cells, float16, seeded share per
training view); held-out scans are scored, not learned (their scores set the calibration unit). Epochs:
``recon_epochs`` for the GAN, and as many for the encoder. Seeded and deterministic on the CPU (same machine
and thread count); the GPU when the pipeline runs there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..backbone.pixel_backbone import PIXEL_CELL, cells_to_images
from .base import FitPlan, PatchMethod, TileCache
from .reconstruction import _init

HEADS = 4
MLP_RATIO = 2
GAN_LEARNING_RATE = 2e-4
GAN_BETAS = (0.5, 0.999)
ENCODER_LEARNING_RATE = 1e-3
REFINE_LEARNING_RATE = 5e-2
BATCH_TILES = 32
CHANNELS = (32, 64, 128)  # discriminator and encoder trunk widths, each halving the side


class GeneratorBlock(torch.nn.Module):
    """Pre-norm transformer block (softmax attention over the tile's cell tokens)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attention = torch.nn.MultiheadAttention(dim, HEADS, batch_first=True)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, MLP_RATIO * dim), torch.nn.GELU(),
                                       torch.nn.Linear(MLP_RATIO * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class Generator(torch.nn.Module):
    """(B, latent) -> (B, 1, h * PIXEL_CELL, w * PIXEL_CELL) grey tiles in (0, 1)."""

    def __init__(self, latent: int, dim: int, layers: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        tokens = grid[0] * grid[1]
        self.project = torch.nn.Linear(latent, tokens * dim)
        self.position = torch.nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = torch.nn.ModuleList(GeneratorBlock(dim) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)
        self.draw = torch.nn.Linear(dim, PIXEL_CELL * PIXEL_CELL)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        x = self.project(z).reshape(b, self.position.shape[1], -1) + self.position
        for block in self.blocks:
            x = block(x)
        cells = torch.sigmoid(self.draw(self.norm(x))).reshape(b, *self.grid, PIXEL_CELL * PIXEL_CELL)
        return cells_to_images(cells)


def _trunk_cells(grid: tuple[int, int]) -> int:
    """Cells of the trunk's output map for a tile of ``grid`` pixel cells (each stride-2 layer halves the side)."""
    shrink = 2 ** len(CHANNELS)
    return (grid[0] * PIXEL_CELL // shrink) * (grid[1] * PIXEL_CELL // shrink)


def _trunk() -> torch.nn.Sequential:
    layers, previous = [], 1
    for width in CHANNELS:
        layers += [torch.nn.Conv2d(previous, width, 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2)]
        previous = width
    return torch.nn.Sequential(*layers)


class Discriminator(torch.nn.Module):
    """(B, 1, S, S) -> ((B,) real/fake logits, (B, C, S/8, S/8) features for the perceptual loss).

    The head sees the whole feature map (as DCGAN's last convolution does), not its average: an averaged
    map cannot tell a generator that draws one image for every latent from the varied clean tiles."""

    def __init__(self, grid: tuple[int, int]):
        super().__init__()
        self.trunk = _trunk()
        self.head = torch.nn.Linear(CHANNELS[-1] * _trunk_cells(grid), 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1)).squeeze(1)


class Encoder(torch.nn.Module):
    """(B, 1, S, S) -> (B, latent): the latent the generator draws the tile from."""

    def __init__(self, latent: int, grid: tuple[int, int]):
        super().__init__()
        self.trunk = _trunk()
        self.head = torch.nn.Linear(CHANNELS[-1] * _trunk_cells(grid), latent)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images).flatten(1))


class Networks(torch.nn.Module):
    """The three networks under one state dict (bundle arrays named after its parameter names)."""

    def __init__(self, latent: int, dim: int, layers: int, grid: tuple[int, int]):
        super().__init__()
        self.generator = Generator(latent, dim, layers, grid)
        self.discriminator = Discriminator(grid)
        self.encoder = Encoder(latent, grid)


def _seeded_init(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Linear and LayerNorm as the feature reconstruction seeds them; convolutions uniform in
    +-1/sqrt(fan_in), biases 0; attention projections the same way; position embeddings small normal."""
    _init(module, generator)
    for sub in module.modules():
        with torch.no_grad():
            if isinstance(sub, torch.nn.Conv2d):
                bound = 1.0 / math.sqrt(sub.in_channels * sub.kernel_size[0] * sub.kernel_size[1])
                sub.weight.copy_(torch.rand(sub.weight.shape, generator=generator) * 2 * bound - bound)
                sub.bias.zero_()
            elif isinstance(sub, torch.nn.MultiheadAttention):
                bound = 1.0 / math.sqrt(sub.embed_dim)
                sub.in_proj_weight.copy_(torch.rand(sub.in_proj_weight.shape, generator=generator) * 2 * bound - bound)
                sub.in_proj_bias.zero_()
            elif isinstance(sub, Generator):
                sub.position.copy_(torch.randn(sub.position.shape, generator=generator) * 0.02)


class PixelReconstruction(PatchMethod):
    """Fitted state: weights_ {parameter name: float32 array} of ``Networks`` (generator, discriminator,
    encoder); loss_history_ {"discriminator", "generator", "encoder": per-epoch mean losses}.
    Parameters (from the config): recon_target, recon_dim, recon_layers, recon_latent, recon_epochs,
    recon_feature_weight, recon_refine_steps, recon_cache_rows, seed; the grid comes from the arrays.
    """

    name = "reconstruction"

    def __init__(self, config):
        super().__init__(config)
        self._cache: TileCache | None = None
        self._trained = False
        self._networks_on: dict[str, Networks] = {}

    # ------------------------------------------------------------------ fit
    def begin(self, plan: FitPlan) -> None:
        self._cache, self._trained = TileCache(self.config.recon_cache_rows, plan.training_views, self.config.seed), False
        self.loss_history_ = {"discriminator": [], "generator": [], "encoder": []}

    def learn(self, features: torch.Tensor, valid: torch.Tensor) -> None:
        """Cache this view's tiles with a cell inside the scan (a seeded subset beyond its share). A tile
        reaches past the scan only when the scan is smaller than a tile, and is then padded with the scan's
        mirror image (``tiling.pad_to_tile``), which is clean content to learn from."""
        if self._trained:  # held-out scans after calibration: scored, not learned
            return
        self._cache.add(features, valid)

    def finish(self, device: torch.device) -> None:
        if self._trained:
            return
        config = self.config
        cells, _ = self._cache.take()
        if cells.shape[0] == 0:
            raise ValueError("no clean tile has a cell inside its scan")
        grid = (int(cells.shape[1]), int(cells.shape[2]))
        images = cells_to_images(cells)  # (N, 1, S, S) in [0, 1]; padding outside the scan is mirrored content
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seed the global generator for this fit only
            torch.manual_seed(config.seed)
            if device.type == "cuda":
                torch.cuda.manual_seed(config.seed)
            generator = torch.Generator().manual_seed(config.seed)
            networks = Networks(config.recon_latent, config.recon_dim, config.recon_layers, grid)
            _seeded_init(networks, generator)
            networks = networks.to(device).train()
            self._train_gan(networks, images, generator, device)
            self._train_encoder(networks, images, generator, device)
        self.grid_ = grid
        self.weights_ = {name: value.detach().cpu().numpy().astype(np.float32).copy()
                         for name, value in networks.state_dict().items()}
        self._trained = True
        self._networks_on = {}

    def _epochs(self, desc: str, n_tiles: int):
        """``recon_epochs`` passes over the cached tiles, or more when they give fewer than
        ``recon_min_steps`` batches (a GAN needs steps, and a few small clean scans give few batches)."""
        from tqdm import tqdm

        batches = math.ceil(n_tiles / BATCH_TILES)
        epochs = max(self.config.recon_epochs, math.ceil(self.config.recon_min_steps / batches))
        return tqdm(range(epochs), desc=desc, unit="epoch", disable=not self.show_progress, leave=False)

    def _train_gan(self, networks: Networks, images: torch.Tensor, generator: torch.Generator,
                   device: torch.device) -> None:
        g, d = networks.generator, networks.discriminator
        g_optimiser = torch.optim.Adam(g.parameters(), lr=GAN_LEARNING_RATE, betas=GAN_BETAS)
        d_optimiser = torch.optim.Adam(d.parameters(), lr=GAN_LEARNING_RATE, betas=GAN_BETAS)
        n = images.shape[0]
        for _ in self._epochs("reconstruction GAN", n):
            order = torch.randperm(n, generator=generator)
            d_total, g_total, batches = 0.0, 0.0, 0
            for i in range(0, n, BATCH_TILES):
                real = images[order[i:i + BATCH_TILES]].to(device)
                z = torch.randn(real.shape[0], self.config.recon_latent, generator=generator).to(device)
                fake = g(z)
                d_loss = (F.softplus(-d.logits(real)) + F.softplus(d.logits(fake.detach()))).mean()
                d_optimiser.zero_grad(set_to_none=True)
                d_loss.backward()
                d_optimiser.step()
                g_loss = F.softplus(-d.logits(fake)).mean()  # non-saturating
                g_optimiser.zero_grad(set_to_none=True)
                g_loss.backward()
                g_optimiser.step()
                d_total, g_total, batches = d_total + float(d_loss.detach()), g_total + float(g_loss.detach()), batches + 1
            self.loss_history_["discriminator"].append(d_total / max(batches, 1))
            self.loss_history_["generator"].append(g_total / max(batches, 1))

    def _train_encoder(self, networks: Networks, images: torch.Tensor, generator: torch.Generator,
                       device: torch.device) -> None:
        g, d, e = networks.generator, networks.discriminator, networks.encoder
        g.requires_grad_(False)
        d.requires_grad_(False)
        optimiser = torch.optim.Adam(e.parameters(), lr=ENCODER_LEARNING_RATE)
        n = images.shape[0]
        kappa = self.config.recon_feature_weight
        for _ in self._epochs("reconstruction encoder", n):
            order = torch.randperm(n, generator=generator)
            total, batches = 0.0, 0
            for i in range(0, n, BATCH_TILES):
                real = images[order[i:i + BATCH_TILES]].to(device)
                drawn = g(e(real))
                loss = F.mse_loss(drawn, real) + kappa * F.mse_loss(d.features(drawn), d.features(real))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total, batches = total + float(loss.detach()), batches + 1
            self.loss_history_["encoder"].append(total / max(batches, 1))
        g.requires_grad_(True)
        d.requires_grad_(True)

    # ------------------------------------------------------------------ score
    def _networks(self, device: torch.device) -> Networks:
        key = str(device)
        if key not in self._networks_on:
            networks = _networks_for(self.config, self.grid_)
            networks.load_state_dict({name: torch.from_numpy(value) for name, value in self.weights_.items()})
            self._networks_on[key] = networks.to(device).eval().requires_grad_(False)
        return self._networks_on[key]

    def reconstruct(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """What a clean tile would look like: (B, h, w, PIXEL_CELL^2) cells -> float32 (B, 1, S, S) in
        (0, 1), S = h * PIXEL_CELL (the encoder's latent, refined ``recon_refine_steps`` times)."""
        networks = self._networks(features.device)
        images = cells_to_images(features.float())
        with torch.no_grad():
            z = networks.encoder(images)
        steps = self.config.recon_refine_steps
        if steps:
            z = self._refine(networks, images, z, steps)
        with torch.no_grad():
            return networks.generator(z)

    def _refine(self, networks: Networks, images: torch.Tensor, z: torch.Tensor, steps: int) -> torch.Tensor:
        """AnoGAN's latent search from the encoder's latent: Adam on L1 + kappa x feature loss per tile."""
        kappa = self.config.recon_feature_weight
        z = z.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=REFINE_LEARNING_RATE)
        with torch.enable_grad(), torch.inference_mode(False):
            target_features = networks.discriminator.features(images).detach()
            for _ in range(steps):
                drawn = networks.generator(z)
                per_tile = ((drawn - images).abs().mean((1, 2, 3))
                            + kappa * (networks.discriminator.features(drawn) - target_features).pow(2).mean((1, 2, 3)))
                optimiser.zero_grad(set_to_none=True)
                per_tile.sum().backward()  # tiles are independent: the sum's gradient is each tile's own
                optimiser.step()
        return z.detach()

    def score(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        networks = self._networks(features.device)
        images = cells_to_images(features.float())
        drawn = self.reconstruct(features, valid)
        with torch.no_grad():
            b, h, w, _ = features.shape
            residual = F.avg_pool2d((images - drawn).abs(), PIXEL_CELL).reshape(b, h, w)
            feature_residual = (networks.discriminator.features(drawn)
                                - networks.discriminator.features(images)).pow(2).mean((1, 2, 3))
            return (residual + self.config.recon_feature_weight * feature_residual[:, None, None]).float()

    # ------------------------------------------------------------------ state
    def params(self) -> dict:
        config = self.config
        return {"recon_target": config.recon_target, "recon_dim": config.recon_dim,
                "recon_layers": config.recon_layers, "recon_latent": config.recon_latent,
                "recon_epochs": config.recon_epochs, "recon_min_steps": config.recon_min_steps,
                "recon_feature_weight": config.recon_feature_weight,
                "recon_refine_steps": config.recon_refine_steps, "recon_cache_rows": config.recon_cache_rows,
                "heads": HEADS, "mlp_ratio": MLP_RATIO, "channels": list(CHANNELS), "cell": PIXEL_CELL,
                "gan_learning_rate": GAN_LEARNING_RATE, "encoder_learning_rate": ENCODER_LEARNING_RATE,
                "batch_tiles": BATCH_TILES, "seed": config.seed}

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"pixel_grid": np.asarray(self.grid_, np.int64)}
        arrays.update({_array_name(name): value for name, value in self.weights_.items()})
        return arrays

    @classmethod
    def from_arrays(cls, config, arrays: dict[str, np.ndarray], feature_dim: int) -> "PixelReconstruction":
        grid = arrays["pixel_grid"]
        if (feature_dim != PIXEL_CELL * PIXEL_CELL or grid.shape != (2,) or grid.dtype.kind not in "iu"
                or not ((grid >= 1) & (grid <= 512)).all()):
            raise ValueError("the pixel reconstruction arrays do not fit the pixels backbone")
        grid = (int(grid[0]), int(grid[1]))
        expected = _networks_for(config, grid).state_dict()
        weights = {name: arrays[_array_name(name)] for name in expected}  # KeyError names a missing one
        if (any(weights[name].shape != tuple(tensor.shape) for name, tensor in expected.items())
                or not all(a.dtype.kind == "f" and np.isfinite(a).all() for a in weights.values())):
            raise ValueError("the pixel reconstruction arrays do not fit the stored architecture")
        method = cls(config)
        method.grid_ = grid
        method.weights_ = {name: np.ascontiguousarray(value, np.float32) for name, value in weights.items()}
        method._trained = True
        return method

    def fit_info(self) -> dict:
        history = getattr(self, "loss_history_", None)
        return {"loss_history": history} if history and history["encoder"] else {}

    def describe(self) -> str:
        losses = getattr(self, "loss_history_", {}).get("encoder", [])
        tail = f", encoder loss {losses[0]:.3g} -> {losses[-1]:.3g}" if losses else ""
        n = sum(value.size for value in self.weights_.values())
        side = self.grid_[0] * PIXEL_CELL
        return f"pixel GAN on {side} px tiles, latent {self.config.recon_latent} ({n / 1e6:.2f} M weights){tail}"


def _networks_for(config, grid: tuple[int, int]) -> Networks:
    return Networks(config.recon_latent, config.recon_dim, config.recon_layers, grid)


def _array_name(parameter: str) -> str:
    """Bundle array name of a network parameter (``generator.blocks.0.norm1.weight`` ->
    ``pixel_generator_blocks_0_norm1_weight``)."""
    return "pixel_" + parameter.replace(".", "_")
