"""Mask-conditioned diffusion renderer of coronary angiograms (Zhao et al. 2025, Fig. 1: the IDDPM).

A vessel mask (and, when the model was trained with it, the vessel path-length map) is turned into
an angiogram by an Improved DDPM (:mod:`xraycardiac.diffusion.iddpm`): a 2D
``monai.networks.nets.DiffusionModelUNet`` on [noisy image ‖ condition] (channel concatenation),
a cosine-schedule ``DDPMScheduler`` with learned variance (``learned_range``), trained with the
hybrid loss; inference by DDIM (default 50 steps, deterministic given the seed) or the full DDPM
chain.

Condition channels, all in [-1, 1] at the model's ``image_size``: the mask (vessel 1, background
-1) and, for ``condition="mask+thickness"``, ``2 * min(t / thickness_scale_mm, 1) - 1`` with t the
path length in mm through the opacified lumen. Images: 8-bit angiograms (vessels dark) mapped from
[0, 1] to [-1, 1]. A condition of another size is resampled to the model grid (mask: nearest,
thickness: bilinear) and the image resampled back (bilinear): the model's grid sets the detail.

Paper-silent choices, from the closest open peers (IDDPM's defaults, MONAI's 2D DDPM tutorial), and
sized for a CPU demo (fields of :class:`AngioDiffusionConfig`): 4 levels (16, 32, 64, 64) of one
residual block each, no attention except MONAI's mid block, 8 groups; 1000 training timesteps,
cosine schedule, lambda_vlb = 1e-3. The demo weights were trained at 128 x 128 on physics-renderer
pairs (see the manifest entry ``angio-diffusion-demo``): they show what the pipeline does, not what
a GPU-trained model on real angiograms (ARCADE, XCAD) would give.

Weights file (:mod:`xraycardiac.models.weights`): ``{"format": "xraycardiac.angio_diffusion",
"config": {...}, "state_dict": {...}}``, loaded with ``weights_only=True``; a folder holding
``model.json`` + that file (what ``xraycardiac train angio-diffusion`` writes) is also an importable
model package.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.models.weights import (
    JsonConfig,
    WeightsFormat,
    load_model_file,
    load_state,
    locate_model,
    read_model_config,
    read_weights_file,
    write_weights_file,
)

__all__ = [
    "CONDITIONS",
    "DEFAULT_MODEL",
    "AngioDiffusionConfig",
    "AngioDiffusionRenderer",
    "DiffusionSamplingConfig",
    "build_network",
    "build_scheduler",
    "encode_condition",
    "load_renderer",
    "load_weights",
    "model_info",
    "save_weights",
]

CONDITIONS = ("mask+thickness", "mask")
DEFAULT_MODEL = "angio-diffusion-demo"
WEIGHTS_FORMAT = "xraycardiac.angio_diffusion"
_FILE = WeightsFormat(WEIGHTS_FORMAT, "an angio-diffusion")


@dataclass(frozen=True)
class AngioDiffusionConfig(JsonConfig):
    """What the mask-conditioned diffusion model is (saved next to its weights).

    Attributes:
        image_size: square training/sampling grid in pixels (divisible by 2^(levels - 1)).
        condition: "mask+thickness" (2 condition channels) or "mask" (1; for datasets without
            path-length maps, e.g. real angiograms with annotated masks).
        thickness_scale_mm: path length (mm) that maps to the top of the thickness channel.
        channels: ``DiffusionModelUNet`` channels per level.
        num_res_blocks: residual blocks per level.
        attention_levels: self-attention per level (MONAI's mid block always has one).
        norm_num_groups: GroupNorm groups (must divide every entry of ``channels``).
        num_head_channels: channels per attention head.
        num_train_timesteps: T of the diffusion process.
        schedule: MONAI noise schedule name ("cosine" as IDDPM, "linear_beta" as DDPM).
        learned_variance: IDDPM learned variance (output 2 channels) with the hybrid loss;
            False = DDPM's fixed variance and L_simple.
        vlb_weight: lambda of the hybrid loss.
    """

    image_size: int = 128
    condition: str = "mask+thickness"
    thickness_scale_mm: float = 4.0
    channels: tuple[int, ...] = (16, 32, 64, 64)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False, False)
    norm_num_groups: int = 8
    num_head_channels: int = 8
    num_train_timesteps: int = 1000
    schedule: str = "cosine"
    learned_variance: bool = True
    vlb_weight: float = 1e-3

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"AngioDiffusionConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))
        if self.condition not in CONDITIONS:
            fail("condition", f"one of {CONDITIONS}")
        if not self.channels or any(not isinstance(c, int) or c < 1 for c in self.channels):
            fail("channels", "a non-empty tuple of positive integers")
        if len(self.attention_levels) != len(self.channels):
            fail("attention_levels", f"{len(self.channels)} booleans (one per level of channels)")
        if not isinstance(self.norm_num_groups, int) or any(c % self.norm_num_groups for c in self.channels):
            fail("norm_num_groups", f"an integer dividing every channel count {self.channels}")
        step = 2 ** (len(self.channels) - 1)
        if not isinstance(self.image_size, int) or self.image_size < step or self.image_size % step:
            fail("image_size", f"a positive multiple of {step} (2^(levels - 1))")
        for name in ("num_res_blocks", "num_head_channels", "num_train_timesteps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        if not (isinstance(self.thickness_scale_mm, int | float) and self.thickness_scale_mm > 0):
            fail("thickness_scale_mm", "a number > 0 (mm)")
        if not (isinstance(self.vlb_weight, int | float) and self.vlb_weight >= 0):
            fail("vlb_weight", "a number >= 0")
        from monai.networks.schedulers import NoiseSchedules

        if self.schedule not in NoiseSchedules:
            fail("schedule", f"one of {sorted(NoiseSchedules)}")

    @property
    def condition_channels(self) -> int:
        """Number of condition channels (1 or 2)."""
        return 2 if self.condition == "mask+thickness" else 1


@dataclass(frozen=True)
class DiffusionSamplingConfig:
    """How ``coronary synth --renderer diffusion`` samples (its ``renderer_config``).

    Attributes:
        model: manifest name, weights file or model folder (see ``AngioDiffusionRenderer.load``).
        steps: DDIM steps (DDPM: the model's ``num_train_timesteps``).
        sampler: "ddim" or "ddpm".
    """

    model: str = DEFAULT_MODEL
    steps: int = 50
    sampler: str = "ddim"

    def __post_init__(self) -> None:
        from xraycardiac.diffusion import SAMPLERS

        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"renderer_config.model: expected a model name or path, got {self.model!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"renderer_config.sampler: expected one of {SAMPLERS}, got {self.sampler!r}")
        if not (isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1):
            raise ValueError(f"renderer_config.steps: expected an integer >= 1, got {self.steps!r}")


def model_info(model: str) -> tuple[AngioDiffusionConfig, dict[str, Any]]:
    """(config, provenance) of a model name, folder or weights file, checking its sha256; cheap for names.

    Names and folders read the config from the manifest entry / ``model.json`` (no torch import);
    a bare weights file is opened with torch.

    Raises:
        ValueError / FileNotFoundError: unknown name, missing or foreign file.
    """
    found = locate_model(model, what=None)
    if found.entry is None:  # a bare weights file holds its config
        data, where = read_weights_file(found.file, _FILE)[0], str(found.file)
    else:
        data, where = found.config, f"model {found.provenance['model']} ({found.file})"
    return AngioDiffusionConfig.from_dict(data, where=where), found.provenance


def build_network(config: AngioDiffusionConfig):
    """The ``DiffusionModelUNet`` (2D) of ``config``: in = 1 + condition channels, out = 2 (or 1)."""
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1 + config.condition_channels,
        out_channels=2 if config.learned_variance else 1,
        channels=config.channels,
        attention_levels=config.attention_levels,
        num_res_blocks=config.num_res_blocks,
        norm_num_groups=config.norm_num_groups,
        num_head_channels=config.num_head_channels,
    )


def build_scheduler(config: AngioDiffusionConfig, sampler: str = "ddpm", steps: int | None = None):
    """A MONAI scheduler for training ("ddpm", all steps) or sampling ("ddim" with ``steps``, "ddpm").

    Raises:
        ValueError: unknown sampler; DDPM with fewer steps than ``num_train_timesteps`` (MONAI's
            DDPM step assumes the full chain); steps outside 1..T.
    """
    from xraycardiac.diffusion import SAMPLERS, check_steps
    from xraycardiac.diffusion import build_scheduler as build

    t = config.num_train_timesteps
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
    if steps is not None:
        check_steps(steps, t)
    if sampler == "ddpm":
        if steps not in (None, t):
            raise ValueError(
                f"steps: the DDPM sampler runs the full chain of {t} steps; use sampler 'ddim' for {steps}"
            )
        variance = "learned_range" if config.learned_variance else "fixed_small"
        return build("ddpm", t, t, schedule=config.schedule, variance_type=variance)
    return build("ddim", t, steps or 50, schedule=config.schedule)


def resize_square(arr, size: int, mode: str):
    """(B, C, H, W) tensor -> (B, C, size, size): "nearest" (masks) or antialiased "bilinear" (images)."""
    import torch.nn.functional as F

    if arr.shape[-2:] == (size, size):
        return arr
    if mode == "nearest":
        return F.interpolate(arr, size=(size, size), mode="nearest")
    return F.interpolate(arr, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def encode_condition(mask: Any, thickness_mm: Any | None, config: AngioDiffusionConfig):
    """Condition channels (B, Cc, S, S) float32 in [-1, 1] at ``config.image_size``.

    Args:
        mask: (H, W) or (B, H, W) vessel mask (nonzero = vessel), numpy or torch.
        thickness_mm: same shape, path length in mm (>= 0); required for "mask+thickness".

    Raises:
        ValueError: wrong dimensions, shapes that differ, a missing thickness map.
    """
    import torch

    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"mask: expected (rows, cols) or (batch, rows, cols), got shape {tuple(m.shape)}")
    chans = [resize_square((m != 0).float()[:, None], config.image_size, "nearest") * 2 - 1]
    if config.condition == "mask+thickness":
        if thickness_mm is None:
            raise ValueError(
                "thickness_mm: this model is conditioned on mask+thickness; give the path-length map"
            )
        t = torch.as_tensor(np.asarray(thickness_mm) if not torch.is_tensor(thickness_mm) else thickness_mm)
        t = t.float()[None] if t.ndim == 2 else t.float()
        if tuple(t.shape) != tuple(m.shape):
            raise ValueError(f"thickness_mm: shape {tuple(t.shape)} differs from the mask's {tuple(m.shape)}")
        t = (t / config.thickness_scale_mm).clamp(0, 1)[:, None]
        chans.append(resize_square(t, config.image_size, "bilinear").clamp(0, 1) * 2 - 1)
    return torch.cat(chans, dim=1)


def save_weights(
    network, config: AngioDiffusionConfig, path: str | os.PathLike[str], half: bool = True
) -> Path:
    """Write ``{"format", "config", "state_dict"}`` atomically (float16 tensors when ``half``)."""
    return write_weights_file(path, _FILE, config.to_dict(), network, half)


def load_weights(path: str | os.PathLike[str], device: str = "cpu"):
    """(network in eval mode, config) from a weights file written by :func:`save_weights`.

    Raises:
        ValueError: not an angio-diffusion weights file, or weights that do not fit the config.
    """
    config, data = read_model_config(path, _FILE, AngioDiffusionConfig)
    return load_state(build_network(config), data["state_dict"], path, device), config


class AngioDiffusionRenderer:
    """A loaded diffusion renderer: mask (+ thickness) -> angiogram in [0, 1], vessels dark.

    Args:
        network: the trained ``DiffusionModelUNet``.
        config: its :class:`AngioDiffusionConfig`.
        device: torch device it runs on.
        source: provenance (model name, version, sha256, file) recorded with every rendering.
    """

    def __init__(self, network, config: AngioDiffusionConfig, device: Any, source: dict[str, Any]) -> None:
        self.network, self.config, self.device, self.source = network, config, device, dict(source)

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, device: str = "cpu") -> AngioDiffusionRenderer:
        """Load by manifest name (sha256-checked, see ``xraycardiac models list``) or from a path.

        Args:
            model: a model name, a weights file, or a folder with ``model.json`` and its weights
                (the output of ``xraycardiac train angio-diffusion``).
            device: "cpu", "cuda[:N]", "mps" or "auto".

        Raises:
            ValueError / FileNotFoundError: unknown model name, missing or foreign file.
        """
        from xraycardiac.runtime import select_device

        dev = select_device(device)
        expected, source = model_info(model)
        network = load_model_file(
            source["file"], _FILE, AngioDiffusionConfig, build_network, expected, str(dev)
        )
        return cls(network, expected, dev, source)

    def render(
        self,
        mask: Any,
        thickness_mm: Any | None = None,
        seed: int = 0,
        steps: int | None = None,
        sampler: str = "ddim",
        progress: Any = None,
    ) -> np.ndarray:
        """Angiograms for a batch of conditions.

        Args:
            mask: (H, W) or (B, H, W) vessel masks (nonzero = vessel).
            thickness_mm: same shape, path length in mm (needed for "mask+thickness" models).
            seed: seeds the initial noise (and DDPM's step noise): same inputs and seed -> same image
                on the same device.
            steps: DDIM steps (None: 50); DDPM runs the model's ``num_train_timesteps`` (None or
                that number).
            sampler: "ddim" or "ddpm".
            progress: ``progress(i, n)`` after each denoising step.

        Returns:
            float32 (H, W) or (B, H, W) images in [0, 1] at the mask's size.
        """
        import torch

        from xraycardiac.diffusion import initial_noise, sample

        single = np.ndim(mask) == 2
        cond = encode_condition(mask, thickness_mm, self.config).to(self.device)
        h, w = np.shape(mask)[-2:]
        scheduler = build_scheduler(self.config, sampler, steps)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        s = self.config.image_size
        noise = initial_noise((cond.shape[0], 1, s, s), gen, cond.device)
        x = sample(self.network, scheduler, noise, cond, generator=gen, progress=progress).clamp(-1.0, 1.0)
        img = ((x + 1.0) / 2.0).clamp(0, 1)
        if (h, w) != (s, s):
            img = torch.nn.functional.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
        out = img[:, 0].cpu().numpy().astype(np.float32)
        return out[0] if single else out


@functools.lru_cache(maxsize=2)
def load_renderer(model: str = DEFAULT_MODEL, device: str = "cpu") -> AngioDiffusionRenderer:
    """:meth:`AngioDiffusionRenderer.load`, cached per process (a synthesis run loads its model once)."""
    return AngioDiffusionRenderer.load(model, device)
