"""Skip-Sampling Variance (SSV, FCaS): a voxel-wise confidence map of a synthetic volume.

One condition and one initial noise are sampled K times by the deterministic DDIM sampler, each
time with a different number of steps (``schedules``, default 10, 20, 50: each run skips a
different set of timesteps). Where the model is sure, the K trajectories end at the same x0;
where it is not, they drift apart. Per voxel, over the K results x0_k (in [-1, 1])::

    mean       = 1/K sum_k x0_k
    variance   = 1/K sum_k (x0_k - mean)²          (population variance)
    confidence = exp(-variance / tau)               in [0, 1]; 1 where all K agree

Why ``exp(-variance / tau)`` rather than ``1 - variance / max(variance)``: an absolute scale,
comparable across volumes and batches (normalising by the maximum gives every volume a
zero-confidence voxel even when all its samples agree to within rounding). ``tau`` is in the
squared units of the [-1, 1] image: the default 1e-3 makes a disagreement standard deviation of
sqrt(1e-3) = 0.032 (32 HU with the TCDM's -1000..1000 HU window) a confidence of 1/e = 0.37.
FCaS gives neither the schedules nor the mapping; both are fields of :class:`SSVConfig`.

The sampler is any ``sample_fn(cond, steps=..., generator=..., noise=...) -> (B, 1, D, H, W)``;
for a TCDM, ``functools.partial(xraycardiac.cardiac.tcdm.sample_tcdm, unet, scheduler)``.

Checking the map (:func:`confidence_error_auroc`, :func:`confidence_error_correlation`): against a
voxel error map (e.g. |synthetic - reference| where a reference exists), low confidence should go
with high error: an AUROC of ``1 - confidence`` for "error > threshold" near 1, a negative
Spearman correlation between confidence and error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["SSVConfig", "confidence_error_auroc", "confidence_error_correlation", "skip_sampling_variance"]

SampleFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SSVConfig:
    """Skip-Sampling Variance settings.

    Attributes:
        schedules: DDIM step counts, at least two different positive integers (each at most the
            model's training timesteps).
        tau: confidence scale, squared [-1, 1] image units (> 0): confidence = exp(-variance / tau).
    """

    schedules: tuple[int, ...] = (10, 20, 50)
    tau: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", tuple(self.schedules))
        s = self.schedules
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in s) or len(set(s)) < 2:
            raise ValueError(f"SSVConfig.schedules: expected >= 2 different positive integers, got {s!r}")
        t = self.tau
        if not (isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0):
            raise ValueError(f"SSVConfig.tau: expected a finite number > 0, got {t!r}")


def skip_sampling_variance(
    sample_fn: SampleFn,
    cond: torch.Tensor,
    schedules: Sequence[int] = (10, 20, 50),
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tau: float = 1e-3,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one condition and one noise with K step counts; voxel-wise mean, variance and confidence.

    Args:
        sample_fn: ``sample_fn(cond, steps=n, generator=g, noise=z) -> (B, 1, D, H, W)`` in [-1, 1],
            deterministic given ``noise`` (DDIM with eta 0).
        cond: (B, Cc, D, H, W) condition, passed through unchanged.
        schedules: the K step counts (:class:`SSVConfig`).
        noise: (B, 1, D, H, W) initial noise shared by all K runs; drawn from ``generator`` if None.
        generator: draws ``noise`` when it is None; also passed to ``sample_fn``.
        tau: confidence scale (:class:`SSVConfig`).
        progress: ``progress(k, K)`` after each of the K runs.

    Returns:
        (mean (B, 1, D, H, W) in [-1, 1], variance (B, 1, D, H, W) >= 0, confidence (B, 1, D, H, W)
        in [0, 1]), float32.

    Raises:
        ValueError: bad ``schedules`` or ``tau`` (named as ``SSVConfig.*``), a ``noise`` of the
            wrong shape, neither ``noise`` nor ``generator``, a ``sample_fn`` result of another
            shape or with NaN.
    """
    config = SSVConfig(tuple(schedules), tau)
    if cond.ndim != 5:
        raise ValueError(f"cond: expected (B, Cc, D, H, W), got shape {tuple(cond.shape)}")
    shape = (cond.shape[0], 1, *cond.shape[2:])
    if noise is None:
        if generator is None:
            raise ValueError("generator: required when no noise is given (all K runs must share one noise)")
        noise = torch.randn(shape, generator=generator, device=generator.device)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise: expected shape {shape}, got {tuple(noise.shape)}")
    runs = []
    for k, steps in enumerate(config.schedules):
        x0 = sample_fn(cond, steps=steps, generator=generator, noise=noise)
        if tuple(x0.shape) != shape or not bool(torch.isfinite(x0).all()):
            raise ValueError(
                f"sample_fn: with steps={steps} it returned shape {tuple(x0.shape)} (expected {shape}) "
                "or non-finite values"
            )
        runs.append(x0.detach().double())
        if progress is not None:
            progress(k + 1, len(config.schedules))
    stack = torch.stack(runs)
    mean = stack.mean(0)
    variance = (stack - mean).pow(2).mean(0)
    confidence = torch.exp(-variance / config.tau)
    return mean.float(), variance.float(), confidence.float()


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
