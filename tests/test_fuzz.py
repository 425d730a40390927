"""A seeded, time-bounded fuzz test of the error contract (issue #24, point 7).

A hand-rolled mutator (bit flips, byte runs, truncation, insertion, and format-aware edits of PNG, BMP
and TIFF headers with their checksums fixed) runs over scans re-encoded from the shared real data (or
synthetic ones when it is absent) and over bundle manifests and array files (re-sealed most of the time,
to reach the checks behind the checksum). Every mutation must give success or one line and exit code 2
(``InputError`` in the library), never exit 1 or any other exception, and leave no partial output.

``RTG_ANOMALY_FUZZ_SECONDS`` (default 6 per target, 3 targets) and ``RTG_ANOMALY_FUZZ_SEED`` (default
20261204) bound and replay a run; a failure message names the seed and the case.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import random
import shutil
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import rtg_anomaly.bundle as bundle_module
import rtg_anomaly.scans.io as io_module
from rtg_anomaly import Detector
from rtg_anomaly.scans.bmp16 import write_grey16_bmp
from rtg_anomaly.cli import main
from rtg_anomaly.errors import InputError
from tests.conftest import REPO_ROOT

SECONDS = float(os.environ.get("RTG_ANOMALY_FUZZ_SECONDS", "6"))
SEED = int(os.environ.get("RTG_ANOMALY_FUZZ_SEED", "20261204"))
FUZZ_MAX_PIXELS = 4_000_000  # a mutated header may declare a large but allowed size: keep each decode small
CLI_MAX_PIXELS = 300_000  # and each scoring short (the seeds have 12,288 pixels)
seal = getattr(bundle_module, "seal", lambda manifest: manifest)  # bundles without a checksum need no seal
SHARED = Path(os.environ.get("RTG_ANOMALY_DATA", REPO_ROOT.parent / "shared" / "data"))


# ---------------------------------------------------------------- seeds

def _real_crop() -> np.ndarray:
    """A 96 x 128 grey crop of a real weld radiograph, or a synthetic one without the shared data."""
    paths = sorted((SHARED / "gdxray_welds").rglob("*.png"))[:40] if SHARED.is_dir() else []
    for path in paths:
        if "ground_truth" in path.parts:
            continue
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"))
        if min(grey.shape) >= 96:
            return np.ascontiguousarray(grey[:96, :128])
    rng = np.random.default_rng(0)
    return (np.cumsum(rng.normal(size=(96, 128)), axis=1) * 4 + 128).clip(0, 255).astype(np.uint8)


def _encode(grey: np.ndarray) -> dict[str, bytes]:
    sixteen = grey.astype(np.uint16) * 257
    out = {}
    for name, pixels, fmt in (("grey8.png", grey, "PNG"), ("grey16.png", sixteen, "PNG"), ("grey8.bmp", grey, "BMP"),
                              ("grey16.tif", sixteen, "TIFF"), ("grey8.jpg", grey, "JPEG")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        out[name] = buffer.getvalue()
    out["rgb16.png"] = cv2.imencode(".png", np.stack([sixteen] * 2 + [sixteen[::-1]], axis=2))[1].tobytes()
    buffer = io.BytesIO()
    Image.fromarray(np.stack([grey, grey[::-1], grey], axis=2)).save(buffer, format="PNG")
    out["rgb8.png"] = buffer.getvalue()
    return out


def _grey16_bmp(grey: np.ndarray, tmp: Path) -> bytes:
    write_grey16_bmp(tmp / "g16.bmp", grey.astype(np.uint16) * 16)
    return (tmp / "g16.bmp").read_bytes()


# ---------------------------------------------------------------- byte mutations

SPECIAL_BYTES = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE]
SPECIAL_U32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 100_000, 65_535, 3, 30_000]


def _png_chunks(data: bytes):
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        yield offset, length, kind
        offset += 12 + length


def _mutate_png_header(data: bytes, rng: random.Random) -> bytes:
    """Edit IHDR (size, depth, colour, interlace) or drop a chunk, with the CRC made right again."""
    chunks = list(_png_chunks(data))
    if not chunks or chunks[0][2] != b"IHDR" or len(data) < 33:
        return data
    if rng.random() < 0.3 and len(chunks) > 2:
        offset, length, _ = rng.choice(chunks[1:])
        return data[:offset] + data[offset + 12 + length:]
    body = bytearray(data[16:29])
    field = rng.randrange(5)
    if field < 2:
        struct.pack_into(">I", body, 4 * field, rng.choice(SPECIAL_U32 + [rng.randrange(1, 5000)]))
    else:
        body[6 + field] = rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255])
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    return data[:16] + bytes(body) + crc + data[33:]


def _mutate_bmp_header(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 54:
        return data
    data = bytearray(data)
    offset, size = rng.choice([(2, 4), (10, 4), (14, 4), (18, 4), (22, 4), (28, 2), (30, 4), (46, 4), (54, 4)])
    value = rng.choice(SPECIAL_U32 + [rng.randrange(0, 70_000)])
    data[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return bytes(data)


def _mutate_tiff_header(data: bytes, rng: random.Random) -> bytes:
    """Overwrite the value of one IFD entry (size, bits, compression, strip offsets and counts ...)."""
    if len(data) < 16 or data[:2] != b"II":
        return data
    ifd = struct.unpack_from("<I", data, 4)[0]
    if ifd + 2 > len(data):
        return data
    count = struct.unpack_from("<H", data, ifd)[0]
    if count == 0 or ifd + 2 + 12 * count > len(data):
        return data
    entry = ifd + 2 + 12 * rng.randrange(count)
    data = bytearray(data)
    struct.pack_into("<I", data, entry + 8, rng.choice(SPECIAL_U32))
    return bytes(data)


def mutate_bytes(data: bytes, rng: random.Random, name: str) -> bytes:
    """One to three random mutations, format-aware ones among them."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(8)
        if not data:
            return data
        if kind == 0:
            position = rng.randrange(len(data))
            data = data[:position] + bytes([data[position] ^ (1 << rng.randrange(8))]) + data[position + 1:]
        elif kind == 1:
            position = rng.randrange(len(data))
            run = bytes([rng.choice(SPECIAL_BYTES)]) * rng.randint(1, 16)
            data = data[:position] + run + data[position + len(run):]
        elif kind == 2:
            data = data[:rng.randrange(len(data))]
        elif kind == 3:
            position = rng.randrange(len(data))
            data = data[:position] + rng.randbytes(rng.randint(1, 64)) + data[position:]
        elif kind == 4:
            position, length = rng.randrange(len(data)), rng.randint(1, 256)
            data = data[:position] + data[position:position + length] * 2 + data[position + length:]
        elif name.endswith(".png"):
            data = _mutate_png_header(data, rng)
        elif name.endswith(".bmp"):
            data = _mutate_bmp_header(data, rng)
        elif name.endswith(".tif"):
            data = _mutate_tiff_header(data, rng)
    return data


