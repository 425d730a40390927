"""A bundle replaced while it is read (issue #24, point 3): a reader gets the old bundle or the new one,
never a mixture of one's manifest and the other's arrays, and never an error caused by the swap.

Stress tests, each bounded to a few seconds: a writer saves two different bundles in turn over one folder
in a tight loop (far more often than any fit or calibrate would) while readers load it in a loop."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rtg_anomaly import Detector
from rtg_anomaly.bundle import BundleError, load_bundle, save_bundle
from tests.conftest import REPO_ROOT

STRESS_SECONDS = 2.5


def _content(tag: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Bundle ``tag``: its manifest names the tag, and every value of every array equals it."""
    sizes = {1: (300, 16), 2: (200, 16)}[tag]
    arrays = {"memory_bank": np.full(sizes, tag, np.float32), "pca_mean": np.full(16, tag, np.float32),
              "extra": np.full(1000 * tag, tag, np.int64)}
    return {"tag": tag, "calibration": {"image_threshold": float(tag)}}, arrays


def _check_consistent(manifest: dict, arrays: dict[str, np.ndarray]) -> int:
    tag = manifest["tag"]
    assert manifest["calibration"]["image_threshold"] == tag
    assert set(arrays) == {"memory_bank", "pca_mean", "extra"}
    for name, array in arrays.items():
        assert (array == tag).all(), f"manifest of bundle {tag} with {name} of another bundle"
    return tag


def test_threads_saving_and_loading_never_mix_or_fail(tmp_path):
    folder = tmp_path / "model"
    save_bundle(folder, *_content(1))
    stop = threading.Event()
    failures: list[BaseException] = []
    seen = {1: 0, 2: 0}
    saves = [0]

    def writer():
        tag = 2
        while not stop.is_set():
            save_bundle(folder, *_content(tag))
            saves[0] += 1
            tag = 3 - tag

    def reader():
        while not stop.is_set():
            try:
                seen[_check_consistent(*load_bundle(folder))] += 1
            except BaseException as exc:  # noqa: BLE001 - every failure is a finding
                failures.append(exc)
                stop.set()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(STRESS_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures, f"{len(failures)} failed reads, first: {failures[0]!r}"
    assert saves[0] > 20 and seen[1] > 5 and seen[2] > 5, (saves, seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or old folder left


WRITER = textwrap.dedent("""
    import os, sys, time
    from rtg_anomaly.bundle import load_bundle, save_bundle
    sources, target, stop_file = sys.argv[1:3], sys.argv[3], sys.argv[4]
    keep = lambda m: {k: v for k, v in m.items() if k not in ("format", "format_version", "arrays", "content_sha256")}
    contents = [(keep(m), a) for m, a in map(load_bundle, sources)]
    print("ready", flush=True)
    end, saves = time.monotonic() + 60, 0
    while time.monotonic() < end and not os.path.exists(stop_file):
        save_bundle(target, *contents[saves % 2])
        saves += 1
    print(saves, flush=True)
""")


@pytest.fixture
def two_detector_bundles(tiny_bundle, tmp_path) -> tuple[Path, Path]:
    """The tiny bundle (A) and a different one (B): half the memory bank and a higher image threshold."""
    first = tiny_bundle
    other = Detector.load(tiny_bundle, device="cpu")
    other.method_._set_bank(other.method_.memory_bank_[: other.method_.memory_bank_.shape[0] // 2])
    other.calibration_ = dataclasses.replace(other.calibration_,
                                             image_threshold=other.calibration_.image_threshold + 1.0)
    return first, other.save(tmp_path / "other")


def test_detector_load_while_another_process_saves(two_detector_bundles, tmp_path):
    """Detector.load (what detect and a service use) in this process; save_bundle in another."""
    first, second = two_detector_bundles
    expected = {}
    for path in (first, second):
        loaded = Detector.load(path, device="cpu")
        expected[loaded.calibration_.image_threshold] = loaded.method_.memory_bank_.shape[0]
    target = tmp_path / "live"
    manifest, arrays = load_bundle(first)
    save_bundle(target, {k: v for k, v in manifest.items()
                         if k not in ("format", "format_version", "arrays", "content_sha256")}, arrays)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    stop_file = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(first), str(second), str(target), str(stop_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
    loads, seen, failures = 0, set(), []
    end = time.monotonic() + STRESS_SECONDS
    while (time.monotonic() < end or loads < 8) and time.monotonic() < end + 20:  # a loaded CI machine: more time
        try:
            detector = Detector.load(target, device="cpu")
        except BaseException as exc:  # noqa: BLE001 - every failure is a finding
            failures.append(exc)
            break
        threshold = detector.calibration_.image_threshold
        assert expected.get(threshold) == detector.method_.memory_bank_.shape[0], "config of one save, bank of another"
        seen.add(threshold)
        loads += 1
    stop_file.touch()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert not failures, f"after {loads} loads: {failures[0]!r}"
    assert loads >= 8 and int(out.split()[-1]) > 20 and len(seen) == 2, (loads, out, seen)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_bundle_that_stays_broken_is_still_refused_at_once(tmp_path):
    """The retry is for a folder replaced under the reader; real damage is reported without waiting."""
    folder = save_bundle(tmp_path / "model", *_content(1))
    (folder / "pca_mean.npy").write_bytes(b"damaged")
    started = time.monotonic()
    with pytest.raises(BundleError):
        load_bundle(folder)
    assert time.monotonic() - started < 0.5
