"""The latent diffusion model of XRayToCT (CLS-DM stage 3): CT latents conditioned on the X-ray encoder.

Network: ``monai.networks.nets.DiffusionModelUNet`` (3D) on [noisy latent z_t ‖ condition map]
(channel concatenation, as CLS-DM), predicting the noise, the velocity ``v`` or the clean latent
(``prediction_type``); wrapped in :class:`X2CTDenoiser` with the optional global embedding. The
network, the scheduler and the sampling loop are three objects (MONAI's separation):
:func:`build_ldm` returns the first two (the scheduler from the shared
:func:`xraycardiac.diffusion.build_scheduler`), :func:`ldm_loss` / :func:`sample_latents` are the rest
(sampling runs the shared loop :func:`xraycardiac.diffusion.sample`).

Noise process and sampler (``sampler``):

* ``"ddim"`` (default): DDPM training on MONAI's ``scaled_linear_beta`` schedule (beta 0.0015 ->
  0.0195 over 1000 steps, the LDM / MONAI 3D LDM tutorial values), sampled by deterministic DDIM
  (eta 0) with ``inference_steps`` steps (20). ``clip_sample`` is off: scaled latents have unit
  variance, not a [-1, 1] range.
* ``"rflow"``: rectified flow (MONAI 1.6's ``RFlowScheduler``, as MAISI v2): ``z_t = (1 - t/T) z0 +
  (t/T) noise``, the network predicts the velocity ``z0 - noise`` (``prediction_type`` must be
  "v_prediction"), sampled by Euler steps. This is a different training objective, so the sampler is
  part of the model's config, not a sampling-time option. Training timesteps are drawn uniformly
  from {1, ..., T} with the trainer's generator (MONAI's ``sample_timesteps`` uses the global RNG).

Global embedding (``global_embedding``, the single-radiograph mode of X-ray2CTPA): a small 2D CNN
(:class:`ViewEmbedder`, trained with the diffusion loss) turns the first ``n_views`` views into one
vector of ``embedding_dim``, given to the U-Net as a single cross-attention context token
(``with_conditioning=True``, ``cross_attention_dim=embedding_dim``). With ``attention_levels`` all
False (demo size) the only cross-attention is in MONAI's middle block (which always has attention);
with one context token the attention weights are 1, so it injects a learned function of the
embedding at every position of the bottleneck. We chose cross-attention over the class embedding
because MONAI's class embedding is an ``nn.Embedding`` of integer labels, not a vector.
Classifier-free guidance: while training, each case's embedding is replaced by a learned null
embedding with probability ``cfg_drop_prob``; sampling mixes ``out = out_null + s (out_cond -
out_null)`` with ``s = guidance_scale`` (s = 1 is the conditional prediction and skips the null pass).
Only the embedding is dropped, never the spatial condition map.

Generation (:func:`generate`): the encoder's condition map, K latents from K noise draws of one
seeded generator (deterministic for a seed on a given device), each decoded by the frozen
autoencoder (``z / latent_scale``), clipped to [-1, 1]; the result is the voxel-wise mean and the
voxel-wise standard deviation over the K samples (an uncertainty map; unbiased, so K >= 2).

Weights file: ``{"format": "xraycardiac.x2ct_ldm", "config": {...}, "state_dict": {...}}``
(:mod:`xraycardiac.models.weights`), loaded with ``weights_only=True`` (:func:`save_ldm`, :func:`load_ldm`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xraycardiac import diffusion
from xraycardiac.diffusion import guided_prediction
from xraycardiac.jsonutil import is_int, is_number
from xraycardiac.models.weights import JsonConfig, WeightsFormat, load_model_file, write_weights_file
from xraycardiac.xray2ct.encoder import XRayEncoder, check_views

__all__ = [
    "LDM_FORMAT",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "ViewEmbedder",
    "X2CTDenoiser",
    "X2CTGeneration",
    "X2CTLDMConfig",
    "build_ldm",
    "build_scheduler",
    "generate",
    "guided_prediction",
    "ldm_loss",
    "load_ldm",
    "make_ldm_loss_fn",
    "sample_latents",
    "save_ldm",
]

LDM_FORMAT = "xraycardiac.x2ct_ldm"
_FILE = WeightsFormat(LDM_FORMAT, "an X2CT latent diffusion model")
SAMPLERS = ("ddim", "rflow")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_BETA_SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta")


@dataclass(frozen=True)
class X2CTLDMConfig(JsonConfig):
    """What the latent diffusion model is (saved next to its weights).

    Attributes:
        latent_channels: channels of the autoencoder latent (denoised).
        cond_channels: channels of the encoder's condition map (concatenated to the input).
        channels: ``DiffusionModelUNet`` channels per level (the latent grid must be divisible by
            2^(levels - 1)).
        attention_levels: self-attention per level (off at demo size; MONAI's middle block always
            has attention).
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups (divides every entry of ``channels``).
        num_head_channels: channels per attention head.
        num_train_timesteps: T of the diffusion process.
        schedule: MONAI noise schedule ("scaled_linear_beta", "linear_beta", "sigmoid_beta",
            "cosine"); unused by "rflow".
        beta_start, beta_end: betas of the *_beta schedules.
        prediction_type: "epsilon", "v_prediction" or "sample" ("v_prediction" for "rflow").
        sampler: "ddim" (DDPM training, DDIM sampling) or "rflow" (rectified flow).
        inference_steps: default sampling steps.
        global_embedding: condition also on a global embedding of the views (cross-attention), with
            classifier-free guidance.
        n_views: views the embedder reads (the first ``n_views`` of the input; 1 = PA).
        embedding_dim: size of the global embedding.
        embed_channels: channels per stride-2 level of the embedding CNN.
        cfg_drop_prob: probability of training with the null embedding.
        guidance_scale: default guidance scale s (1 = no guidance; needs ``global_embedding``
            otherwise).
    """

    latent_channels: int = 4
    cond_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_head_channels: int = 8
    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: str = "v_prediction"
    sampler: str = "ddim"
    inference_steps: int = 20
    global_embedding: bool = False
    n_views: int = 1
    embedding_dim: int = 64
    embed_channels: tuple[int, ...] = (16, 32, 64)
    cfg_drop_prob: float = 0.1
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"X2CTLDMConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("channels", "attention_levels", "embed_channels"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not (
            isinstance(self.channels, tuple) and self.channels and all(is_int(c, 1) for c in self.channels)
        ):
            fail("channels", "a non-empty tuple of positive integers")
        if not (
            isinstance(self.attention_levels, tuple)
            and len(self.attention_levels) == len(self.channels)
            and all(isinstance(a, bool) for a in self.attention_levels)
        ):
            fail("attention_levels", f"{len(self.channels)} booleans (one per level of channels)")
        if not is_int(self.norm_num_groups, 1) or any(c % self.norm_num_groups for c in self.channels):
            fail("norm_num_groups", f"an integer dividing every channel count {self.channels}")
        for name in ("latent_channels", "cond_channels", "num_res_blocks", "num_head_channels",
                     "num_train_timesteps", "embedding_dim"):  # fmt: skip
            if not is_int(getattr(self, name), 1):
                fail(name, "an integer >= 1")
        from monai.networks.schedulers import NoiseSchedules

        if self.schedule not in NoiseSchedules:
            fail("schedule", f"one of {sorted(NoiseSchedules)}")
        if not (
            is_number(self.beta_start)
            and is_number(self.beta_end)
            and 0 < self.beta_start < self.beta_end < 1
        ):
            fail("beta_end", f"0 < beta_start ({self.beta_start}) < beta_end < 1")
        if self.prediction_type not in PREDICTION_TYPES:
            fail("prediction_type", f"one of {PREDICTION_TYPES}")
        if self.sampler not in SAMPLERS:
            fail("sampler", f"one of {SAMPLERS}")
        if self.sampler == "rflow" and self.prediction_type != "v_prediction":
            fail("prediction_type", "'v_prediction' (the velocity z0 - noise) for sampler 'rflow'")
        if not (is_int(self.inference_steps, 1) and self.inference_steps <= self.num_train_timesteps):
            fail("inference_steps", f"an integer in 1..{self.num_train_timesteps} (num_train_timesteps)")
        if not isinstance(self.global_embedding, bool):
            fail("global_embedding", "True or False")
        if self.n_views not in (1, 2) or isinstance(self.n_views, bool):
            fail("n_views", "1 (PA) or 2 (PA + lateral)")
        ec = self.embed_channels
        if not (isinstance(ec, tuple) and ec and all(is_int(c, 1) for c in ec)):
            fail("embed_channels", "a non-empty tuple of positive integers")
        if not (is_number(self.cfg_drop_prob) and 0 <= self.cfg_drop_prob < 1):
            fail("cfg_drop_prob", "a number in [0, 1)")
        if not (is_number(self.guidance_scale) and self.guidance_scale >= 0):
            fail("guidance_scale", "a finite number >= 0")
        if not self.global_embedding and self.guidance_scale != 1:
            fail("guidance_scale", "1 when global_embedding is False (guidance needs the embedding)")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> X2CTLDMConfig:
        """``"demo"`` (CPU size, no attention) or ``"paper"`` (GPU size for a 16³ latent: 3 levels of
        2 residual blocks, self-attention at the two coarser levels; our choice, not CLS-DM's numbers)."""
        presets = {
            "demo": {},
            "paper": dict(channels=(64, 128, 256), attention_levels=(False, True, True), num_res_blocks=2,
                          norm_num_groups=32, num_head_channels=32),
        }  # fmt: skip
        if name not in presets:
            raise ValueError(f"X2CTLDMConfig.preset: unknown preset {name!r}; allowed: {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    @property
    def downsample_factor(self) -> int:
        """The latent grid must be a multiple of this (2^(levels - 1))."""
        return 2 ** (len(self.channels) - 1)


class ViewEmbedder(nn.Module):
    """Views (B, V, h, w) -> (B, E): stride-2 conv + SiLU levels, global average pool, linear.

    No normalisation layer, so the absolute attenuation of the film reaches the embedding.
    """

    def __init__(self, n_views: int, channels: tuple[int, ...], embedding_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = n_views
        for c in channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, embedding_dim)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """(B, V, h, w) float views -> (B, embedding_dim)."""
        return self.proj(self.features(views).mean(dim=(-2, -1)))


class X2CTDenoiser(nn.Module):
    """``DiffusionModelUNet`` (3D) on [z_t ‖ cond], with the optional global embedding and its null.

    Args:
        config: the :class:`X2CTLDMConfig`.
    """

    def __init__(self, config: X2CTLDMConfig) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        if not isinstance(config, X2CTLDMConfig):
            raise ValueError(f"X2CTDenoiser.config: expected an X2CTLDMConfig, got {type(config).__name__}")
        self.config = c = config
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=c.latent_channels + c.cond_channels, out_channels=c.latent_channels,
            channels=c.channels, attention_levels=c.attention_levels, num_res_blocks=c.num_res_blocks,
            norm_num_groups=c.norm_num_groups, num_head_channels=c.num_head_channels,
            with_conditioning=c.global_embedding,
            cross_attention_dim=c.embedding_dim if c.global_embedding else None,
        )  # fmt: skip
        if c.global_embedding:
            self.embedder = ViewEmbedder(c.n_views, c.embed_channels, c.embedding_dim)
            self.null_embedding = nn.Parameter(torch.randn(c.embedding_dim) * 0.02)

    def embed_views(self, views: Any) -> torch.Tensor:
        """Global embedding (B, E) of the first ``n_views`` views of (B, V >= n_views, h, w)."""
        c = self.config
        if not c.global_embedding:
            raise ValueError("views: this LDM has no global embedding (global_embedding=False)")
        x = views if isinstance(views, torch.Tensor) else torch.as_tensor(views)
        if x.ndim != 4 or x.shape[1] < c.n_views:
            raise ValueError(
                f"views: expected (batch, >= {c.n_views} views, rows, cols), got {tuple(x.shape)}"
            )
        x = check_views(x[:, : c.n_views], c.n_views)
        return self.embedder(x.to(self.null_embedding.device))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        embedding: torch.Tensor | None = None,
        views: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output for the input [z_t ‖ cond].

        Args:
            x: (B, latent_channels + cond_channels, d, h, w).
            timesteps: (B,) diffusion timesteps.
            embedding: (B, E) global embedding (global_embedding models), or None to compute it from
                ``views``.
            views: (B, V, rows, cols) views, used when ``embedding`` is None.
            drop: (B,) bool: rows that take the null embedding (classifier-free guidance).

        Returns:
            (B, latent_channels, d, h, w): noise, velocity or clean latent (``prediction_type``).
        """
        if not self.config.global_embedding:
            if embedding is not None or views is not None:
                raise ValueError("embedding: this LDM has no global embedding (global_embedding=False)")
            return self.unet(x, timesteps=timesteps)
        if embedding is None:
            if views is None:
                raise ValueError(
                    "embedding: this LDM needs the global embedding (or the views to compute it)"
                )
            embedding = self.embed_views(views)
        if embedding.ndim != 2 or embedding.shape != (x.shape[0], self.config.embedding_dim):
            raise ValueError(f"embedding: expected ({x.shape[0]}, {self.config.embedding_dim}), "
                             f"got {tuple(embedding.shape)}")  # fmt: skip
        null = self.null_embedding.to(embedding.dtype).expand_as(embedding)
        if drop is not None:
            # torch.where keeps the null embedding in the graph even when nothing is dropped (DDP)
            embedding = torch.where(drop.to(embedding.device)[:, None], null, embedding)
        return self.unet(x, timesteps=timesteps, context=embedding[:, None, :])


def build_scheduler(config: X2CTLDMConfig, steps: int | None = None):
    """The MONAI scheduler of ``config`` (DDIM or RFlow), with ``set_timesteps(steps or inference_steps)``.

    One object serves training (``add_noise``, ``get_velocity``) and sampling (``step``).
    """
    n = config.inference_steps if steps is None else steps
    extra = {}
    if config.sampler != "rflow" and config.schedule in _BETA_SCHEDULES:
        extra = {"beta_start": config.beta_start, "beta_end": config.beta_end}
    return diffusion.build_scheduler(
        "rflow" if config.sampler == "rflow" else "ddim", config.num_train_timesteps, n,
        schedule=config.schedule, clip_sample=False, prediction_type=config.prediction_type, **extra,
    )  # fmt: skip


def build_ldm(config: X2CTLDMConfig) -> tuple[X2CTDenoiser, Any]:
    """A freshly initialised :class:`X2CTDenoiser` and its scheduler (:func:`build_scheduler`)."""
    return X2CTDenoiser(config), build_scheduler(config)


def _config_of(unet: nn.Module) -> X2CTLDMConfig:
    return getattr(unet, "module", unet).config  # DDP / AveragedModel wrappers


def _check_pair(cfg: X2CTLDMConfig, z: torch.Tensor | None, cond: torch.Tensor) -> None:
    if cond.ndim != 5 or cond.shape[1] != cfg.cond_channels:
        raise ValueError(f"cond: expected (B, {cfg.cond_channels}, d, h, w), got {tuple(cond.shape)}")
    if any(s % cfg.downsample_factor for s in cond.shape[2:]):
        raise ValueError(f"cond: latent grid {tuple(cond.shape[2:])} is not a multiple of "
                         f"{cfg.downsample_factor} (2^(levels - 1) of channels)")  # fmt: skip
    if z is not None and (
        z.ndim != 5 or z.shape[1] != cfg.latent_channels or z.shape[0] != cond.shape[0]
        or z.shape[2:] != cond.shape[2:]
    ):  # fmt: skip
        want = (cond.shape[0], cfg.latent_channels, *cond.shape[2:])
        raise ValueError(f"z0: expected {want} to match cond, got {tuple(z.shape)}")


def ldm_loss(
    unet: nn.Module,
    scheduler: Any,
    z0: torch.Tensor,
    cond: torch.Tensor,
    generator: torch.Generator,
    embedding: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion loss of one batch: MSE of the prediction on [z_t ‖ cond] (see the module docstring).

    Args:
        unet: the :class:`X2CTDenoiser` (or a DDP wrapper of one).
        scheduler: its scheduler (:func:`build_scheduler`).
        z0: (B, C, d, h, w) clean scaled latents.
        cond: (B, Cc, d, h, w) condition maps (from the frozen encoder).
        generator: draws t, the noise and the guidance drop-out (on ``z0.device``).
        embedding: (B, E) global embedding, or None (computed from ``views`` by the network, so the
            embedder trains with this loss).
        views: (B, V, rows, cols) views for the embedding of global_embedding models.

    Returns:
        (scalar loss, {"mse": ...}); the target is the noise ("epsilon"), the velocity
        ``sqrt(abar) noise - sqrt(1 - abar) z0`` ("v_prediction"), z0 ("sample"), or ``z0 - noise``
        (rectified flow).
    """
    cfg = _config_of(unet)
    _check_pair(cfg, z0, cond)
    b, dev = z0.shape[0], generator.device
    t_max = cfg.num_train_timesteps
    rflow = cfg.sampler == "rflow"
    t = torch.randint(1 if rflow else 0, t_max + 1 if rflow else t_max, (b,), generator=generator, device=dev)
    t = t.to(z0.device)
    noise = torch.randn(z0.shape, generator=generator, device=dev).to(z0)
    drop = torch.rand((b,), generator=generator, device=dev) < cfg.cfg_drop_prob
    z_t = scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t)
    if rflow:
        target = z0 - noise
    elif cfg.prediction_type == "v_prediction":
        target = scheduler.get_velocity(z0, noise, t)
    elif cfg.prediction_type == "sample":
        target = z0
    else:
        target = noise
    inp = torch.cat([z_t, cond.to(z_t)], dim=1)
    if cfg.global_embedding:
        out = unet(inp, t, embedding, views, drop)
    else:
        out = unet(inp, t)
    mse = F.mse_loss(out.float(), target.float())
    return mse, {"mse": float(mse.detach())}


