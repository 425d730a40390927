"""Tests for the synthetic RTG scan generator (fast: small scans only)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from rtg_anomaly.scans.io import load_image
from rtg_anomaly.scans.synthetic import make_vehicle_scan, to_8bit, write_demo_dataset

H = 160  # small scans keep the file fast


def test_deterministic_and_seed_dependent():
    a, ma = make_vehicle_scan(3, height=H, anomaly=True)
    b, mb = make_vehicle_scan(3, height=H, anomaly=True)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    c, _ = make_vehicle_scan(4, height=H, length=a.shape[1], anomaly=True)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("bit_depth,dtype", [(16, np.uint16), (8, np.uint8)])
def test_dtype_shape_range(bit_depth, dtype):
    img, mask = make_vehicle_scan(1, height=H, length=3 * H, bit_depth=bit_depth)
    assert img.dtype == dtype and img.shape == (H, 3 * H)
    assert mask.dtype == bool and mask.shape == img.shape
    full = 65535 if bit_depth == 16 else 255
    air = np.median(img[:10])  # top rows are air
    assert 0.6 * full < air < 0.95 * full
    assert 0.02 * full < img.min() < 0.2 * full  # dense parts, not clipped to 0


def test_8bit_is_fixed_scaling_of_16bit():
    img16, _ = make_vehicle_scan(2, height=H)
    img8, _ = make_vehicle_scan(2, height=H, bit_depth=8)
    assert np.array_equal(img8, to_8bit(img16))
    assert np.array_equal(to_8bit(np.array([0, 257, 65535], np.uint16)), [0, 1, 255])


def test_masks_and_anomalies_are_darker():
    for seed in range(4):
        clean, m0 = make_vehicle_scan(seed, height=H)
        anom, m1 = make_vehicle_scan(seed, height=H, anomaly=True)
        assert not m0.any()
        # 1-3 objects of 3-8 % of the height per side
        assert 0.5 * (0.03 * H) ** 2 <= m1.sum() <= 3 * (0.08 * H + 2) ** 2
        inside_clean, inside_anom = clean[m1].astype(float), anom[m1].astype(float)
        assert inside_anom.mean() < 0.75 * inside_clean.mean()
        # not trivially the darkest thing: real structures (wheels, engine) are as dark
        assert (clean < inside_anom.mean()).mean() > 0.005
        # same vehicle and noise away from the objects (beyond the detector blur)
        far = ~binary_dilation(m1, np.ones((3, 3), bool), iterations=4)
        assert np.array_equal(clean[far], anom[far])


def test_length_varies_with_seed():
    lengths = {make_vehicle_scan(s, height=100)[0].shape[1] for s in range(6)}
    assert len(lengths) > 3 and all(250 <= n <= 400 for n in lengths)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make_vehicle_scan(0, bit_depth=12)
    with pytest.raises(ValueError):
        write_demo_dataset("unused", fmt="jpg")


@pytest.mark.parametrize("fmt", ["bmp", "png", "tiff", "bmp16"])
def test_write_demo_dataset(tmp_path, fmt):
    kw = dict(n_clean_train=2, n_clean_test=1, n_anomalous=2, height=96, seed=5, fmt=fmt)
    paths = write_demo_dataset(tmp_path / "a", **kw)
    keys = ("train_good", "test_good", "test_anomalous", "ground_truth")
    assert [len(paths[k]) for k in keys] == [2, 1, 2, 2]
    assert all(p.parent.relative_to(tmp_path / "a").as_posix() == "train/good" for p in paths["train_good"])
    assert paths["ground_truth"][0].as_posix().endswith("ground_truth/anomalous/000_mask.png")
    for img_path, mask_path in zip(paths["test_anomalous"], paths["ground_truth"]):
        img, mask = load_image(img_path), np.array(Image.open(mask_path))
        assert img.shape == mask.shape and img.shape[0] == 96 and img_path.suffix == f".{fmt.removesuffix('16')}"
        assert img.dtype == (np.uint8 if fmt == "bmp" else np.uint16)
        assert set(np.unique(mask)) == {0, 255}
    for p in paths["train_good"] + paths["test_good"]:
        assert load_image(p).shape[0] == 96
    again = write_demo_dataset(tmp_path / "b", **kw)
    for k in paths:
        for p, q in zip(paths[k], again[k]):
            assert p.read_bytes() == q.read_bytes()


def test_16bit_formats_store_the_same_counts(tmp_path):
    kw = dict(n_clean_train=1, n_clean_test=0, n_anomalous=1, height=64, seed=3)
    by_format = {fmt: write_demo_dataset(tmp_path / fmt, fmt=fmt, **kw) for fmt in ("png", "tiff", "bmp16")}
    for key in ("train_good", "test_anomalous"):
        reference = load_image(by_format["png"][key][0])
        assert reference.dtype == np.uint16 and reference.max() > 255
        for fmt in ("tiff", "bmp16"):
            assert np.array_equal(load_image(by_format[fmt][key][0]), reference), (fmt, key)


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_demo_data", Path(__file__).resolve().parents[1] / "scripts" / "make_demo_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rc = cli.main(["--out", str(tmp_path), "--n-clean", "1", "--n-test-clean", "1",
                   "--n-anomalous", "1", "--height", "80", "--format", "png"])
    assert rc == 0 and "wrote 1 train/good" in capsys.readouterr().out
    assert (tmp_path / "ground_truth" / "anomalous" / "000_mask.png").is_file()
