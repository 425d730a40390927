"""scripts/benchmark_defaults.py: the acceptance rule and the page it renders, on a hand-made cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("benchmark_defaults")


def _cache(values: dict) -> dict:
    runs = {}
    for key, (image, pixel) in values.items():
        runs[key] = {"image_auroc": image, "pixel_auroc": pixel, "date": "2026-12-05 02:00 UTC", "machine": "test"}
    return {"runs": runs, "max_train": 160, "max_per_class": 40}


def test_rule_accepts_a_mean_gain_that_costs_no_dataset_more_than_the_margin(script):
    cache = _cache({"current/a": (0.90, 0.90), "current/b": (0.80, None),
                    "nb3/a": (0.95, 0.895), "nb3/b": (0.795, None),       # mean +0.0225, worst -0.005
                    "i320/a": (0.99, 0.90), "i320/b": (0.78, None),       # mean +0.035, but b loses 0.02
                    "i320-nb3/a": (0.90, 0.88), "i320-nb3/b": (0.81, None)})  # pixel loses 0.02
    kind, mean, worst = script.verdict(cache, "nb3", ["a", "b"])
    assert kind == "accepted" and mean == pytest.approx(0.0225) and worst == pytest.approx(-0.005)
    assert script.verdict(cache, "i320", ["a", "b"])[0] == "rejected"
    assert script.verdict(cache, "i320-nb3", ["a", "b"])[0] == "rejected"
    assert script.verdict(cache, "current", ["a", "b"])[0] == "reference"
    assert script.verdict(cache, "i224-nb3", ["a", "b"])[0] == "incomplete"


def test_page_lists_every_candidate_run_with_its_verdict_and_flags(script, monkeypatch):
    monkeypatch.setattr(script, "DATASETS", ["a", "b"])
    cache = _cache({"current/a": (0.90, 0.90), "current/b": (0.80, None),
                    "nb3/a": (0.95, 0.895), "nb3/b": (0.795, None)})
    page = script.render(cache, ["a", "b"], 160, 40)
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| `")}
    assert set(rows) == {"`current`", "`nb3`"}
    assert "0.950 (0.895)" in rows["`nb3`"] and "accepted" in rows["`nb3`"] and "-0.005" in rows["`nb3`"]
    assert "reference" in rows["`current`"] and "0.850" in rows["`current`"]
    assert "`--no-scale-to-scans --select off --neighbourhood 3`" in page and "--max-train 160" in page
    # a candidate that passed here but failed the full-set check says so in its verdict
    monkeypatch.setitem(script.FULL_SET_CHECKS, "nb3", "; failed on the full sets (b -0.02)")
    page = script.render(cache, ["a", "b"], 160, 40)
    assert "| accepted; failed on the full sets (b -0.02) |" in page


def test_a_loss_of_exactly_the_limit_passes_despite_float_rounding(script):
    """0.92 - 0.93 is -0.010000000000000009 in floats: the rule says 'more than 0.01', so it passes."""
    cache = _cache({"current/a": (0.93, None), "current/b": (0.80, None),
                    "nb3/a": (0.92, None), "nb3/b": (0.85, None)})
    kind, mean, worst = script.verdict(cache, "nb3", ["a", "b"])
    assert 0.92 - 0.93 < -script.MAX_LOSS and worst == pytest.approx(-0.01)
    assert kind == "accepted" and mean == pytest.approx(0.02)
    cache["runs"]["nb3/a"]["image_auroc"] = 0.919
    assert script.verdict(cache, "nb3", ["a", "b"])[0] == "rejected"


def test_a_later_candidate_is_judged_against_the_defaults_shipped_before_it(script):
    cache = _cache({"current/a": (0.80, None), "current+fit-half/a": (0.90, None), "select-scale/a": (0.895, None)})
    # Above the old reference, but below the shipped one it replaces: rejected.
    kind, mean, _ = script.verdict(cache, "select-scale", ["a"])
    assert script.REFERENCE["select-scale"] == "current+fit-half"
    assert kind == "rejected" and mean == pytest.approx(-0.005)


def test_validator_table_sets_synthetic_scores_beside_the_real_runs_at_the_same_zoom(script):
    cache = _cache({"current/a": (0.92, 0.94), "i322/a": (0.95, 0.95), "t768-i336/a": (0.90, 0.93),
                    "select-scale/a": (0.95, 0.95), "select-scale/b": (0.8, None)})
    cache["runs"]["select-scale/a"]["selection"] = {
        "mode": "scale", "chosen": "t512-i322 (22 px/cell)", "notes": [],
        "candidates": [{"name": "t512-i448 (16 px/cell)", "pixel_auroc": 0.75, "error": None},
                       {"name": "t512-i322 (22 px/cell)", "pixel_auroc": 0.78, "error": None},
                       {"name": "t768-i336 (32 px/cell)", "pixel_auroc": 0.70, "error": None}]}
    cache["runs"]["select-scale/b"]["selection"] = {"mode": "scale", "chosen": "configured", "candidates": [],
                                                   "notes": ["scale kept: the scans are fitted to their own size"]}
    lines = script.validator_lines(cache, ["a", "b"])
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| a") or line.startswith("| b")}
    assert "0.780 → 0.950 / 0.950" in rows["a"] and "**(chosen)**" in rows["a"]
    cells = [c.strip() for c in rows["a"].split("|")]
    assert cells[4:7] == ["+1.00", "+1.00", "yes"]
    assert "fitted to their own size" in rows["b"]
    assert script.validator_lines(_cache({"current/a": (0.9, None)}), ["a"]) == []


def test_a_candidate_that_already_lost_too_much_on_one_dataset_is_rejected_before_the_rest_run(script):
    cache = _cache({"current/a": (0.92, 0.94), "current/b": (0.80, None),
                    "t384/a": (0.906, 0.933),                          # a loses 0.014: rejected without b
                    "nb3/a": (0.915, 0.94)})                           # a loses 0.005: b still decides
    kind, mean, worst = script.verdict(cache, "t384", ["a", "b"])
    assert kind == "rejected" and mean is None and worst == pytest.approx(-0.014)
    assert script.verdict(cache, "nb3", ["a", "b"]) == ("incomplete", None, None)


def test_image_score_section_sets_the_synthetic_choice_beside_the_real_runs(script, tmp_path):
    study = {"a/0/0.03-0.15": {"patch_top_mean": 0.82, "global": 0.60, "object_sizes": [0.03, 0.15],
                               "tile_size": 32, "input_size": 224, "n_validation": 16, "n_objects": 32}}
    path = tmp_path / "validator_image_score.json"
    path.write_text(json.dumps(study))
    cache = _cache({"select-scale/a": (0.824, None), "select-scale+global/a": (0.902, None)})
    page = "\n".join(script.validator_image_score_lines(cache, path))
    assert "\n| a | 0 | shipped: 0.03–0.15 | t32-i224 | 16 / 32 | **0.820** | 0.600 |" in page
    assert "a 0.824 (top patches) / 0.902 (whole scan)" in page
    assert script.validator_image_score_lines(cache, tmp_path / "missing.json") == []
    assert script.REFERENCE["select-scale+global"] == "select-scale"


def test_a_side_study_page_holds_its_table_and_points_to_the_main_study_for_the_reading(script, monkeypatch):
    monkeypatch.setattr(script, "DATASETS", ["a", "b"])
    # --max-train 32 into another --output: select-scale's own reference was not run there, so it is the page's
    cache = _cache({"select-scale/a": (0.90, 0.90), "select-scale/b": (0.80, None),
                    "select-scale+hflip/a": (0.88, 0.90), "select-scale+hflip/b": (0.83, None)})
    cache["max_train"] = 32
    assert script.verdict(cache, "select-scale", ["a", "b"]) == ("reference", None, None)
    assert script.verdict(cache, "select-scale+hflip", ["a", "b"])[0] == "rejected"  # a loses 0.02
    page = script.render(cache, ["a", "b"], 32, 40, source="defaults_few32.json", notes=False)
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| `")}
    assert "| – | – | reference |" in rows["`select-scale`"]
    assert "`select-scale` | rejected |" in rows["`select-scale+hflip`"]
    assert "from `defaults_few32.json`" in page and "--max-train 32" in page and "[defaults.md](defaults.md)" in page
    assert "Decision of" not in page and "Decision of" in script.render(cache, ["a", "b"], 32, 40)


def test_validator_table_claims_no_hit_while_a_zoom_has_no_real_run(script):
    cache = _cache({"select-scale/a": (0.89, 0.93), "i322/a": (0.93, 0.94)})  # 16 px never run on its own
    cache["runs"]["select-scale/a"]["selection"] = {
        "mode": "scale", "chosen": "t512-i322 (22 px/cell)", "notes": [],
        "candidates": [{"name": "t512-i448 (16 px/cell)", "pixel_auroc": 0.75, "error": None},
                       {"name": "t512-i322 (22 px/cell)", "pixel_auroc": 0.78, "error": None}]}
    row = next(line for line in script.validator_lines(cache, ["a"]) if line.startswith("| a"))
    assert "0.750 → not run" in row and [c.strip() for c in row.split("|")][4:7] == ["–", "–", "–"]


def test_a_map_only_setting_is_judged_by_the_pixel_side_rule(script):
    base, s0 = "select-scale+auto-score", "select-scale+auto-score+s0"
    assert s0 in script.MAP_ONLY and script.REFERENCE[s0] == base
    cache = _cache({f"{base}/a": (0.90, 0.90), f"{base}/b": (0.80, None),
                    f"{s0}/a": (0.90, 0.905), f"{s0}/b": (0.80, None)})
    cache["runs"][f"{base}/a"]["aupro"], cache["runs"][f"{s0}/a"]["aupro"] = 0.60, 0.595
    kind, mean, worst = script.verdict(cache, s0, ["a", "b"])
    assert kind == "accepted (pixel rule)" and mean == pytest.approx(0.005) and worst == pytest.approx(-0.005)
    cache["runs"][f"{s0}/a"]["aupro"] = 0.58                      # AUPRO loses 0.02
    assert script.verdict(cache, s0, ["a", "b"])[0] == "rejected (pixel rule)"
    cache["runs"][f"{s0}/a"]["aupro"] = 0.60
    cache["runs"][f"{s0}/b"]["image_auroc"] = 0.81                # the zoom selection chose another zoom
    assert script.verdict(cache, s0, ["a", "b"])[:2] == ("rejected (image AUROC moved)", None)
    del cache["runs"][f"{s0}/b"]
    assert script.verdict(cache, s0, ["a", "b"]) == ("incomplete", None, None)


def test_candidates_keep_the_map_gaussian_they_ran_with(script):
    assert script.run_flags_of("select-scale+auto-score") == ["--select", "scale", "--image-score", "auto",
                                                              "--smoothing-sigma", "0.5"]
    assert script.run_flags_of("select-scale+auto-score+s0")[-2:] == ["--smoothing-sigma", "0"]
    # a run recorded before the pin stands for the same run with it
    assert (script._same_flags(["--select", "off", "--tile-size", "384"])
            == script._same_flags(["--select", "off", "--tile-size", "384", "--smoothing-sigma", "0.5"]))
    assert script._same_flags(["--smoothing-sigma", "0"]) == ["--smoothing-sigma", "0"]


def test_a_candidate_dropped_on_purpose_says_why(script, monkeypatch):
    monkeypatch.setattr(script, "DATASETS", ["a", "b"])
    base, k3 = "select-scale+auto-score", "select-scale+auto-score+k3"
    cache = _cache({f"{base}/a": (0.90, None), f"{base}/b": (0.80, None), f"{k3}/a": (0.895, None)})
    assert script.verdict(cache, k3, ["a", "b"])[0] == "incomplete"
    assert "| incomplete; dropped: lost on every set it ran on (screw not run) |" in script.render(cache, ["a", "b"],
                                                                                                   160, 40)


def test_the_full_set_check_is_judged_by_the_same_rule_and_shown_beside_the_subsample_verdict(script, monkeypatch):
    monkeypatch.setattr(script, "DATASETS", ["a", "b"])
    cache = _cache({"current/a": (0.90, 0.90), "current/b": (0.80, None),
                    "nb3/a": (0.95, 0.895), "nb3/b": (0.795, None)})        # accepted on the subsample
    page = script.render(cache, ["a", "b"], 160, 40, full_cache=None)
    assert "| accepted |" in page                                          # not checked on the full sets yet
    failed = _cache({"current/a": (0.91, 0.92), "current/b": (0.85, None),
                     "nb3/a": (0.93, 0.92), "nb3/b": (0.83, None)})        # b loses 0.02 on the full sets
    failed.update(max_train=None, max_per_class=None)
    page = script.render(cache, ["a", "b"], 160, 40, full_cache=failed)
    assert "| accepted; failed on the full sets (mean +0.0000, worst -0.020) |" in page
    held = _cache({"current/a": (0.91, 0.92), "current/b": (0.85, None),
                   "nb3/a": (0.93, 0.925), "nb3/b": (0.845, None)})
    assert "| accepted; held on the full sets (mean +0.0075, worst -0.005) |" in script.render(
        cache, ["a", "b"], 160, 40, full_cache=held)
    # incomplete full-set runs say nothing yet; the full-set page says what it is
    del held["runs"]["nb3/b"]
    assert "| accepted |" in script.render(cache, ["a", "b"], 160, 40, full_cache=held)
    full_page = script.render(failed, ["a", "b"], None, None, source="defaults_full.json", notes=False)
    assert "full-set checks (`--full-sets`" in full_page and "Every dataset is subsampled" not in full_page


def test_visibility_section_correlates_each_seed_with_the_real_castings_runs(script, tmp_path):
    zooms = ["t512-i448 (16 px/cell)", "t512-i322 (22 px/cell)", "t768-i336 (32 px/cell)", "t384-i448 (12 px/cell)"]
    real = {"current": 0.92, "i322": 0.95, "t768-i336": 0.90, "t384": 0.91}
    cache = _cache({f"{name}/gdxray_castings": (value, None) for name, value in real.items()})
    # shipped objects rank the zooms as the real runs do; the new objects in reverse
    shipped = {z: v for z, v in zip(zooms, (0.76, 0.78, 0.70, 0.74))}
    reverse = {z: v for z, v in zip(zooms, (0.80, 0.70, 0.90, 0.85))}

    def write(name: str, objects: str) -> Path:
        rows = {z: {"shipped/pixel": shipped[z], "shipped/object": shipped[z], f"{objects}/pixel": reverse[z],
                    f"{objects}/object": reverse[z]} for z in zooms}
        path = tmp_path / name
        path.write_text(json.dumps({"gdxray_castings/0": rows}))
        return path

    page = "\n".join(script.validator_visibility_lines(cache, write("v.json", "visible"), write("s.json", "soft")))
    assert "| visible | 0 | +1.00 | -1.00 |" in page and "| soft | 0 | +1.00 | -1.00 |" in page
    assert "16 px 0.920, 22 px 0.950, 32 px 0.900, 12 px 0.910" in page
    assert script.validator_visibility_lines(cache, tmp_path / "missing.json", tmp_path / "s.json") == []
