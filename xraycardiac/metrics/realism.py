"""Distribution distances between image sets on the features of a fixed encoder (Fréchet, MMD).

FID needs an ImageNet Inception network, which cannot be downloaded here and would not know
angiograms anyway. We use a **fixed random-weight convolutional encoder** instead (seeded, never
trained: random-feature embeddings are a known, if weaker, basis for two-sample tests, and they
measure what the two sets differ in at several scales without a training set of their own). Its
numbers are comparable only within one run of one encoder config: report them *relative* to a
floor (two disjoint samples of the same source) and a crude reference, never as absolute "FID".

* :func:`frechet_distance`: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of Gaussian fits.
* :func:`mmd2_rbf`: unbiased squared maximum mean discrepancy with a Gaussian kernel whose width
  is the median pairwise distance of the pooled features (median heuristic).

The 2D and 3D encoders share one definition (``spatial_dims``), so the cardiac synthesis
pipeline measures realism the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["EncoderConfig", "FixedEncoder", "frechet_distance", "mmd2_rbf"]


@dataclass(frozen=True)
class EncoderConfig:
    """The fixed encoder: ``len(channels)`` stride-2 3x3 conv + ReLU stages from random weights.

    Attributes:
        spatial_dims: 2 (images) or 3 (volumes).
        channels: output channels per stage; features are the mean and std of every stage's maps.
        seed: seeds the weights (part of the encoder's identity: change it, change the numbers).
    """

    spatial_dims: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 64)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"EncoderConfig.spatial_dims: expected 2 or 3, got {self.spatial_dims!r}")


class FixedEncoder:
    """Images (N, H, W) or volumes (N, D, H, W) in [0, 1] -> (N, 2 * sum(channels)) float64 features."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        import torch

        self.config = config or EncoderConfig()
        conv = torch.nn.Conv2d if self.config.spatial_dims == 2 else torch.nn.Conv3d
        gen = torch.Generator().manual_seed(self.config.seed)
        self.stages = []
        c_in = 1
        for c in self.config.channels:
            layer = conv(c_in, c, 3, stride=2, padding=1)
            with torch.no_grad():  # Kaiming-normal weights from our own generator, zero bias
                layer.weight.copy_(
                    torch.randn(layer.weight.shape, generator=gen)
                    * (2.0 / (c_in * 3**self.config.spatial_dims)) ** 0.5
                )
                layer.bias.zero_()
            self.stages.append(layer.eval())
            c_in = c

    def __call__(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        import torch

        x_all = np.asarray(images, dtype=np.float32)
        if x_all.ndim != self.config.spatial_dims + 1:
            raise ValueError(
                f"images: expected ({'N, H, W' if self.config.spatial_dims == 2 else 'N, D, H, W'}), "
                f"got shape {x_all.shape}"
            )
        out = []
        with torch.no_grad():
            for i in range(0, len(x_all), batch):
                x = torch.from_numpy(x_all[i : i + batch])[:, None] * 2.0 - 1.0
                feats = []
                for layer in self.stages:
                    x = torch.relu(layer(x))
                    flat = x.flatten(2)
                    feats += [flat.mean(-1), flat.std(-1)]
                out.append(torch.cat(feats, dim=1).double().numpy())
        return np.concatenate(out)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two (N, F) feature sets (N >= 2 each)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"frechet_distance: expected two (N >= 2, F) arrays, got {f1.shape} and {f2.shape}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(root):
        root = root.real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * root))


def mmd2_rbf(f1: np.ndarray, f2: np.ndarray, sigma: float | None = None) -> float:
    """Unbiased squared MMD between two (N, F) feature sets with a Gaussian kernel.

    Args:
        f1, f2: feature sets (N >= 2 each); features are standardised by the pooled mean and std first.
        sigma: kernel width in standardised units; None = median pairwise distance of the pool.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"mmd2_rbf: expected two (N >= 2, F) arrays, got {f1.shape} and {f2.shape}")
    pool = np.concatenate([f1, f2])
    mu, sd = pool.mean(0), pool.std(0) + 1e-12
    pool = (pool - mu) / sd
    d2 = np.sum((pool[:, None] - pool[None]) ** 2, axis=-1)
    if sigma is None:
        sigma = float(np.sqrt(np.median(d2[np.triu_indices(len(pool), 1)])))
    k = np.exp(-d2 / (2.0 * sigma**2))
    n = len(f1)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    m = len(f2)
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2.0 * kxy.mean())
