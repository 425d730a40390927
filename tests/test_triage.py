"""Tests for rtg_anomaly.outputs.triage (tiny files in tmp_path: fast)."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest

from rtg_anomaly.outputs.regions import Region
from rtg_anomaly.outputs.triage import TRIAGE_COLUMNS, sort_into, triage_row, write_triage_csv


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


def region(rank=1, bbox=(12, 34, 56, 78)):
    x, y, w, h = bbox
    return Region(rank=rank, x=x, y=y, width=w, height=h, area=w * h, peak=3.0, mean=2.0, peak_xy=(x, y))


def test_columns():
    assert TRIAGE_COLUMNS == ("path", "score", "decision", "n_regions", "top_region", "error")


def test_csv_round_trip(tmp_path):
    rows = [
        {"path": "scans/a, with comma.png", "score": 2.718281828459045, "decision": "suspect", "n_regions": 3,
         "top_region": region(), "error": None},
        {"path": "scans/b.png", "score": np.float32(0.5), "decision": "clean", "n_regions": np.int64(0),
         "top_region": None, "error": ""},
        {"path": "scans/c.png", "decision": "error", "error": "InputError: cannot read\nscans/c.png"},
        {"path": "scans/d.png", "score": 1.25, "decision": "suspect", "n_regions": 1, "top_region": (1, 2, 3, 4)},
        {"path": "scans/e.png", "score": np.float64(1.5), "decision": "suspect", "n_regions": 1,
         "top_region": "5 6 7 8"},
    ]
    out = write_triage_csv(tmp_path / "triage.csv", rows)
    assert out == tmp_path / "triage.csv"
    header, got = read_csv(out)
    assert header == list(TRIAGE_COLUMNS)
    assert len(got) == 5
    assert got[0] == {"path": "scans/a, with comma.png", "score": "2.718281828459045", "decision": "suspect",
                      "n_regions": "3", "top_region": "12 34 56 78", "error": ""}
    assert float(got[0]["score"]) == 2.718281828459045          # exact round trip
    assert got[1] == {"path": "scans/b.png", "score": "0.5", "decision": "clean", "n_regions": "0",
                      "top_region": "", "error": ""}
    assert got[2] == {"path": "scans/c.png", "score": "", "decision": "error", "n_regions": "",
                      "top_region": "", "error": "InputError: cannot read scans/c.png"}
    assert got[3]["top_region"] == "1 2 3 4" and got[4]["top_region"] == "5 6 7 8"
    assert got[4]["score"] == "1.5"                                 # numpy scalars written as plain numbers


def test_triage_row_helper(tmp_path):
    suspect = triage_row("a.png", score=3.5, decision="suspect", regions=[region(1), region(2, (0, 0, 1, 1))])
    clean = triage_row("b.png", score=0.25, decision="clean")
    failed = triage_row("c.png", error=OSError("disk on fire"))
    path = write_triage_csv(tmp_path / "t.csv", [suspect, clean, failed])
    _, got = read_csv(path)
    assert [r["decision"] for r in got] == ["suspect", "clean", "error"]
    assert got[0]["n_regions"] == "2" and got[0]["top_region"] == "12 34 56 78"
    assert got[1]["n_regions"] == "0" and got[1]["top_region"] == "" and got[1]["score"] == "0.25"
    assert got[2]["error"] == "OSError: disk on fire" and got[2]["score"] == "" and got[2]["n_regions"] == ""
    with pytest.raises(ValueError):
        triage_row("d.png", score=1.0, decision="error")


def test_csv_rejects_bad_rows_and_keeps_old_file(tmp_path):
    path = tmp_path / "triage.csv"
    write_triage_csv(path, [{"path": "a.png", "score": 1.0, "decision": "clean", "n_regions": 0}])
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_triage_csv(path, [{"path": "a.png", "decision": "maybe"}])
    with pytest.raises(ValueError):
        write_triage_csv(path, [{"path": "a.png", "decision": "clean", "colour": "red"}])
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["triage.csv"]


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "triage.csv"
    path.write_text("old content\n")
    write_triage_csv(path, [{"path": "a.png", "score": 1.0, "decision": "clean", "n_regions": 0}])
    assert sorted(os.listdir(tmp_path)) == ["triage.csv"]
    header, got = read_csv(path)
    assert header == list(TRIAGE_COLUMNS) and len(got) == 1
    write_triage_csv(path, [])                                    # header only
    assert path.read_text(encoding="utf-8").splitlines() == [",".join(TRIAGE_COLUMNS)]
    assert sorted(os.listdir(tmp_path)) == ["triage.csv"]


def test_failed_write_leaves_no_temp(tmp_path):
    def rows():
        yield {"path": "a.png", "score": 1.0, "decision": "clean", "n_regions": 0}
        raise RuntimeError("scan crashed while listing")
    with pytest.raises(RuntimeError):
        write_triage_csv(tmp_path / "triage.csv", rows())
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- sorting

@pytest.fixture
def scans(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    files = {}
    for name, payload in (("a.png", b"scan a"), ("b.tif", b"scan b bytes")):
        (src / name).write_bytes(payload)
        files[name] = src / name
    return files


@pytest.mark.parametrize("mode", ["copy", "link", "symlink"])
def test_sort_into_modes(tmp_path, scans, mode):
    out = tmp_path / "out"
    dest_a = sort_into(out, scans["a.png"], "suspect", mode=mode)
    dest_b = sort_into(out, str(scans["b.tif"]), "clean", mode=mode)
    assert dest_a == out / "suspect" / "a.png" and dest_b == out / "clean" / "b.tif"
    assert dest_a.read_bytes() == b"scan a" and dest_b.read_bytes() == b"scan b bytes"
    assert sorted(os.listdir(out)) == ["clean", "suspect"]
    assert os.listdir(out / "suspect") == ["a.png"] and os.listdir(out / "clean") == ["b.tif"]
    assert scans["a.png"].exists()                                   # the original stays
    if mode == "copy":
        assert not dest_a.is_symlink() and not os.path.samefile(dest_a, scans["a.png"])
    elif mode == "link":
        assert not dest_a.is_symlink() and os.path.samefile(dest_a, scans["a.png"])
        assert os.stat(scans["a.png"]).st_nlink == 2
    else:
        assert dest_a.is_symlink() and Path(os.readlink(dest_a)) == scans["a.png"].resolve()


@pytest.mark.parametrize("mode", ["copy", "link", "symlink"])
def test_name_collisions_get_suffixes(tmp_path, mode):
    out = tmp_path / "out"
    firsts = []
    for day in ("mon", "tue", "wed"):
        folder = tmp_path / day
        folder.mkdir()
        (folder / "scan.png").write_bytes(f"scan from {day}".encode())
        firsts.append(sort_into(out, folder / "scan.png", "suspect", mode=mode))
    assert [p.name for p in firsts] == ["scan.png", "scan_1.png", "scan_2.png"]
    assert [p.read_bytes() for p in firsts] == [b"scan from mon", b"scan from tue", b"scan from wed"]
    assert sorted(os.listdir(out / "suspect")) == ["scan.png", "scan_1.png", "scan_2.png"]


def test_existing_different_file_is_never_overwritten(tmp_path, scans):
    suspect = tmp_path / "out" / "suspect"
    suspect.mkdir(parents=True)
    (suspect / "a.png").write_bytes(b"someone else's file")
    dest = sort_into(tmp_path / "out", scans["a.png"], "suspect")
    assert dest == suspect / "a_1.png" and dest.read_bytes() == b"scan a"
    assert (suspect / "a.png").read_bytes() == b"someone else's file"


@pytest.mark.parametrize("mode", ["copy", "link", "symlink"])
def test_sorting_the_same_scan_again_adds_nothing(tmp_path, scans, mode):
    out = tmp_path / "out"
    first = sort_into(out, scans["a.png"], "clean", mode=mode)
    again = sort_into(out, scans["a.png"], "clean", mode=mode)
    assert first == again and os.listdir(out / "clean") == ["a.png"]


def test_errors_are_not_sorted(tmp_path, scans):
    out = tmp_path / "out"
    assert sort_into(out, scans["a.png"], "error") is None
    assert sort_into(out, tmp_path / "missing.png", "error", mode="link") is None
    assert not out.exists()


def test_sort_into_bad_arguments(tmp_path, scans):
    with pytest.raises(ValueError):
        sort_into(tmp_path / "out", scans["a.png"], "maybe")
    with pytest.raises(ValueError):
        sort_into(tmp_path / "out", scans["a.png"], "clean", mode="move")
    with pytest.raises(FileNotFoundError):
        sort_into(tmp_path / "out", tmp_path / "missing.png", "clean")


def test_link_falls_back_to_copy_across_devices(tmp_path, scans, monkeypatch):
    import errno

    def no_link(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    dest = sort_into(tmp_path / "out", scans["a.png"], "suspect", mode="link")
    assert dest.read_bytes() == b"scan a" and not os.path.samefile(dest, scans["a.png"])


def test_failed_replace_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "triage.csv"
    path.write_text("old content\n")

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_triage_csv(path, [{"path": "a.png", "score": 1.0, "decision": "clean", "n_regions": 0}])
    assert os.listdir(tmp_path) == ["triage.csv"] and path.read_text() == "old content\n"
