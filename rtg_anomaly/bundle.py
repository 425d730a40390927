"""The fitted model on disk: a versioned folder of plain arrays and a JSON manifest.

Nothing is unpickled on load, so a bundle from a stranger cannot run code. A bundle is data from
strangers: every manifest field and every ``.npy`` header is checked before anything is allocated.

One checksum pins the whole bundle: ``content_sha256`` is the sha256 of the manifest's canonical JSON
(config, calibration, thresholds, and each array file's sha256), so a threshold edited by hand is
detected; ``rtg-anomaly calibrate`` is the way to change one. A bundle being replaced while it is read
(``fit`` or ``calibrate`` saving over it) is read as the old one or the new one, never a mixture: the
manifest is read once, every array is checked against that manifest's checksums, and a read that fails
while the folder was replaced under it is tried again (``load_bundle``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import stat
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .atomic import exchange, staging_folder
from .errors import InputError

FORMAT_NAME = "rtg-anomaly-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONTENT_KEY = "content_sha256"
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few kB; a selection record a few tens
# Reads of a bundle that keeps being replaced meanwhile: one more read suffices after a real save (a fit
# takes minutes); the stress test (tests/test_bundle_swap.py) saves in a tight loop, and needs a few.
READ_ATTEMPTS = 20
NPY_VERSIONS = ((1, 0), (2, 0))  # what np.save writes for plain numeric arrays
MAX_NPY_HEADER_BYTES = 65_536 + 16


class BundleError(InputError):
    """A model bundle is missing, corrupt, from a newer version or does not fit."""


def _array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # np.asarray keeps 0-d arrays 0-d (np.ascontiguousarray would make them (1,) and break the shape check)
    np.save(buffer, np.asarray(array, order="C"), allow_pickle=False)
    return buffer.getvalue()


def check_bundle_destination(folder: str | os.PathLike) -> None:
    """Raise BundleError unless saving a bundle at ``folder`` would lose nothing but an older bundle.

    Saving replaces the whole folder, so it must be absent, empty, or a bundle: ``manifest.json`` plus
    ``.npy`` files and nothing else. A folder of scans named by mistake is refused, not deleted.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise BundleError(f"cannot write the model to {folder}: it is a file")
    entries = sorted(os.listdir(folder))
    if not entries:
        return
    foreign = [name for name in entries
               if name != MANIFEST and not (name.endswith(".npy") and (folder / name).is_file())]
    if MANIFEST not in entries or foreign:
        example = (foreign or entries)[0]
        raise BundleError(f"cannot write the model to {folder}: the folder holds files that are not a model "
                          f"bundle (such as {example!r}) and saving would replace it; name a new or empty folder")


