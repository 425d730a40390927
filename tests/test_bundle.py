"""Tests for the on-disk model bundle: round trip, integrity checks, atomic save, no pickles."""
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

import rtg_anomaly.bundle as bundle
from rtg_anomaly.bundle import FORMAT_NAME, FORMAT_VERSION, MANIFEST, BundleError, load_bundle, read_manifest, save_bundle
from rtg_anomaly.errors import InputError


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "memory_bank": rng.standard_normal((50, 8)).astype(np.float32),
        "pca_mean": rng.standard_normal(8).astype(np.float64),
        "counts": np.arange(12, dtype=np.int64).reshape(3, 4),
        "raw": rng.integers(0, 65535, (4, 5, 3), dtype=np.uint16),
        "flags": np.array([True, False, True]),
        "transposed": np.arange(6, dtype=np.float32).reshape(2, 3).T,  # non-contiguous input
        "scalar": np.array(3.5),
    }


MANIFEST_IN = {"config": {"tile_size": 512, "layers": [7]}, "note": "é ünïcode", "calibration": {"rate": 0.01}}


def test_round_trip(tmp_path):
    arrays = _arrays()
    folder = save_bundle(tmp_path / "model", MANIFEST_IN, arrays)
    assert folder == tmp_path / "model" and folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST] + [f"{n}.npy" for n in arrays])
    manifest, loaded = load_bundle(folder)
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        assert np.array_equal(loaded[name], array)
    assert manifest["format"] == FORMAT_NAME and manifest["format_version"] == FORMAT_VERSION
    for key, value in MANIFEST_IN.items():
        assert manifest[key] == value
    entry = manifest["arrays"]["raw"]
    assert entry["shape"] == [4, 5, 3] and entry["dtype"] == "uint16" and entry["file"] == "raw.npy"
    assert entry["sha256"] == hashlib.sha256((folder / "raw.npy").read_bytes()).hexdigest()
    assert read_manifest(folder) == manifest
    # plain .npy files readable without the package
    assert np.array_equal(np.load(folder / "counts.npy", allow_pickle=False), arrays["counts"])


def test_overwrite_replaces_whole_bundle(tmp_path):
    folder = tmp_path / "model"
    save_bundle(folder, {"version": "old"}, {"a": np.zeros(3), "stale": np.ones(2)})
    save_bundle(folder, {"version": "new"}, {"a": np.full(4, 7.0)})
    manifest, arrays = load_bundle(folder)
    assert manifest["version"] == "new" and set(arrays) == {"a"}
    assert np.array_equal(arrays["a"], np.full(4, 7.0))
    assert not (folder / "stale.npy").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old folders left


