"""Image-fidelity metrics for CT volumes and projections: PSNR, SSIM (3D and slice-wise), MAE.

Every metric takes an explicit ``data_range`` (the peak-to-peak range the intensities live on) so the
caller states it. Published X2CT-style numbers use a PSNR peak of 4095 on data clipped to [0, 2500],
which inflates PSNR by 20 log10(4095 / 2500) ~ 4.3 dB; :func:`hu_window_metrics` instead clips to a
stated HU window and uses that window's width as the data range, and reports both in its result.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity

__all__ = [
    "block_means",
    "hu_window_metrics",
    "mae",
    "noise_power_spectrum",
    "psnr",
    "ssim3d",
    "ssim_slicewise",
]


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both arrays as float64 after checking their shapes agree."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {p.shape} and target {t.shape}")
    if p.size == 0:
        raise ValueError("pred and target must not be empty")
    return p, t


def _check_range(data_range: float) -> float:
    """Validate ``data_range`` (finite, > 0) and return it as float."""
    r = float(data_range)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"data_range must be a finite positive number, got {data_range!r}")
    return r


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio, ``10 log10(data_range**2 / MSE)``.

    MSE is the mean of ``(pred - target)**2`` over all elements, in float64. No clipping is applied;
    the caller states the range (e.g. the HU window width, or 2.0 for data in [-1, 1]).

    Args:
        pred: Prediction, any shape.
        target: Reference, same shape as ``pred``.
        data_range: Peak-to-peak range of the intensities (same unit as the data), > 0.

    Returns:
        PSNR in dB; ``inf`` when the arrays are identical.
    """
    p, t = _pair(pred, target)
    r = _check_range(data_range)
    mse = float(np.mean((p - t) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(r * r / mse)


def _check_win(win_size: int, shape: tuple[int, ...], name: str) -> None:
    """Check ``win_size`` is odd, >= 3 and fits in every axis of ``shape``."""
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size}")
    if min(shape) < win_size:
        raise ValueError(f"win_size={win_size} exceeds the smallest side of {name} shape {shape}")


def ssim3d(pred: np.ndarray, target: np.ndarray, data_range: float, win_size: int = 7) -> float:
    """Mean SSIM over the whole 2D image or 3D volume (one N-D sliding window).

    Computed with ``skimage.metrics.structural_similarity(pred, target, data_range=data_range,
    win_size=win_size, channel_axis=None)``: uniform ``win_size``-wide window along every axis,
    K1 = 0.01, K2 = 0.03, sample covariance, mean over the valid (border-cropped) region.

    Args:
        pred: Prediction, shape (H, W) or (D, H, W).
        target: Reference, same shape as ``pred``.
        data_range: Peak-to-peak intensity range used for the SSIM constants, > 0.
        win_size: Odd window side in voxels, <= the smallest side.

    Returns:
        Mean SSIM, at most 1 (1 for identical inputs).
    """
    p, t = _pair(pred, target)
    r = _check_range(data_range)
    if p.ndim not in (2, 3):
        raise ValueError(f"pred must be 2D or 3D, got shape {p.shape}")
    _check_win(win_size, p.shape, "pred")
    return float(structural_similarity(p, t, data_range=r, win_size=win_size, channel_axis=None))


def ssim_slicewise(
    pred: np.ndarray, target: np.ndarray, data_range: float, axis: int = 0, win_size: int = 7
) -> float:
    """Mean of 2D SSIMs over the slices of a volume along ``axis`` (the X2CT evaluation variant).

    Each slice pair is scored with ``structural_similarity(..., data_range=data_range,
    win_size=win_size, channel_axis=None)`` and the per-slice values are averaged with equal weight.

    Args:
        pred: Prediction volume, shape (D, H, W).
        target: Reference volume, same shape as ``pred``.
        data_range: Peak-to-peak intensity range, > 0.
        axis: Axis to slice along (0, 1, 2 or negative equivalents).
        win_size: Odd 2D window side in pixels.

    Returns:
        Mean slice SSIM.
    """
    p, t = _pair(pred, target)
    r = _check_range(data_range)
    if p.ndim != 3:
        raise ValueError(f"pred must be a 3D volume, got shape {p.shape}")
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be in [-3, 2], got {axis}")
    p = np.moveaxis(p, axis, 0)
    t = np.moveaxis(t, axis, 0)
    _check_win(win_size, p.shape[1:], "slice")
    vals = [
        structural_similarity(ps, ts, data_range=r, win_size=win_size, channel_axis=None)
        for ps, ts in zip(p, t, strict=True)
    ]
    return float(np.mean(vals))


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error ``mean(|pred - target|)`` over all elements, in the data's unit.

    Args:
        pred: Prediction, any shape.
        target: Reference, same shape as ``pred``.

    Returns:
        MAE (e.g. HU for CT).
    """
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(p - t)))


def hu_window_metrics(
    pred_hu: np.ndarray, target_hu: np.ndarray, window: tuple[float, float] = (-1000.0, 1000.0)
) -> dict[str, object]:
    """PSNR, SSIM (3D and slice-wise along axis 0) and MAE of two CT volumes inside one HU window.

    Both volumes are clipped to ``[lo, hi] = window`` first; ``data_range = hi - lo`` is then used
    for PSNR and both SSIMs (window 7), and MAE is in HU on the clipped values. Values outside the
    window therefore do not affect any number.

    Args:
        pred_hu: Predicted CT in HU, shape (D, H, W).
        target_hu: Reference CT in HU, same shape.
        window: (lo, hi) HU window, lo < hi.

    Returns:
        ``{"psnr_db", "ssim_3d", "ssim_slicewise", "mae_hu", "window", "data_range"}`` with
        ``window`` as a (lo, hi) tuple of floats and ``data_range`` = hi - lo (HU).
    """
    if len(window) != 2:
        raise ValueError(f"window must be a (lo, hi) pair, got {window!r}")
    lo, hi = float(window[0]), float(window[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"window must satisfy lo < hi (finite), got {window!r}")
    p, t = _pair(pred_hu, target_hu)
    p = np.clip(p, lo, hi)
    t = np.clip(t, lo, hi)
    rng = hi - lo
    return {
        "psnr_db": psnr(p, t, rng),
        "ssim_3d": ssim3d(p, t, rng),
        "ssim_slicewise": ssim_slicewise(p, t, rng, axis=0),
        "mae_hu": mae(p, t),
        "window": (lo, hi),
        "data_range": rng,
    }


def noise_power_spectrum(
    image: np.ndarray,
    region: np.ndarray,
    spacing_mm: float | tuple[float, float, float],
    bands_per_mm: tuple[tuple[float, float], ...],
    roi_vox: int = 8,
    max_rois: int = 64,
) -> dict[str, object]:
    """Radially averaged 3D noise power spectrum of the cubes of ``roi_vox``³ voxels inside ``region``.

    Cubes start every ``roi_vox // 2`` voxels (half-overlapping) and count when every voxel lies in
    ``region`` (at most ``max_rois``, taken evenly from those that fit). Each cube minus its own
    least-squares linear trend (so slow structure such as an enhancement gradient is not noise) gives
    NPS(f) = |DFT|² · voxel volume / voxels, averaged over the cubes, then over the frequencies whose
    radius |f| falls in each band.

    Args:
        image: (K, J, I) intensities, HU.
        region: boolean mask of the homogeneous region, same shape.
        spacing_mm: voxel spacing, mm (one value or per axis, in the array's axis order).
        bands_per_mm: (low, high) radial frequency bands, cycles/mm (low inclusive).
        roi_vox: cube side, voxels (>= 4).
        max_rois: most cubes used.

    Returns:
        ``{"power": [HU² mm³ per band], "rois": number of cubes}``; a band without any frequency
        sample is NaN.

    Raises:
        ValueError: shapes differ, a bad ``roi_vox``, or no cube fits inside ``region``.
    """
    img = np.asarray(image, dtype=np.float64)
    reg = np.asarray(region, dtype=bool)
    if img.shape != reg.shape or img.ndim != 3:
        raise ValueError(f"image and region: expected the same 3D shape, got {img.shape} and {reg.shape}")
    if not (isinstance(roi_vox, int) and 4 <= roi_vox <= min(img.shape)):
        raise ValueError(f"roi_vox: expected an integer from 4 to {min(img.shape)} voxels, got {roi_vox!r}")
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    step = max(1, roi_vox // 2)
    fits = np.lib.stride_tricks.sliding_window_view(reg, (roi_vox,) * 3)[::step, ::step, ::step]
    starts = np.argwhere(fits.all(axis=(-3, -2, -1))) * step
    if not len(starts):
        raise ValueError(
            f"region: no {roi_vox}^3-voxel cube lies inside it ({int(reg.sum())} voxels); use a larger region "
            "or a smaller roi_vox"
        )
    starts = starts[np.linspace(0, len(starts) - 1, min(max_rois, len(starts))).round().astype(int)]
    axes = np.meshgrid(*(np.arange(roi_vox, dtype=np.float64),) * 3, indexing="ij")
    design = np.stack([np.ones(roi_vox**3), *(a.ravel() for a in axes)], axis=1)
    power = np.zeros((roi_vox,) * 3)
    for k, j, i in starts:
        cube = img[k : k + roi_vox, j : j + roi_vox, i : i + roi_vox].ravel()
        trend = design @ np.linalg.lstsq(design, cube, rcond=None)[0]
        power += np.abs(np.fft.fftn((cube - trend).reshape((roi_vox,) * 3))) ** 2
    power *= float(np.prod(spacing)) / roi_vox**3 / len(starts)
    freqs = np.meshgrid(*(np.fft.fftfreq(roi_vox, d=s) for s in spacing), indexing="ij")
    radius = np.sqrt(sum(f**2 for f in freqs))
    out = []
    for low, high in bands_per_mm:
        sel = (radius >= low) & (radius < high)
        out.append(float(power[sel].mean()) if sel.any() else math.nan)
    return {"power": out, "rois": len(starts)}


def block_means(volume: np.ndarray, block: int, name: str = "volume") -> np.ndarray:
    """Means over ``block``³ voxel cubes of the last three axes (partial cubes at the far edges dropped).

    Args:
        volume: (..., K, J, I) array.
        block: cube side (voxels).
        name: what ``volume`` is, for the error message.

    Returns:
        (..., K // block, J // block, I // block) float64.
    """
    a = np.asarray(volume, dtype=np.float64)
    if a.ndim < 3:
        raise ValueError(f"{name}: expected a volume (..., K, J, I), got shape {a.shape}")
    k, j, i = (n // block for n in a.shape[-3:])
    if min(k, j, i) < 1:
        raise ValueError(f"{name}: shape {a.shape} is smaller than one {block}³ block")
    a = a[..., : k * block, : j * block, : i * block]
    return a.reshape(*a.shape[:-3], k, block, j, block, i, block).mean(axis=(-5, -3, -1))
