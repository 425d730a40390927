"""SIGTERM (issue #24, point 6) is handled like Ctrl-C: a folder run keeps the report and CSV of the scans
it finished, with "complete": false, and exits with 130."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rtg_anomaly.cli import main
from tests.conftest import REPO_ROOT


class _DefaultTermination(Exception):
    """Raised by the test's own SIGTERM handler: main() did not install one (it would have been killed)."""


def test_sigterm_in_a_folder_run_keeps_the_scans_done(demo_data, tiny_bundle, tmp_path, capsys, monkeypatch):
    from rtg_anomaly.outputs import scan_outputs

    def fallback(signum, frame):
        raise _DefaultTermination()

    previous = signal.signal(signal.SIGTERM, fallback)
    try:
        scans = sorted((demo_data / "test" / "anomalous").iterdir())
        real, done = scan_outputs.score_scan, []

        def score_scan(detector, path, *args):
            if len(done) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread at the next bytecode
            done.append(path)
            return real(detector, path, *args)

        monkeypatch.setattr(scan_outputs, "score_scan", score_scan)
        out = tmp_path / "out"
        code = main(["detect", "--input", str(demo_data / "test" / "anomalous"), "--output", str(out),
                     "--model", str(tiny_bundle), "--quiet"])
        err = capsys.readouterr().err
        assert code == 130, err
        assert "interrupted (SIGTERM)" in err and f"stopped after 1 of {len(scans)} scans" in err
        report = json.loads((out / "report.json").read_text())
        assert report["complete"] is False and [e["input"] for e in report["images"]] == [str(scans[0])]
        assert len((out / "triage.csv").read_text().strip().splitlines()) == 2
        assert signal.getsignal(signal.SIGTERM) is fallback  # restored after the run
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_to_a_real_process(demo_data, tiny_bundle, tmp_path):
    """A service manager's stop: the process gets SIGTERM part-way through a folder of 60 scans."""
    source = tmp_path / "lane"
    source.mkdir()
    scan = sorted((demo_data / "test" / "good").iterdir())[0]
    for index in range(60):
        shutil.copy(scan, source / f"{index:03d}.bmp")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "rtg_anomaly", "detect", "--input", str(source), "--output",
                                str(out), "--model", str(tiny_bundle), "--device", "cpu", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_dir() and len([p for p in out.iterdir() if p.suffix == ".bmp"]) >= 2:
            break
        time.sleep(0.02)
    if process.poll() is not None:
        pytest.fail(f"the run ended before it could be stopped: {process.communicate()}")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False and 1 <= len(report["images"]) < 60
    rows = (out / "triage.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(report["images"]) + len(report["errors"])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no half-written file left