# ---------------------------------------------------------------- scans

@pytest.fixture(scope="module")
def scan_seeds(tmp_path_factory) -> dict[str, bytes]:
    grey = _real_crop()
    seeds = _encode(grey)
    seeds["grey16.bmp"] = _grey16_bmp(grey, tmp_path_factory.mktemp("seeds"))
    real_masks = sorted((SHARED / "gdxray_welds" / "ground_truth").rglob("*.png"))[:1] if SHARED.is_dir() else []
    for path in real_masks:
        seeds["realmask.png"] = path.read_bytes()  # a real file, byte for byte
    return seeds


@pytest.fixture
def small_scans_only(monkeypatch):
    monkeypatch.setattr(io_module, "MAX_PIXELS", FUZZ_MAX_PIXELS, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", FUZZ_MAX_PIXELS)
    return monkeypatch


def test_fuzz_scans_through_the_reader(scan_seeds, tmp_path, small_scans_only, capfd):
    rng = random.Random(SEED)
    names = sorted(scan_seeds)
    end, tried, failures, outcomes = time.monotonic() + SECONDS, 0, [], {"read": 0, "refused": 0}
    while time.monotonic() < end:
        name = rng.choice(names)
        data = mutate_bytes(scan_seeds[name], rng, name)
        path = tmp_path / f"{tried}-{name}"
        path.write_bytes(data)
        tried += 1
        try:
            image = io_module.load_image(path)
            assert image.ndim in (2, 3) and image.size > 0
            outcomes["read"] += 1
        except InputError as exc:
            outcomes["refused"] += 1
            if "\n" in str(exc):
                failures.append((path.name, f"multi-line message {str(exc)!r}"))
        except BaseException as exc:  # noqa: BLE001 - anything else breaks the contract
            failures.append((path.name, f"{type(exc).__name__}: {exc}"))
        noise = capfd.readouterr().err
        if noise.strip():
            failures.append((path.name, f"stderr noise {noise.strip()[:120]!r}"))
        path.unlink()
    print(f"fuzz scans/reader: seed {SEED}, {tried} cases, {outcomes}, {len(failures)} broke the contract")
    assert tried > 50
    assert not failures, f"seed {SEED}: {len(failures)} of {tried} cases broke the contract, e.g. {failures[:5]}"


def test_fuzz_scans_through_the_cli(scan_seeds, tiny_bundle, tmp_path, small_scans_only, monkeypatch, capfd):
    """Whole detect runs (the model loaded once: Detector.load is tested by the bundle fuzz)."""
    small_scans_only.setattr(io_module, "MAX_PIXELS", CLI_MAX_PIXELS, raising=False)
    small_scans_only.setattr(Image, "MAX_IMAGE_PIXELS", CLI_MAX_PIXELS)
    preloaded = Detector.load(tiny_bundle, device="cpu")
    monkeypatch.setattr(Detector, "load", classmethod(lambda cls, *args, **kwargs: preloaded))
    rng = random.Random(SEED + 1)
    names = sorted(scan_seeds)
    end, tried, failures, codes = time.monotonic() + SECONDS, 0, [], {}
    while time.monotonic() < end:
        name = rng.choice(names)
        case = tmp_path / str(tried)
        (case / "out").mkdir(parents=True)
        scan = case / name
        scan.write_bytes(mutate_bytes(scan_seeds[name], rng, name))
        tried += 1
        out = case / "out"
        code = main(["detect", "--input", str(scan), "--output", str(out / "overlay.png"), "--report",
                     str(out / "report.json"), "--heatmap", str(out / "map.npy"), "--quiet"])
        codes[code] = codes.get(code, 0) + 1
        err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        written = sorted(p.name for p in out.iterdir())
        problem = None
        if code == 2:
            if len(err) != 1 or not err[0].startswith("rtg-anomaly: error:"):
                problem = f"exit 2 with stderr {err}"
            elif written:
                problem = f"exit 2 but wrote {written}"
        elif code == 0:
            if written != ["map.npy", "overlay.png", "report.json"]:
                problem = f"success but outputs {written}"
            elif any(not line.startswith("rtg-anomaly: warning:") for line in err):
                problem = f"success with stderr {err}"
            else:
                json.loads((out / "report.json").read_text(), parse_constant=lambda c: 1 / 0)
        else:
            problem = f"exit {code}: {err}"
        if problem:
            failures.append((scan.name, problem))
        shutil.rmtree(case)
    print(f"fuzz scans/cli: seed {SEED + 1}, {tried} cases, exit codes {codes}, {len(failures)} broke the contract")
    assert tried > 10
    assert not failures, f"seed {SEED + 1}: {len(failures)} of {tried} cases broke the contract, e.g. {failures[:5]}"


# ---------------------------------------------------------------- bundles

JSON_VALUES = [None, True, False, 0, -1, 1, 7, 2**70, 0.5, -0.0, 1e308, math.nan, math.inf, "", "x", "NaN",
               "float32", [], {}, [1, 2], {"a": 1}, [None], ["6"], {"file": "memory_bank.npy"}]


def _nodes(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nodes(item, path + (index,))


def mutate_manifest(manifest: dict, rng: random.Random) -> dict:
    """Replace, delete, retype or extend one node of the manifest (one to three times)."""
    manifest = copy.deepcopy(manifest)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice([p for p in _nodes(manifest) if p and p[0] not in ("format", "format_version")])
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        last, action = path[-1], rng.randrange(5)
        if action == 0 and isinstance(parent, dict):
            del parent[last]
        elif action == 1:
            value = parent[last]
            parent[last] = list(value.values()) if isinstance(value, dict) else (
                {str(i): v for i, v in enumerate(value)} if isinstance(value, list) else [value])
        elif action == 2 and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
            parent[last] = parent[last] * rng.choice([-1, 0, 10, 1e6, 1e300, 0.5]) + rng.choice([0, 1, 0.5])
        else:
            parent[last] = copy.deepcopy(rng.choice(JSON_VALUES))
    return manifest


def _write(folder: Path, manifest: dict, rng: random.Random) -> None:
    if rng.random() < 0.8:
        try:
            manifest = seal(manifest)
        except ValueError:  # NaN or inf: JSON cannot hold it, nor can the seal
            pass
    text = json.dumps(manifest)
    if rng.random() < 0.1:
        text = text[:rng.randrange(len(text))]
    (folder / "manifest.json").write_text(text)


def _mutate_array_file(folder: Path, manifest: dict, rng: random.Random) -> dict:
    """Mutate one .npy file; half the time its manifest entry follows (checksum, and the header's shape)."""
    name = rng.choice(sorted(manifest["arrays"]))
    entry = manifest["arrays"][name]
    path = folder / entry["file"]
    data = path.read_bytes()
    if rng.random() < 0.5:
        array = np.load(io.BytesIO(data))
        choice = rng.randrange(5)
        if choice == 0:
            array = array[: rng.randrange(array.shape[0] + 1)] if array.ndim else array
        elif choice == 1:
            array = array.astype(rng.choice([np.float64, np.int32, np.float16, np.bool_, np.uint8]))
        elif choice == 2:
            array = array.copy()
            array.flat[rng.randrange(max(array.size, 1))] = rng.choice([np.nan, np.inf, -np.inf]) if array.size else 0
        elif choice == 3:
            array = array.reshape(-1)
        else:
            array = np.zeros(tuple(rng.randint(0, 40) for _ in range(array.ndim)), array.dtype)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        data = buffer.getvalue()
        entry.update(shape=list(array.shape), dtype=str(array.dtype))
    else:
        data = mutate_bytes(data, rng, "array.npy")
    path.write_bytes(data)
    if rng.random() < 0.7:
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    return manifest


def test_fuzz_bundles(tiny_bundle, tmp_path, capfd):
    rng = random.Random(SEED + 2)
    original = json.loads((tiny_bundle / "manifest.json").read_text())
    end, tried, failures, outcomes = time.monotonic() + SECONDS, 0, [], {"loaded": 0, "refused": 0}
    while time.monotonic() < end:
        folder = tmp_path / f"b{tried}"
        shutil.copytree(tiny_bundle, folder)
        manifest = copy.deepcopy(original)
        if rng.random() < 0.35:
            manifest = _mutate_array_file(folder, manifest, rng)
        if rng.random() < 0.8 or manifest == original:
            manifest = mutate_manifest(manifest, rng)
        _write(folder, manifest, rng)
        tried += 1
        try:
            Detector.load(folder, device="cpu")
            outcomes["loaded"] += 1
        except InputError as exc:
            outcomes["refused"] += 1
            if "\n" in str(exc):
                failures.append((tried, f"multi-line message {str(exc)!r}"))
        except BaseException as exc:  # noqa: BLE001 - anything else breaks the contract
            failures.append((tried, f"{type(exc).__name__}: {str(exc)[:200]}"))
        shutil.rmtree(folder)
    capfd.readouterr()
    print(f"fuzz bundles: seed {SEED + 2}, {tried} cases, {outcomes}, {len(failures)} broke the contract")
    assert tried > 10
    assert not failures, f"seed {SEED + 2}: {len(failures)} of {tried} cases broke the contract, e.g. {failures[:5]}"
