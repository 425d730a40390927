"""scripts/benchmark_selection.py: one dataset end to end on tiny synthetic data, and the page it renders."""

from __future__ import annotations

import json

import pytest

from rtg_anomaly.config import DetectorConfig
from rtg_anomaly.scans.synthetic import write_demo_dataset
from tests.conftest import TINY_MODEL, load_script


@pytest.fixture(scope="module")
def script():
    return load_script("benchmark_selection")


def test_one_dataset_records_every_candidate_the_choice_and_the_correlation(script, tmp_path, monkeypatch):
    import rtg_anomaly.pipeline.selection as selection
    from rtg_anomaly.pipeline.selection import Candidate

    fields = dict(backbone="vit_small_patch14_dinov2", weights="random", model_kwargs=TINY_MODEL, layers=(1,),
                  neighbourhood=1, input_size=56)
    monkeypatch.setattr(selection, "scale_candidates", lambda shorter, weights=None: [
        Candidate("tiny-t64", dict(fields, tile_size=64)), Candidate("tiny-t96", dict(fields, tile_size=96))])
    monkeypatch.setattr(script, "select_config", selection.select_config)
    tiny = DetectorConfig(backbone="vit_small_patch14_dinov2", weights="random", model_kwargs=TINY_MODEL, layers=(1,),
                          tile_size=64, input_size=56, pca_dim=8)
    monkeypatch.setattr(script, "DetectorConfig", lambda: tiny)
    monkeypatch.setattr(script, "_tuned_config", lambda name, weights_dir: tiny.replace(pca_dim=4))
    write_demo_dataset(tmp_path / "data" / "demo", n_clean_train=6, n_clean_test=2, n_anomalous=2, height=96, seed=2,
                       fmt="png")
    entry = script.run_dataset("demo", tmp_path / "data", tmp_path, "cpu")
    names = [row["name"] for row in entry["rows"]]
    assert names[0] == "defaults" and names[-1] == "tuned on the test set"
    assert names[1:3] == ["tiny-t64", "tiny-t96"] and entry["n_candidates"] == len(names) - 2
    assert sum(row["selected"] for row in entry["rows"]) == 1
    chosen = next(row for row in entry["rows"] if row["selected"])
    assert chosen["name"] == entry["selection"]["chosen"]
    for row in entry["rows"]:
        assert 0.0 <= row["real"]["image_auroc"] <= 1.0 and 0.0 <= row["real"]["pixel_auroc"] <= 1.0
    assert set(entry["spearman"]) <= {"image_auroc", "pixel_auroc"}
    json.dumps(entry, allow_nan=False)
    entry["run"] = {"date": "today", "machine": "test", "command": "python scripts/benchmark_selection.py"}
    monkeypatch.setattr(script, "DATASETS", ["demo"])
    page = script.render({"datasets": {"demo": entry}})
    assert "## Headline: no per-dataset flags" in page
    assert f"| demo | {entry['rows'][0]['real']['image_auroc']:.3f} |" in page
    assert "**(chosen)**" in page and "tuned on the test set" in page


def test_defaults_only_records_one_row_and_renders_without_selection(script, tmp_path, monkeypatch):
    tiny = DetectorConfig(backbone="vit_small_patch14_dinov2", weights="random", model_kwargs=TINY_MODEL, layers=(1,),
                          tile_size=64, input_size=56, pca_dim=8)
    monkeypatch.setattr(script, "DetectorConfig", lambda: tiny)
    write_demo_dataset(tmp_path / "data" / "demo", n_clean_train=5, n_clean_test=2, n_anomalous=2, height=96, seed=2,
                       fmt="png")
    entry = script.run_dataset("demo", tmp_path / "data", tmp_path, "cpu", defaults_only=True)
    assert entry["defaults_only"] and [r["name"] for r in entry["rows"]] == ["defaults"]
    assert 0.0 <= entry["rows"][0]["real"]["image_auroc"] <= 1.0
    monkeypatch.setattr(script, "DATASETS", ["demo"])
    page = script.render({"datasets": {"demo": entry}})
    assert "| demo | " in page and "not run" in page
