"""Tests for DetectorConfig: validation of every field, JSON round trip, stride."""
import dataclasses
import json

import pytest

from rtg_anomaly.config import DEFAULT_BACKBONE, ConfigError, DetectorConfig
from rtg_anomaly.errors import InputError


def test_defaults_valid():
    config = DetectorConfig()
    assert config.backbone == DEFAULT_BACKBONE
    assert config.stride == 384  # 512 * (1 - 0.25)
    assert issubclass(ConfigError, InputError)


INVALID = [
    ("backbone", ""),
    ("layers", ()),
    ("layers", []),
    ("tile_size", 7),
    ("tile_size", 0),
    ("tile_size", -512),
    ("overlap", 1.0),
    ("overlap", -0.1),
    ("overlap", float("nan")),
    ("input_size", 7),
    ("input_size", 0),
    ("neighbourhood", 0),
    ("neighbourhood", 2),
    ("neighbourhood", 4),
    ("neighbourhood", -1),
    ("pca_dim", 0),
    ("pca_dim", -5),
    ("pca_whiten", -0.1),
    ("pca_whiten", 1.5),
    ("pca_whiten", float("nan")),
    ("coreset_ratio", 0.0),
    ("coreset_ratio", 1.5),
    ("coreset_ratio", -0.1),
    ("memory_bank_size", 0),
    ("k", 0),
    ("k", -1),
    ("smoothing_sigma", -0.5),
    ("image_score", "mean"),
    ("image_score", ""),
    ("top_fraction", 0.0),
    ("top_fraction", 1.01),
    ("top_patches", 0),
    ("intensity_window", "linear"),
    ("window_percentiles", (99.5, 0.5)),
    ("window_percentiles", (50.0, 50.0)),
    ("window_percentiles", (-1.0, 99.0)),
    ("window_percentiles", (1.0, 100.5)),
    ("window_percentiles", (1.0, 50.0, 99.0)),
    ("window_percentiles", (5.0,)),
    ("window_percentiles", ()),
    ("holdout_fraction", 1.0),
    ("holdout_fraction", -0.2),
    ("max_bank_size", 0),
    ("max_patches_per_scan", 0),
    ("batch_size", 0),
    ("seed", -1),
    ("seed", 2**32),
    ("seed", 1.5),
]


@pytest.mark.parametrize("field,value", INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
def test_invalid_field_raises_config_error(field, value):
    with pytest.raises(ConfigError) as info:
        DetectorConfig(**{field: value})
    assert field.split("_")[0] in str(info.value)  # the message names the field
    with pytest.raises(ConfigError):
        DetectorConfig().replace(**{field: value})
    with pytest.raises(ConfigError):
        DetectorConfig.from_dict({**DetectorConfig().to_dict(), field: value})


VALID_EDGES = [
    ("overlap", 0.0), ("overlap", 0.9), ("tile_size", 8), ("input_size", None), ("input_size", 8),
    ("neighbourhood", 1), ("neighbourhood", 5), ("pca_dim", None), ("pca_dim", 1), ("pca_whiten", 0.0),
    ("pca_whiten", 1.0), ("coreset_ratio", 1.0), ("seed", 0), ("seed", 2**32 - 1),
    ("memory_bank_size", 1), ("smoothing_sigma", 0.0), ("image_score", "top_mean"), ("top_fraction", 1.0),
    ("image_score", "patch_top_mean"), ("top_patches", 1),
    ("intensity_window", "dtype"), ("intensity_window", "percentile"), ("window_percentiles", (0, 100)),
    ("holdout_fraction", 0.0), ("layers", (3, 7, 11)), ("weights", "random"),
]


@pytest.mark.parametrize("field,value", VALID_EDGES, ids=[f"{f}={v!r}" for f, v in VALID_EDGES])
def test_valid_edges_accepted(field, value):
    DetectorConfig(**{field: value})


def test_normalises_sequences():
    config = DetectorConfig(layers=[3, "7"], window_percentiles=[1, 99], model_kwargs={"depth": 1})
    assert config.layers == (3, 7)
    assert config.window_percentiles == (1.0, 99.0)
    assert all(isinstance(p, float) for p in config.window_percentiles)
    hash(config.layers)


def test_model_kwargs_copied():
    kwargs = {"img_size": 224}
    config = DetectorConfig(model_kwargs=kwargs)
    kwargs["img_size"] = 999
    assert config.model_kwargs == {"img_size": 224}


def test_frozen():
    config = DetectorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k = 5


def test_json_round_trip():
    config = DetectorConfig(backbone="vit_tiny_patch16_224", weights="random", model_kwargs={"img_size": 224},
                            layers=(2, 5), tile_size=128, overlap=0.5, input_size=None, neighbourhood=5,
                            pca_dim=None, memory_bank_size=1000, k=3, smoothing_sigma=2.5,
                            image_score="patch_top_mean", top_fraction=0.01, top_patches=7,
                            intensity_window="percentile",
                            window_percentiles=(1.0, 99.0), holdout_fraction=0.3, seed=7, batch_size=2)
    as_dict = config.to_dict()
    assert as_dict["layers"] == [2, 5] and as_dict["window_percentiles"] == [1.0, 99.0]
    text = json.dumps(as_dict)  # JSON-ready
    back = DetectorConfig.from_dict(json.loads(text))
    assert back == config
    assert back.to_dict() == as_dict
    assert DetectorConfig.from_dict(DetectorConfig().to_dict()) == DetectorConfig()


def test_from_dict_partial_and_unknown():
    assert DetectorConfig.from_dict({"k": 4}) == DetectorConfig(k=4)
    with pytest.raises(ConfigError, match="bogus, zzz"):
        DetectorConfig.from_dict({"k": 4, "zzz": 1, "bogus": 2})


def test_replace_returns_new_validated_copy():
    config = DetectorConfig()
    other = config.replace(tile_size=256, overlap=0.5)
    assert other.tile_size == 256 and other.stride == 128
    assert config.tile_size == 512


@pytest.mark.parametrize("tile_size,overlap,stride", [
    (512, 0.25, 384), (512, 0.0, 512), (512, 0.5, 256), (100, 0.33, 67), (8, 0.9, 1), (448, 0.1, 403),
])
def test_stride(tile_size, overlap, stride):
    config = DetectorConfig(tile_size=tile_size, overlap=overlap)
    assert config.stride == stride
    assert 1 <= config.stride <= config.tile_size
