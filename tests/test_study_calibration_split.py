"""scripts/study_calibration_split.py: the sequence places and the splits it compares, on made-up frame names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("study_calibration_split")


def _frames(series: str, numbers) -> list[Path]:
    return [Path(f"{series}_{n:04d}.png") for n in numbers]


def test_places_count_each_sequence_on_its_own_in_name_order(script):
    frames = _frames("C0001", [7, 3, 5]) + _frames("C0002", [2, 1])
    places = script.sequence_places(frames)
    assert places == {"C0001_0003.png": 0, "C0001_0005.png": 1, "C0001_0007.png": 2,
                      "C0002_0001.png": 0, "C0002_0002.png": 1}


def test_interleaved_split_banks_one_neighbour_of_every_calibration_frame(script):
    frames = _frames("C0001", range(12))  # places 2, 5, 8, 11 are the test frames: not passed as training
    places = script.sequence_places(frames)
    train = [f for f in frames if places[f.name] % 3 != 2]
    out = script.splits(train, places)
    bank, calibration = out["interleaved"]
    assert [places[f.name] for f in bank] == [0, 3, 6, 9]
    assert [places[f.name] for f in calibration] == [1, 4, 7, 10]
    for name in ("random 0", "random 1"):
        random_bank, random_calibration = out[name]
        assert len(random_bank) == len(bank) and sorted(random_bank + random_calibration) == sorted(train)
    assert out["random 0"] != out["random 1"]
    shipped_bank, shipped_calibration = out["shipped split, not joined"]
    assert len(shipped_calibration) == 2 and sorted(shipped_bank + shipped_calibration) == sorted(train)
    assert script.splits(train, places) == out  # seeded


def test_page_lists_every_split(script):
    row = {"n_bank": 50, "n_calibration": 48, "median_ratio": 0.978, "threshold": 1.3, "false_alarms": 2,
           "n_good": 45, "recall": 0.797, "image_auroc": 0.93}
    page = script.render({"date": "2026-12-07", "machine": "test", "rows": {"interleaved": row}, "read": "Read."})
    assert "| interleaved | 50 | 48 | 0.978 | 2/45 | 79.7 % | 0.930 |" in page
    assert page.rstrip().endswith("Read.")
