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

__all__ = ["hu_window_metrics", "mae", "psnr", "ssim3d", "ssim_slicewise"]


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
