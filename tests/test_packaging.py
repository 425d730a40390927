"""The built wheel carries every module of the package, subpackages included (a non-editable install works)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_module(tmp_path):
    # Built from a fresh copy: setuptools reuses a build/ folder, which could hide a missing package.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "rtg_anomaly", source / "rtg_anomaly", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("rtg_anomaly-*.whl")
    in_wheel = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    on_disk = {str(p.relative_to(REPO)).replace("\\", "/") for p in (REPO / "rtg_anomaly").rglob("*.py")}
    assert on_disk - in_wheel == set()
    assert "rtg_anomaly/methods/patchcore.py" in in_wheel
