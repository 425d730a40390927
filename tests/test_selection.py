"""Choosing the configuration from clean scans alone: candidates, validation on synthetic objects, bundle record."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rtg_anomaly import Detector
from rtg_anomaly.cli import main
from rtg_anomaly.errors import InputError
from rtg_anomaly.pipeline.selection import (MARGIN, SCALE_MARGIN, SELECTION_CORESET_RATIO, SELECTION_SMOOTHING_SIGMA,
                                            Candidate, CandidateResult, _best, candidate_config, fit_candidate,
                                            refinement_candidates, scale_candidates, select_config, select_scale,
                                            synthetic_validation_set, zoom_candidates,
                                            zoom_judging_config)
from rtg_anomaly.scans.synthetic import write_demo_dataset
from rtg_anomaly.scans.threat_projection import ProjectionSettings

from tests.conftest import TINY_CLI_FLAGS, TINY_MODEL, tiny_config


@pytest.fixture(scope="module")
def clean_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection")
    write_demo_dataset(root, n_clean_train=8, n_clean_test=1, n_anomalous=1, height=96, seed=11, fmt="png")
    return sorted((root / "train" / "good").iterdir())


TINY_FIELDS = dict(backbone="vit_small_patch14_dinov2", weights="random", model_kwargs=TINY_MODEL, layers=(1,),
                   neighbourhood=1)
TINY_CANDIDATES = [Candidate("tiny-t64", dict(TINY_FIELDS, tile_size=64, input_size=56)),
                   Candidate("tiny-t96", dict(TINY_FIELDS, tile_size=96, input_size=56))]


def test_scale_candidates_follow_the_scan_size():
    large = scale_candidates(2000)
    names = [c.name for c in large]
    assert len(names) == len(set(names)) == 6
    first = large[0].overrides
    # Today's default scale comes first, so a tie keeps it.
    assert (first["backbone"], first["tile_size"], first["input_size"]) == ("vit_small_patch14_dinov2", 512, 448)
    for candidate in large:
        size = candidate.overrides["input_size"]
        assert size % (14 if candidate.overrides["backbone"].startswith("vit") else 32) == 0
    # A small crop is one tile seen whole; zooms that come out the same are tried once.
    small = scale_candidates(32)
    assert [c.overrides["tile_size"] for c in small] == [32, 32]
    assert [c.overrides["input_size"] for c in small] == [224, 128]
    castings = {c.overrides["tile_size"] for c in scale_candidates(572)}
    assert max(castings) == 572


def test_refinements_only_where_they_change_something():
    best = scale_candidates(512)[0]
    from rtg_anomaly.config import DetectorConfig

    names = [c.name for c in refinement_candidates(best, DetectorConfig(), {"uint8"})]
    assert names == [best.name + " +whiten0.5", best.name + " +percentile"]
    # 16-bit scans are windowed by percentiles already.
    assert len(refinement_candidates(best, DetectorConfig(), {"uint16"})) == 1


def test_best_needs_a_margin_and_skips_errors():
    def result(name, score, error=None):
        return CandidateResult(name, {}, score, score, score, 5, 1.0, error)

    assert _best([result("a", 0.90), result("b", 0.90 + MARGIN / 2)]).name == "a"
    assert _best([result("a", 0.90), result("b", 0.90 + 2 * MARGIN)]).name == "b"
    assert _best([result("a", None, "no weights"), result("b", 0.5)]).name == "b"
    assert _best([result("a", None, "no weights")]) is None


def test_synthetic_validation_set_is_seeded(clean_paths):
    from rtg_anomaly.scans.io import load_image

    scans = [load_image(p) for p in clean_paths[:3]]
    first = synthetic_validation_set(scans, scans, seed=4, settings=ProjectionSettings())
    again = synthetic_validation_set(scans, scans, seed=4, settings=ProjectionSettings())
    assert len(first) == 6
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))


def test_select_config_scores_every_candidate_and_is_deterministic(clean_paths):
    base = tiny_config(pca_dim=8)
    first = select_config(clean_paths, base, device="cpu", runtime="torch", candidates=TINY_CANDIDATES)
    names = [r.name for r in first.candidates]
    # + half-whitening on the best (the demo scans are 16-bit, already windowed by percentiles)
    assert names[:2] == ["tiny-t64", "tiny-t96"] and len(names) == 3 and names[2].endswith("+whiten0.5")
    for result in first.candidates:
        assert 0.0 <= result.image_auroc <= 1.0 and 0.0 <= result.pixel_auroc <= 1.0
        assert result.score == pytest.approx(0.5 * (result.image_auroc + result.pixel_auroc))
    chosen = next(r for r in first.candidates if r.name == first.chosen)
    # No candidate beats the chosen one by more than the margin an earlier candidate is granted.
    assert all(r.score <= chosen.score + MARGIN for r in first.candidates)
    assert first.config.tile_size == chosen.overrides["tile_size"]
    assert first.config.top_patches == chosen.top_patches
    assert first.config.pca_dim == 8  # settings the selection does not choose are kept
    record = first.to_dict()
    json.dumps(record, allow_nan=False)  # valid JSON for the manifest
    assert record["n_validation_scans"] == 2 and record["n_synthetic_scans"] == 4
    second = select_config(clean_paths, base, device="cpu", runtime="torch", candidates=TINY_CANDIDATES)
    def without_times(entries):
        return [{key: value for key, value in entry.items() if key != "seconds"} for entry in entries]

    assert without_times(second.to_dict()["candidates"]) == without_times(record["candidates"])


def test_a_candidate_that_cannot_run_is_recorded_not_fatal(clean_paths, tmp_path):
    broken = Candidate("missing-weights", dict(TINY_FIELDS, weights=str(tmp_path / "absent.safetensors"),
                                              tile_size=64, input_size=56))
    selection = select_config(clean_paths, tiny_config(), device="cpu", runtime="torch",
                              candidates=[broken, TINY_CANDIDATES[0]])
    assert selection.candidates[0].error and "does not exist" in selection.candidates[0].error
    assert selection.candidates[0].score is None
    assert selection.chosen.startswith("tiny-t64")
    assert "skipped" in selection.summary()


def test_too_few_scans_is_an_input_error(clean_paths):
    with pytest.raises(InputError, match="at least 4"):
        select_config(clean_paths[:3], tiny_config(), device="cpu", candidates=TINY_CANDIDATES)


def test_fit_select_auto_records_the_choice_in_the_bundle(clean_paths, tmp_path, monkeypatch, capsys):
    import rtg_anomaly.pipeline.selection as selection

    monkeypatch.setattr(selection, "scale_candidates", lambda shorter, weights=None: list(TINY_CANDIDATES))
    model = tmp_path / "model"
    flags = [flag for flag in TINY_CLI_FLAGS if flag not in ("--weights", "random", "--tile-size", "64",
                                                               "--input-size", "56", "--layers", "1")]
    assert main(["fit", "--clean-dir", str(clean_paths[0].parent), "--model", str(model), "--device", "cpu",
                 "--runtime", "torch", "--select", "auto", *flags]) == 0
    out = capsys.readouterr().out
    assert "selected tiny-" in out and "tiny-t96" in out
    manifest = json.loads((model / "manifest.json").read_text())
    record = manifest["selection"]
    assert record["mode"] == "auto" and len(record["candidates"]) == 3
    assert manifest["config"]["tile_size"] == record["chosen_fields"]["tile_size"]
    loaded = Detector.load(model, device="cpu", runtime="torch")
    assert loaded.selection_ == record
    # Without --select auto the bundle carries no selection.
    plain = tmp_path / "plain"
    assert main(["fit", "--clean-dir", str(clean_paths[0].parent), "--model", str(plain), "--device", "cpu",
                 *TINY_CLI_FLAGS]) == 0
    assert "selection" not in json.loads((plain / "manifest.json").read_text())
    assert Detector.load(plain, device="cpu").selection_ is None


def test_select_auto_refuses_flags_it_would_choose(clean_paths, tmp_path, capsys):
    code = main(["fit", "--clean-dir", str(clean_paths[0].parent), "--model", str(tmp_path / "m"), "--device", "cpu",
                 "--select", "auto", "--tile-size", "64", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--select auto chooses --tile-size" in err
    assert not (tmp_path / "m").exists()


def test_zoom_candidates_step_out_from_the_configured_scale():
    from rtg_anomaly.config import DetectorConfig

    config = DetectorConfig()
    names = [c.name for c in zoom_candidates(config, [572] * 9)]  # castings frames: 768 x 572
    assert names == ["t512-i448 (16 px/cell)", "t512-i322 (22 px/cell)", "t768-i336 (32 px/cell)",
                     "t384-i448 (12 px/cell)"]
    # A 768 px tile on 378 px scans would be refitted by the fit: it is left out, not validated in vain.
    assert [c.overrides for c in zoom_candidates(config, [378] * 9)] == [
        {"tile_size": 512, "input_size": 448}, {"tile_size": 512, "input_size": 322},
        {"tile_size": 384, "input_size": 448}]
    # Scans under half a tile are fitted to their own size: nothing to choose.
    assert zoom_candidates(config, [100] * 9) == [] and zoom_candidates(config.replace(input_size=None), [572]) == []
    # A CNN's input stays a multiple of its stride 32.
    cnn = config.replace(backbone="tf_efficientnet_lite0", tile_size=256, input_size=256)
    assert all(c.overrides["input_size"] % 32 == 0 for c in zoom_candidates(cnn, [600]))


def test_best_keeps_the_finer_zoom_unless_a_coarser_one_gains_the_scale_margin():
    def result(name, score):
        return CandidateResult(name, {}, 0.5, score, score, 5, 1.0)

    close = [result("fine", 0.80), result("coarse", 0.80 + SCALE_MARGIN / 2)]
    assert _best(close, SCALE_MARGIN).name == "fine" and _best(close).name == "coarse"


def test_select_scale_judges_zooms_by_synthetic_pixel_auroc_and_is_deterministic(clean_paths):
    base = tiny_config(pca_dim=8, top_patches=3)
    first = select_scale(clean_paths, base, device="cpu", runtime="torch")
    assert first.mode == "scale" and [r.name for r in first.candidates] == [
        "t64-i56 (16 px/cell)", "t64-i42 (21 px/cell)", "t96-i42 (32 px/cell)", "t48-i56 (12 px/cell)"]
    for result in first.candidates:
        assert result.error is None and result.score == result.pixel_auroc and 0.0 <= result.pixel_auroc <= 1.0
        assert result.top_patches == 3  # the image score is the user's, not chosen on synthetic objects
    chosen = next(r for r in first.candidates if r.name == first.chosen)
    assert all(r.score <= chosen.score + SCALE_MARGIN for r in first.candidates)
    # Only the zoom changes.
    assert first.config == base.replace(**chosen.overrides)
    record = first.to_dict()
    json.dumps(record, allow_nan=False)
    assert record["mode"] == "scale" and record["margin"] == SCALE_MARGIN and record["n_synthetic_scans"] == 4
    second = select_scale(clean_paths, base, device="cpu", runtime="torch")
    assert [(r.name, r.image_auroc, r.pixel_auroc) for r in second.candidates] == [
        (r.name, r.image_auroc, r.pixel_auroc) for r in first.candidates]


def test_candidates_are_judged_with_a_capped_bank_so_the_bank_size_cannot_move_the_zoom(clean_paths):
    scans = [np.asarray(Image.open(path)) for path in clean_paths[:3]]
    zoom = Candidate("t64", {"tile_size": 64, "input_size": 56})
    for ratio, judged in ((0.25, SELECTION_CORESET_RATIO), (1.0, SELECTION_CORESET_RATIO), (0.05, 0.05)):
        detector = fit_candidate(zoom, tiny_config(pca_dim=8, coreset_ratio=ratio), scans, device="cpu",
                                 runtime="torch")
        assert detector.config.coreset_ratio == judged
    # An absolute bank size is the user's and is kept.
    sized = fit_candidate(zoom, tiny_config(pca_dim=8, memory_bank_size=40), scans, device="cpu", runtime="torch")
    assert sized.config.memory_bank_size == 40
    # The whole selection: a larger bank fits the chosen zoom with that bank, the zooms judged as before.
    small = select_scale(clean_paths, tiny_config(pca_dim=8, coreset_ratio=0.1), device="cpu", runtime="torch")
    large = select_scale(clean_paths, tiny_config(pca_dim=8, coreset_ratio=0.5), device="cpu", runtime="torch")
    assert [(r.name, r.image_auroc, r.pixel_auroc) for r in large.candidates] == [
        (r.name, r.image_auroc, r.pixel_auroc) for r in small.candidates]
    assert large.chosen == small.chosen and large.config == small.config.replace(coreset_ratio=0.5)


def test_zooms_are_judged_on_maps_smoothed_as_validated_whatever_the_maps_own_setting(clean_paths):
    zoom = Candidate("t64", {"tile_size": 64, "input_size": 56})
    for sigma in (0.0, 0.5, 3.0):
        assert candidate_config(zoom, tiny_config(smoothing_sigma=sigma)).smoothing_sigma == SELECTION_SMOOTHING_SIGMA
    sharp = select_scale(clean_paths, tiny_config(pca_dim=8, smoothing_sigma=0.0), device="cpu", runtime="torch")
    smooth = select_scale(clean_paths, tiny_config(pca_dim=8, smoothing_sigma=2.0), device="cpu", runtime="torch")
    assert [(r.name, r.pixel_auroc) for r in sharp.candidates] == [(r.name, r.pixel_auroc) for r in smooth.candidates]
    # the chosen config keeps the user's map setting
    assert sharp.chosen == smooth.chosen and sharp.config == smooth.config.replace(smoothing_sigma=0.0)


def test_zooms_are_judged_with_the_deepest_block_alone_and_the_fit_keeps_every_block(clean_paths):
    assert zoom_judging_config(tiny_config(layers=(0, 1))).layers == (1,)
    assert zoom_judging_config(tiny_config(layers=(1, 0))).layers == (1,)
    cnn = tiny_config(backbone="tf_efficientnet_lite0", model_kwargs={}, layers=(2, 3))
    assert zoom_judging_config(cnn) == cnn  # a CNN's earlier stage sets its finer grid
    deepest = select_scale(clean_paths, tiny_config(pca_dim=8, layers=(1,)), device="cpu", runtime="torch")
    both = select_scale(clean_paths, tiny_config(pca_dim=8, layers=(0, 1)), device="cpu", runtime="torch")
    assert [(r.name, r.pixel_auroc) for r in both.candidates] == [(r.name, r.pixel_auroc) for r in deepest.candidates]
    assert both.chosen == deepest.chosen and both.config == deepest.config.replace(layers=(0, 1))


@pytest.mark.parametrize("image_score", ["global", "patch_or_global", "auto"])
def test_select_scale_judges_zooms_whatever_the_image_score(clean_paths, image_score):
    # A whole-scan image score calibrates on held-out scans, which a candidate's fit does not keep: the zooms are
    # judged on their patch scores and maps all the same, and the chosen config keeps the user's image score.
    base = tiny_config(pca_dim=8, image_score=image_score)
    chosen = select_scale(clean_paths, base, device="cpu", runtime="torch")
    assert len(chosen.candidates) == 4 and all(result.error is None for result in chosen.candidates)
    assert chosen.chosen != "configured" and chosen.config.image_score == image_score
    plain = select_scale(clean_paths, tiny_config(pca_dim=8), device="cpu", runtime="torch")
    assert [(r.name, r.pixel_auroc) for r in chosen.candidates] == [(r.name, r.pixel_auroc) for r in plain.candidates]


@pytest.mark.parametrize("case", ["few scans", "other method", "small scans"])
def test_select_scale_keeps_the_configured_scale_where_there_is_nothing_to_choose(clean_paths, case, monkeypatch):
    import rtg_anomaly.pipeline.selection as selection_module

    base, items = tiny_config(), list(clean_paths)
    if case == "few scans":
        items = items[:5]
    elif case == "other method":
        base = base.replace(method="padim")
    else:
        base = base.replace(tile_size=512)  # 96 px scans are under half of it: fitted to their own size

    def no_decoding(*args, **kwargs):
        raise AssertionError("a scan was decoded although there was nothing to choose")

    # The sizes come from the files' headers: nothing is decoded when no choice is made.
    monkeypatch.setattr(selection_module, "_read_all", no_decoding)
    selection = select_scale(items, base, device="cpu", runtime="torch")
    assert selection.config == base and selection.chosen == "configured" and selection.candidates == []
    assert selection.notes[0].startswith("scale kept: ")


def test_fit_selects_the_scale_by_default_and_a_given_scale_turns_it_off(clean_paths, tmp_path, capsys):
    clean_dir = str(clean_paths[0].parent)
    flags = ["--weights", "random", "--layers", "1", "--pca-dim", "16", "--device", "cpu", "--runtime", "torch",
             "--quiet"]
    model = tmp_path / "default"
    # 96 px scans are under half the default 512 px tile: the scale is fitted to them and the record says so.
    assert main(["fit", "--clean-dir", clean_dir, "--model", str(model), *flags]) == 0
    record = json.loads((model / "manifest.json").read_text())["selection"]
    assert record["mode"] == "scale" and record["chosen"] == "configured" and record["candidates"] == []
    assert "fitted to their own size" in record["notes"][0]
    # A given tile or input size is the user's choice: no selection, no record.
    given = tmp_path / "given"
    assert main(["fit", "--clean-dir", clean_dir, "--model", str(given), "--tile-size", "64", *flags]) == 0
    assert "selection" not in json.loads((given / "manifest.json").read_text())
    # Asked for explicitly, the same flag is refused in one line before anything is written.
    capsys.readouterr()
    code = main(["fit", "--clean-dir", clean_dir, "--model", str(tmp_path / "refused"), "--select", "scale",
                 "--input-size", "56", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err] and "--select scale chooses --input-size" in err
    assert not (tmp_path / "refused").exists()
    # A region-of-interest mask file is one lane geometry the user chose: the default steps aside for it too.
    from PIL import Image

    from rtg_anomaly.scans.io import load_image

    scan = load_image(clean_paths[0])
    lane = tmp_path / "lane"  # one lane geometry: every scan the mask's size
    lane.mkdir()
    for index in range(6):
        Image.fromarray(np.roll(scan, 3 * index, axis=1)).save(lane / f"{index}.png")
    mask = tmp_path / "roi.png"
    Image.fromarray(np.full(scan.shape[:2], 255, np.uint8)).save(mask)
    masked = tmp_path / "masked"
    assert main(["fit", "--clean-dir", str(lane), "--model", str(masked), "--roi", str(mask), *flags]) == 0
    assert "selection" not in json.loads((masked / "manifest.json").read_text())


def test_fit_select_scale_records_the_zooms_in_the_bundle(clean_paths, tmp_path, monkeypatch, capsys):
    import rtg_anomaly.cli.options as cli_options
    from rtg_anomaly.pipeline import selection

    # The tiny random backbone stands in for DINOv2 (its model kwargs are not a CLI flag).
    real_config = cli_options.config_from_args
    monkeypatch.setattr(cli_options, "config_from_args",
                        lambda args: real_config(args).replace(model_kwargs=TINY_MODEL, tile_size=64, input_size=56))
    model = tmp_path / "model"
    assert main(["fit", "--clean-dir", str(clean_paths[0].parent), "--model", str(model), "--device", "cpu",
                 "--runtime", "torch", "--weights", "random", "--layers", "1", "--pca-dim", "16", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "selected t" in out and "4 candidates" in out
    manifest = json.loads((model / "manifest.json").read_text())
    record = manifest["selection"]
    assert record["mode"] == "scale" and len(record["candidates"]) == 4
    assert [manifest["config"][k] for k in ("tile_size", "input_size")] == [
        record["chosen_fields"]["tile_size"], record["chosen_fields"]["input_size"]]
    assert Detector.load(model, device="cpu", runtime="torch").selection_ == record
    assert selection.SCALE_MIN_SCANS <= len(clean_paths)
    # The same clean scans give the same bundle bytes, selection record included (no wall-clock times in it).
    again = tmp_path / "again"
    assert main(["fit", "--clean-dir", str(clean_paths[0].parent), "--model", str(again), "--device", "cpu",
                 "--runtime", "torch", "--weights", "random", "--layers", "1", "--pca-dim", "16", "--quiet"]) == 0
    files = sorted(p.name for p in model.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        assert (model / name).read_bytes() == (again / name).read_bytes(), name


@pytest.mark.realdata
def test_selection_on_real_fish_fillets_with_the_real_backbones():
    """Real X-ray crops, the bundled DINOv2 and the shared EfficientNet-Lite0: every candidate runs and the
    synthetic objects are found far better than chance."""
    from tests.conftest import shared_data_dir

    root = shared_data_dir()
    paths = sorted((root / "gdxray_fishbones" / "train" / "good").iterdir())[::16][:12]
    cnn_weights = root.parent / "weights" / "tf_efficientnet_lite0.in1k_fp16.safetensors"
    candidates = [c for c in scale_candidates(100, str(cnn_weights))]
    assert [c.overrides["backbone"] for c in candidates] == ["vit_small_patch14_dinov2", "tf_efficientnet_lite0"]
    from rtg_anomaly.config import DetectorConfig

    selection = select_config(paths, DetectorConfig(), device="cpu", candidates=candidates)
    assert all(r.error is None for r in selection.candidates)
    assert max(r.score for r in selection.candidates) > 0.75
    assert selection.config.tile_size == 100 and selection.n_validation_scans == 3
