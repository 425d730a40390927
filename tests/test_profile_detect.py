"""scripts/profile_detect.py: a quick run with the tiny random backbone measures the backbone's share and names
the library functions the detect time goes to."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO_ROOT


def test_quick_profile_writes_the_share_and_the_host_functions(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("profile_detect", REPO_ROOT / "scripts" / "profile_detect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "profile.json"
    assert module.main(["--device", "cpu", "--tiny-backbone", "--quick", "--repeats", "2", "--output", str(output),
                        "--batch-sizes", "8,16"]) == 0
    result = json.loads(output.read_text())
    assert result["scan"] == [256, 768] and len(result["end_to_end_runs"]) == 2
    assert 0 < result["backbone_s"] and 0 < result["backbone_share"] == result["backbone_s"] / result["end_to_end_s"]
    assert set(result["stage_timings_s"]) >= {"backbone", "knn", "stitch", "smooth"}
    functions = [row["function"] for row in result["host_profile"]]
    assert any("(score)" in f for f in functions) and any("(overlay)" in f for f in functions)
    # sorted by cumulative time, per run
    cumulative = [row["cumulative_s"] for row in result["host_profile"]]
    assert cumulative == sorted(cumulative, reverse=True)
    assert result["device_profile"]["device_busy_s"] == 0.0 and result["device_profile"]["by_host"]  # no GPU here
    assert all(v > 0 for v in result["folder_s_per_scan"].values())
    assert [row["batch_size"] for row in result["batch_sizes"]] == [8, 16]
    assert all(row["end_to_end_s"] > 0 and row["max_heatmap_difference"] < 1e-4 for row in result["batch_sizes"])
    assert "backbone alone" in capsys.readouterr().out
