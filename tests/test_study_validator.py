"""scripts/study_validator.py: its per-object AUROC, its crack shape and the rule it replays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def study():
    return load_script("study_validator")


def test_object_auroc_weighs_every_object_the_same(study):
    clean = [np.arange(100, dtype=np.float32).reshape(10, 10) / 100]  # clean pixels 0.00 .. 0.99
    big, small = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    big[:5], small[0, 0] = True, True
    maps = [np.full((10, 10), 2.0, np.float32), np.full((10, 10), -1.0, np.float32)]
    # the 50-pixel object is above every clean pixel, the 1-pixel one below all: each counts half
    assert study.object_auroc(clean, maps, [big, small], stride=1) == pytest.approx(0.5)
    assert study.object_auroc(clean, [np.full((10, 10), 0.495, np.float32)], [small], stride=1) == pytest.approx(0.5)


def test_crack_profile_is_thin_and_inside_its_box(study):
    for seed in range(20):
        profile = study.crack_profile(np.random.default_rng(seed), 60, 40)
        assert profile.shape == (60, 40) and profile.dtype == np.float32
        assert 0 < (profile > 0).mean() < 0.35 and profile.max() <= 1.0


def test_projection_with_cracks_keeps_the_scan_outside_the_mask(study):
    scan = np.random.default_rng(0).integers(1000, 60000, (80, 120), dtype=np.uint16)
    shapes = set()
    for seed in range(30):
        projected = study.project_with_cracks(scan, np.random.default_rng(seed))
        shapes.add(projected.shape)
        assert projected.scan.dtype == np.uint16
        assert np.array_equal(projected.scan[~projected.mask], scan[~projected.mask]) and projected.mask.any()
    assert "crack" in shapes and len(shapes) > 1


def test_chosen_replays_the_selection_rule_in_trial_order(study):
    rows = {"t384-i448 (12 px/cell)": {"v": 0.93}, "t512-i322 (22 px/cell)": {"v": 0.904},
            "t512-i448 (16 px/cell)": {"v": 0.90}}
    assert study.trial_order(rows) == ["t512-i448 (16 px/cell)", "t512-i322 (22 px/cell)", "t384-i448 (12 px/cell)"]
    assert study.chosen(rows, "v") == "t384-i448 (12 px/cell)"  # 22 px gains 0.004 (< 0.005), 12 px 0.03
    rows["t384-i448 (12 px/cell)"]["v"] = 0.904
    assert study.chosen(rows, "v") == "t512-i448 (16 px/cell)"
    assert "**0.900**" in study.render({"d/0": {k: {v: r["v"] for v in study.VARIANTS} for k, r in rows.items()}})


def test_runs_with_more_objects_per_scan_show_the_shipped_objects_scores_alone(study, tmp_path):
    shipped = ("shipped/pixel", "shipped/object")
    results = {"d/0": {"t512-i448 (16 px/cell)": dict.fromkeys(shipped, 0.7),
                       "t512-i322 (22 px/cell)": dict.fromkeys(shipped, 0.8)},
               "d/1": {"t512-i448 (16 px/cell)": dict.fromkeys(shipped, 0.9),
                       "t512-i322 (22 px/cell)": dict.fromkeys(shipped, 0.7)}}
    assert study.scored_variants(results) == shipped
    page = study.render(results)
    assert "| dataset | seed | zoom | shipped/pixel | shipped/object |" in page and "cracks" not in page
    assert "| d | 0,1 | t512-i448 (16 px/cell) | **0.800** | **0.800** |" in page  # pooled: 16 px 0.8, 22 px 0.75
    # the defaults page shows such a run beside the shipped one
    path = tmp_path / "validator_objects8.json"
    path.write_text(json.dumps(results))
    defaults = load_script("benchmark_defaults")
    lines = defaults.validator_objects_lines(path)
    assert any(line.startswith("## More synthetic objects per validation scan") for line in lines)
    assert "| d | 0 | t512-i322 (22 px/cell) | **0.800** | **0.800** |" in "\n".join(lines)
    assert defaults.validator_objects_lines(tmp_path / "absent.json") == []


def test_pooled_seeds_average_each_zoom_and_apply_the_same_rule(study):
    def run(v16, v22):
        return {"t512-i448 (16 px/cell)": dict.fromkeys(study.VARIANTS, v16),
                "t512-i322 (22 px/cell)": dict.fromkeys(study.VARIANTS, v22)}

    # seed 0 alone would keep 22 px (+0.02), the mean over both keeps 16 px (22 px gains 0.0)
    results = {"d/0": run(0.70, 0.72), "d/1": run(0.74, 0.72), "e/0": run(0.5, 0.6)}
    pools = study.pooled(results)
    assert list(pools) == ["d"]  # one seed of e: nothing to pool
    seeds, rows = pools["d"]
    assert seeds == ["0", "1"] and rows["t512-i448 (16 px/cell)"]["shipped/pixel"] == pytest.approx(0.72)
    assert study.chosen(rows, "shipped/pixel") == "t512-i448 (16 px/cell)"
    page = study.render(results)
    assert "Pooled over the seeds" in page
    assert "| d | 0,1 | t512-i448 (16 px/cell) | **0.720** |" in page


def test_image_score_table_bolds_the_score_the_synthetic_objects_prefer(study):
    row = {"object_sizes": [0.15, 0.8], "tile_size": 100, "input_size": 224, "n_validation": 16, "n_objects": 32}
    table = study.render_image_score({"fish/1/0.15-0.8": dict(row, patch_top_mean=0.70, **{"global": 0.75})})
    assert "| fish | 1 | shipped: 0.15–0.8 | t100-i224 | 16 / 32 | 0.700 | **0.750** |" in table
    table = study.render_image_score({"fish/1/0.4-1/texture": dict(row, objects="texture", object_sizes=[0.4, 1.0],
                                                                   patch_top_mean=0.70, **{"global": 0.60})})
    assert "| fish | 1 | texture: 0.4–1 | t100-i224 | 16 / 32 | **0.700** | 0.600 |" in table


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_texture_objects_are_seeded_exact_and_in_the_scan_domain(study, dtype):
    from rtg_anomaly.scans.threat_projection import ProjectionSettings

    scan = np.full((32, 48), np.iinfo(dtype).max // 2, dtype)
    settings = ProjectionSettings(min_size=0.4, max_size=1.0)
    out, mask = study.texture_object(scan, np.random.default_rng(5), settings)
    again, mask_again = study.texture_object(scan, np.random.default_rng(5), settings)
    assert np.array_equal(out, again) and np.array_equal(mask, mask_again)
    assert out.dtype == dtype and np.array_equal(out[~mask], scan[~mask])  # untouched outside the footprint
    assert mask.sum() >= 0.05 * scan.size and (out[mask] != scan[mask]).any()
    rows, cols = np.nonzero(mask)
    assert np.ptp(rows) + 1 <= 32 and np.ptp(cols) + 1 <= 48
    # attenuation multiplies the transmitted intensity: one sign per object
    ratio = out[mask].astype(float) / scan[mask]
    assert (ratio <= 1 + 1e-3).all() or (ratio >= 1 - 1e-3).all()


def test_window_table_bolds_the_window_the_pixel_score_keeps(study):
    row = {"dtype": {"image": 0.70, "pixel": 0.928}, "clean": {"image": 0.71, "pixel": 0.924},
           "percentile": {"image": 0.73, "pixel": 0.899}, "zoom": "fitted to the scans"}
    table = study.render_choices({"fish/0": row, "crops/0": dict(row, percentile={"image": 0.86, "pixel": 0.95})},
                                 study.WINDOWS)
    assert "| fish | 0 | shipped | fitted to the scans | 0.700 / **0.928** | 0.710 / 0.924 | 0.730 / 0.899 |" in table
    assert "| crops | 0 | shipped | fitted to the scans | 0.700 / 0.928 | 0.710 / 0.924 | 0.860 / **0.950** |" in table
    assert "| fish | 1 | warp | " in study.render_choices({"fish/1/warp": row}, study.WINDOWS)


def test_saturated_shares_count_scans_mostly_open_air(study, tmp_path):
    from PIL import Image

    for folder, values in {"train/good": [255, 255, 100, 100], "test/defect": [100, 100]}.items():
        (tmp_path / folder).mkdir(parents=True)
        for index, value in enumerate(values):
            scan = np.full((8, 8), 100, np.uint8)
            scan[:4] = value  # half of the scan
            Image.fromarray(scan).save(tmp_path / folder / f"{index}.png")
    assert study.saturated_shares(tmp_path) == {"train/good": (4, 0.5), "test/defect": (2, 0.0)}


def test_augment_study_fits_what_the_selection_would_not(study, monkeypatch):
    import rtg_anomaly.pipeline.detector
    from rtg_anomaly import DetectorConfig
    from rtg_anomaly.pipeline import selection

    fitted = []

    class Recorder:
        def __init__(self, config, device="auto", runtime="auto"):
            fitted.append(config)

        def fit(self, scans):
            return self

    monkeypatch.setattr(rtg_anomaly.pipeline.detector, "Detector", Recorder)
    monkeypatch.setattr(study, "Detector", Recorder)
    none, hflip = study.augment_candidates()
    base = DetectorConfig(coreset_ratio=0.25)
    study.fit_keeping_augment(hflip, base, [np.zeros((8, 8), np.uint8)])
    selection.fit_candidate(hflip, base, [np.zeros((8, 8), np.uint8)])
    study.fit_keeping_augment(none, base, [np.zeros((8, 8), np.uint8)])
    assert [c.augment for c in fitted] == [("hflip",), (), ()]
    # everything else is fitted as the selection fits it
    assert fitted[0].replace(augment=()) == fitted[1]


def test_backbone_candidates_are_the_vit_then_the_peer_cnn_at_each_zoom(study, tmp_path):
    vit, *cnns = study.backbone_candidates(tmp_path)
    assert vit.overrides == {} and [c.name for c in cnns] == ["cnn-t512-i224", "cnn-t512-i160", "cnn-t256-i256"]
    for cnn in cnns:
        assert cnn.overrides["backbone"] == "tf_efficientnet_lite0" and cnn.overrides["layers"] == (2, 3)
        assert cnn.overrides["weights"] == str(tmp_path / study.CNN_WEIGHTS)


@pytest.mark.parametrize("kind", ["cutpaste", "warp"])
def test_structure_objects_are_seeded_keep_the_dtype_and_stay_in_their_box(study, kind):
    from rtg_anomaly.scans import threat_projection as projection

    rng = np.random.default_rng(3)
    scan = (rng.random((96, 128)) * 60000).astype(np.uint16)  # 16-bit texture: any move is visible
    settings = projection.ProjectionSettings(min_size=0.2, max_size=0.3)
    first = study.structure_validation_set([scan], 7, settings, kind)
    again = study.structure_validation_set([scan], 7, settings, kind)
    assert len(first) == 2  # OBJECTS_PER_SCAN
    for (out, mask), (out2, mask2) in zip(first, again):
        assert out.dtype == np.uint16 and out.shape == scan.shape
        assert np.array_equal(out, out2) and np.array_equal(mask, mask2)
        rows, cols = np.nonzero(mask)
        assert mask.any() and np.ptp(rows) + 1 <= 0.3 * 96 + 1 and np.ptp(cols) + 1 <= 0.3 * 96 + 1
        changed = out != scan
        assert changed[mask].mean() > 0.5
        # nothing moves outside the object's box
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        margin = int(0.3 * 96 * 0.3) + 2
        outside = np.ones_like(mask)
        outside[max(0, top - margin) : bottom + margin + 1, max(0, left - margin) : right + margin + 1] = False
        assert not changed[outside].any()


def test_visibility_tells_a_moved_texture_from_a_structure_moved_over_a_flat_scan(study):
    from rtg_anomaly.scans import threat_projection as projection

    flat = np.full((64, 64), 1000, np.uint16)
    out, mask = study.cutpaste_object(flat, np.random.default_rng(0), projection.ProjectionSettings(), tries=3)
    assert np.array_equal(out, flat) and not study._visible(flat, out, mask, 0.05)
    textured = (np.random.default_rng(1).random((64, 64)) * 60000).astype(np.uint16)
    out, mask = study.cutpaste_object(textured, np.random.default_rng(0), projection.ProjectionSettings())
    assert study._visible(textured, out, mask, 0.05)


def test_exposure_spread_is_the_coefficient_of_variation_of_the_scans_ranges(study, tmp_path):
    from PIL import Image

    (tmp_path / "train" / "good").mkdir(parents=True)
    for index, span in enumerate([10, 30]):
        scan = np.zeros((20, 20), np.uint8)
        scan[10:] = span  # half the scan at 0, half at span: its 0.5-99.5 percentile range is span
        Image.fromarray(scan).save(tmp_path / "train" / "good" / f"{index}.png")
    assert study.exposure_spread(tmp_path) == pytest.approx(10 / 20)


def test_visible_objects_are_redrawn_off_material_that_already_stops_the_beam(study):
    # Left two thirds: material that stops the beam (0); right third: a bright, seen region.
    scan = np.zeros((90, 150), np.uint8)
    scan[:, 100:] = 200
    assert study.visible_change(scan, scan, np.ones(scan.shape, bool)) == 0.0
    shipped = [study.projection.project_object(scan, np.random.default_rng(seed)) for seed in range(40)]
    visible = [study.project_visible(scan, np.random.default_rng(seed)) for seed in range(40)]
    unseen = [study.visible_change(scan, p.scan, p.mask) < study.VISIBLE_MIN_CHANGE for p in shipped]
    assert sum(unseen) >= 10  # many plain draws fall on the dark part and change nothing
    assert all(study.visible_change(scan, p.scan, p.mask) >= study.VISIBLE_MIN_CHANGE for p in visible)
    # seeded: the same generator state gives the same object
    again = study.project_visible(scan, np.random.default_rng(3))
    assert np.array_equal(again.scan, visible[3].scan) and np.array_equal(again.mask, visible[3].mask)
    for projected in visible:
        assert np.array_equal(projected.scan[~projected.mask], scan[~projected.mask])


def test_soft_objects_have_no_edge_keep_the_scan_outside_their_mask_and_are_seeded(study):
    scan = np.random.default_rng(1).integers(120, 180, (96, 128), dtype=np.uint8)
    for seed in range(10):
        soft = study.project_soft(scan, np.random.default_rng(seed))
        assert soft.scan.dtype == np.uint8 and soft.mask.any()
        assert np.array_equal(soft.scan[~soft.mask], scan[~soft.mask])
        # the thickness rises from the cut (a tenth of the peak) at the mask's rim to 1 inside: no plateau edge
        rim = soft.mask & ~np.pad(soft.mask, 1)[2:, 1:-1]
        assert soft.thickness.max() == pytest.approx(1.0) and soft.thickness[rim].max() < 0.5
        again = study.project_soft(scan, np.random.default_rng(seed))
        assert np.array_equal(again.scan, soft.scan)
