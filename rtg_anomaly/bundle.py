"""The fitted model on disk: a versioned folder of plain arrays and a JSON manifest.

Nothing is unpickled on load, so a bundle from a stranger cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .atomic import staging_folder
from .errors import InputError

FORMAT_NAME = "rtg-anomaly-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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
        full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest, "arrays": entries}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        if folder.exists():
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


def read_manifest(folder: str | os.PathLike) -> dict:
    """The checked manifest of a bundle (format name and version)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"no model bundle at {folder} (missing {MANIFEST}); run 'rtg-anomaly fit' first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"model bundle {folder} has a corrupt {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{folder} is not an rtg-anomaly model bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"model bundle {folder} has format version {version}, newer than this rtg-anomaly "
            f"understands ({FORMAT_VERSION}); upgrade rtg-anomaly"
        )
    return manifest


def load_bundle(folder: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a bundle: (manifest, arrays). Any mismatch raises BundleError."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    arrays = {}
    for name, entry in manifest.get("arrays", {}).items():
        path = folder / entry["file"]
        if not path.is_file() or path.parent != folder:
            raise BundleError(f"model bundle {folder} is missing {entry['file']}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(f"model bundle {folder}: checksum mismatch in {entry['file']} (file changed or corrupt)")
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:  # e.g. an object (pickled) array: never unpickled
            raise BundleError(f"model bundle {folder}: cannot read {entry['file']}: {exc}") from None
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
            raise BundleError(f"model bundle {folder}: {entry['file']} has an unexpected shape or dtype")
        arrays[name] = array
    return manifest, arrays
