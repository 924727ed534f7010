"""Template-guided Conditional Diffusion Model (TCDM) of CardiacSynth (FCaS): label map + template -> CT.

Network: a 3D ``monai.networks.nets.DiffusionModelUNet`` (:class:`TCDMUNet`, which only adds its
:class:`TCDMConfig`) on channel-concatenated inputs, for a target label map M and a template
(image T, labels L_T) with the deformation between them::

    [ x_t | onehot(M) | T o (id + u) | onehot(L_T) o (id + u) ]      (B, 1 + n + 1 + n, D, H, W)

x_t is the noisy image, one-hots are in {-1, 1}, ``f o (id + u)`` is f resampled at x + u(x)
(``monai.networks.blocks.Warp``, trilinear, border padding; the one-hot becomes a soft label map).
u is the Mask Generation Module's DDF in MONAI voxel units (channels along D, H, W): the target at
x is the template at x + u(x); without a DDF the template is taken as already in the target frame.
``use_template=False`` drops the template channels: Med-DDPM's mask-only conditioning (ablation).

Bidirectional mechanism (FCaS names it without a formula; this is our reading): template -> target
is the conditional denoising loss; target -> template maps the model's clean-image estimate x̂0
back into the template frame with the inverse DDF u⁻ (given by the caller: the MGM integrates -v
for it, as :func:`xraycardiac.cardiac.tcdm_train.random_deformation` does) and asks it to equal the template inside its structures::

    L = |out - target|² + consistency_weight * mean_b( ᾱ_t |x̂0 o (id + u⁻) - T|²_{L_T > 0} )

ᾱ_t (the signal fraction at the sample's timestep) rescales the x̂0 error of noisy steps to the
noise error's scale (ε-prediction: ᾱ_t |x̂0 - x0|² = (1 - ᾱ_t) |ε̂ - ε|²), so steps where x̂0 is
amplified noise do not dominate. Without ``inverse_ddf`` the term is 0.

Paper-silent choices (fields of :class:`TCDMConfig`), from Med-DDPM and MONAI's 3D DDPM tutorial:
1000 timesteps, ``linear_beta``, ε-prediction, MSE; DDIM sampling (eta 0: deterministic given the
noise) by the shared loop :func:`xraycardiac.diffusion.sample`. Demo size: levels (8, 16, 32, 32), one residual block each, no attention but MONAI's mid
block (always there; 8³ = 512 tokens at 64³). HU clipped to ``hu_window`` and mapped to [-1, 1].
GPU size, e.g.: ``channels=(32, 64, 128, 128) num_res_blocks=2 norm_num_groups=32 grid=128``.
``train_crop_vox`` trains on random blocks of the cube, cut after the self-template deformation
(so the template channels stay aligned; the consistency term's inverse warp reads border values
where the displacement leaves the block): a 32³ block of a 64³ cube costs ~1/8 per step, and
the mask and template channels carry the context the block lacks.

Training: :mod:`xraycardiac.cardiac.tcdm_train` (self-templates, dataset folder, trainer).

Weights (:mod:`xraycardiac.models.weights`): ``{"format": "xraycardiac.cardiac_tcdm", "config",
"sha256", "state_dict"}``, loaded with ``weights_only=True``; ``sha256`` digests the config JSON and
every tensor, so an edited config or tensor is refused. A run folder (``model.pt`` + ``model.json``)
is an importable package.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet

from xraycardiac.cardiac.labels import WHOLE_HEART
from xraycardiac.diffusion import build_scheduler, sample
from xraycardiac.jsonutil import is_int, is_number
from xraycardiac.models.weights import (
    JsonConfig,
    WeightsFormat,
    load_model_file,
    locate_model,
    write_weights_file,
)
from xraycardiac.runtime import onednn_conv3d

__all__ = [
    "PREDICTION_TYPES", "TCDM_FORMAT", "TCDMConfig", "TCDMUNet", "build_tcdm", "check_labels", "ddim_sampler",
    "encode_condition", "load_tcdm", "predicted_x0", "sample_tcdm", "save_tcdm", "tcdm_loss",
    "template_consistency", "warp",
]  # fmt: skip

TCDM_FORMAT = "xraycardiac.cardiac_tcdm"
_FILE = WeightsFormat(TCDM_FORMAT, "a TCDM", digest_key="sha256", digest_config=True)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class TCDMConfig(JsonConfig):
    """What the template-conditioned diffusion model is (saved next to its weights).

    Attributes:
        n_classes: label classes including background 0 (default 10: the nine FCaS structures);
            label maps must hold values in 0 .. n_classes - 1.
        grid: training cube side in voxels (cases are resampled to it); a multiple of 2^(levels-1).
        hu_window: (low, high) HU mapped to [-1, 1].
        channels: ``DiffusionModelUNet`` channels per level.
        attention_levels: self-attention per level (MONAI's mid block always has one); all-False
            is resized to the number of levels.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups (divides every entry of ``channels``).
        num_head_channels: channels per attention head.
        num_train_timesteps: T of the diffusion process.
        schedule: MONAI noise schedule name.
        prediction_type: "epsilon", "v_prediction" or "sample".
        use_template: condition on the warped template (False: mask only, Med-DDPM-like ablation).
        consistency_weight: weight of the target -> template consistency term (>= 0).
        deform_strength_vox: self-template training: largest velocity magnitude, voxels.
        deform_control_spacing_vox: self-template training: control-grid spacing of the random
            velocity (its smoothness), voxels.
        train_crop_vox: training on random blocks of this side (a multiple of 2^(levels-1)),
            cut after the self-template deformation, instead of the whole cube; 0: whole cube.
            The network is fully convolutional and generates the whole cube at sampling time.
        label_merge_prob: training with random label merging (one model for coarse and fine
            label maps): the probability, per training case, that its chambers and myocardium
            (1-5) become the undivided heart (label 10) in both the target and the template
            label map; the coronaries (8, 9) then join the heart with probability 1/2, else
            stay. 0: labels as given. Only models with the heart class (``n_classes`` >= 11)
            merge: a smaller label set has no coarse label to merge into. Configs written
            before this field (models of 10 classes) read as 0: they were trained without it.
        structure_hu_jitter: self-template training: each structure of a case (and the
            background) is shifted by its own random HU offset, N(0, this std) in HU, in the
            case and so in its template, so the model learns to take a structure's HU from
            the template rather than from the label (0: off).
    """

    n_classes: int = WHOLE_HEART + 1
    grid: int = 64
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    channels: tuple[int, ...] = (8, 16, 32, 32)
    attention_levels: tuple[bool, ...] = (False, False, False, False)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_head_channels: int = 8
    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    prediction_type: str = "epsilon"
    use_template: bool = True
    consistency_weight: float = 0.1
    deform_strength_vox: float = 3.0
    deform_control_spacing_vox: int = 8
    train_crop_vox: int = 0
    label_merge_prob: float = 0.5
    structure_hu_jitter: float = 0.0

    @classmethod
    def from_dict(cls, data: Any, where: str = "model config") -> TCDMConfig:
        """As :meth:`JsonConfig.from_dict`; a config without ``label_merge_prob`` (written before the
        field existed) was trained without label merging, so it reads as 0."""
        if isinstance(data, dict) and "label_merge_prob" not in data:
            data = {**data, "label_merge_prob": 0.0}
        return super().from_dict(data, where)

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"TCDMConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("channels", "attention_levels", "hu_window"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not is_int(self.n_classes, 2):
            fail("n_classes", "an integer >= 2 (background + at least one structure)")
        if not self.channels or not all(is_int(c, 1) for c in self.channels):
            fail("channels", "a non-empty tuple of positive integers")
        att = self.attention_levels
        if len(att) != len(self.channels) and not any(att):  # "no attention" fits any number of levels
            att = (False,) * len(self.channels)
            object.__setattr__(self, "attention_levels", att)
        if len(att) != len(self.channels) or not all(isinstance(a, bool) for a in att):
            fail("attention_levels", f"{len(self.channels)} booleans (one per level of channels)")
        if not is_int(self.norm_num_groups, 1) or any(c % self.norm_num_groups for c in self.channels):
            fail("norm_num_groups", f"an integer dividing every channel count {self.channels}")
        step = 2 ** (len(self.channels) - 1)
        if not is_int(self.grid, 1) or self.grid % step:
            fail("grid", f"a positive multiple of {step} (2^(levels - 1))")
        ints = ("num_res_blocks", "num_head_channels", "num_train_timesteps", "deform_control_spacing_vox")
        for name in ints:
            if not is_int(getattr(self, name), 1):
                fail(name, "an integer >= 1")
        crop = self.train_crop_vox
        if not is_int(crop, 0) or (crop and (crop % step or not step <= crop <= self.grid)):
            fail("train_crop_vox", f"0 (whole cube) or a multiple of {step} in {step} .. grid {self.grid}")
        lo_hi = self.hu_window
        if len(lo_hi) != 2 or not all(is_number(v) for v in lo_hi) or not lo_hi[0] < lo_hi[1]:
            fail("hu_window", "(low, high) finite HU with low < high")
        from monai.networks.schedulers import NoiseSchedules

        if self.schedule not in NoiseSchedules:
            fail("schedule", f"one of {sorted(NoiseSchedules)}")
        if self.prediction_type not in PREDICTION_TYPES:
            fail("prediction_type", f"one of {PREDICTION_TYPES}")
        if not isinstance(self.use_template, bool):
            fail("use_template", "true or false")
        for name in ("consistency_weight", "deform_strength_vox", "structure_hu_jitter"):
            if not (is_number(getattr(self, name)) and getattr(self, name) >= 0):
                fail(name, "a finite number >= 0")
        if not (is_number(self.label_merge_prob) and 0.0 <= self.label_merge_prob <= 1.0):
            fail("label_merge_prob", "a probability in 0 .. 1")

    @property
    def condition_channels(self) -> int:
        """Condition channels: onehot(M) (+ warped template image and one-hot labels)."""
        return self.n_classes + (1 + self.n_classes if self.use_template else 0)

    @property
    def in_channels(self) -> int:
        """U-Net input channels: the noisy image plus the condition."""
        return 1 + self.condition_channels

    def hu_to_unit(self, hu: torch.Tensor) -> torch.Tensor:
        """HU clipped to ``hu_window`` and mapped linearly to [-1, 1]."""
        lo, hi = self.hu_window
        return (hu.float().clamp(lo, hi) - lo) / (hi - lo) * 2.0 - 1.0

    def unit_to_hu(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (clipped) back to HU."""
        lo, hi = self.hu_window
        return (x.float().clamp(-1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo


class TCDMUNet(DiffusionModelUNet):
    """A 3D ``DiffusionModelUNet`` with its config; ``forward(x (B, in_channels, D, H, W), t (B,))``."""

    def __init__(self, config: TCDMConfig) -> None:
        super().__init__(
            spatial_dims=3, in_channels=config.in_channels, out_channels=1, channels=config.channels,
            attention_levels=config.attention_levels, num_res_blocks=config.num_res_blocks,
            norm_num_groups=config.norm_num_groups, num_head_channels=config.num_head_channels,
        )  # fmt: skip
        self.config = config


def build_tcdm(config: TCDMConfig) -> tuple[TCDMUNet, Any]:
    """(network, training ``DDPMScheduler``) of ``config`` (sample with :func:`sample_tcdm`)."""
    scheduler = build_scheduler(
        "ddpm", config.num_train_timesteps, schedule=config.schedule, prediction_type=config.prediction_type
    )
    return TCDMUNet(config), scheduler


# --- inputs and warping ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _warp_module(mode: str, device: str) -> Any:
    """A cached ``monai.networks.blocks.Warp`` per device (it caches its grid; warning silenced)."""
    from monai.networks.blocks import Warp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*grid_sample.*")
        return Warp(mode=mode, padding_mode="border")


def warp(volume: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``output(x) = volume(x + ddf(x))``: volume (B, C, D, H, W), ddf (B, 3, D, H, W) in voxels (D, H, W)."""
    return _warp_module(mode, str(ddf.device))(volume.float(), ddf.float())


def check_labels(labels: Any, n_classes: int, name: str) -> torch.Tensor:
    """(B, D, H, W) int64 label maps from (D, H, W), (B, D, H, W) or (B, 1, D, H, W); checked."""
    lab = torch.as_tensor(labels)
    lab = lab[:, 0] if lab.ndim == 5 and lab.shape[1] == 1 else lab[None] if lab.ndim == 3 else lab
    if lab.ndim != 4:
        raise ValueError(f"{name}: expected (D, H, W) or (B, D, H, W) labels, got shape {tuple(lab.shape)}")
    if lab.is_floating_point() and not torch.equal(lab, lab.round()):
        raise ValueError(f"{name}: a label map must hold integers, found fractional values")
    lab = lab.long()
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{name}: label values must be in 0..{n_classes - 1} (TCDMConfig.n_classes = {n_classes}); "
            f"found {lo}..{hi}"
        )
    empty = [i for i in range(lab.shape[0]) if not bool((lab[i] > 0).any())]
    if empty:
        raise ValueError(f"{name}: item(s) {empty} of the batch are empty (no label > 0)")
    return lab


def _volume(x: Any, name: str, channels: int, like: tuple[int, ...]) -> torch.Tensor:
    """A float (B, channels, *spatial) tensor whose batch and grid equal ``like`` = (B, D, H, W)."""
    v = torch.as_tensor(x).float()
    want = (like[0], channels, *like[1:])
    if tuple(v.shape) != want:
        raise ValueError(f"{name}: expected shape {want} (the mask's batch and grid), got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return v


def _onehot_pm1(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(B, D, H, W) labels -> (B, n, D, H, W) one-hot in {-1, 1}."""
    return F.one_hot(labels, n).permute(0, 4, 1, 2, 3).float() * 2.0 - 1.0


def encode_condition(
    config: TCDMConfig, mask: Any, template_image: Any = None, template_mask: Any = None, ddf: Any = None
) -> torch.Tensor:
    """Condition channels (B, ``config.condition_channels``, D, H, W) float32 (see the module docstring).

    Args:
        config: the model's config.
        mask: target label map, (D, H, W) or (B, D, H, W) int, values 0 .. n_classes - 1.
        template_image: (B, 1, D, H, W) template image in [-1, 1], in the template's frame on the
            mask's grid; ignored when ``config.use_template`` is False.
        template_mask: (B, D, H, W) template label map (same frame); ignored likewise.
        ddf: (B, 3, D, H, W) voxel displacement target -> template (MGM's); None = 0.

    Raises:
        ValueError: labels outside 0 .. n_classes - 1, an empty label map, a template on another grid.
    """
    m = check_labels(mask, config.n_classes, "mask")
    like = (m.shape[0], *m.shape[1:])
    chans = [_onehot_pm1(m, config.n_classes)]
    if config.use_template:
        if template_image is None or template_mask is None:
            raise ValueError("template_image/template_mask: required when TCDMConfig.use_template is True")
        t_img = _volume(template_image, "template_image", 1, like).to(chans[0].device)
        t_lab = check_labels(template_mask, config.n_classes, "template_mask").to(chans[0].device)
        if tuple(t_lab.shape) != tuple(m.shape):
            raise ValueError(
                f"template_mask: shape {tuple(t_lab.shape)} differs from mask's {tuple(m.shape)}"
            )
        t_one = _onehot_pm1(t_lab, config.n_classes)
        if ddf is not None:
            d = _volume(ddf, "ddf", 3, like).to(t_img.device)
            t_img, t_one = warp(t_img, d), warp(t_one, d)
        chans += [t_img, t_one]
    return torch.cat(chans, dim=1)


def template_consistency(
    pred_x0: torch.Tensor,
    template_image: torch.Tensor,
    template_mask: torch.Tensor,
    inverse_ddf: torch.Tensor,
) -> torch.Tensor:
    """Per-sample consistency (B,): mean of ``(x̂0 o (id + u⁻) - T)²`` over the template's structures.

    Args:
        pred_x0: (B, 1, D, H, W) clean-image estimate in the target frame, [-1, 1].
        template_image: (B, 1, D, H, W) template image in its own frame.
        template_mask: (B, D, H, W) template labels (voxels > 0 are compared).
        inverse_ddf: (B, 3, D, H, W) voxel displacement template -> target.
    """
    back = warp(pred_x0, inverse_ddf.to(pred_x0))
    fg = (template_mask > 0).to(back)[:, None]
    err = (back - template_image.to(back)).pow(2) * fg
    return err.flatten(1).sum(1) / fg.flatten(1).sum(1).clamp(min=1.0)


def tcdm_loss(
    unet: torch.nn.Module, scheduler: Any, batch: dict[str, Any], generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """The TCDM training loss of one batch: denoising MSE + the bidirectional consistency term.

    Args:
        unet: a :class:`TCDMUNet` (or a DDP wrapper of one).
        scheduler: the training ``DDPMScheduler`` of :func:`build_tcdm`.
        batch: ``"image"`` (B, 1, D, H, W) in [-1, 1], ``"mask"`` (B, D, H, W) int; with
            ``use_template``: ``"template_image"`` (B, 1, D, H, W), ``"template_mask"`` (B, D, H, W),
            optional ``"ddf"`` (target -> template) and ``"inverse_ddf"`` (template -> target),
            (B, 3, D, H, W) voxels (the consistency term needs ``inverse_ddf``).
        generator: draws the timesteps and the noise.

    Returns:
        (scalar loss, {"mse", "consistency"}).
    """
    config: TCDMConfig = getattr(unet, "module", unet).config
    get = batch.get
    cond = encode_condition(config, batch["mask"], get("template_image"), get("template_mask"), get("ddf"))
    x0 = _volume(batch["image"], "batch['image']", 1, (cond.shape[0], *cond.shape[2:])).to(cond.device)
    b, dev = x0.shape[0], generator.device
    t = torch.randint(0, config.num_train_timesteps, (b,), generator=generator, device=dev).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=dev).to(x0)
    x_t = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
    out = unet(torch.cat([x_t, cond], dim=1), timesteps=t).float()
    if config.prediction_type == "epsilon":
        target = noise
    elif config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:
        target = x0
    mse = (out - target.float()).pow(2).mean()
    cons = torch.zeros((), device=x0.device)
    inverse = batch.get("inverse_ddf")
    if config.use_template and config.consistency_weight > 0 and inverse is not None:
        abar = scheduler.alphas_cumprod.to(x0.device, torch.float32)[t].view(b, 1, 1, 1, 1)
        pred_x0 = predicted_x0(config.prediction_type, x_t.float(), out, abar)
        t_img = _volume(batch["template_image"], "template_image", 1, (b, *x0.shape[2:])).to(x0.device)
        inv = _volume(inverse, "inverse_ddf", 3, (b, *x0.shape[2:])).to(x0.device)
        per = template_consistency(pred_x0, t_img, torch.as_tensor(batch["template_mask"]).to(x0.device), inv)
        cons = (abar.view(b) * per).mean()
    loss = mse + config.consistency_weight * cons
    return loss, {"mse": float(mse.detach()), "consistency": float(cons.detach())}


# --- sampling --------------------------------------------------------------------------------------


def predicted_x0(
    prediction_type: str, x_t: torch.Tensor, out: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """The network's clean-image estimate x̂0 at a step: from ε, v or x0 output and ᾱ_t (broadcastable)."""
    sa, sb = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - sb * out) / sa
    return sa * x_t - sb * out if prediction_type == "v_prediction" else out


def ddim_sampler(scheduler: Any, steps: int) -> Any:
    """A fresh ``DDIMScheduler`` (eta 0, clip to [-1, 1]) on ``scheduler``'s noise schedule, ``steps`` steps.

    Raises:
        ValueError: ``steps`` not an integer in 1 .. num_train_timesteps.
    """
    n_t, kind = int(scheduler.num_train_timesteps), scheduler.prediction_type
    return build_scheduler("ddim", n_t, steps, prediction_type=kind, noise_schedule_of=scheduler)


@torch.no_grad()
def sample_tcdm(
    unet: torch.nn.Module, scheduler: Any, cond: torch.Tensor, steps: int,
    generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None, start_strength: float = 1.0,
    on_x0: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:  # fmt: skip
    """DDIM sampling (eta 0): deterministic given the initial noise.

    ``start_strength`` < 1 starts from the warped template image of ``cond`` noised to timestep
    ``round(start_strength * (T - 1))`` and runs only the DDIM steps from there (SDEdit-style
    template-started sampling: the model keeps the template's appearance where the masks agree and
    redraws it where they differ); 1 = from pure noise. It needs a model with ``use_template``.

    Args:
        unet: the :class:`TCDMUNet` (call ``.eval()`` first; MONAI's has no dropout by default).
        scheduler: the model's scheduler (any MONAI DDPM/DDIM one; only its noise schedule is used).
        cond: (B, Cc, D, H, W) from :func:`encode_condition`.
        steps: DDIM steps, 1 .. num_train_timesteps.
        generator: draws the initial noise when ``noise`` is None.
        noise: (B, 1, D, H, W) initial noise (the same noise for different ``steps`` is what
            Skip-Sampling Variance compares).
        progress: ``progress(i, n)`` after each step.
        start_strength: in (0, 1]; see above.
        on_x0: ``on_x0(x0_hat)`` after each step's network call with the clean-image estimate
            x̂0 (B, 1, D, H, W), clipped to [-1, 1] as DDIM clips it (Skip-Sampling Variance pools them).

    Returns:
        (B, 1, D, H, W) float32 x0 in [-1, 1].

    Raises:
        ValueError: ``cond`` with the wrong channels, ``noise`` of the wrong shape or missing, a
            ``start_strength`` outside (0, 1] or below 1 without a template.
    """
    config: TCDMConfig = getattr(unet, "module", unet).config
    if not 0.0 < float(start_strength) <= 1.0:
        raise ValueError(f"start_strength: expected a number in (0, 1], got {start_strength!r}")
    if start_strength < 1.0 and not config.use_template:
        raise ValueError("start_strength: below 1 needs a template-conditioned model (use_template=True)")
    if cond.ndim != 5 or cond.shape[1] != config.condition_channels:
        raise ValueError(
            f"cond: expected (B, {config.condition_channels}, D, H, W) (use_template={config.use_template}), "
            f"got {tuple(cond.shape)}"
        )
    shape = (cond.shape[0], 1, *cond.shape[2:])
    if noise is None:
        if generator is None:
            raise ValueError("generator: required when no noise is given")
        noise = torch.randn(shape, generator=generator, device=generator.device)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise: expected shape {shape}, got {tuple(noise.shape)}")
    ddim = ddim_sampler(scheduler, steps)
    x = noise.to(cond.device, torch.float32)
    timesteps = [int(t) for t in ddim.timesteps]
    if start_strength < 1.0:
        t0 = round(float(start_strength) * (int(scheduler.num_train_timesteps) - 1))
        timesteps = [t for t in timesteps if t <= t0] or timesteps[-1:]
        a = ddim.alphas_cumprod[timesteps[0]].to(x.device)
        template = cond[:, config.n_classes : config.n_classes + 1].float()  # the warped template image
        x = a.sqrt() * template + (1.0 - a).sqrt() * x
    network: Any = unet
    if on_x0 is not None:
        abar = ddim.alphas_cumprod.to(x.device, torch.float32)

        def network(inp: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            out = unet(inp, timesteps=timesteps)
            a = abar[timesteps].view(-1, 1, 1, 1, 1)
            on_x0(
                predicted_x0(config.prediction_type, inp[:, :1].float(), out[:, :1].float(), a).clamp(-1, 1)
            )
            return out

    with onednn_conv3d(unet):
        x = sample(network, ddim, x, cond, timesteps=timesteps, progress=progress)
    return x.clamp(-1.0, 1.0)


# --- weights ---------------------------------------------------------------------------------------


def save_tcdm(unet: TCDMUNet, path: str | os.PathLike[str], half: bool = False) -> Path:
    """Write the weights file (module docstring) atomically; float16 tensors when ``half``."""
    net = getattr(unet, "module", unet)
    return write_weights_file(path, _FILE, net.config.to_dict(), net, half)


def load_tcdm(
    source: str | os.PathLike[str], expected_config: TCDMConfig | None = None, device: str = "cpu"
) -> tuple[TCDMUNet, dict[str, Any]]:
    """(network in eval mode, provenance) from a weights file, a run folder or a manifest name.

    Raises:
        FileNotFoundError: missing file or folder without ``model.json``.
        ValueError: foreign or unreadable file, a digest mismatch (edited config or tensors), a file
            sha256 other than ``model.json``'s, a config other than ``expected_config``.
    """
    found = locate_model(source, what=None)
    net = load_model_file(found.file, _FILE, TCDMConfig, TCDMUNet, expected_config, device)
    return net, found.provenance