def save_bundle(folder: str | os.PathLike, manifest: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``manifest.json`` and one ``<name>.npy`` per array, atomically.

    The bundle is written to a temporary sibling folder and renamed into place;
    an existing bundle at ``folder`` is replaced only once the new one is
    complete, and a folder that is not a bundle is never replaced
    (``check_bundle_destination``). The manifest gains the format, and the
    shape, dtype and sha256 of every array file.
    """
    folder = Path(folder)
    check_bundle_destination(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_folder(folder)
    try:
        entries = {}
        for name, array in arrays.items():
            data = _array_bytes(array)
            (tmp / f"{name}.npy").write_bytes(data)
            entries[name] = {"file": f"{name}.npy", "shape": list(array.shape), "dtype": str(array.dtype),
                             "sha256": hashlib.sha256(data).hexdigest()}
        full = seal({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest, "arrays": entries})
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False, allow_nan=False) + "\n")
        if folder.exists() and exchange(tmp, folder):
            pass  # the old bundle is now in tmp, removed below; the folder was never missing
        elif folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
            try:
                os.replace(tmp, folder)
            except BaseException:
                os.replace(old, folder)  # put the previous bundle back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def content_digest(manifest: dict) -> str:
    """sha256 (hex) of ``manifest``'s canonical JSON, ``content_sha256`` left out. The array entries hold
    each array file's sha256, so this one value covers the manifest's values and every array.
    Raises ValueError for NaN or infinity, which JSON cannot hold."""
    body = {key: value for key, value in manifest.items() if key != CONTENT_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(manifest: dict) -> dict:
    """``manifest`` with its ``content_sha256`` (re)computed."""
    return {**{key: value for key, value in manifest.items() if key != CONTENT_KEY},
            CONTENT_KEY: content_digest(manifest)}


def read_manifest(folder: str | os.PathLike) -> dict:
    """The checked manifest of a bundle (format name and version, checksum, array entries)."""
    folder = Path(folder)
    with _open_folder(folder) as open_file, open_file(MANIFEST, MAX_MANIFEST_BYTES) as file:
        return _parse_manifest(folder, _read(folder, MANIFEST, file))


def load_bundle(folder: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a bundle: (manifest, arrays). Any mismatch raises BundleError.

    The manifest is read once and every array checked against it, so the pair always belongs to one
    save. When a read fails and the folder is not the one it was when the read began (a ``fit`` or
    ``calibrate`` replaced it meanwhile), the whole read is tried again, up to ``READ_ATTEMPTS`` times:
    a reader gets the old bundle or the new one, never a mixture and never an error caused by the swap.
    """
    folder = Path(folder)
    for attempt in range(READ_ATTEMPTS):
        before = _identity(folder)
        try:
            return _read_bundle(folder)
        except BundleError as exc:
            error = exc
        if _identity(folder) == before and not (before is None and _being_replaced(folder)):
            break  # nothing replaced the folder meanwhile: the damage is real
        time.sleep(min(0.002 * (attempt + 1), 0.02))
    raise error


def _being_replaced(folder: Path) -> bool:
    """Whether a save is between its two renames (where no atomic exchange exists): the old bundle is
    moved aside under a hidden name and the new one not yet in place."""
    try:
        return any(name.startswith(f".{folder.name}.old-") for name in os.listdir(folder.parent))
    except OSError:
        return False


def _identity(folder: Path) -> tuple | None:
    """What changes when the folder is replaced by a rename: device, inode and change time (the inode
    number of a removed folder can be reused by the next one)."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_ctime_ns


def _read_bundle(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with _open_folder(folder) as open_file:
        with open_file(MANIFEST, MAX_MANIFEST_BYTES) as file:
            manifest = _parse_manifest(folder, _read(folder, MANIFEST, file))
        # Every array file is opened before any is read: a save replacing the folder now removes the old
        # files, but files already open stay readable, so the read rarely has to start again.
        files = {}
        try:
            for name, entry in manifest["arrays"].items():
                files[name] = open_file(entry["file"], None, entry)
            arrays = {name: _parse_array(folder, entry, _read(folder, entry["file"], files[name]))
                      for name, entry in manifest["arrays"].items()}
        finally:
            for file in files.values():
                file.close()
    return manifest, arrays


def _read(folder: Path, name: str, file) -> bytes:
    try:
        return file.read()
    except OSError as exc:
        raise BundleError(f"cannot read {name} in model bundle {folder}: {exc.strerror or exc}") from None


@contextmanager
def _open_folder(folder: Path):
    """Yield ``open_file(name, limit, entry=None) -> binary file``, opening files of ``folder`` through one
    handle on the folder where the system allows it (a rename of the folder meanwhile cannot mix two
    bundles' files) and refusing a file larger than ``limit`` bytes, or, for an array with its manifest
    ``entry``, one whose size does not fit the shape and dtype the entry declares. OSError becomes BundleError."""
    if not folder.is_dir():
        raise BundleError(f"no model bundle at {folder} (missing {MANIFEST}); run 'rtg-anomaly fit' first")
    use_handle = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
    try:
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if use_handle else None
    except OSError as exc:
        raise BundleError(f"cannot read model bundle {folder}: {exc.strerror or exc}") from None

    def open_file(name: str, limit: int | None, entry: dict | None = None):
        try:
            flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO named like a bundle file must not block
            fd = os.open(name, flags, dir_fd=handle) if use_handle else os.open(folder / name, flags)
        except FileNotFoundError:
            if name == MANIFEST:
                raise BundleError(f"no model bundle at {folder} (missing {MANIFEST}); run 'rtg-anomaly fit' "
                                  "first") from None
            raise BundleError(f"model bundle {folder} is missing {name}") from None
        except OSError as exc:
            raise BundleError(f"cannot read {name} in model bundle {folder}: {exc.strerror or exc}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # a folder named manifest.json, a device
            os.close(fd)
            raise BundleError(f"cannot read {name} in model bundle {folder}: not a plain file")
        file = os.fdopen(fd, "rb")
        try:
            size = info.st_size
            if entry is not None:
                limit = _entry_bytes(entry) + MAX_NPY_HEADER_BYTES
                if size < _entry_bytes(entry):
                    raise BundleError(f"model bundle {folder}: {name} has {size:,} bytes, fewer than the "
                                      f"{_entry_bytes(entry):,} its manifest entry declares")
            if size > limit:
                raise BundleError(f"model bundle {folder}: {name} has {size:,} bytes, more than "
                                  f"{'its manifest entry declares' if entry else 'a bundle holds'} ({limit:,})")
        except BaseException:
            file.close()
            raise
        return file

    try:
        yield open_file
    finally:
        if handle is not None:
            os.close(handle)


def _parse_manifest(folder: Path, data: bytes) -> dict:
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise BundleError(f"model bundle {folder} has a corrupt {MANIFEST}: {reason}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{folder} is not an rtg-anomaly model bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise BundleError(
            f"model bundle {folder} has format version {version}, newer than this rtg-anomaly "
            f"understands ({FORMAT_VERSION}); upgrade rtg-anomaly"
        )
    digest = manifest.get(CONTENT_KEY)
    try:
        expected = content_digest(manifest)
    except ValueError:  # 1e400 reads as inf
        raise BundleError(f"model bundle {folder}: {MANIFEST} holds a number too large for a float") from None
    # Bundles saved before the checksum existed carry none; one that carries it must match.
    if digest is not None and digest != expected:
        raise BundleError(f"model bundle {folder}: {MANIFEST} was changed after it was saved (its "
                          f"{CONTENT_KEY} does not match); use 'rtg-anomaly calibrate' to change thresholds")
    arrays = manifest.get("arrays", {})
    if not isinstance(arrays, dict):
        raise BundleError(f"model bundle {folder}: 'arrays' in {MANIFEST} must be an object")
    for name, entry in arrays.items():
        _check_entry(folder, name, entry)
    manifest.setdefault("arrays", arrays)
    return manifest


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _check_entry(folder: Path, name: str, entry) -> None:
    """BundleError unless ``entry`` describes a plain .npy file of the bundle: file, shape, dtype, sha256."""
    problem = None
    if not isinstance(entry, dict):
        problem = "is not an object"
    elif not isinstance(entry.get("file"), str) or entry["file"] != Path(entry["file"]).name \
            or not entry["file"].endswith(".npy") or entry["file"].startswith("."):
        problem = f"names a file outside the bundle: {entry.get('file')!r}"
    elif not isinstance(entry.get("shape"), list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"]) or len(entry["shape"]) > 8:
        problem = f"has an invalid shape {entry.get('shape')!r}"
    elif not isinstance(entry.get("dtype"), str) or not _plain_dtype(entry["dtype"]):
        problem = f"has an invalid dtype {entry.get('dtype')!r}"
    elif not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
        problem = "has no valid sha256"
    if problem:
        raise BundleError(f"model bundle {folder}: array entry {name!r} in {MANIFEST} {problem}")


def _plain_dtype(text: str) -> bool:
    """Whether ``text`` names a plain numeric or boolean dtype (never object, strings or records)."""
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):
        return False
    return dtype.kind in "biuf" and not dtype.hasobject and dtype.fields is None


def _entry_bytes(entry: dict) -> int:
    """Bytes of the values a manifest entry declares (shape x item size)."""
    return math.prod(entry["shape"]) * np.dtype(entry["dtype"]).itemsize


def _check_npy_header(folder: Path, name: str, data: bytes, entry: dict) -> None:
    """BundleError unless the .npy header at the start of ``data`` declares the manifest's shape and dtype
    and ``data`` holds exactly that many bytes; checked before numpy allocates the array, so a header
    declaring 10**15 values costs nothing."""
    file = io.BytesIO(data)
    size = len(data)
    try:
        version = np.lib.format.read_magic(file)
        if version not in NPY_VERSIONS:
            raise ValueError(f"unsupported .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(file)
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds on hostile bytes
        reason = " ".join(str(exc).split())[:160]
        raise BundleError(f"model bundle {folder}: {name} is not a plain .npy array ({reason})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise BundleError(f"model bundle {folder}: {name} holds {dtype} values, not plain numbers")
    if list(shape) != entry["shape"] or str(dtype) != entry["dtype"]:
        raise BundleError(f"model bundle {folder}: {name} has an unexpected shape or dtype ({dtype} "
                          f"{tuple(shape)}, the manifest says {entry['dtype']} {tuple(entry['shape'])})")
    needed = file.tell() + math.prod(shape) * dtype.itemsize
    if needed != size:
        raise BundleError(f"model bundle {folder}: {name} declares {math.prod(shape):,} values "
                          f"({needed:,} bytes) but the file has {size:,} bytes")


def _parse_array(folder: Path, entry: dict, data: bytes) -> np.ndarray:
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise BundleError(f"model bundle {folder}: checksum mismatch in {entry['file']} (file changed or corrupt)")
    _check_npy_header(folder, entry["file"], data, entry)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:  # e.g. an object (pickled) array: never unpickled
        raise BundleError(f"model bundle {folder}: cannot read {entry['file']}: {exc}") from None
    if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
        raise BundleError(f"model bundle {folder}: {entry['file']} has an unexpected shape or dtype")
    return array
