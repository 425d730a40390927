"""Tests for the tile-grid arithmetic (pure numpy, tiny arrays)."""
import numpy as np
import pytest

from rtg_anomaly.scans.tiling import extract_tiles, pad_to_tile, tile_grid, tile_origins

SIZES = [(37, 53), (64, 64), (128, 200), (512, 512), (600, 1300)]
TILE_STRIDES = [(64, 64), (64, 48), (64, 17), (128, 128), (128, 96), (128, 100)]


def untile(tiles: np.ndarray, origins: np.ndarray, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Write every tile back at its origin; return (image, how many tiles covered each pixel)."""
    out = np.full(shape, -1, dtype=np.int64)
    count = np.zeros(shape[:2], dtype=np.int64)
    tile = tiles.shape[1]
    for t, (y, x) in zip(tiles, origins):
        region = out[y : y + tile, x : x + tile]
        # overlapping tiles must agree with what is already there
        written = count[y : y + tile, x : x + tile] > 0
        assert np.array_equal(region[written], t[written])
        region[...] = t
        count[y : y + tile, x : x + tile] += 1
    return out, count


@pytest.mark.parametrize("length,tile,stride", [
    (10, 64, 48), (64, 64, 48), (65, 64, 48), (100, 64, 64), (128, 64, 64), (1300, 128, 96), (37, 8, 5),
])
def test_tile_origins_cover_without_overhang(length, tile, stride):
    starts = tile_origins(length, tile, stride)
    assert starts[0] == 0
    assert starts == sorted(set(starts))  # strictly increasing, no duplicates
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile  # last tile flush with the far edge
    assert all(s + tile <= length for s in starts)
    steps = np.diff(starts)
    assert np.all(steps <= stride) and np.all(steps[:-1] == stride)
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


def test_tile_origins_exact_multiple_adds_no_extra_tile():
    assert tile_origins(256, 64, 64) == [0, 64, 128, 192]
    assert tile_origins(257, 64, 64) == [0, 64, 128, 192, 193]


@pytest.mark.parametrize("tile,stride", [(0, 4), (4, 0), (-8, 4), (8, -1)])
def test_tile_origins_rejects_non_positive(tile, stride):
    with pytest.raises(ValueError):
        tile_origins(100, tile, stride)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tile,stride", TILE_STRIDES)
def test_round_trip_reassembles_exactly(size, tile, stride):
    rng = np.random.default_rng(hash((size, tile, stride)) % 2**32)
    image = rng.integers(0, 65535, size=size, dtype=np.uint16)
    padded = pad_to_tile(image, tile)
    origins = tile_grid(*padded.shape, tile, stride)
    assert origins.dtype == np.int64 and origins.shape[1] == 2
    # no tile reaches past the (padded) image
    assert np.all(origins >= 0)
    assert np.all(origins[:, 0] + tile <= padded.shape[0])
    assert np.all(origins[:, 1] + tile <= padded.shape[1])
    tiles = extract_tiles(padded, origins, tile)
    assert tiles.shape == (len(origins), tile, tile) and tiles.dtype == image.dtype
    rebuilt, count = untile(tiles, origins, padded.shape)
    assert count.min() >= 1  # every pixel covered
    assert np.array_equal(rebuilt, padded)
    assert np.array_equal(rebuilt[: size[0], : size[1]], image)
    # the grid is the product of the two 1-D grids
    ys, xs = tile_origins(padded.shape[0], tile, stride), tile_origins(padded.shape[1], tile, stride)
    assert len(origins) == len(ys) * len(xs)


def test_round_trip_colour():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, size=(150, 90, 3), dtype=np.uint8)
    origins = tile_grid(150, 90, 64, 40)
    tiles = extract_tiles(image, origins, 64)
    assert tiles.shape == (len(origins), 64, 64, 3)
    rebuilt = np.zeros_like(image)
    for t, (y, x) in zip(tiles, origins):
        rebuilt[y : y + 64, x : x + 64] = t
    assert np.array_equal(rebuilt, image)


def test_tile_grid_row_order():
    origins = tile_grid(100, 150, 64, 64)
    assert origins.tolist() == [[0, 0], [0, 64], [0, 86], [36, 0], [36, 64], [36, 86]]


@pytest.mark.parametrize("shape", [(10, 20), (10, 20, 3), (64, 30), (30, 64, 3), (1, 1)])
def test_pad_to_tile_keeps_original_top_left(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=shape, dtype=np.uint8)
    padded = pad_to_tile(image, 64)
    assert padded.shape[:2] == (max(64, shape[0]), max(64, shape[1]))
    assert padded.shape[2:] == shape[2:]
    assert padded.dtype == image.dtype
    assert np.array_equal(padded[: shape[0], : shape[1]], image)


def test_pad_to_tile_mirrors():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    padded = pad_to_tile(image, 8)
    # symmetric mirroring: the row/column next to the edge repeats the edge, then walks back
    assert np.array_equal(padded[3, :4], image[2])
    assert np.array_equal(padded[4, :4], image[1])
    assert np.array_equal(padded[:3, 4], image[:, 3])
    assert np.array_equal(padded[:3, 5], image[:, 2])
    # only values from the image appear (no zeros / constants introduced)
    assert set(np.unique(padded)) <= set(np.unique(image))


def test_pad_to_tile_mirrors_beyond_twice_the_size():
    image = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    padded = pad_to_tile(image, 9)
    assert padded.shape == (9, 9)
    assert np.array_equal(padded[:2, :2], image)
    assert set(np.unique(padded)) == {1, 2, 3, 4}


def test_pad_to_tile_large_image_untouched():
    image = np.zeros((70, 80), dtype=np.uint16)
    assert pad_to_tile(image, 64) is image
