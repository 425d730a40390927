"""Shared fixtures: a tiny random backbone, a synthetic dataset, and the real shared data."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly import Detector, DetectorConfig
from rtg_anomaly.scans.synthetic import write_demo_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent

# A 2-block, 32-wide ViT with random (seeded) weights: fast enough for unit tests.
TINY_MODEL = dict(depth=2, embed_dim=32, num_heads=2)


def tiny_config(**changes) -> DetectorConfig:
    """Detector settings with the tiny random backbone on 64 px tiles."""
    base = dict(backbone="vit_small_patch14_dinov2", weights="random", model_kwargs=TINY_MODEL, layers=(1,),
                tile_size=64, input_size=56, pca_dim=16, batch_size=8)
    base.update(changes)
    return DetectorConfig(**base)


def load_script(name: str):
    """``scripts/<name>.py`` imported as module ``name`` (registered in ``sys.modules`` first, as dataclasses
    defined in it need)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_crops(folder, n: int, size: int = 24, seed: int = 0, blob: bool = False) -> list:
    """``n`` small 8-bit crops of one textured material (a bright square in the middle with ``blob``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    paths = []
    for i in range(n):
        base = 120 + 40 * np.sin(xx / 3.0 + rng.uniform(0, 6)) + rng.normal(0, 6, (size, size))
        if blob:
            base[size // 3: 2 * size // 3, size // 3: 2 * size // 3] += 90
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def replace_bundle_array(folder: Path, name: str, array) -> None:
    """Swap a bundle's array file and make its manifest entry (and the seal) match: checksums all agree, so
    only the loader's own checks can refuse it."""
    import hashlib
    import io
    import json

    from rtg_anomaly.bundle import seal

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    (folder / f"{name}.npy").write_bytes(buffer.getvalue())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["arrays"][name].update(shape=list(array.shape), dtype=str(array.dtype),
                                    sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))


TINY_CLI_FLAGS = ["--weights", "random", "--tile-size", "64", "--input-size", "56", "--layers", "1",
                  "--pca-dim", "16", "--quiet"]


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory) -> Path:
    """Converted-model cache of this test session (never the user's ~/.cache)."""
    root = tmp_path_factory.mktemp("model_cache")
    os.environ["RTG_ANOMALY_CACHE_DIR"] = str(root)
    return root


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small synthetic dataset in MVTec layout (8-bit BMP scans, 96 px high)."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, n_clean_train=5, n_clean_test=2, n_anomalous=2, height=96, seed=3, fmt="bmp")
    return root


@pytest.fixture(scope="session")
def tiny_detector(demo_data) -> Detector:
    """The tiny detector fitted on the synthetic clean scans."""
    paths = sorted((demo_data / "train" / "good").iterdir())
    return Detector(tiny_config(), device="cpu").fit(paths)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_detector, tmp_path_factory) -> Path:
    """The tiny detector saved as a bundle folder (treat as read-only)."""
    return tiny_detector.save(tmp_path_factory.mktemp("bundle") / "model")


def shared_data_dir() -> Path:
    """Root of the licensed evaluation data: $RTG_ANOMALY_DATA or ../shared/data beside the repo.

    Missing data skips the real-data tests on a developer's machine but fails them in CI (CI=true).
    """
    root = Path(os.environ.get("RTG_ANOMALY_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not root.is_dir():
        message = f"shared evaluation data not found at {root} (set RTG_ANOMALY_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root
