"""Skip-Sampling Variance (SSV, FCaS): a voxel-wise confidence map of a synthetic volume.

FCaS samples one condition and one initial noise K times with the deterministic DDIM sampler,
each time with a different number of steps (``schedules``, default 10, 20, 50: each run skips a
different set of timesteps), and reads the spread of the K results as the model's uncertainty.
We keep that idea (same noise, K skip schedules) and differ in what is compared:

* **Pooled x̂0 estimates, not the K end points.** At every DDIM step the network's output gives
  its clean-image estimate x̂0 (:func:`xraycardiac.cardiac.tcdm.predicted_x0`). We pool the x̂0 of
  every step of every one of the K trajectories (N estimates in all, ~40 for 10/20/50 from a
  template start) and take their per-voxel variance. Measured on the shipped 64³ model, the K end
  points differ almost only in voxel-sized texture: their variance is spatial white noise (neighbour
  correlation 0.03) that does not say where the image is wrong (region AUROC 0.53). The early x̂0
  of a trajectory is the model's posterior-mean guess at high noise; where later steps must move
  far from it, and differently in different skip schedules, the model is inventing content.
* **Smoothed.** The pooled variance is smoothed by a Gaussian of ``smooth_vox`` voxels (default 1):
  a regional estimate, not a per-voxel coin flip.
* **Plus FCaS's end-point variance, down-weighted.** The variance of the K end points is added with
  weight ``endpoint_weight`` (default 0.3): it carries the voxel-level detail (which voxels' texture
  is unsettled) that smoothing removes. On the tuning cases 0.3 kept the neighbour correlation
  near 0.7 (1.0 drops it to 0.28) while raising the voxel AUROC from 0.64 to 0.80.
* **Calibrated scale.** ``tau`` is fitted (:func:`fit_tau`, Brier score) so that the confidence
  reads as the probability that a voxel lies within ``CALIBRATION_HU`` of the case the model was
  asked to render, on tuning cases of the shipped model at each grid (:data:`CALIBRATED_TAU`); the
  benchmark (``benchmarks/cardiac.py``) reports it on other cases.

Per voxel, over the N pooled estimates x̂0_n (in [-1, 1]) and the K end points x0_k::

    mean       = 1/K sum_k x0_k                                  (the K end points)
    pooled     = G_sigma * [ 1/N sum_n (x̂0_n - m)² ],  m = 1/N sum_n x̂0_n   (population, smoothed)
    variance   = pooled + endpoint_weight * 1/K sum_k (x0_k - mean)²
    confidence = exp(-variance / tau)                            in [0, 1]

``exp(-variance / tau)`` rather than ``1 - variance / max(variance)``: an absolute scale, comparable
across volumes (normalising by the maximum gives every volume a zero-confidence voxel).

The sampler is any ``sample_fn(cond, steps=..., generator=..., noise=..., on_x0=...) -> (B, 1, D, H, W)``
that calls ``on_x0(x0_hat)`` once per step; for a TCDM,
``functools.partial(xraycardiac.cardiac.tcdm.sample_tcdm, unet, scheduler)``.

Checking the map against a voxel error map (|synthetic - reference|, where a reference exists):
:func:`confidence_error_auroc` / :func:`confidence_error_correlation` per voxel,
:func:`region_error_auroc` per block, :func:`reliability_table` (binned confidence vs observed
error rate), :func:`neighbour_correlation` (spatial coherence).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "CALIBRATED_TAU", "CALIBRATION_HU", "SSVConfig", "confidence_error_auroc", "confidence_error_correlation",
    "fit_tau", "neighbour_correlation", "region_error_auroc", "reliability_table", "resolve_tau",
    "skip_sampling_variance",
]  # fmt: skip

SampleFn = Callable[..., torch.Tensor]

CALIBRATION_HU = 100.0
"""The error the calibrated confidence is about: |synthetic - reference| > 100 HU at a voxel."""

CALIBRATED_TAU: dict[int, float] = {32: 0.0108, 64: 0.0170}
"""Grid side (voxels) -> tau (squared [-1, 1] units) fitted with :func:`fit_tau` (smooth_vox 1,
endpoint_weight 0.3, schedules 10/20/50, start strength 0.5) on tuning cases of the shipped
``cardiac-tcdm-demo``: 64: its own grid, 3 cases (phantom template seed 0, MGM seed 1, 64³ x 2.5 mm;
0.3.0: 0.0170, 0.2.0: 0.0158);
32: the same model run at 32³ x 5 mm (the benchmark's default grid), two cases of that template (0.3.0:
0.0108; 0.2.0, one case: 0.0107).
Other grids use the nearest entry (uncalibrated there). Measure with ``benchmarks/cardiac.py --calibrate``."""


@dataclass(frozen=True)
class SSVConfig:
    """Skip-Sampling Variance settings.

    Attributes:
        schedules: DDIM step counts, at least two different positive integers (each at most the
            model's training timesteps).
        tau: confidence scale, squared [-1, 1] image units (> 0): confidence = exp(-variance / tau);
            None = :data:`CALIBRATED_TAU` for the volume's grid (:func:`resolve_tau`).
        smooth_vox: Gaussian sigma of the pooled-variance smoothing, voxels (>= 0; 0 = none).
        endpoint_weight: weight of the K end points' (unsmoothed) variance (>= 0; 0 = none).
    """

    schedules: tuple[int, ...] = (10, 20, 50)
    tau: float | None = None
    smooth_vox: float = 1.0
    endpoint_weight: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", tuple(self.schedules))
        s = self.schedules
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in s) or len(set(s)) < 2:
            raise ValueError(f"SSVConfig.schedules: expected >= 2 different positive integers, got {s!r}")
        t = self.tau
        if t is not None and not (_number(t) and t > 0):
            raise ValueError(f"SSVConfig.tau: expected None or a finite number > 0, got {t!r}")
        if not (_number(self.smooth_vox) and 0 <= self.smooth_vox <= 16):
            raise ValueError(
                f"SSVConfig.smooth_vox: expected a number in [0, 16] voxels, got {self.smooth_vox!r}"
            )
        if not (_number(self.endpoint_weight) and 0 <= self.endpoint_weight <= 100):
            raise ValueError(
                f"SSVConfig.endpoint_weight: expected a number in [0, 100], got {self.endpoint_weight!r}"
            )


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def resolve_tau(tau: float | None, grid: int) -> float:
    """``tau`` itself, or for None the :data:`CALIBRATED_TAU` entry nearest to ``grid`` (voxels per side)."""
    if tau is not None:
        return float(tau)
    nearest = min(CALIBRATED_TAU, key=lambda g: (abs(math.log(g / max(grid, 1))), g))
    return CALIBRATED_TAU[nearest]


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian (truncated at 3 sigma, edge values repeated) over the last three axes."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-3:])
    for axis in range(3):
        view = [1, 1, 1, 1, 1]
        view[2 + axis] = -1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        y = torch.nn.functional.conv3d(torch.nn.functional.pad(y, pad, mode="replicate"), k.view(view))
    return y.reshape(shape)


def skip_sampling_variance(
    sample_fn: SampleFn,
    cond: torch.Tensor,
    schedules: Sequence[int] = (10, 20, 50),
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tau: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    smooth_vox: float = 1.0,
    endpoint_weight: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one condition and one noise with K step counts; mean, pooled-x̂0 variance and confidence.

    Args:
        sample_fn: ``sample_fn(cond, steps=n, generator=g, noise=z, on_x0=f) -> (B, 1, D, H, W)`` in
            [-1, 1], deterministic given ``noise`` (DDIM with eta 0), calling ``f(x0_hat)`` with each
            step's (B, 1, D, H, W) clean-image estimate.
        cond: (B, Cc, D, H, W) condition, passed through unchanged.
        schedules: the K step counts (:class:`SSVConfig`).
        noise: (B, 1, D, H, W) initial noise shared by all K runs; drawn from ``generator`` if None.
        generator: draws ``noise`` when it is None; also passed to ``sample_fn``.
        tau: confidence scale (:class:`SSVConfig`; None = calibrated for the grid).
        progress: ``progress(k, K)`` after each of the K runs.
        smooth_vox: Gaussian sigma of the pooled-variance smoothing, voxels.
        endpoint_weight: weight of the K end points' variance.

    Returns:
        (mean of the K end points (B, 1, D, H, W) in [-1, 1], variance (smoothed pooled x̂0 variance
        + endpoint_weight x end-point variance, (B, 1, D, H, W) >= 0), confidence (B, 1, D, H, W)
        in [0, 1]), float32.

    Raises:
        ValueError: bad ``schedules``, ``tau``, ``smooth_vox`` or ``endpoint_weight`` (``SSVConfig.*``), a
            ``noise`` of the wrong shape, neither ``noise`` nor ``generator``, a ``sample_fn``
            result or estimate of another shape or with NaN, a ``sample_fn`` that never calls ``on_x0``.
    """
    config = SSVConfig(tuple(schedules), tau, smooth_vox, endpoint_weight)
    if cond.ndim != 5:
        raise ValueError(f"cond: expected (B, Cc, D, H, W), got shape {tuple(cond.shape)}")
    shape = (cond.shape[0], 1, *cond.shape[2:])
    if noise is None:
        if generator is None:
            raise ValueError("generator: required when no noise is given (all K runs must share one noise)")
        noise = torch.randn(shape, generator=generator, device=generator.device)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise: expected shape {shape}, got {tuple(noise.shape)}")
    pooled = {
        "n": 0,
        "sum": torch.zeros(shape, dtype=torch.float64),
        "sq": torch.zeros(shape, dtype=torch.float64),
    }

    def on_x0(x0_hat: torch.Tensor) -> None:
        if tuple(x0_hat.shape) != shape or not bool(torch.isfinite(x0_hat).all()):
            raise ValueError(f"sample_fn: on_x0 got shape {tuple(x0_hat.shape)} (expected {shape}) or NaN")
        x = x0_hat.detach().to("cpu", torch.float64)
        pooled["n"] += 1
        pooled["sum"].add_(x)
        pooled["sq"].addcmul_(x, x)

    total, total_sq = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    for k, steps in enumerate(config.schedules):
        x0 = sample_fn(cond, steps=steps, generator=generator, noise=noise, on_x0=on_x0)
        if tuple(x0.shape) != shape or not bool(torch.isfinite(x0).all()):
            raise ValueError(
                f"sample_fn: with steps={steps} it returned shape {tuple(x0.shape)} (expected {shape}) "
                "or non-finite values"
            )
        x0 = x0.detach().to("cpu", torch.float64)
        total += x0
        total_sq += x0 * x0
        if progress is not None:
            progress(k + 1, len(config.schedules))
    n = pooled["n"]
    if n < 2:
        raise ValueError(
            f"sample_fn: on_x0 was called {n} time(s) over {len(config.schedules)} runs; it must be called "
            "with every step's clean-image estimate (sample_tcdm's on_x0)"
        )
    m, k = pooled["sum"] / n, len(config.schedules)
    mean = total / k
    variance = _smooth((pooled["sq"] / n - m * m).clamp_min(0.0), config.smooth_vox)
    variance = variance + config.endpoint_weight * (total_sq / k - mean * mean).clamp_min(0.0)
    confidence = torch.exp(-variance / resolve_tau(config.tau, max(shape[2:])))
    return mean.float(), variance.float(), confidence.float()


def fit_tau(variance: Any, error_map: Any, threshold: float = CALIBRATION_HU) -> float:
    """The tau whose ``exp(-variance / tau)`` best predicts "error <= threshold" (least Brier score).

    Args:
        variance: (...) SSV variance maps (squared [-1, 1] units), one or several volumes stacked.
        error_map: (...) |synthetic - reference| of the same shape (HU when ``threshold`` is).
        threshold: the error the confidence is about.

    Returns:
        tau > 0, searched on a log grid from 1e-6 to 10 (then refined around the best).
    """
    v, e = _flat(variance, "variance"), _flat(error_map, "error_map")
    if v.shape != e.shape:
        raise ValueError(f"error_map: {e.size} values vs variance's {v.size}")
    ok = (e <= float(threshold)).astype(np.float64)

    def brier(t: float) -> float:
        return float(np.mean((np.exp(-v / t) - ok) ** 2))

    grid = np.logspace(-6, 1, 71)
    best = grid[int(np.argmin([brier(t) for t in grid]))]
    fine = best * np.logspace(-0.1, 0.1, 41)
    return float(fine[int(np.argmin([brier(t) for t in fine]))])


def _flat(x: Any, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    arr = arr.astype(np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _pair(confidence: Any, error_map: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (confidence, error) inside ``mask``; checks shapes and the confidence range."""
    c, e = _flat(confidence, "confidence"), _flat(error_map, "error_map")
    if np.shape(confidence) != np.shape(error_map):
        shapes = f"{tuple(np.shape(error_map))} vs {tuple(np.shape(confidence))}"
        raise ValueError(f"error_map: its shape differs from confidence's ({shapes})")
    if c.size and (c.min() < 0 or c.max() > 1):
        raise ValueError(f"confidence: expected values in [0, 1], found {c.min():.4g}..{c.max():.4g}")
    if mask is not None:
        m = _flat(mask, "mask") > 0
        if m.shape != c.shape:
            raise ValueError(f"mask: shape {tuple(np.shape(mask))} differs from confidence's")
        c, e = c[m], e[m]
    if c.size < 2:
        raise ValueError(f"mask: fewer than 2 voxels to compare ({c.size})")
    return c, e


def confidence_error_auroc(confidence: Any, error_map: Any, threshold: float, mask: Any = None) -> float:
    """AUROC of ``1 - confidence`` for detecting voxels whose error exceeds ``threshold``.

    1.0: every voxel with error > threshold has lower confidence than every other voxel; 0.5:
    confidence says nothing about the error. Ties count one half (Mann-Whitney U / (n+ n-)).

    Args:
        confidence: (...) values in [0, 1] (numpy or torch).
        error_map: (...) voxel errors of the same shape (e.g. |synthetic - reference|, any unit).
        threshold: error above which a voxel is a positive (same unit as ``error_map``).
        mask: optional (...) region to evaluate (nonzero = in), e.g. the heart.

    Raises:
        ValueError: shapes differ, confidence outside [0, 1], or ``threshold`` leaves only one
            class (all voxels above or all below it).
    """
    from scipy.stats import rankdata

    c, e = _pair(confidence, error_map, mask)
    positive = e > float(threshold)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"threshold: {threshold!r} leaves {n_pos} voxels above and {n_neg} below it; the AUROC needs both"
        )
    ranks = rankdata(1.0 - c)  # average ranks for ties
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _blocks(x: Any, block: int, name: str) -> np.ndarray:
    """Means over ``block``³ cubes of the last three axes (a partial edge cube is dropped)."""
    from xraycardiac.metrics.image import block_means

    return block_means(x.detach().cpu().numpy() if torch.is_tensor(x) else x, block, name)


def region_error_auroc(confidence: Any, error_map: Any, threshold: float, block: int = 4) -> float:
    """AUROC of ``1 - confidence`` for regions in error: ``block``³ voxel cubes whose mean error > threshold.

    Region confidence = the mean confidence of its voxels (the partial cubes at the far edges are
    left out). Same reading as :func:`confidence_error_auroc`, one count per region.

    Raises:
        ValueError: ``block`` not a positive integer or larger than the volume, shapes differ, or a
            threshold that leaves only one class of regions.
    """
    if not (isinstance(block, int) and not isinstance(block, bool) and block >= 1):
        raise ValueError(f"block: expected a positive integer (voxels), got {block!r}")
    if np.shape(confidence) != np.shape(error_map):
        raise ValueError(
            f"error_map: shape {np.shape(error_map)} differs from confidence's {np.shape(confidence)}"
        )
    return confidence_error_auroc(
        _blocks(confidence, block, "confidence"), _blocks(error_map, block, "error_map"), threshold
    )


def reliability_table(
    confidence: Any, error_map: Any, threshold: float = CALIBRATION_HU, bins: int = 10
) -> list[dict[str, float]]:
    """Binned confidence vs observed error rate (voxels with error > ``threshold``): a reliability curve.

    Bins are equal-width over [0, 1]; empty bins are left out. A calibrated map has ``error_rate``
    close to ``1 - mean_confidence`` in every bin.

    Returns:
        ``[{"lo", "hi", "voxels", "mean_confidence", "error_rate"}, ...]`` in increasing confidence.
    """
    if not (isinstance(bins, int) and not isinstance(bins, bool) and bins >= 1):
        raise ValueError(f"bins: expected a positive integer, got {bins!r}")
    c, e = _pair(confidence, error_map, None)
    idx = np.minimum((c * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            rows.append({
                "lo": b / bins, "hi": (b + 1) / bins, "voxels": float(sel.sum()),
                "mean_confidence": float(c[sel].mean()), "error_rate": float(np.mean(e[sel] > threshold)),
            })  # fmt: skip
    return rows


def neighbour_correlation(volume: Any) -> float:
    """Spatial coherence: Pearson correlation of each voxel with its next neighbour, averaged over the 3 axes.

    About 0 for white noise, near 1 for a map that varies smoothly. Axes along which the volume is
    constant are left out.

    Raises:
        ValueError: fewer than 3 dimensions or a volume constant along every axis.
    """
    a = volume.detach().cpu().numpy() if torch.is_tensor(volume) else np.asarray(volume)
    if a.ndim < 3:
        raise ValueError(f"volume: expected (..., D, H, W), got shape {a.shape}")
    values = []
    for axis in (-3, -2, -1):
        b = np.moveaxis(a.astype(np.float64), axis, 0)
        x, y = b[:-1].ravel(), b[1:].ravel()
        if x.std() > 0 and y.std() > 0:
            values.append(float(np.corrcoef(x, y)[0, 1]))
    if not values:
        raise ValueError("volume: constant; the neighbour correlation is undefined")
    return float(np.mean(values))


def confidence_error_correlation(
    confidence: Any, error_map: Any, method: str = "spearman", mask: Any = None
) -> float:
    """Correlation between confidence and voxel error; negative = low confidence goes with high error.

    Args:
        confidence: (...) values in [0, 1].
        error_map: (...) voxel errors of the same shape.
        method: "spearman" (rank, default: robust to the exp mapping) or "pearson".
        mask: optional (...) region to evaluate (nonzero = in).

    Raises:
        ValueError: unknown ``method``, shapes differ, or a constant input (correlation undefined).
    """
    from scipy.stats import pearsonr, spearmanr

    if method not in ("spearman", "pearson"):
        raise ValueError(f"method: expected 'spearman' or 'pearson', got {method!r}")
    c, e = _pair(confidence, error_map, mask)
    for name, v in (("confidence", c), ("error_map", e)):
        if np.ptp(v) == 0:
            raise ValueError(f"{name}: constant over the evaluated voxels; the correlation is undefined")
    result = spearmanr(c, e) if method == "spearman" else pearsonr(c, e)
    return float(result[0])
