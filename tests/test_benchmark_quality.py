"""scripts/benchmark_quality.py on a tiny synthetic MVTec-layout dataset with a tiny random backbone."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from rtg_anomaly.scans.synthetic import write_demo_dataset
from tests.conftest import REPO_ROOT

TINY_FLAGS = "--weights random --tile-size 64 --input-size 56 --layers 1 --pca-dim 16"


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_quality", REPO_ROOT / "scripts" / "benchmark_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("benchmark_quality", module)
    spec.loader.exec_module(module)
    return module


bq = _load_script()


def test_clopper_pearson_exact_values():
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n).
    low, high = bq.clopper_pearson(0, 8)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 8), abs=1e-9)
    low, high = bq.clopper_pearson(5, 5)
    assert low == pytest.approx(0.025 ** (1 / 5), abs=1e-9) and high == 1.0
    low, high = bq.clopper_pearson(3, 45)  # reference: R binom.test(3, 45)$conf.int
    assert (low, high) == (pytest.approx(0.01396, abs=1e-4), pytest.approx(0.18270, abs=1e-4))
    with pytest.raises(ValueError):
        bq.clopper_pearson(1, 0)


def test_evenly_spaced_keeps_ends_and_order():
    assert bq.evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert bq.evenly_spaced(list(range(3)), 5) == [0, 1, 2]
    assert bq.evenly_spaced(list(range(3)), None) == [0, 1, 2]


@pytest.fixture
def one_thread():
    """One torch thread: on a small shared machine, tiny models run faster and steadier that way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmark_then_ablation_writes_both_sections(tmp_path, capsys, one_thread):
    write_demo_dataset(tmp_path / "synthetic_demo", n_clean_train=4, n_clean_test=2, n_anomalous=2,
                       height=96, seed=1)
    out = tmp_path / "docs" / "benchmarks.md"
    common = ["--data-root", str(tmp_path), "--datasets", "synthetic_demo", "--device", "cpu",
              f"--extra-flags={TINY_FLAGS}", "--output", str(out)]

    assert bq.main([*common, "--max-train", "3"]) == 0
    stdout = capsys.readouterr().out
    command = (f"rtg-anomaly evaluate --data {tmp_path / 'synthetic_demo'} {TINY_FLAGS} "
               "--false-alarm-rate 0.05 --device cpu")
    assert command in stdout

    cache = json.loads(out.with_suffix(".json").read_text())
    entry = cache["sections"]["benchmark"]["datasets"]["synthetic_demo"]
    assert entry["command"] == command
    assert entry["flags"] == TINY_FLAGS.split()
    assert entry["config"]["tile_size"] == 64 and entry["config"]["layers"] == [1]
    assert entry["subsample"]["n_train_used"] == 3 and entry["subsample"]["subsampled"]
    assert (entry["n_good"], entry["n_anomalous"]) == (2, 2)
    assert 0.0 <= entry["image_auroc"] <= 1.0 and entry["pixel_auroc"] is not None and entry["aupro"] is not None
    assert entry["memory_bank_size"] > 0 and entry["calibration_scans"] >= 1
    op = entry["operator"]
    assert op["requested"] == 0.05 and op["n_good"] == 2
    low, high = bq.clopper_pearson(op["false_alarms"], 2)
    assert (op["ci_low"], op["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert op["within"] == (low <= 0.05 <= high)

    text = out.read_text()
    assert "| synthetic_demo † | 3 / 2 / 2 |" in text
    assert f"`{command}`" not in text and command in text           # in the reproduce block
    assert f"{op['false_alarms']}/2" in text
    assert f"[{100 * low:.1f} %, {100 * high:.1f} %]" in text        # the Clopper-Pearson interval
    assert "fitted on 3 of 4 train/good images" in text              # the subsampling note
    assert "PaDiM | EfficientNet-Lite0 | 0.969 | 0.921 | 0.694" in text
    assert "No ablation run yet" in text
    # The Runs table names what ran the backbone, as the rows recorded it (auto: OpenVINO here when installed).
    (run_row,) = [line for line in text.splitlines() if line.startswith("| benchmark | synthetic_demo |")]
    assert entry["runtime"] in ("openvino", "torch") and f"backbone runtime {entry['runtime']} |" in run_row
    cache["sections"]["benchmark"]["datasets"]["synthetic_demo"]["runtime"] = "torch"  # say a fallback ran
    out.with_suffix(".json").write_text(json.dumps(cache))
    assert bq.main(["--output", str(out), "--render-only"]) == 0
    assert "backbone runtime torch |" in out.read_text()

    # Ablation afterwards (one variant, to stay fast): the benchmark section must survive.
    top_mean = bq.ABLATION_VARIANTS.index(["--image-score", "top_mean"])
    assert bq.main([*common, "--ablation", "--variants", str(top_mean)]) == 0
    cache = json.loads(out.with_suffix(".json").read_text())
    assert "synthetic_demo" in cache["sections"]["benchmark"]["datasets"]
    variants = cache["sections"]["ablation"]["datasets"]["synthetic_demo"]["variants"]
    assert [v["variant"] for v in variants] == [["--image-score", "top_mean"]]
    assert variants[0]["config"]["image_score"] == "top_mean" and variants[0]["config"]["tile_size"] == 64
    assert variants[0]["command"].endswith("--image-score top_mean --false-alarm-rate 0.05 --device cpu")
    text = out.read_text()
    assert "## Ablations" in text and "| `--image-score top_mean` |" in text
    assert "Baseline image score `top_mean`, map smoothing sigma 0 patch" in text  # the settings measured
    assert "| synthetic_demo † | 3 / 2 / 2 |" in text                # the results table is still there

    # A second ablation run merges its variant in; the Runs table names both commands that measured rows.
    k3 = bq.ABLATION_VARIANTS.index(["--k", "3"])
    assert bq.main([*common, "--ablation", "--variants", str(k3)]) == 0
    cache = json.loads(out.with_suffix(".json").read_text())
    variants = cache["sections"]["ablation"]["datasets"]["synthetic_demo"]["variants"]
    assert [v["variant"] for v in variants] == [["--image-score", "top_mean"], ["--k", "3"]]
    text = out.read_text()
    run_rows = [line for line in text.splitlines() if line.startswith("| ablation | synthetic_demo |")]
    assert len(run_rows) == 2
    assert f"--variants {top_mean}`" in run_rows[0] and f"--variants {k3}`" in run_rows[1]
    assert "The rows come from 2 runs" in text

    # Rows measured on top of other dataset flags (here a changed --extra-flags) do not replace the earlier
    # rows: the page shows each set of flags as a group of its own, the latest first.
    whitened = [f"--extra-flags={TINY_FLAGS} --pca-whiten 0.5" if arg.startswith("--extra-flags") else arg
                for arg in common]
    assert bq.main([*whitened, "--ablation", "--variants", str(top_mean)]) == 0
    cache = json.loads(out.with_suffix(".json").read_text())
    entry = cache["sections"]["ablation"]["datasets"]["synthetic_demo"]
    assert [(v["variant"], v["config"]["pca_whiten"]) for v in entry["variants"]] == [
        (["--image-score", "top_mean"], 0.5), (["--image-score", "top_mean"], 0.0), (["--k", "3"], 0.0)]
    text = out.read_text()
    latest = text.index(f"Dataset flags: `{TINY_FLAGS} --pca-whiten 0.5`.")
    earlier = text.index(f"Earlier rows, measured on top of the dataset's earlier flags `{TINY_FLAGS}`")
    assert latest < earlier and text.count("| `--image-score top_mean` |") == 2
    assert text.count("The rows come from 2 runs") == 1  # the earlier group; the latest has one run
    run_rows = [line for line in text.splitlines() if line.startswith("| ablation | synthetic_demo |")]
    assert len(run_rows) == 3

    # --render-only regenerates the same page from the cache.
    out.unlink()
    assert bq.main(["--output", str(out), "--render-only"]) == 0
    assert out.read_text() == text


def test_bad_flags_and_missing_dataset_fail_before_running(tmp_path, capsys):
    write_demo_dataset(tmp_path / "synthetic_demo", n_clean_train=2, n_clean_test=1, n_anomalous=1,
                       height=96, seed=1)
    out = tmp_path / "benchmarks.md"
    assert bq.main(["--data-root", str(tmp_path), "--datasets", "nope", "--output", str(out)]) == 2
    assert bq.main(["--data-root", str(tmp_path), "--datasets", "synthetic_demo", "--output", str(out),
                    "--extra-flags=--image-score median"]) == 2
    assert not out.exists()


def test_ablation_rows_group_by_the_flags_they_were_measured_on():
    entry = {"dataset_flags": ["--layers", "4,6", "--pca-whiten", "0.5"], "run": {"date": "d"}, "variants": [
        {"variant": [], "flags": ["--layers", "4,6", "--pca-whiten", "0.5"]},
        {"variant": ["--k", "3"], "flags": ["--layers", "4,6", "--k", "3"]},
        {"variant": ["--pca-dim", "64"], "error": "failed"},  # recorded before rows kept their flags
    ]}
    assert bq._base_flags(entry["variants"][1], entry) == ["--layers", "4,6"]
    assert bq._base_flags(entry["variants"][2], entry) == entry["dataset_flags"]
    groups = bq._ablation_groups(entry)
    assert [base for base, _ in groups] == [entry["dataset_flags"], ["--layers", "4,6"]]
    assert [[v["variant"] for v in group["variants"]] for _, group in groups] == [
        [[], ["--pca-dim", "64"]], [["--k", "3"]]]


def test_methods_table_runs_every_method_without_dataset_flags(tmp_path, one_thread):
    write_demo_dataset(tmp_path / "synthetic_demo", n_clean_train=4, n_clean_test=2, n_anomalous=2,
                       height=96, seed=1)
    out = tmp_path / "docs" / "benchmarks.md"
    code = bq.main(["--data-root", str(tmp_path), "--datasets", "synthetic_demo", "--device", "cpu",
                    "--methods", "patchcore,padim,centroid,svdd", "--extra-flags", TINY_FLAGS + " --epochs 2",
                    "--output", str(out)])
    assert code == 0
    rows = json.loads(out.with_suffix(".json").read_text())["sections"]["methods"]["datasets"]["synthetic_demo"]
    assert sorted(rows) == ["dinov2/centroid", "dinov2/padim", "dinov2/patchcore", "dinov2/svdd"]
    for key, row in rows.items():
        assert row["method"] == key.split("/")[1] and row["bundle_bytes"] > 0
        assert 0.0 <= row["image_auroc"] <= 1.0
    page = out.read_text()
    assert "## Which method?" in page and "| synthetic_demo | dinov2 | svdd |" in page
    assert bq.main(["--data-root", str(tmp_path), "--datasets", "synthetic_demo", "--methods", "svm",
                    "--output", str(out)]) == 2


def test_headline_runs_without_the_dataset_flags_and_leads_the_page(tmp_path, one_thread):
    # Named like the welds set, whose tuned flags pick another backbone: the headline must not use them.
    write_demo_dataset(tmp_path / "gdxray_welds", n_clean_train=4, n_clean_test=2, n_anomalous=2, height=96, seed=1)
    out = tmp_path / "docs" / "benchmarks.md"
    common = ["--data-root", str(tmp_path), "--datasets", "gdxray_welds", "--device", "cpu",
              f"--extra-flags={TINY_FLAGS}", "--output", str(out)]
    assert bq.main([*common, "--headline"]) == 0
    entry = json.loads(out.with_suffix(".json").read_text())["sections"]["headline"]["datasets"]["gdxray_welds"]
    assert entry["flags"] == TINY_FLAGS.split() and "tf_efficientnet_lite0" not in entry["command"]
    page = out.read_text()
    assert page.index("## Headline: no per-dataset flags") < page.index("## Tuned on each test set")
    (row,) = [line for line in page.splitlines() if line.startswith("| gdxray_welds |") and "PaDiM" in line]
    assert "0.969 / 0.921 (PaDiM, EfficientNet-Lite0)" in row and f"{entry['operator']['false_alarms']}/2" in row
    assert bq.main([*common, "--headline", "--ablation"]) == 2
    # The tiny flags give a tile size, so the default zoom selection stepped aside; a record of one is shown.
    assert entry["selection"] is None and "What `--select" not in page
    entry["selection"] = {"mode": "scale", "chosen": "t512-i322 (22 px/cell)", "notes": [],
                          "candidates": [{"name": "t512-i448 (16 px/cell)"}, {"name": "t512-i322 (22 px/cell)"}]}
    lines = bq._headline_markdown({"datasets": {"gdxray_welds": entry}}, {})
    assert any(line.startswith("What `--select scale` chose: gdxray_welds t512-i322 (22 px/cell) of 2 zooms")
               for line in lines)
    # The image score auto resolved to is recorded (96 px scans, 64 px tiles: the top patches) and shown.
    assert entry["image_score"] == {"rule": "patch_top_mean",
                                    "why": "auto: scans larger than half a tile are judged by their top patches"}
    assert "What the image score `auto` resolved to: gdxray_welds patch_top_mean (" in page


def test_methods_summary_derives_the_recommendation_from_the_numbers():
    """Means over the datasets every row has, the rows that win each dataset, the top row named, and a
    method that wins nowhere said plainly."""
    def entry(value):
        return {"image_auroc": value}

    datasets = {"a": {"dinov2/patchcore": entry(0.9), "dinov2/centroid": entry(0.5), "efficientnet/padim": entry(0.7)},
                "b": {"dinov2/patchcore": entry(0.6), "dinov2/centroid": entry(0.4), "efficientnet/padim": entry(0.95)},
                "c": {"dinov2/patchcore": entry(0.8)}}  # not every row has c: left out of the means
    best = {"a": ("dinov2/patchcore", 0.9), "b": ("efficientnet/padim", 0.95), "c": ("dinov2/patchcore", 0.8)}
    text = "\n".join(bq._methods_summary(datasets, best))
    assert "mean over the 2 datasets every row has: a, b" in text
    assert "| efficientnet/padim | 0.700 | 0.950 | n/a | 0.825 | b |" in text
    assert "| dinov2/patchcore | 0.900 | 0.600 | 0.800 | 0.750 | a, c |" in text
    assert "`efficientnet/padim` has the highest mean image AUROC (0.825)" in text
    assert "`centroid` is the best row on no dataset here" in text and "`patchcore` is the best row" not in text