@torch.no_grad()
def sample_latents(
    unet: nn.Module,
    scheduler: Any,
    cond: torch.Tensor,
    n_samples: int,
    steps: int | None,
    generator: torch.Generator,
    embedding: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """K latents per case from K independent noise draws (all K x B denoised as one batch).

    Args:
        unet: the :class:`X2CTDenoiser`.
        scheduler: its scheduler; ``set_timesteps(steps)`` is called on it.
        cond: (B, Cc, d, h, w) condition maps.
        n_samples: K >= 1.
        steps: sampling steps (None: the config's ``inference_steps``).
        generator: the initial noise (sample k of case b is row k * B + b of one draw); DDIM (eta 0)
            and the Euler flow are deterministic after it.
        embedding: (B, E) global embedding (global_embedding models).
        guidance_scale: s (None: the config's).
        progress: ``progress(i, n)`` after each step.

    Returns:
        (K, B, C, d, h, w) float32 latents (scaled units).
    """
    cfg = _config_of(unet)
    _check_pair(cfg, None, cond)
    if not is_int(n_samples, 1):
        raise ValueError(f"n_samples: expected an integer >= 1, got {n_samples!r}")
    n = diffusion.check_steps(cfg.inference_steps if steps is None else steps, cfg.num_train_timesteps)
    s = cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
    if cfg.global_embedding and embedding is None:
        raise ValueError("embedding: this LDM needs the global embedding (unet.embed_views(views))")
    if not cfg.global_embedding and embedding is not None:
        raise ValueError("embedding: this LDM has no global embedding (global_embedding=False)")
    b, dev = cond.shape[0], cond.device
    shape = (n_samples * b, cfg.latent_channels, *cond.shape[2:])
    x = diffusion.initial_noise(shape, generator, dev)
    cond_k = cond.float().repeat(n_samples, 1, 1, 1, 1)
    emb_k = None if embedding is None else embedding.repeat(n_samples, 1)
    scheduler.set_timesteps(n, device=dev)
    x = diffusion.sample(unet, scheduler, x, cond_k, embedding=emb_k, guidance_scale=s, progress=progress)
    return x.reshape(n_samples, b, *shape[1:])


@dataclass(frozen=True)
class X2CTGeneration:
    """What :func:`generate` returns (volumes in [-1, 1] units, HU via ``unit_to_hu``).

    Attributes:
        mean: (B, 1, D, H, W) voxel-wise mean of the K decoded samples.
        std: (B, 1, D, H, W) voxel-wise standard deviation over the samples (unbiased), or None.
        samples: (K, B, 1, D, H, W) the decoded samples.
        direct: (B, 1, D, H, W) the encoder's direct CT estimate (no diffusion), for comparison.
    """

    mean: torch.Tensor
    std: torch.Tensor | None
    samples: torch.Tensor
    direct: torch.Tensor


@torch.no_grad()
def generate(
    encoder: XRayEncoder,
    autoencoder_decode: Callable[[torch.Tensor], torch.Tensor],
    unet: X2CTDenoiser,
    views: Any,
    projection_matrices: Any,
    ijk_to_ras: Any,
    latent_scale: float,
    n_samples: int = 4,
    steps: int | None = None,
    seed: int = 0,
    guidance_scale: float | None = None,
    uncertainty: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> X2CTGeneration:
    """CT volumes from radiographs: encoder -> K latent samples -> decoder -> mean and std.

    Args:
        encoder: the trained :class:`XRayEncoder` (its device is used).
        autoencoder_decode: scaled-back latent (N, C, d, h, w) -> CT (N, 1, D, H, W) in [-1, 1], e.g.
            the frozen autoencoder's ``decode``.
        unet: the trained :class:`X2CTDenoiser` (same device as the encoder).
        views: (B, V, S, S) or (V, S, S) views, or a list of V (S, S) images (see ``check_views``).
        projection_matrices: (V, 3, 4) or (B, V, 3, 4) RAS mm -> pixel of the views.
        ijk_to_ras: (4, 4) or (B, 4, 4) of the output CT cube.
        latent_scale: the autoencoder's scale factor (latents are divided by it before decoding).
        n_samples: K, the number of samples averaged.
        steps: sampling steps (None: the config's).
        seed: seeds the noise: same inputs, seed and device give the same volumes.
        guidance_scale: classifier-free guidance (None: the config's).
        uncertainty: compute the voxel-wise std (needs K >= 2).
        progress: ``progress(i, n)`` after each of the n sampling steps.

    Returns:
        :class:`X2CTGeneration`.

    Raises:
        ValueError: K < 2 with ``uncertainty``; encoder and LDM that do not fit each other; bad views.
    """
    cfg = unet.config
    if not is_int(n_samples, 1):
        raise ValueError(f"n_samples: expected an integer >= 1, got {n_samples!r}")
    if uncertainty and n_samples < 2:
        raise ValueError(
            f"n_samples: the uncertainty (std over samples) needs n_samples >= 2, got {n_samples}"
        )
    if not (is_number(latent_scale) and latent_scale > 0):
        raise ValueError(f"latent_scale: expected a finite number > 0, got {latent_scale!r}")
    ec = encoder.config
    if ec.latent_channels != cfg.cond_channels or ec.latent_channels != cfg.latent_channels:
        raise ValueError(
            f"unet: its latent_channels {cfg.latent_channels} / cond_channels {cfg.cond_channels} do not "
            f"match the encoder's latent_channels {ec.latent_channels}"
        )
    x = check_views(views, ec.n_views, ec.view_size)
    cond, direct = encoder(x, projection_matrices, ijk_to_ras)
    embedding = unet.embed_views(x) if cfg.global_embedding else None
    gen = torch.Generator(device=cond.device).manual_seed(int(seed))
    scheduler = build_scheduler(cfg, steps)
    z = sample_latents(unet, scheduler, cond, n_samples, steps, gen, embedding, guidance_scale, progress)
    samples = torch.stack([autoencoder_decode(zk / latent_scale).float().clamp(-1.0, 1.0) for zk in z])
    std = samples.std(dim=0, correction=1) if uncertainty else None
    return X2CTGeneration(mean=samples.mean(dim=0), std=std, samples=samples, direct=direct.clamp(-1.0, 1.0))


def make_ldm_loss_fn(
    encoder: XRayEncoder,
    encode_latent: Callable[[torch.Tensor], torch.Tensor],
    scheduler: Any,
    projection_matrices: Any,
    ijk_to_ras: Any,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator], tuple[torch.Tensor, dict[str, float]]]:
    """A ``loss_fn(net, batch, generator)`` for :class:`xraycardiac.trainer.Trainer` (frozen encoder and AE).

    Args:
        encoder: the trained encoder (frozen: used under no_grad).
        encode_latent: CT (B, 1, D, H, W) -> scaled latent, e.g. ``lambda ct: ae.encode(ct)[0] * scale``.
        scheduler: the LDM's scheduler (:func:`build_scheduler`).
        projection_matrices, ijk_to_ras: default geometry when a batch lacks ``"projection_matrices"``
            / ``"ijk_to_ras"``.
        augment: optional ``augment(views, generator)`` applied before the encoder and the embedder.

    Returns:
        The loss function; ``batch`` needs ``"ct"`` and ``"views"``; a ``"latent"`` entry, when there,
        is used instead of ``encode_latent(ct)``.
    """

    def loss_fn(net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        views = batch["views"]
        if augment is not None:
            views = augment(views, generator)
        p = batch.get("projection_matrices", projection_matrices)
        a = batch.get("ijk_to_ras", ijk_to_ras)
        with torch.no_grad():
            z0 = batch.get("latent")
            z0 = encode_latent(batch["ct"]) if z0 is None else z0
            cond, _ = encoder(views, p, a)
        cfg = _config_of(net)
        return ldm_loss(net, scheduler, z0, cond, generator, views=views if cfg.global_embedding else None)

    return loss_fn


def save_ldm(unet: nn.Module, path: str | os.PathLike[str], half: bool = False) -> Path:
    """Write the LDM's config and weights (format ``xraycardiac.x2ct_ldm``) atomically."""
    module = getattr(unet, "module", unet)
    return write_weights_file(path, _FILE, module.config.to_dict(), module, half)


def load_ldm(
    path: str | os.PathLike[str], expected: X2CTLDMConfig | None = None, device: str = "cpu"
) -> X2CTDenoiser:
    """An :class:`X2CTDenoiser` (eval mode) from :func:`save_ldm`'s file.

    Args:
        path: the weights file.
        expected: when given, the stored config must equal it.
        device: torch device.

    Raises:
        ValueError: foreign file (e.g. an encoder's), unknown config fields, weights that do not fit
            the config, or a config that differs from ``expected`` (lists the differing fields).
    """
    return load_model_file(path, _FILE, X2CTLDMConfig, X2CTDenoiser, expected, device)
