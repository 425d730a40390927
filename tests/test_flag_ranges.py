"""Absurd flag values (issue #24, point 4): every numeric flag refuses non-finite values and values that
would make the work explode, in one line with exit code 2 naming the flag, and --help states its range."""

from __future__ import annotations

import math

import pytest

from rtg_anomaly.cli import build_parser, main
from rtg_anomaly.config import ConfigError, DetectorConfig

NON_FINITE = ["nan", "inf", "-inf"]
# flag -> values past its range (each would explode the work or is meaningless)
CONFIG_FLAGS = {
    "--tile-size": ["0", "100000000", "1e3"], "--overlap": ["0.999", "-0.1", "1"],
    "--input-size": ["4", "100000"], "--pca-dim": ["0", "1000000"], "--pca-whiten": ["1.5", "-1"],
    "--coreset-ratio": ["0", "2"], "--memory-bank-size": ["0", "1000000000000"], "--k": ["0", "100000000"],
    "--seed": ["-1", "99999999999999999999"], "--batch-size": ["0", "1000000"],
    "--neighbourhood": ["0", "1000001"], "--smoothing-sigma": ["1e6", "-1", "1e308"],
    "--top-fraction": ["0", "2"], "--top-patches": ["0", "10000000000"], "--holdout-fraction": ["1", "-0.5"],
    "--false-alarm-rate": ["0", "1", "-0.1"], "--layers": ["1000000000", "6,99999"],
}
DETECT_FLAGS = {"--threshold-percentile": ["101", "-1"], "--alpha": ["2", "-0.5"],
                "--min-region-area": ["-1", "1e30"]}
FLOAT_FLAGS = {"--overlap", "--pca-whiten", "--coreset-ratio", "--smoothing-sigma", "--top-fraction",
               "--holdout-fraction", "--false-alarm-rate", "--threshold-percentile", "--alpha"}


def _cases():
    for flag, values in CONFIG_FLAGS.items():
        extra = NON_FINITE if flag in FLOAT_FLAGS else ["nan"]
        for value in values + extra:
            yield "fit", flag, value
            if flag in ("--smoothing-sigma", "--tile-size", "--k"):
                yield "evaluate", flag, value
    for flag, values in DETECT_FLAGS.items():
        extra = NON_FINITE if flag in FLOAT_FLAGS else ["nan"]
        for value in values + extra:
            yield "detect", flag, value
    for value in ["nan", "inf", "0", "1", "-1"]:
        yield "calibrate", "--false-alarm-rate", value
    for value in ["-1", "100000000"]:
        yield "evaluate", "--worst", value
        yield "evaluate", "--max-per-class", value


BASE = {"fit": ["fit", "--clean-dir", "/nonexistent/clean"],
        "evaluate": ["evaluate", "--data", "/nonexistent/data"],
        "calibrate": ["calibrate", "--clean-dir", "/nonexistent/clean"],
        "detect": ["detect", "--input", "/nonexistent/scan.png", "--output", "/nonexistent/out.png"]}


@pytest.mark.parametrize("command, flag, value", list(_cases()))
def test_absurd_value_refused_naming_the_flag(command, flag, value, capfd):
    assert main([*BASE[command], f"{flag}={value}"]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert flag in err, err  # refused for the flag itself, not for the missing input later


@pytest.mark.parametrize("pair", [["nan", "1"], ["0", "inf"], ["-inf", "inf"], ["1", "1e300"]])
def test_colour_range_must_be_finite_and_bounded(pair, capfd):
    assert main([*BASE["detect"], "--color-range", *pair]) == 2
    assert "--color-range" in capfd.readouterr().err


def _numeric_actions():
    parser = build_parser()
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.type is not None and getattr(action.type, "__name__", "") in ("integer", "number", "_block_indices"):
                yield command, action


def test_help_states_the_range_of_every_numeric_flag():
    actions = list(_numeric_actions())
    assert len(actions) >= 30
    for command, action in actions:
        assert " in [" in action.help or " in (" in action.help or "each an integer in" in action.help, \
            (command, action.option_strings, action.help)


def test_every_numeric_flag_is_range_checked():
    """No numeric flag is parsed by plain int or float any more."""
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            assert action.type not in (int, float), action.option_strings


@pytest.mark.parametrize("field, value", [("smoothing_sigma", math.inf), ("smoothing_sigma", 1e6),
                                          ("tile_size", 10**8), ("overlap", 0.999), ("batch_size", 10**6),
                                          ("k", 10**8), ("top_fraction", math.nan), ("pca_whiten", math.nan),
                                          ("tile_size", 512.0), ("tile_size", True), ("layers", (10**9,)),
                                          ("backbone", 5), ("weights", 3)])
def test_library_config_refuses_them_too(field, value):
    """A bundle's manifest goes through the same checks (DetectorConfig.from_dict)."""
    with pytest.raises(ConfigError):
        DetectorConfig(**{field: value})
