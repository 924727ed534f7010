"""Exact-answer tests for xraycardiac.metrics.image and xraycardiac.metrics.topology."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xraycardiac.metrics import (
    betti_numbers,
    cldice,
    hu_window_metrics,
    mae,
    per_label_betti,
    psnr,
    ssim3d,
    ssim_slicewise,
)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (n - 1) / 2.0
    return np.meshgrid(*(np.arange(n) - c,) * 3, indexing="ij")


def _ball(n: int, r: float, center: tuple[float, float, float] | None = None) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float),) * 3, indexing="ij")
    cz, cy, cx = center if center is not None else ((n - 1) / 2.0,) * 3
    return (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r


# ----------------------------------------------------------------------------- image


def test_psnr_matches_known_mse() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 100, size=(8, 9, 10))
    signs = rng.choice([-1.0, 1.0], size=target.shape)
    pred = target + 3.0 * signs  # MSE exactly 9
    got = psnr(pred, target, data_range=100.0)
    want = 10 * math.log10(100.0**2 / 9.0)
    assert got == pytest.approx(want, abs=1e-9), f"psnr={got}, expected {want}"
    # Doubling the stated range adds exactly 20 log10(2) dB.
    assert psnr(pred, target, 200.0) - got == pytest.approx(20 * math.log10(2), abs=1e-9)
    assert psnr(target, target, 1.0) == math.inf


def test_mae_exact() -> None:
    a = np.zeros((4, 4))
    b = np.full((4, 4), 2.5)
    b[0, 0] = -1.5
    assert mae(a, b) == pytest.approx((15 * 2.5 + 1.5) / 16)


def test_ssim_identical_is_one_and_noise_lowers_it() -> None:
    rng = np.random.default_rng(1)
    vol = _ball(20, 6).astype(float) * 2.0 - 1.0
    assert ssim3d(vol, vol, data_range=2.0) == pytest.approx(1.0, abs=1e-12)
    assert ssim_slicewise(vol, vol, data_range=2.0) == pytest.approx(1.0, abs=1e-12)
    assert ssim3d(vol[10], vol[10], data_range=2.0) == pytest.approx(1.0, abs=1e-12)
    noisy = vol + rng.normal(0, 0.3, vol.shape)
    s3, ss = ssim3d(noisy, vol, 2.0), ssim_slicewise(noisy, vol, 2.0, axis=1)
    assert s3 < 0.9, f"ssim3d with noise = {s3}"
    assert ss < 0.9, f"ssim_slicewise with noise = {ss}"
    louder = vol + rng.normal(0, 0.6, vol.shape)
    assert ssim3d(louder, vol, 2.0) < s3


def test_ssim_slicewise_is_mean_of_slices() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(3, 12, 12))
    b = a.copy()
    b[1] = rng.uniform(size=(12, 12))  # only slice 1 differs
    s1 = ssim3d(b[1], a[1], 1.0)
    assert ssim_slicewise(b, a, 1.0, axis=0) == pytest.approx((1.0 + s1 + 1.0) / 3.0, abs=1e-12)


def test_shape_mismatch_and_bad_range_raise() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)), 1.0)
    with pytest.raises(ValueError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        ssim3d(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros(3), np.ones(3), 0.0)
    with pytest.raises(ValueError, match="window"):
        hu_window_metrics(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), window=(100, -100))


def test_hu_window_metrics_clips_and_reports_range() -> None:
    rng = np.random.default_rng(3)
    target = rng.uniform(-900, 900, size=(10, 10, 10))
    pred = target + rng.normal(0, 50, target.shape)
    base = hu_window_metrics(pred, target, window=(-1000, 1000))
    assert base["data_range"] == 2000.0 and base["window"] == (-1000.0, 1000.0)
    # Pushing values that are already outside the window further out must change nothing.
    pred2, target2 = pred.copy(), target.copy()
    pred2[0, 0, :5] = -1000.0
    target2[0, 0, :5] = -1000.0
    pred3, target3 = pred2.copy(), target2.copy()
    pred3[0, 0, :5] = -3000.0  # air/outside-FOV below the window
    target3[0, 0, :5] = -1024.0
    pred3[5, 5, 5] = pred2[5, 5, 5] = 1000.0
    pred3[5, 5, 5] = 3071.0  # metal above the window
    a = hu_window_metrics(pred2, target2)
    b = hu_window_metrics(pred3, target3)
    for key in ("psnr_db", "ssim_3d", "ssim_slicewise", "mae_hu"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), f"{key}: {a[key]} vs {b[key]}"
    # And PSNR is on the stated range: identical to psnr() on the clipped arrays with range 2000.
    want = psnr(np.clip(pred3, -1000, 1000), np.clip(target3, -1000, 1000), 2000.0)
    assert b["psnr_db"] == pytest.approx(want, abs=1e-12)
    # A wider window with the same errors reports a higher PSNR by exactly 20 log10(4000/2000).
    wide = hu_window_metrics(pred, target, window=(-2000, 2000))
    assert wide["psnr_db"] - base["psnr_db"] == pytest.approx(20 * math.log10(2), abs=1e-9)


# ----------------------------------------------------------------------------- topology


def test_betti_solid_ball() -> None:
    assert betti_numbers(_ball(15, 5)) == (1, 0, 0)


def test_betti_hollow_shell() -> None:
    shell = _ball(17, 6) & ~_ball(17, 4)
    assert betti_numbers(shell) == (1, 0, 1)


def test_betti_torus() -> None:
    z, y, x = _grid(24)
    big_r, small_r = 7.0, 2.5
    torus = (np.sqrt(x**2 + y**2) - big_r) ** 2 + z**2 <= small_r**2
    assert betti_numbers(torus) == (1, 1, 0)


def test_betti_two_disjoint_balls() -> None:
    two = _ball(24, 4, (6, 6, 6)) | _ball(24, 4, (17, 17, 17))
    assert betti_numbers(two) == (2, 0, 0)


def test_betti_2d_ring_and_connectivity() -> None:
    yy, xx = np.mgrid[:15, :15] - 7
    rr = np.hypot(yy, xx)
    ring = (rr <= 6) & (rr >= 3)
    assert betti_numbers(ring) == (1, 1)
    # Diagonal-only contact: one component with 8-connectivity, two with 4-connectivity.
    diag = np.zeros((4, 4), bool)
    diag[1, 1] = diag[2, 2] = True
    assert betti_numbers(diag) == (1, 0)
    assert betti_numbers(diag, connectivity=1) == (2, 0)
    with pytest.raises(ValueError, match="connectivity"):
        betti_numbers(np.zeros((5, 5, 5)), connectivity=2)


def test_per_label_betti() -> None:
    lm = np.zeros((17, 17, 17), np.int16)
    lm[_ball(17, 6) & ~_ball(17, 4)] = 2
    lm[_ball(17, 2)] = 1
    got = per_label_betti(lm, [1, 2, 3])
    assert got == {1: (1, 0, 0), 2: (1, 0, 1), 3: (0, 0, 0)}


def _tree(with_branch: bool) -> np.ndarray:
    vol = np.zeros((12, 40, 40), bool)
    vol[4:9, 4:36, 18:23] = True  # trunk along y, 5 x 5 cross-section
    if with_branch:
        vol[4:9, 18:23, 23:36] = True  # side branch along x
    return vol


def test_cldice_identical_and_missing_branch() -> None:
    full = _tree(True)
    assert cldice(full, full) == pytest.approx(1.0)
    trunk = _tree(False)
    got = cldice(trunk, full)
    assert got < 0.95, f"clDice with a missing branch = {got}"
    # Missing branch hurts sensitivity only: precision stays perfect, so the score stays well above 0.
    assert got > 0.5, f"clDice with a missing branch = {got}"
    assert cldice(np.zeros_like(full), np.zeros_like(full)) == 1.0
    assert cldice(np.zeros_like(full), full) == 0.0


def test_cldice_even_bar_is_not_scored_zero() -> None:
    # Lee's 3D thinning erases a straight 4 x 4 bar; clDice must still see two identical bars as equal.
    bar = np.zeros((12, 40, 40), bool)
    bar[4:8, 4:36, 18:22] = True
    assert cldice(bar, bar) == pytest.approx(1.0)


def test_noise_power_spectrum_of_white_and_smoothed_noise() -> None:
    """White noise of std s has a flat NPS of s² × voxel volume; smoothing removes the high frequencies;
    a linear ramp (structure, not noise) adds nothing; a region without room for one cube is an error."""
    from scipy import ndimage

    from xraycardiac.metrics.image import noise_power_spectrum

    rng = np.random.default_rng(0)
    shape, spacing, sigma = (32, 32, 32), 2.5, 20.0
    region = np.zeros(shape, bool)
    region[4:28, 4:28, 4:28] = True
    bands = ((0.0, 0.05), (0.05, 0.1), (0.1, 0.15), (0.15, 0.2))
    white = rng.normal(0.0, sigma, shape)
    ramp = 300.0 + 5.0 * np.arange(32)[:, None, None] + 0.0 * white
    flat = noise_power_spectrum(white + ramp, region, spacing, bands)
    expected = sigma**2 * spacing**3
    assert flat["rois"] > 10
    assert all(0.7 * expected < p < 1.3 * expected for p in flat["power"][1:]), (flat, expected)
    smooth = noise_power_spectrum(ndimage.gaussian_filter(white, 1.0), region, spacing, bands)
    assert smooth["power"][3] < 0.05 * flat["power"][3] and smooth["power"][1] > 3 * smooth["power"][3]
    assert noise_power_spectrum(ramp, region, spacing, bands)["power"][1] < 1e-6 * expected
    with pytest.raises(ValueError, match="no 8\\^3-voxel cube"):
        noise_power_spectrum(white, np.zeros(shape, bool), spacing, bands)
