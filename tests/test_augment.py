"""Memory-bank augmentation: the views themselves, the config and CLI checks, and the effect on fit."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from rtg_anomaly import Detector
from rtg_anomaly.scans.augment import AUGMENTATIONS, augmented_views
from rtg_anomaly.cli import build_parser
from rtg_anomaly.cli.options import config_from_args
from rtg_anomaly.config import AUGMENTATION_NAMES, ConfigError, DetectorConfig
from rtg_anomaly.scans.io import load_image


def test_views_are_the_named_flips_and_rotations():
    image = np.arange(6, dtype=np.uint16).reshape(2, 3)
    views = dict(zip(AUGMENTATION_NAMES, augmented_views(image, AUGMENTATION_NAMES)))
    assert set(views) == set(AUGMENTATIONS)
    np.testing.assert_array_equal(views["hflip"], [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(views["vflip"], [[3, 4, 5], [0, 1, 2]])
    np.testing.assert_array_equal(views["rot180"], [[5, 4, 3], [2, 1, 0]])
    np.testing.assert_array_equal(views["rot90"], [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(views["rot270"], [[3, 0], [4, 1], [5, 2]])
    for view in views.values():
        assert view.dtype == image.dtype and view.flags["C_CONTIGUOUS"]


def test_colour_scans_keep_their_channels():
    image = np.zeros((4, 6, 3), np.uint8)
    assert [v.shape for v in augmented_views(image, ("hflip", "rot90"))] == [(4, 6, 3), (6, 4, 3)]


@pytest.mark.parametrize("augment", [("mirror",), ("hflip", "hflip")])
def test_config_refuses_unknown_or_repeated_names(augment):
    with pytest.raises(ConfigError, match="augment"):
        DetectorConfig(augment=augment)


def test_config_round_trips_through_its_dict():
    config = DetectorConfig(augment=["hflip", "rot180"])
    assert config.augment == ("hflip", "rot180")
    assert DetectorConfig.from_dict(config.to_dict()) == config


def test_cli_flags_reach_the_config():
    parser = build_parser()
    args = parser.parse_args(["fit", "--clean-dir", "x", "--image-score", "top_mean", "--top-fraction", "0.01"])
    config = config_from_args(args)
    assert (config.image_score, config.top_fraction, config.augment) == ("top_mean", 0.01, ())
    args = parser.parse_args(["fit", "--clean-dir", "x", "--augment", "hflip, vflip"])
    assert config_from_args(args).augment == ("hflip", "vflip")
    args = parser.parse_args(["fit", "--clean-dir", "x", "--augment", "none"])
    assert config_from_args(args).augment == ()
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "--clean-dir", "x", "--augment", "hflip,spin"])


def test_flipped_bank_recognises_a_flipped_clean_scan(demo_data):
    """A mirrored clean scan is novel to the plain bank and exactly known to the hflip bank."""
    paths = sorted((demo_data / "train" / "good").iterdir())
    config = tiny_config(coreset_ratio=1.0)
    plain = Detector(config, device="cpu").fit(paths)
    augmented = Detector(config.replace(augment=("hflip",)), device="cpu").fit(paths)
    assert augmented.fit_info_["n_views_per_scan"] == 2
    assert augmented.method_.memory_bank_.shape[0] > plain.method_.memory_bank_.shape[0]

    probe = np.ascontiguousarray(load_image(paths[0])[:, ::-1])
    raw_plain = plain.score(probe).heatmap * plain.calibration_.clean_level
    raw_augmented = augmented.score(probe).heatmap * augmented.calibration_.clean_level
    assert raw_augmented.max() < 0.05 * raw_plain.max()


def test_augmented_fit_is_deterministic(demo_data):
    paths = sorted((demo_data / "train" / "good").iterdir())[:3]
    config = tiny_config(augment=("vflip", "rot90"))
    first = Detector(config, device="cpu").fit(paths)
    second = Detector(config, device="cpu").fit(paths)
    np.testing.assert_array_equal(first.method_.memory_bank_, second.method_.memory_bank_)
