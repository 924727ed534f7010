"""Robust losses of the calibration solver (:mod:`xraycardiac.coronary.recon.calibration`).

scipy's ``least_squares`` robust losses as values and derivatives (:func:`rho`), a callable that
robustifies only the match residuals and leaves the prior's quadratic (:func:`robust_on_first`),
and the graduated soft-L1 scales that start the solve far from the pose (:func:`f_scale_schedule`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["f_scale_schedule", "rho", "robust_on_first"]


def f_scale_schedule(loss: str, f_scale_px: float, error_px: np.ndarray) -> list[float]:
    """Scales (pixels, decreasing, all > ``f_scale_px``) of the graduated soft-L1 solves before the final one.

    A wrong recorded pose gives every match a structured error of many pixels. scipy's robust
    losses use the exact second-order (Triggs) correction, which gives a Huber or Cauchy residual
    beyond ``f_scale`` zero curvature: started with every residual there, the solver crawls.
    So the scale starts at about the median initial error and is divided by 4 per stage
    (graduated non-convexity) with soft-L1, whose curvature never vanishes; ``loss``
    then runs at ``f_scale_px`` from a nearly right pose. None for plain least squares.
    """
    if loss == "linear":
        return []
    scales = [f_scale_px]
    while scales[-1] < float(np.median(error_px)):
        scales.append(scales[-1] * 4.0)
    return scales[:0:-1]


def rho(loss: str, z: np.ndarray) -> np.ndarray:
    """(3, n) value, first and second derivative of scipy's robust loss ``loss`` at ``z = r^2``."""
    out = np.empty((3, len(z)))
    if loss == "linear":
        out[0], out[1], out[2] = z, 1.0, 0.0
    elif loss == "soft_l1":
        t = 1.0 + z
        out[0], out[1], out[2] = 2.0 * (np.sqrt(t) - 1.0), t**-0.5, -0.5 * t**-1.5
    elif loss == "huber":
        big = z > 1.0
        zb = np.where(big, z, 1.0)
        out[0] = np.where(big, 2.0 * np.sqrt(zb) - 1.0, z)
        out[1] = np.where(big, zb**-0.5, 1.0)
        out[2] = np.where(big, -0.5 * zb**-1.5, 0.0)
    elif loss == "cauchy":
        t = 1.0 + z
        out[0], out[1], out[2] = np.log1p(z), 1.0 / t, -1.0 / t**2
    else:  # arctan
        t = 1.0 + z**2
        out[0], out[1], out[2] = np.arctan(z), 1.0 / t, -2.0 * z / t**2
    return out


def robust_on_first(loss: str, n: int) -> Any:
    """A scipy loss callable: ``loss`` on the first ``n`` residuals (the matches), plain squares after
    them (the prior's residuals: a Gaussian prior is quadratic however far the pose moves)."""

    def on_first(z: np.ndarray) -> np.ndarray:
        out = rho("linear", z)
        out[:, :n] = rho(loss, z[:n])
        return out

    return on_first
