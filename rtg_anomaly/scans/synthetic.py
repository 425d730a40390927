"""Seeded synthetic vehicle X-ray (RTG) transmission scans for demos and tests.

Image model: side view of a truck passing a drive-through line scanner. Rows are the
detector (vertical) axis, row 0 at the top; columns are the scan (time) axis, with the
vehicle front on the left. Every part adds attenuation ``mu`` (dimensionless line
integral); the detected signal is ``I = I0 * exposure * exp(-mu)`` in detector counts on
a 16-bit scale (air ~45 000-60 000, engine / hubs ~3 000-10 000), plus Poisson-like noise
and per-column / per-row gain artefacts. Bright = air, dark = dense.

Randomness: only ``numpy.random.default_rng`` with independent streams per seed for the
scene, the detector noise and the anomalies, so ``anomaly=True`` and ``anomaly=False`` with
the same seed give the same vehicle and differ only by the inserted objects.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from .bmp16 import write_grey16_bmp

I0 = 52_000.0  # air signal at exposure 1.0, 16-bit counts
NOISE_K = 4.0  # noise variance = NOISE_K * I + READ_NOISE**2 (counts**2)
READ_NOISE = 30.0


def to_8bit(img16: np.ndarray) -> np.ndarray:
    """Fixed 16 -> 8 bit mapping ``round(v * 255 / 65535)`` (i.e. v / 257), identical for
    every scan (no per-image stretch): air ~175-235, dense ~12-40. uint16 in, uint8 out."""
    return ((img16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _rect(mu, y0, y1, x0, x1, val):
    H, L = mu.shape
    y0, y1 = max(int(round(y0)), 0), min(int(round(y1)), H)
    x0, x1 = max(int(round(x0)), 0), min(int(round(x1)), L)
    if y1 > y0 and x1 > x0:
        mu[y0:y1, x0:x1] += val
    return y0, y1, x0, x1


def _ring(mu, cy, cx, r, val, r_in=0.0, upper_only=False):
    """Add ``val`` on the annulus r_in <= d < r (a disc when r_in == 0)."""
    H, L = mu.shape
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, H)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, L)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    d = np.hypot(yy - cy, xx - cx)
    sel = (d < r) & (d >= r_in) & ((yy < cy) if upper_only else True)
    mu[y0:y1, x0:x1] += val * sel


def _poly(mu, pts, val, thickness=0):
    """Add ``val`` inside a polygon (thickness 0) or along its outline (anti-aliased)."""
    layer = np.zeros(mu.shape, np.uint8)
    pts = [np.round(np.asarray(pts)).astype(np.int32)]
    if thickness:
        cv2.polylines(layer, pts, True, 255, int(thickness), cv2.LINE_AA)
    else:
        cv2.fillPoly(layer, pts, 255, cv2.LINE_AA)
    mu += val * (layer.astype(np.float32) / 255.0)


def _wheel(mu, rng, cy, cx, r, dual):
    k = 1.5 if dual else 1.0  # dual rear tyres overlap in a side view
    _ring(mu, cy, cx, r, 1.1 * k, r_in=0.66 * r)          # tyre
    _ring(mu, cy, cx, 0.66 * r, 0.55 * k, r_in=0.44 * r)  # rim: lighter ring
    _ring(mu, cy, cx, 0.44 * r, 1.4 * k, r_in=0.2 * r)    # hub / brake drum
    _ring(mu, cy, cx, 0.2 * r, 2.0)                        # axle end
    for a in np.linspace(0, 2 * np.pi, int(rng.integers(6, 11)), endpoint=False):
        _ring(mu, cy + 0.32 * r * np.sin(a), cx + 0.32 * r * np.cos(a), 0.05 * r, 0.4)
    _ring(mu, cy, cx, 1.22 * r, 0.3, r_in=1.14 * r, upper_only=True)  # mudguard


def _engine(mu, rng, y0, y1, x0, x1):
    h, n = y1 - y0, int(rng.integers(4, 7))
    _rect(mu, y0, y1, x0, x1, 1.2)                              # block
    _rect(mu, y0 - 0.15 * h, y0, x0 + 0.05 * h, x1 - 0.05 * h, 0.9)  # head
    _rect(mu, y1, y1 + 0.12 * h, x0 + 0.1 * h, x1 - 0.2 * h, 0.5)   # oil pan
    w = (x1 - x0) / n
    for i in range(n):  # hollow cylinder bores, denser walls between them
        _rect(mu, y0 + 0.08 * h, y0 + 0.55 * h, x0 + (i + 0.2) * w, x0 + (i + 0.8) * w, -0.4)
    _rect(mu, y0 + 0.62 * h, y0 + 0.74 * h, x0, x1, 0.5)        # crankshaft
    _ring(mu, y0 + 0.35 * h, x0 - 0.12 * h, 0.18 * h, 0.45)      # pulley / fan hub


def _cab(mu, H, xf, xc, yt, yb):
    """Cab shell with hood, windscreen, door and seat; returns the door box (y0, y1, x0, x1)."""
    outline = [(xf, yb), (xf, 0.43 * H), (xf + 0.12 * H, 0.40 * H), (xf + 0.26 * H, yt),
               (xc, yt), (xc, yb)]
    _poly(mu, outline, 0.12)
    _poly(mu, outline, 0.55, thickness=max(2, H // 100))
    door = (yt + 0.05 * H, yb - 0.03 * H, xf + 0.32 * H, xf + 0.62 * H)
    _poly(mu, [(door[2], door[0]), (door[3], door[0]), (door[3], door[1]), (door[2], door[1])],
          0.3, thickness=max(2, H // 160))
    _rect(mu, door[0] + 0.02 * H, 0.40 * H, door[2] + 0.03 * H, door[3] - 0.03 * H, -0.06)  # window
    _poly(mu, [(xf + 0.18 * H, 0.40 * H), (xf + 0.27 * H, 0.48 * H)], 0.5, thickness=max(2, H // 80))
    _rect(mu, 0.50 * H, 0.55 * H, xc - 0.30 * H, xc - 0.08 * H, 0.35)  # seat base
    _poly(mu, [(xc - 0.08 * H, 0.55 * H), (xc - 0.03 * H, 0.34 * H)], 0.35, thickness=max(3, H // 50))
    return door


def _cargo(mu, rng, H, x0, x1, ytop, yfloor):
    """Pallet stacks of boxes with random, stationary content textures; returns the loaded x end."""
    content = np.zeros_like(mu)
    x, x_end = x0, x0 + rng.uniform(0.45, 1.0) * (x1 - x0)
    while x + 0.1 * H < x_end:
        w = min(rng.uniform(0.14, 0.30) * H, x1 - x)
        py = yfloor - 0.025 * H
        for k in range(3):  # pallet blocks + deck
            bx = x + k * (w - 0.03 * H) / 2
            _rect(content, py, yfloor, bx, bx + 0.03 * H, 0.45)
        _rect(content, py - 0.008 * H, py, x, x + w, 0.3)
        y = py - 0.008 * H
        for _ in range(int(rng.integers(1, 5))):
            h = rng.uniform(0.07, 0.18) * H
            if y - h < ytop + 0.03 * H:
                break
            b = _rect(content, y - h, y, x + 2, x + w - 2, rng.uniform(0.12, 0.55))
            _poly(content, [(b[2], b[0]), (b[3] - 1, b[0]), (b[3] - 1, b[1] - 1), (b[2], b[1] - 1)], 0.15, 1)
            yy, xx = np.ogrid[b[0]:b[1], b[2]:b[3]]
            p = rng.uniform(0.02, 0.05) * H
            kind, box = rng.integers(3), content[b[0]:b[1], b[2]:b[3]]
            if kind == 1:    # grid of packed items
                box += rng.uniform(0.15, 0.4) * ((yy % p < 0.6 * p) & (xx % p < 0.6 * p))
            elif kind == 2:  # cans / bottles
                box += rng.uniform(0.2, 0.45) * (np.hypot(yy % p - p / 2, xx % p - p / 2) < 0.4 * p)
            y -= h
        x += w + rng.uniform(0.0, 0.03) * H
    texture = gaussian_filter(rng.standard_normal(mu.shape).astype(np.float32), 1.5)
    mu += content * (1.0 + 1.2 * texture)  # stationary grain
    return x


def _fuel_tank(mu, rng, y0, y1, x0, x1):
    """Rounded-rectangle (superellipse) steel tank, partly filled with fuel."""
    yy, xx = np.ogrid[0:mu.shape[0], 0:mu.shape[1]]
    d = (np.abs((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 6
         + np.abs((yy - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 6)
    fill = y1 - rng.uniform(0.4, 0.9) * (y1 - y0)
    mu += 0.35 * (d < 1) + 0.35 * ((d < 1) & (d > 0.55)) + 0.45 * ((d < 1) & (yy > fill))


def _acquire(mu, rng, exposure):
    """Detector blur, beam profile, exposure, per-row / per-column gain, Poisson-like noise.
    mu (H, L) float32 attenuation -> uint16 counts."""
    H, L = mu.shape
    beam = 1.0 - 0.05 * ((np.arange(H) - H / 2) / (H / 2)) ** 2
    row_gain = beam * (1 + 0.003 * rng.standard_normal(H))       # detector elements
    col_gain = 1 + 0.004 * rng.standard_normal(L) + 0.01 * np.sin(np.arange(L) / L * rng.uniform(2, 8))
    signal = I0 * exposure * np.exp(-gaussian_filter(mu, 0.8)) * row_gain[:, None] * col_gain[None, :]
    signal += rng.standard_normal((H, L)) * np.sqrt(NOISE_K * signal + READ_NOISE ** 2)
    return np.clip(np.round(signal), 0, 65535).astype(np.uint16)


def _anomalies(rng, H, L, regions):
    """1-3 dense foreign objects inside the region boxes (y0, y1, x0, x1); returns (mu_delta, mask)."""
    delta, mask = np.zeros((H, L), np.float32), np.zeros((H, L), bool)
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(50):
            kind = ("panel", "tank", "cargo")[int(rng.integers(3))]
            ry0, ry1, rx0, rx1 = regions[kind]
            sh, sw = rng.uniform(0.03, 0.08, size=2) * H
            if ry1 - ry0 < sh + 2 or rx1 - rx0 < sw + 2:
                continue
            y0, x0 = int(rng.uniform(ry0, ry1 - sh)), int(rng.uniform(rx0, rx1 - sw))
            y1, x1 = int(y0 + sh) + 1, int(x0 + sw) + 1
            yy, xx = np.ogrid[y0:y1, x0:x1]
            if kind == "cargo":  # compact, irregular high-density blob
                cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
                rad = 1 + 0.15 * np.sin(3 * np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 6.3))
                shape = np.hypot((yy - cy) / (sh / 2), (xx - cx) / (sw / 2)) < 0.87 * rad
                val = rng.uniform(0.7, 1.0)
            else:                # rectangular package with a slightly denser wrapping
                shape = np.ones((y1 - y0, x1 - x0), bool)
                edge = (yy == y0) | (yy == y1 - 1) | (xx == x0) | (xx == x1 - 1)
                val = rng.uniform(0.6, 0.9) + 0.15 * edge
            if mask[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2].any():
                continue  # keep objects apart
            mask[y0:y1, x0:x1] |= shape
            delta[y0:y1, x0:x1] += val * shape
            break
    return delta, mask


def make_vehicle_scan(seed: int, height: int = 400, length: int | None = None,
                      anomaly: bool = False, bit_depth: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize one vehicle transmission scan.

    Args: seed (>= 0) selects the vehicle; height = detector rows (pixels, >= 64); length =
    scan columns (pixels, >= 2 * height), drawn from the seed in [2.5, 4] * height when None;
    anomaly inserts 1-3 dense objects of 3-8 % of the height per side; bit_depth 16 or 8.
    Returns: image (height, length) uint16 in detector counts, or uint8 via :func:`to_8bit`;
    mask (height, length) bool, True on anomaly pixels (all False when anomaly is False).
    """
    if bit_depth not in (8, 16):
        raise ValueError("bit_depth must be 8 or 16")
    H = int(height)
    rng = np.random.default_rng([seed, 0])  # scene
    L = int(round(rng.uniform(2.5, 4.0) * H)) if length is None else int(length)
    if H < 64 or L < 2 * H:
        raise ValueError("need height >= 64 and length >= 2 * height")
    exposure = rng.uniform(0.85, 1.15)
    mu = np.zeros((H, L), np.float32)
    dy = rng.uniform(-0.015, 0.015) * H                   # suspension height jitter
    xf, xr = rng.uniform(0.12, 0.3) * H, L - rng.uniform(0.12, 0.3) * H  # front / rear
    xc = xf + rng.uniform(0.75, 0.85) * H                 # cab rear wall
    R, yw = 0.115 * H, 0.825 * H + dy                     # wheel radius / centre row
    yb, yfloor, ytop = 0.655 * H + dy, 0.635 * H + dy, rng.uniform(0.08, 0.14) * H + dy
    # chassis rails (C-channel: dense flanges) and drive shaft
    _rect(mu, yb, yb + 0.05 * H, xf + 0.05 * H, xr - 0.02 * H, 0.7)
    for fy in (yb, yb + 0.04 * H):
        _rect(mu, fy, fy + 0.01 * H, xf + 0.05 * H, xr - 0.02 * H, 0.4)
    xa = [xf + rng.uniform(0.36, 0.42) * H]               # axles
    tandem = rng.random() < (L / H - 2.2) / 1.5          # longer vehicles: 3 axles
    xa.append(xr - rng.uniform(0.4, 0.6) * H - (2.3 * R if tandem else 0))
    if tandem:
        xa.append(xa[1] + 2.3 * R)
    _rect(mu, yb + 0.065 * H, yb + 0.08 * H, xa[0], xa[-1], 0.5)
    for i, x in enumerate(xa):
        _wheel(mu, rng, yw, x, R, dual=i > 0)
    _rect(mu, 0.60 * H + dy, 0.68 * H + dy, xf - 0.03 * H, xf + 0.02 * H, 0.9)  # bumpers
    _rect(mu, 0.69 * H + dy, 0.78 * H + dy, xr - 0.06 * H, xr - 0.035 * H, 0.7)
    _engine(mu, rng, 0.46 * H + dy, 0.62 * H + dy, xf + 0.08 * H, xf + 0.46 * H)
    door = _cab(mu, H, xf, xc, rng.uniform(0.2, 0.25) * H + dy, yb)
    t0 = xa[0] + R + 0.06 * H                              # fuel tank between the axles
    t1 = min(t0 + rng.uniform(0.3, 0.45) * H, xa[1] - R - 0.05 * H)
    ty0, ty1 = yb + 0.04 * H, yb + 0.17 * H
    _fuel_tank(mu, rng, ty0, ty1, t0, t1)
    # cargo box: thin walls, frame, floor, posts, rear doors, then the load
    xb = xc + 0.03 * H
    _rect(mu, ytop, yfloor, xb, xr, 0.18)
    _poly(mu, [(xb, ytop), (xr, ytop), (xr, yfloor), (xb, yfloor)], 0.5, thickness=max(3, H // 80))
    _rect(mu, yfloor - 0.02 * H, yfloor + 0.01 * H, xb, xr, 0.6)
    for px in np.arange(xb + 0.3 * H, xr - 0.1 * H, rng.uniform(0.28, 0.36) * H):
        _rect(mu, ytop, yfloor, px, px + 0.012 * H, 0.3)
    for px in (xr - 0.05 * H, xr - 0.02 * H):
        _rect(mu, ytop, yfloor, px, px + 0.008 * H, 0.45)
    x_load = _cargo(mu, rng, H, xb + 0.02 * H, xr - 0.06 * H, ytop + 0.01 * H, yfloor - 0.02 * H)

    mask = np.zeros((H, L), bool)
    if anomaly:
        regions = {"panel": (door[0] + 0.02 * H, 0.43 * H + dy, door[2] + 0.02 * H, door[3] - 0.02 * H),
                   "tank": (ty0 + 0.015 * H, ty1 - 0.015 * H, t0 + 0.03 * H, t1 - 0.03 * H),
                   "cargo": (ytop + 0.05 * H, yfloor - 0.05 * H, xb + 0.05 * H, x_load - 0.03 * H)}
        delta, mask = _anomalies(np.random.default_rng([seed, 2]), H, L, regions)
        mu += delta

    img = _acquire(mu, np.random.default_rng([seed, 1]), exposure)
    return (img if bit_depth == 16 else to_8bit(img)), mask


def write_demo_dataset(out_dir, n_clean_train: int = 6, n_clean_test: int = 2, n_anomalous: int = 3,
                       height: int = 320, seed: int = 0, fmt: str = "bmp") -> dict:
    """Write an MVTec-AD style folder of synthetic scans under ``out_dir``.

    Layout: ``train/good/NNN.<fmt>``, ``test/good/NNN.<fmt>``, ``test/anomalous/NNN.<fmt>`` and
    ``ground_truth/anomalous/NNN_mask.png`` (uint8, 0 / 255). ``fmt="bmp"`` writes 8-bit grey
    via :func:`to_8bit`; ``"png"``, (uncompressed) ``"tiff"`` and ``"bmp16"`` (a 16-bit grey BMP,
    see :func:`bmp16.write_grey16_bmp`; the files are named ``NNN.bmp``) write the 16-bit counts.
    Per-scan seeds come from ``default_rng(seed)``: identical arguments, byte-identical files.
    Returns ``{"train_good", "test_good", "test_anomalous", "ground_truth"}`` -> lists of Path.
    """
    if fmt not in ("bmp", "png", "tiff", "bmp16"):
        raise ValueError("fmt must be 'bmp', 'png', 'tiff' or 'bmp16'")
    out = Path(out_dir)
    seeds = iter(np.random.default_rng(seed).choice(2**31, n_clean_train + n_clean_test + n_anomalous,
                                                    replace=False).tolist())
    written = {"train_good": [], "test_good": [], "test_anomalous": [], "ground_truth": []}
    jobs = [("train_good", "train/good", n_clean_train, False),
            ("test_good", "test/good", n_clean_test, False),
            ("test_anomalous", "test/anomalous", n_anomalous, True)]
    for key, sub, n, anomalous in jobs:
        (out / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = make_vehicle_scan(next(seeds), height=height, anomaly=anomalous,
                                          bit_depth=8 if fmt == "bmp" else 16)
            path = out / sub / f"{i:03d}.{fmt.removesuffix('16')}"
            if fmt == "bmp16":
                write_grey16_bmp(path, img)
            else:
                params = [cv2.IMWRITE_TIFF_COMPRESSION, 1] if fmt == "tiff" else []  # uncompressed TIFF
                if not cv2.imwrite(str(path), img, params):
                    raise OSError(f"could not write {path}")
            written[key].append(path)
            if anomalous:
                mpath = out / "ground_truth/anomalous" / f"{i:03d}_mask.png"
                mpath.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(mpath), mask.astype(np.uint8) * 255)
                written["ground_truth"].append(mpath)
    return written
