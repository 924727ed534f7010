"""The X-ray encoder of XRayToCT (CLS-DM): radiographs -> a condition map aligned with the CT latent.

CLS-DM conditions its latent diffusion model on a 3D feature map computed from the radiographs and
trained to agree with the frozen CT autoencoder's latent ("latent space consistency"). Here:

1. **2D features.** Each view (B, h, w) goes through its own small 2D U-Net
   (``monai.networks.nets.UNet``, ``cnn_channels``) to ``feature_channels`` maps at the view's
   resolution. A PA film and a lateral film look different, so the two views do not share weights.
2. **Lifting by the true geometry** (:func:`lift_grid`, :func:`back_project`). Every voxel centre of
   the CT grid is mapped to RAS mm by the cube's ``ijk_to_ras`` and projected with the view's 3 x 4
   matrix P (RAS mm -> pixel u = column, v = row, the convention of
   :class:`~xraycardiac.geometry.CArmGeometry`); the view's feature map is sampled there bilinearly
   (``grid_sample``). The lifted volume is the feature map smeared back along the X-ray paths, so
   the relative orientation of the views (lateral orthogonal to PA, mirrorings, divergent beams) is
   right by construction: no axis permutation is ever chosen by hand. Per view the lifted channels
   are the ``feature_channels`` features, the raw view itself (the attenuation as measured, next to
   the instance-normalised CNN's features) and, when ``lift_depth_encoding``, the voxel's
   normalised depth along its ray (distance from the source along the beam axis, mapped linearly
   to [-1, 1] over the grid: -1 the voxel nearest the source, +1 the farthest), which tells the
   3D network where on the ray it is.
3. **Fusion** by channel concatenation of the views (``fusion="concat"``, the default) or their
   mean (``"mean"``), then a small 3D U-Net (``monai.networks.nets.UNet``, ``unet_channels``,
   instance norm, ``num_res_units`` residual units: 0 at demo size, where one unit per level
   doubles the CPU time of a training step at 64³; 1 in the "paper" preset).
4. **Heads**: (a) the condition map at latent resolution, (B, latent_channels, D/f, H/f, W/f), by a
   convolution of kernel and stride f = ``latent_factor``; (b) a full-resolution CT estimate
   (B, 1, D, H, W) in [-1, 1] (1 x 1 x 1 convolution + tanh), the reconstruction constraint.

Losses (:func:`encoder_loss`), weights ``contrastive_weight``, ``mse_weight``,
``reconstruction_weight`` (all 1 by default; the paper is silent):

* **InfoNCE** (:func:`info_nce`) between the condition map and the frozen, scaled AE latent. Both
  are cut into non-overlapping cubes of ``nce_patch``³ latent voxels; each patch, flattened over
  (channels, voxels) and L2-normalised, is one token. The positive of a condition token is the latent
  token of the *same case at the same location*; its negatives are every other latent token of the
  batch: the other locations of the same case and all locations of the other cases. So with
  ``L = (D/f/p)(H/f/p)(W/f/p)`` tokens per case and batch size B the loss is an N-way classification,
  N = B L, which is informative at batch size 1 or 2. Logits are cosine similarities divided by
  ``temperature`` (0.1); the loss is symmetric (condition -> latent and latent -> condition, CLIP's
  form) and equals log N for unrelated tokens (at temperature 1; lower temperatures add the spread of
  the logits) and ~0 when the condition equals the latent. Latent patches that are identical (air,
  say) are negatives that cannot be told apart; the MSE term carries them.
* **MSE** between the condition map and the scaled latent (they live in the same units, so the
  diffusion model may read the condition as a first guess of the latent).
* **L1** between the CT estimate and the CT (both in [-1, 1]).

Weights file: ``{"format": "xraycardiac.x2ct_encoder", "config": {...}, "state_dict": {...}}``
(:mod:`xraycardiac.models.weights`, whose ``write_weights_file`` / ``read_weights_file`` /
``load_model_file`` this module re-exports), loaded with ``weights_only=True`` (:func:`save_encoder`,
:func:`load_encoder`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xraycardiac.jsonutil import is_int, is_number
from xraycardiac.models.weights import (
    JsonConfig,
    WeightsFormat,
    load_model_file,
    read_weights_file,
    write_weights_file,
)

__all__ = [
    "ENCODER_FORMAT",
    "FUSIONS",
    "XRayEncoder",
    "XRayEncoderConfig",
    "back_project",
    "check_views",
    "encoder_loss",
    "info_nce",
    "lift_grid",
    "load_encoder",
    "load_model_file",
    "make_encoder_loss_fn",
    "patch_tokens",
    "read_weights_file",
    "save_encoder",
    "write_weights_file",
]

ENCODER_FORMAT = "xraycardiac.x2ct_encoder"
_FILE = WeightsFormat(ENCODER_FORMAT, "an X-ray encoder")
FUSIONS = ("concat", "mean")
_OUTSIDE = 3.0  # normalised coordinate of "behind the source": far outside [-1, 1], samples zero


@dataclass(frozen=True)
class XRayEncoderConfig(JsonConfig):
    """What the X-ray encoder is (saved next to its weights).

    Attributes:
        n_views: views it takes, 2 (PA, lateral) or 1 (PA).
        view_size: side of the square views in pixels (a multiple of 2^(len(cnn_channels) - 1)).
        grid: CT voxels per side of the lifted volume (the CT cube's grid; a multiple of
            ``latent_factor`` and of 2^(len(unet_channels) - 1)).
        latent_channels: channels of the condition map (= the autoencoder's latent channels).
        latent_factor: CT voxels per latent voxel along each axis (the autoencoder's downsampling).
        cnn_channels: channels per level of each view's 2D U-Net.
        feature_channels: feature maps per view that are lifted to 3D.
        unet_channels: channels per level of the 3D U-Net; its output has ``unet_channels[0]``.
        num_res_units: residual units per level of both U-Nets (MONAI ``UNet``).
        lift_depth_encoding: add each voxel's normalised depth along its ray as a lifted channel.
        fusion: "concat" (views side by side in channels) or "mean" (average of the views).
        temperature: InfoNCE temperature.
        nce_patch: side, in latent voxels, of the patches that are InfoNCE tokens.
        contrastive_weight, mse_weight, reconstruction_weight: weights of the three losses.
    """

    n_views: int = 2
    view_size: int = 64
    grid: int = 64
    latent_channels: int = 4
    latent_factor: int = 4
    cnn_channels: tuple[int, ...] = (16, 32, 64)
    feature_channels: int = 8
    unet_channels: tuple[int, ...] = (16, 32, 64)
    num_res_units: int = 0
    lift_depth_encoding: bool = True
    fusion: str = "concat"
    temperature: float = 0.1
    nce_patch: int = 2
    contrastive_weight: float = 1.0
    mse_weight: float = 1.0
    reconstruction_weight: float = 1.0

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"XRayEncoderConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("cnn_channels", "unet_channels"):
            v = getattr(self, name)
            if isinstance(v, list | tuple):
                object.__setattr__(self, name, tuple(v))
            v = getattr(self, name)
            if not (isinstance(v, tuple) and len(v) >= 2 and all(is_int(c, 1) for c in v)):
                fail(name, "a tuple of at least 2 positive integers (channels per level)")
        if self.n_views not in (1, 2) or isinstance(self.n_views, bool):
            fail("n_views", "1 (PA) or 2 (PA + lateral)")
        for name in ("latent_channels", "latent_factor", "feature_channels", "nce_patch"):
            if not is_int(getattr(self, name), 1):
                fail(name, "an integer >= 1")
        if not is_int(self.num_res_units, 0):
            fail("num_res_units", "an integer >= 0")
        step2 = 2 ** (len(self.cnn_channels) - 1)
        if not (is_int(self.view_size, step2) and self.view_size % step2 == 0):
            fail("view_size", f"a positive multiple of {step2} (2^(len(cnn_channels) - 1)) pixels")
        step3 = 2 ** (len(self.unet_channels) - 1)
        if not (is_int(self.grid, 2) and self.grid % step3 == 0 and self.grid % self.latent_factor == 0):
            fail("grid", f"a positive multiple of {step3} (2^(len(unet_channels) - 1)) and of "
                 f"latent_factor {self.latent_factor}")  # fmt: skip
        if self.latent_grid % self.nce_patch:
            fail("nce_patch", f"a divisor of the latent grid {self.latent_grid}")
        if not isinstance(self.lift_depth_encoding, bool):
            fail("lift_depth_encoding", "True or False")
        if self.fusion not in FUSIONS:
            fail("fusion", f"one of {FUSIONS}")
        if not (is_number(self.temperature) and self.temperature > 0):
            fail("temperature", "a finite number > 0")
        weights = ("contrastive_weight", "mse_weight", "reconstruction_weight")
        for name in weights:
            if not (is_number(getattr(self, name)) and getattr(self, name) >= 0):
                fail(name, "a finite number >= 0")
        if not any(getattr(self, name) > 0 for name in weights):
            fail("contrastive_weight", f"at least one of {weights} > 0")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> XRayEncoderConfig:
        """``"demo"`` (64³ CT, 64² views, latent factor 4: the demo autoencoder's 16³ latent) or
        ``"paper"`` (128³, 128², factor 8: CLS-DM's 16³ latent; wider U-Nets with residual units)."""
        presets = {
            "demo": {},
            "paper": dict(view_size=128, grid=128, latent_factor=8, cnn_channels=(32, 64, 128),
                          feature_channels=16, unet_channels=(32, 64, 128, 128), num_res_units=1),
        }  # fmt: skip
        if name not in presets:
            raise ValueError(f"XRayEncoderConfig.preset: unknown preset {name!r}; allowed: {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    @property
    def latent_grid(self) -> int:
        """Latent voxels per side (``grid // latent_factor``)."""
        return self.grid // self.latent_factor

    @property
    def lifted_channels_per_view(self) -> int:
        """Channels one view contributes to the 3D volume: features, raw view, optional depth."""
        return self.feature_channels + 1 + int(self.lift_depth_encoding)

    @property
    def unet_in_channels(self) -> int:
        """Input channels of the 3D U-Net after fusion."""
        k = self.n_views if self.fusion == "concat" else 1
        return k * self.lifted_channels_per_view


# --- lifting ---------------------------------------------------------------------------------------


def _as_float64(x: Any, name: str, shape_tail: tuple[int, ...]) -> np.ndarray:
    """A finite float64 array whose trailing dims are ``shape_tail``, or a ValueError naming ``name``."""
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    if arr.shape[-len(shape_tail) :] != shape_tail or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values of shape (..., {', '.join(map(str, shape_tail))}), "
                         f"got shape {arr.shape}")  # fmt: skip
    return arr


def _view_hw(view_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (view_size, view_size) if isinstance(view_size, int) else tuple(view_size)
    if len(hw) != 2 or not all(is_int(v, 1) for v in hw):
        raise ValueError(f"view_size: expected a positive integer or (rows, cols), got {view_size!r}")
    return int(hw[0]), int(hw[1])


@functools.lru_cache(maxsize=32)
def _lift_grid_cached(
    m_bytes: bytes, n_views: int, grid: int, rows: int, cols: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    m = np.frombuffer(m_bytes, dtype=np.float64).reshape(n_views, 3, 4)  # voxel (i, j, k, 1) -> pixel
    idx = np.arange(grid, dtype=np.float64)
    kk, jj, ii = np.meshgrid(idx, idx, idx, indexing="ij")  # arrays are (K, J, I)
    ijk = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1).reshape(-1, 4)
    xy, depth = [], []
    for mv in m:
        h = ijk @ mv.T  # (N, 3)
        w = h[:, 2]
        front = w > 1e-9 * np.abs(w).max()
        safe_w = np.where(front, w, 1.0)
        u, v = h[:, 0] / safe_w, h[:, 1] / safe_w
        # align_corners=False: pixel centre u <-> (2u + 1) / cols - 1 whatever the feature map's size
        x = np.where(front, (2.0 * u + 1.0) / cols - 1.0, _OUTSIDE)
        y = np.where(front, (2.0 * v + 1.0) / rows - 1.0, _OUTSIDE)
        xy.append(np.stack([x, y], axis=-1).reshape(grid, grid, grid, 2))
        lo, hi = (w[front].min(), w[front].max()) if front.any() else (0.0, 0.0)
        d = np.where(front, 2.0 * (w - lo) / (hi - lo) - 1.0, 0.0) if hi > lo else np.zeros_like(w)
        depth.append(d.reshape(grid, grid, grid))
    g = torch.from_numpy(np.stack(xy)).float().to(device)
    return g, torch.from_numpy(np.stack(depth)).float().to(device)


def _voxel_to_pixel(p: np.ndarray, a: np.ndarray, grid: int) -> np.ndarray:
    """(V, 3, 4) ``P @ ijk_to_ras``, scaled to max |entry| 1 with w > 0 at the grid centre, rounded.

    P is defined up to scale and the lift depends on ``P @ ijk_to_ras`` only, so this is the cache key:
    cubes and views that differ by one rigid translation (every case of a data cache, each centred on
    its own CT) share one entry. The sign makes w (the distance from the source along the beam for
    ``P = K [R | t]``) positive in front of the source whatever sign P was given with.
    """
    m = p @ a  # (V, 3, 4)
    centre = np.array([(grid - 1) / 2.0] * 3 + [1.0])
    sign = np.where((m @ centre)[:, 2] < 0, -1.0, 1.0)
    m = m * (sign / np.abs(m).max(axis=(1, 2)))[:, None, None]
    return np.round(m, 12) + 0.0  # + 0.0: no negative zeros in the key


def lift_grid(
    projection_matrices: Any,
    ijk_to_ras: Any,
    grid: int,
    view_size: int | Sequence[int],
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each voxel of the CT grid projects in each view: the sampling grid of the back-projection.

    Voxel (i, j, k) of the ``grid``³ cube (array index [k, j, i]) sits at RAS ``ijk_to_ras @ (i, j, k,
    1)``; view v's matrix maps it to the homogeneous pixel ``(u w, v w, w)`` (u = column, v = row,
    pixel centres at integers, origin at the top-left pixel's centre). The result is in
    ``grid_sample``'s normalised coordinates for ``align_corners=False``: ``x = (2u + 1) / cols - 1``,
    ``y = (2v + 1) / rows - 1``, so -1 / +1 are the detector's outer edges and the same grid samples a
    feature map of any resolution covering the detector (a CNN's stride-s map included).

    Outside the detector, sampling (``padding_mode="zeros"``) reads zero: a voxel projecting more
    than half a (feature-map) pixel beyond the detector's edge gets 0; between the outermost pixel
    centres and that line the value ramps bilinearly to 0 (half of the edge pixel on the edge
    itself). A voxel behind the source (w <= 0) gets the coordinate (3, 3): zero.

    Results are cached on the arguments (32 entries): do not modify them in place.

    Args:
        projection_matrices: (V, 3, 4) RAS mm -> pixel matrices (numpy or torch); any overall sign.
        ijk_to_ras: (4, 4) voxel index (i, j, k) -> RAS mm of the cube.
        grid: voxels per side of the cube.
        view_size: views' size in pixels, an int (square) or (rows, cols).
        device: where the returned tensors live.

    Returns:
        ``(grid_xy, depth)``: (V, D, H, W, 2) float32 normalised (x, y), D = K, H = J, W = I; and
        (V, D, H, W) float32 normalised depth along the ray, -1 at the voxel nearest the source and +1
        at the farthest (0 behind the source).

    Raises:
        ValueError: wrong shapes or non-finite matrices, ``grid`` < 1, a bad ``view_size``.
    """
    p = _as_float64(projection_matrices, "projection_matrices", (3, 4))
    if p.ndim != 3:
        raise ValueError(f"projection_matrices: expected shape (V, 3, 4), got {p.shape}")
    a = _as_float64(ijk_to_ras, "ijk_to_ras", (4, 4))
    if a.ndim != 2:
        raise ValueError(f"ijk_to_ras: expected shape (4, 4), got {a.shape}")
    if not is_int(grid, 1):
        raise ValueError(f"grid: expected an integer >= 1 (voxels per side), got {grid!r}")
    rows, cols = _view_hw(view_size)
    m = np.ascontiguousarray(_voxel_to_pixel(p, a, grid))
    return _lift_grid_cached(m.tobytes(), p.shape[0], grid, rows, cols, str(torch.device(device)))


def back_project(features: torch.Tensor, grid_xy: torch.Tensor) -> torch.Tensor:
    """Sample each view's 2D feature map at the projections of the voxels (bilinear, zero outside).

    Args:
        features: (B, V, C, h, w) per-view feature maps covering the detector (any h, w).
        grid_xy: (V, D, H, W, 2) from :func:`lift_grid`, or (B, V, D, H, W, 2) per case.

    Returns:
        (B, V, C, D, H, W) lifted features.
    """
    b, nv, c, h, w = features.shape
    if grid_xy.ndim == 5:
        grid_xy = grid_xy.unsqueeze(0).expand(b, *grid_xy.shape)
    if grid_xy.shape[:2] != (b, nv) or grid_xy.shape[-1] != 2:
        raise ValueError(
            f"grid_xy: shape {tuple(grid_xy.shape)} does not fit features {tuple(features.shape)}"
        )
    d, hh, ww = grid_xy.shape[2:5]
    g = grid_xy.reshape(b * nv, d, hh * ww, 2).to(features.dtype)
    out = F.grid_sample(
        features.reshape(b * nv, c, h, w), g, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.reshape(b, nv, c, d, hh, ww)


def check_views(views: Any, n_views: int, view_size: int | None = None) -> torch.Tensor:
    """Views as a float (B, V, rows, cols) tensor, or a ValueError naming ``views`` and what is wrong.

    Args:
        views: (B, V, rows, cols) or (V, rows, cols) tensor/array, or a sequence of V (rows, cols)
            images (one case).
        n_views: the V the model takes.
        view_size: required side in pixels (None: any, but all views the same size).

    Returns:
        float32 (B, V, rows, cols) tensor (on the input's device).
    """
    if isinstance(views, list | tuple):
        imgs = [v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in views]
        shapes = [tuple(v.shape) for v in imgs]
        flat = all(len(sh) == 2 for sh in shapes)
        if not flat or len(set(shapes)) > 1:
            why = "all views must have the same size" if flat else "expected 2D (rows, cols) images"
            raise ValueError(f"views: {why}, got shapes {shapes}")
        views = torch.stack([v.float() for v in imgs])
    t = views if isinstance(views, torch.Tensor) else torch.as_tensor(np.asarray(views))
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(
            "views: expected (batch, views, rows, cols) or (views, rows, cols), got shape "
            f"{tuple(t.shape)} (a 3D volume is not a radiograph)"
        )
    if t.shape[1] != n_views:
        raise ValueError(
            f"views: the model takes {n_views} view(s) per case, got {t.shape[1]} (shape {tuple(t.shape)})"
        )
    if view_size is not None and tuple(t.shape[-2:]) != (view_size, view_size):
        raise ValueError(
            f"views: expected {view_size} x {view_size} pixels (the model's view_size), got "
            f"{tuple(t.shape[-2:])}; resample the views and scale their projection matrices"
        )
    return t.float()


def _geometry_grids(
    projection_matrices: Any, ijk_to_ras: Any, batch: int, config: XRayEncoderConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lift grids for a batch: one shared (V, ...) pair, or stacked (B, V, ...) when cases differ."""
    p = _as_float64(projection_matrices, "projection_matrices", (3, 4))
    a = _as_float64(ijk_to_ras, "ijk_to_ras", (4, 4))
    if p.ndim not in (3, 4) or p.shape[-3] != config.n_views:
        v = config.n_views
        raise ValueError(
            f"projection_matrices: expected ({v}, 3, 4) or (batch, {v}, 3, 4) (one per view), got {p.shape}"
        )
    if a.ndim not in (2, 3):
        raise ValueError(f"ijk_to_ras: expected (4, 4) or (batch, 4, 4), got {a.shape}")
    for arr, name in ((p, "projection_matrices"), (a, "ijk_to_ras")):
        if arr.ndim == (4 if name == "projection_matrices" else 3) and arr.shape[0] != batch:
            raise ValueError(f"{name}: {arr.shape[0]} cases given for a batch of {batch}")
    pb = p if p.ndim == 4 else p[None].repeat(batch, 0)
    ab = a if a.ndim == 3 else a[None].repeat(batch, 0)
    args = (config.grid, config.view_size, device)
    keys = [_voxel_to_pixel(pb[i], ab[i], config.grid) for i in range(batch)]
    if all(np.array_equal(keys[0], k) for k in keys[1:]):  # e.g. cases that differ by a translation
        return lift_grid(pb[0], ab[0], *args)
    pairs = [lift_grid(pb[i], ab[i], *args) for i in range(batch)]
    return torch.stack([g for g, _ in pairs]), torch.stack([d for _, d in pairs])


class XRayEncoder(nn.Module):
    """CLS-DM X-ray encoder: views + their geometry -> (condition map, CT estimate); see the module doc.

    Args:
        config: the :class:`XRayEncoderConfig`.
    """

    def __init__(self, config: XRayEncoderConfig) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        if not isinstance(config, XRayEncoderConfig):
            raise ValueError(
                f"XRayEncoder.config: expected an XRayEncoderConfig, got {type(config).__name__}"
            )
        self.config = config
        c = config
        self.view_cnns = nn.ModuleList(
            UNet(spatial_dims=2, in_channels=1, out_channels=c.feature_channels, channels=c.cnn_channels,
                 strides=(2,) * (len(c.cnn_channels) - 1), num_res_units=c.num_res_units)
            for _ in range(c.n_views)
        )  # fmt: skip
        width = c.unet_channels[0]
        self.unet = UNet(
            spatial_dims=3, in_channels=c.unet_in_channels, out_channels=width, channels=c.unet_channels,
            strides=(2,) * (len(c.unet_channels) - 1), num_res_units=c.num_res_units,
        )  # fmt: skip
        f = c.latent_factor
        self.cond_head = nn.Conv3d(width, c.latent_channels, kernel_size=f, stride=f)
        self.ct_head = nn.Conv3d(width, 1, kernel_size=1)

    def lift(self, views: Any, projection_matrices: Any, ijk_to_ras: Any) -> torch.Tensor:
        """The fused lifted volume the 3D U-Net sees.

        Args:
            views: (B, V, S, S) views (see :func:`check_views`), V = ``n_views``, S = ``view_size``.
            projection_matrices: (V, 3, 4) or (B, V, 3, 4) RAS mm -> pixel of the views.
            ijk_to_ras: (4, 4) or (B, 4, 4) voxel -> RAS mm of the ``grid``³ CT cube.

        Returns:
            (B, unet_in_channels, D, H, W): per view [features, raw view, depth], concatenated over
            the views (or averaged, ``fusion="mean"``).
        """
        c = self.config
        x = check_views(views, c.n_views, c.view_size).to(self.ct_head.weight.device)
        b = x.shape[0]
        grid_xy, depth = _geometry_grids(projection_matrices, ijk_to_ras, b, c, x.device)
        feats = torch.stack([torch.cat([cnn(x[:, v : v + 1]), x[:, v : v + 1]], dim=1)
                             for v, cnn in enumerate(self.view_cnns)], dim=1)  # fmt: skip
        lifted = back_project(feats, grid_xy)  # (B, V, F + 1, D, H, W)
        if c.lift_depth_encoding:
            d = depth.unsqueeze(0).expand(b, *depth.shape) if depth.ndim == 4 else depth  # (B, V, D, H, W)
            lifted = torch.cat([lifted, d.unsqueeze(2).to(lifted.dtype)], dim=2)
        if c.fusion == "mean":
            return lifted.mean(dim=1)
        return lifted.flatten(1, 2)

    def forward(
        self, views: Any, projection_matrices: Any, ijk_to_ras: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition map and CT estimate.

        Args:
            views: (B, V, S, S) float views in the data's units (DRR line integrals scaled to ~[0, 1]).
            projection_matrices: (V, 3, 4) or (B, V, 3, 4) RAS mm -> pixel (u = column, v = row).
            ijk_to_ras: (4, 4) or (B, 4, 4) of the CT cube (arrays (K, J, I)).

        Returns:
            ``(cond, ct_hat)``: (B, latent_channels, D/f, H/f, W/f) condition map in scaled-latent
            units, and (B, 1, D, H, W) CT estimate in [-1, 1].
        """
        h = self.unet(self.lift(views, projection_matrices, ijk_to_ras))
        return self.cond_head(h), torch.tanh(self.ct_head(h))


# --- losses ----------------------------------------------------------------------------------------


def patch_tokens(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, d, h, w) -> (B, L, C p³) tokens of non-overlapping p³ patches, L = (d/p)(h/p)(w/p)."""
    b, c, d, h, w = x.shape
    if d % patch or h % patch or w % patch:
        raise ValueError(f"patch: {patch} does not divide the latent grid {(d, h, w)}")
    p = patch
    t = x.reshape(b, c, d // p, p, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return t.reshape(b, (d // p) * (h // p) * (w // p), c * p**3)


def info_nce(
    cond: torch.Tensor, latent: torch.Tensor, temperature: float = 0.1, patch: int = 2
) -> tuple[torch.Tensor, float]:
    """Symmetric InfoNCE over patch tokens of the whole batch (positives: same case, same location).

    Args:
        cond: (B, C, d, h, w) condition map.
        latent: (B, C, d, h, w) target latent (no gradient needed).
        temperature: logits = cosine similarity / temperature.
        patch: patch side in latent voxels.

    Returns:
        (scalar loss in nats, top-1 accuracy of condition -> latent retrieval over the N = B L tokens).
    """
    q = F.normalize(patch_tokens(cond.float(), patch).flatten(0, 1), dim=-1)
    k = F.normalize(patch_tokens(latent.float(), patch).flatten(0, 1), dim=-1)
    logits = q @ k.T / temperature  # (N, N)
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    top1 = float((logits.detach().argmax(dim=1) == labels).float().mean())
    return loss, top1


def encoder_loss(
    cond: torch.Tensor,
    ct_hat: torch.Tensor,
    latent: torch.Tensor,
    ct: torch.Tensor,
    config: XRayEncoderConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CLS-DM encoder loss: contrastive + MSE alignment to the latent + L1 reconstruction.

    Args:
        cond: (B, C, d, h, w) condition map from :class:`XRayEncoder`.
        ct_hat: (B, 1, D, H, W) CT estimate in [-1, 1].
        latent: (B, C, d, h, w) frozen autoencoder latent (posterior mean x ``latent_scale``).
        ct: (B, 1, D, H, W) CT in [-1, 1].
        config: weights, temperature, patch size.

    Returns:
        (total, {"contrastive", "mse", "reconstruction" (the unweighted parts), "contrastive_top1"}).

    Raises:
        ValueError: shapes that do not match.
    """
    if cond.shape != latent.shape:
        raise ValueError(f"latent: shape {tuple(latent.shape)} differs from the condition map's "
                         f"{tuple(cond.shape)} (latent_channels / latent_factor of the encoder)")  # fmt: skip
    if ct_hat.shape != ct.shape:
        raise ValueError(f"ct: shape {tuple(ct.shape)} differs from the CT estimate's {tuple(ct_hat.shape)}")
    latent = latent.detach().float()
    nce, top1 = info_nce(cond, latent, config.temperature, config.nce_patch)
    mse = F.mse_loss(cond.float(), latent)
    rec = (ct_hat.float() - ct.float()).abs().mean()
    total = config.contrastive_weight * nce + config.mse_weight * mse + config.reconstruction_weight * rec
    parts = {"contrastive": float(nce.detach()), "mse": float(mse.detach()),
             "reconstruction": float(rec.detach()), "contrastive_top1": top1}  # fmt: skip
    return total, parts


def make_encoder_loss_fn(
    encode_latent: Callable[[torch.Tensor], torch.Tensor],
    config: XRayEncoderConfig,
    projection_matrices: Any,
    ijk_to_ras: Any,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator], tuple[torch.Tensor, dict[str, float]]]:
    """A ``loss_fn(net, batch, generator)`` for :class:`xraycardiac.trainer.Trainer`.

    Args:
        encode_latent: CT (B, 1, D, H, W) in [-1, 1] -> scaled latent (B, C, d, h, w), e.g.
            ``lambda ct: ae.encode(ct)[0] * latent_scale`` of the frozen autoencoder (run under no_grad).
        config: the encoder's config (loss weights).
        projection_matrices: (V, 3, 4) default geometry, used when a batch has no
            ``"projection_matrices"`` (B, V, 3, 4) entry.
        ijk_to_ras: (4, 4) default cube affine, used when a batch has no ``"ijk_to_ras"`` (B, 4, 4).
        augment: optional ``augment(views, generator)`` (e.g. the data module's radiograph style
            augmentation), drawn from the trainer's generator so a resumed run replays it.

    Returns:
        The loss function; ``batch`` needs ``"ct"`` (B, 1, D, H, W) and ``"views"`` (B, V, S, S); a
        ``"latent"`` entry (B, C, d, h, w), when there, is used instead of ``encode_latent(ct)``.
    """

    def loss_fn(net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        views = batch["views"]
        if augment is not None:
            views = augment(views, generator)
        latent = batch.get("latent")
        if latent is None:
            with torch.no_grad():
                latent = encode_latent(batch["ct"])
        cond, ct_hat = net(
            views, batch.get("projection_matrices", projection_matrices), batch.get("ijk_to_ras", ijk_to_ras)
        )
        return encoder_loss(cond, ct_hat, latent, batch["ct"], config)

    return loss_fn


# --- weights files ---------------------------------------------------------------------------------


def save_encoder(encoder: XRayEncoder, path: str | os.PathLike[str], half: bool = False) -> Path:
    """Write the encoder's config and weights (format ``xraycardiac.x2ct_encoder``) atomically."""
    module = getattr(encoder, "module", encoder)  # DDP / AveragedModel wrappers
    return write_weights_file(path, _FILE, module.config.to_dict(), module, half)


def load_encoder(
    path: str | os.PathLike[str], expected: XRayEncoderConfig | None = None, device: str = "cpu"
) -> XRayEncoder:
    """An :class:`XRayEncoder` (eval mode) from :func:`save_encoder`'s file; its config must equal
    ``expected`` when given. Raises ValueError as :func:`load_model_file`."""
    return load_model_file(path, _FILE, XRayEncoderConfig, XRayEncoder, expected, device)