def test_save_into_an_empty_folder(tmp_path):
    (tmp_path / "model").mkdir()
    save_bundle(tmp_path / "model", {}, {"x": np.ones(2)})
    assert load_bundle(tmp_path / "model")[1]["x"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("contents", [
    {"scan_001.bmp": b"BM...", "scan_002.bmp": b"BM..."},  # a folder of scans named by mistake
    {"heatmap.npy": b"x"},  # .npy files but no manifest: someone's arrays, not a bundle
    {MANIFEST: b"{}", "memory_bank.npy": b"x", "notes.txt": b"mine"},  # a bundle with a file of the user's
])
def test_a_folder_that_is_not_a_bundle_is_never_replaced(tmp_path, contents):
    """Saving replaces the whole folder: anything in it that is not a bundle would be deleted."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    with pytest.raises(BundleError, match="holds files that are not a model bundle"):
        save_bundle(folder, {}, {"x": np.ones(2)})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == contents
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left


def test_a_file_is_never_replaced_by_a_bundle(tmp_path):
    target = tmp_path / "model"
    target.write_text("keep me")
    with pytest.raises(BundleError, match="it is a file"):
        save_bundle(target, {}, {"x": np.ones(2)})
    assert target.read_text() == "keep me"


def test_save_creates_missing_parents(tmp_path):
    folder = save_bundle(tmp_path / "a" / "b" / "model", {}, {"x": np.ones(2)})
    assert load_bundle(folder)[1]["x"].tolist() == [1.0, 1.0]


def test_bundle_error_is_input_error():
    assert issubclass(BundleError, InputError)


@pytest.mark.parametrize("offset", [-1, 200, 60])
def test_flipped_byte_detected(tmp_path, offset):
    folder = save_bundle(tmp_path / "model", {}, _arrays())
    path = folder / "memory_bank.npy"
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(folder)


def test_missing_array_file(tmp_path):
    folder = save_bundle(tmp_path / "model", {}, _arrays())
    (folder / "counts.npy").unlink()
    with pytest.raises(BundleError, match="counts.npy"):
        load_bundle(folder)


def _edit_manifest(folder: Path, change) -> None:
    """Change the manifest and re-seal it, as a careful forger would: the checks behind the checksum."""
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(bundle.seal(manifest)))


def test_replaced_array_with_matching_checksum_but_wrong_shape(tmp_path):
    folder = save_bundle(tmp_path / "model", {}, {"x": np.zeros((2, 3), np.float32)})
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 2), np.float32))
    (folder / "x.npy").write_bytes(buffer.getvalue())
    _edit_manifest(folder, lambda m: m["arrays"]["x"].update(sha256=hashlib.sha256(buffer.getvalue()).hexdigest()))
    with pytest.raises(BundleError, match="shape or dtype"):
        load_bundle(folder)


@pytest.mark.parametrize("bad_file", ["../outside.npy", "/tmp/outside.npy", "sub/x.npy"])
def test_array_file_outside_bundle_refused(tmp_path, bad_file):
    folder = save_bundle(tmp_path / "model", {}, {"x": np.zeros(3)})
    outside = tmp_path / "outside.npy"
    outside.write_bytes((folder / "x.npy").read_bytes())
    _edit_manifest(folder, lambda m: m["arrays"]["x"].update(file=bad_file))
    with pytest.raises(BundleError):
        load_bundle(folder)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99, "1", None, 1.0])
def test_newer_or_invalid_format_version(tmp_path, version):
    folder = save_bundle(tmp_path / "model", {}, {"x": np.zeros(3)})
    _edit_manifest(folder, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match="format version"):
        read_manifest(folder)
    with pytest.raises(BundleError):
        load_bundle(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nowhere")


def test_missing_manifest(tmp_path):
    folder = save_bundle(tmp_path / "model", {}, {"x": np.zeros(3)})
    (folder / MANIFEST).unlink()
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(folder)


def test_manifest_is_a_folder(tmp_path):
    (tmp_path / "model" / MANIFEST).mkdir(parents=True)
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "model")


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00garbage", b'{"format": "rtg-anomaly-bundle"'])
def test_corrupt_manifest(tmp_path, content):
    folder = save_bundle(tmp_path / "model", {}, {"x": np.zeros(3)})
    (folder / MANIFEST).write_bytes(content)
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(folder)


@pytest.mark.parametrize("content", [[1, 2], {"format": "something-else", "format_version": 1}, {"format_version": 1},
                                     "a string", 42])
def test_not_a_bundle(tmp_path, content):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps(content))
    with pytest.raises(BundleError, match="not an rtg-anomaly model bundle"):
        load_bundle(folder)


def _listing(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def test_atomic_when_writing_an_array_fails(tmp_path, monkeypatch):
    folder = save_bundle(tmp_path / "model", {"version": "old"}, {"a": np.zeros(3), "b": np.ones(3)})
    before = _listing(tmp_path)
    real = bundle._array_bytes
    calls = []

    def failing(array):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(array)

    monkeypatch.setattr(bundle, "_array_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(folder, {"version": "new"}, {"a": np.full(3, 5.0), "b": np.full(3, 6.0), "c": np.zeros(1)})
    assert _listing(tmp_path) == before  # old bundle untouched, nothing half-written left
    assert load_bundle(folder)[0]["version"] == "old"


def test_atomic_when_manifest_cannot_be_written(tmp_path):
    folder = save_bundle(tmp_path / "model", {"version": "old"}, {"a": np.zeros(3)})
    before = _listing(tmp_path)
    with pytest.raises(TypeError):
        save_bundle(folder, {"version": {1, 2}}, {"a": np.ones(3)})  # a set is not JSON
    assert _listing(tmp_path) == before


def test_atomic_when_no_previous_bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "_array_bytes", lambda array: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        save_bundle(tmp_path / "model", {}, {"a": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def test_atomic_when_final_rename_fails(tmp_path, monkeypatch):
    folder = save_bundle(tmp_path / "model", {"version": "old"}, {"a": np.zeros(3)})
    before = _listing(tmp_path)
    real_replace = os.replace

    def failing_replace(src, dst):
        if ".tmp-" in Path(src).name:
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(bundle.os, "replace", failing_replace)
    monkeypatch.setattr(bundle, "exchange", lambda first, second: False)  # the two-rename path (no renameat2)
    with pytest.raises(OSError, match="rename failed"):
        save_bundle(folder, {"version": "new"}, {"a": np.ones(3)})
    monkeypatch.setattr(bundle.os, "replace", real_replace)
    assert _listing(tmp_path) == before
    assert load_bundle(folder)[0]["version"] == "old"


def test_object_array_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError):
        save_bundle(tmp_path / "model", {}, {"evil": np.array([{"a": 1}, None], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_pickled_array_is_not_loaded(tmp_path):
    folder = save_bundle(tmp_path / "model", {}, {"x": np.zeros(2)})
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    data = buffer.getvalue()
    (folder / "x.npy").write_bytes(data)
    _edit_manifest(folder, lambda m: m["arrays"]["x"].update(sha256=hashlib.sha256(data).hexdigest(),
                                                             shape=[2], dtype="object"))
    with pytest.raises(BundleError):
        load_bundle(folder)


def test_atomic_when_the_exchange_fails(tmp_path, monkeypatch):
    folder = save_bundle(tmp_path / "model", {"version": "old"}, {"a": np.zeros(3)})
    before = _listing(tmp_path)
    monkeypatch.setattr(bundle, "exchange", lambda first, second: (_ for _ in ()).throw(OSError("exchange failed")))
    with pytest.raises(OSError, match="exchange failed"):
        save_bundle(folder, {"version": "new"}, {"a": np.ones(3)})
    assert _listing(tmp_path) == before


def test_saving_over_a_bundle_never_removes_the_folder(tmp_path, monkeypatch):
    """With an atomic exchange (Linux), the folder is never missing during a save."""
    from rtg_anomaly.atomic import exchange

    folder = save_bundle(tmp_path / "model", {"version": "old"}, {"a": np.zeros(3)})
    (tmp_path / "probe").mkdir()
    if not exchange(tmp_path / "probe", folder) or not exchange(tmp_path / "probe", folder):
        pytest.skip("no atomic exchange on this system")
    renames = []
    monkeypatch.setattr(bundle.os, "replace", lambda *args: renames.append(args))
    save_bundle(folder, {"version": "new"}, {"a": np.ones(3)})
    assert renames == [] and load_bundle(folder)[0]["version"] == "new"
