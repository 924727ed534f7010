"""The 3D KL autoencoder of XRayToCT (CLS-DM stage 1): CT cube in [-1, 1] <-> a 4-channel latent.

Network: ``monai.networks.nets.AutoencoderKL`` (3D), with the reparameterisation noise drawn from a
given ``torch.Generator`` (:class:`X2CTAutoencoderKL`) so training is a pure function of the seed
and a resumed run replays it exactly. Each level but the last halves the grid: ``len(channels)``
levels give a downsampling factor ``2 ** (len(channels) - 1)``.

Choices where the paper is silent, from CLS-DM's public configuration and MONAI's 3D LDM tutorial
(all fields of :class:`X2CTAutoencoderConfig`):

* demo (CPU) size: channels (16, 32, 64), factor 4: a 64³ cube -> 4 x 16³ latent; one residual
  block per level, no attention (MONAI's mid-block self-attention off too: 4096 tokens at 16³).
* paper size (``preset("paper")``): channels (32, 64, 128, 128), two residual blocks, factor 8
  (1/8): a 128³ cube -> 4 x 16³ latent, as CLS-DM's ``ch_mult [1, 2, 4, 4]``, ``z_channels 4``.
* loss (:func:`autoencoder_loss`): mean L1 reconstruction + ``kl_weight`` x KL(q(z|x) || N(0, I))
  (summed over latent voxels, averaged over the batch, as MONAI's tutorial). ``kl_weight`` 1e-6
  (MONAI's tutorial; CLS-DM's config uses 1e-4). No perceptual loss (CLS-DM also sets its weight
  to 0, and a 3D perceptual network needs pretrained weights this offline project cannot fetch).
  The patch discriminator of the LDM recipe (CLS-DM: weight 0.5 after 10 000 steps) is **not
  implemented**: the reconstruction is L1-only, hence somewhat blurrier than an adversarial AE.
* ``train_crop_vox``: optional training on random blocks of the cube (MAISI trains its autoencoder
  on patches too): a 32³ block of a 64³ cube costs ~1/10 of the whole cube per step on a CPU.
  GroupNorm then sees block statistics in training and cube statistics at use; the 64³ demo
  measures the effect (``xraycardiac x2ct evaluate``), it is not assumed away.
* ``latent_scale``: the LDM scale factor, 1 / std of the latent means over the training cases,
  computed after training (:func:`compute_latent_scale`) and stored with the weights, so the
  latent diffusion model sees latents of unit variance.

Weights file (:mod:`xraycardiac.models.weights`): ``{"format": "xraycardiac.x2ct_autoencoder",
"config", "latent_scale", "data_config", "state_sha256", "state_dict"}`` loaded with
``weights_only=True``; ``state_sha256`` is a digest of the tensors, checked on load (a modified or
corrupted file is refused). A run folder (``model.pt`` + ``model.json`` from ``xraycardiac train
x2ct-autoencoder``) is an importable model package; loading it also checks the file's sha256 against
``model.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL

from xraycardiac.jsonutil import is_int
from xraycardiac.models.weights import (
    JsonConfig,
    WeightsFormat,
    config_differences,
    load_state,
    locate_model,
    read_model_config,
    write_weights_file,
)

__all__ = [
    "WEIGHTS_FORMAT",
    "X2CTAutoencoderConfig",
    "X2CTAutoencoderKL",
    "autoencoder_loss",
    "build_autoencoder",
    "compute_latent_scale",
    "load_autoencoder",
    "load_weights",
    "save_weights",
    "train_x2ct_autoencoder",
]

WEIGHTS_FORMAT = "xraycardiac.x2ct_autoencoder"
_FILE = WeightsFormat(WEIGHTS_FORMAT, "an X2CT autoencoder", digest_key="state_sha256")
_EXTRA_KEYS = ("latent_scale", "data_config")  # package keys next to the model config in model.json


@dataclass(frozen=True)
class X2CTAutoencoderConfig(JsonConfig):
    """What the CT autoencoder is (saved next to its weights).

    Attributes:
        grid: CT cube side in voxels (a multiple of ``downsample_factor``); must equal the cache's.
        channels: channels per level; ``len(channels) - 1`` halvings (3 levels: 1/4, 4 levels: 1/8).
        latent_channels: channels of the latent.
        num_res_blocks: residual blocks per level.
        attention_levels: self-attention per level (all False at demo size).
        mid_attention: MONAI's self-attention in the encoder's and decoder's middle block.
        norm_num_groups: GroupNorm groups (must divide every entry of ``channels``).
        kl_weight: weight of the KL term of the loss.
        train_crop_vox: training on random blocks of this side (a multiple of the downsampling
            factor) instead of the whole cube; 0: whole cube. The network is fully convolutional
            and encodes / decodes the whole cube at use.
    """

    grid: int = 64
    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    mid_attention: bool = False
    norm_num_groups: int = 8
    kl_weight: float = 1e-6
    train_crop_vox: int = 0

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(
                f"X2CTAutoencoderConfig.{name}: expected {expected}, got {getattr(self, name)!r}"
            )

        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        if len(self.channels) < 2 or not all(is_int(c, 1) for c in self.channels):
            fail("channels", "a tuple of at least 2 positive integers")
        if len(self.attention_levels) != len(self.channels) or not all(
            isinstance(a, bool) for a in self.attention_levels
        ):
            fail("attention_levels", f"{len(self.channels)} booleans (one per level of channels)")
        if not is_int(self.norm_num_groups, 1) or any(c % self.norm_num_groups for c in self.channels):
            fail("norm_num_groups", f"an integer dividing every channel count {self.channels}")
        for name in ("latent_channels", "num_res_blocks"):
            if not is_int(getattr(self, name), 1):
                fail(name, "an integer >= 1")
        f = self.downsample_factor
        if not is_int(self.grid, 1) or self.grid % f or self.grid < 2 * f:
            fail("grid", f"a multiple of the downsampling factor {f} (>= {2 * f} voxels)")
        crop = self.train_crop_vox
        if not (isinstance(crop, int) and not isinstance(crop, bool)) or (
            crop and (crop % f or not 2 * f <= crop <= self.grid)
        ):
            fail("train_crop_vox", f"0 (whole cube) or a multiple of {f} in {2 * f} .. grid {self.grid}")
        if not isinstance(self.mid_attention, bool):
            fail("mid_attention", "true or false")
        if not (
            isinstance(self.kl_weight, int | float) and math.isfinite(self.kl_weight) and self.kl_weight >= 0
        ):
            fail("kl_weight", "a finite number >= 0")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> X2CTAutoencoderConfig:
        """``"demo"`` (64³, factor 4) or ``"paper"`` (128³, factor 8, CLS-DM's public config)."""
        presets = {
            "demo": dict(grid=64),
            "paper": dict(grid=128, channels=(32, 64, 128, 128), num_res_blocks=2,
                          attention_levels=(False,) * 4, norm_num_groups=32),
        }  # fmt: skip
        if name not in presets:
            raise ValueError(
                f"X2CTAutoencoderConfig.preset: unknown preset {name!r}; allowed: {sorted(presets)}"
            )
        return cls(**{**presets[name], **overrides})

    @property
    def downsample_factor(self) -> int:
        """Grid / latent grid: ``2 ** (len(channels) - 1)``."""
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, D, H, W) of one case's latent."""
        n = self.grid // self.downsample_factor
        return (self.latent_channels, n, n, n)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model config") -> X2CTAutoencoderConfig:
        """The config of a weights file / manifest entry (whose package keys ``latent_scale`` and
        ``data_config`` are skipped); a ValueError naming ``where`` on unknown keys."""
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k not in _EXTRA_KEYS}
        return super().from_dict(data, where)


class X2CTAutoencoderKL(AutoencoderKL):
    """MONAI's ``AutoencoderKL`` whose training forward takes the noise generator (exact resume, DDP)."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample ``z = mu + sigma * eps`` (eps from ``generator``), decode.

        Args:
            x: (B, 1, D, H, W) CT in [-1, 1].
            generator: source of eps (on ``x.device``); None = the global RNG.

        Returns:
            (reconstruction (B, 1, D, H, W), z_mu, z_sigma (B, C, d, h, w)).
        """
        z_mu, z_sigma = self.encode(x)
        eps = torch.randn(z_sigma.shape, generator=generator, device=z_sigma.device, dtype=z_sigma.dtype)
        return self.decode(z_mu + eps * z_sigma), z_mu, z_sigma


def build_autoencoder(config: X2CTAutoencoderConfig) -> X2CTAutoencoderKL:
    """The 3D ``AutoencoderKL`` of ``config`` (1 channel in and out), freshly initialised."""
    levels = len(config.channels)
    return X2CTAutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=config.channels,
        num_res_blocks=(config.num_res_blocks,) * levels,
        attention_levels=config.attention_levels,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        with_encoder_nonlocal_attn=config.mid_attention,
        with_decoder_nonlocal_attn=config.mid_attention,
        include_fc=False,
    )


def autoencoder_loss(
    model: torch.nn.Module,
    ct: torch.Tensor,
    kl_weight: float = 1e-6,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 reconstruction + ``kl_weight`` x KL (see the module docstring; no perceptual, no adversarial term).

    Args:
        model: an :class:`X2CTAutoencoderKL` (or a DDP wrapper of one).
        ct: (B, 1, D, H, W) CT in [-1, 1].
        kl_weight: weight of the KL term.
        generator: noise of the reparameterisation.

    Returns:
        (scalar loss, {"l1": mean absolute error in unit range, "kl": KL per case (nats)}).
    """
    recon, mu, sigma = model(ct, generator=generator)
    l1 = (recon.float() - ct.float()).abs().mean()
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2.0 * torch.log(sigma) - 1.0).flatten(1).sum(1).mean()
    return l1 + kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def compute_latent_scale(
    model: X2CTAutoencoderKL,
    dataset: torch.utils.data.Dataset,
    max_cases: int | None = 64,
    device: str = "cpu",
) -> float:
    """LDM scale factor: 1 / std of the latent means ``z_mu`` over (up to ``max_cases``) dataset items.

    Raises:
        ValueError: an empty dataset, or latents of zero spread.
    """
    n = len(dataset) if max_cases is None else min(len(dataset), max_cases)
    if n < 1:
        raise ValueError("dataset: no case to compute the latent scale on")
    model = model.to(device).eval()
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(n):
        mu, _ = model.encode(dataset[i]["ct"][None].to(device))
        mu = mu.double()
        total, total_sq, count = (
            total + float(mu.sum()),
            total_sq + float(mu.pow(2).sum()),
            count + mu.numel(),
        )
    std = math.sqrt(max(total_sq / count - (total / count) ** 2, 0.0))
    if not std > 1e-12:
        raise ValueError("latent_scale: the latent means have zero spread (an untrained or broken model)")
    return 1.0 / std


# --- weights ---------------------------------------------------------------------------------------


def save_weights(
    model: torch.nn.Module,
    config: X2CTAutoencoderConfig,
    path: str | os.PathLike[str],
    latent_scale: float | None = None,
    data_config: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write the weights file (see the module docstring) atomically; float16 tensors when ``half``.

    Args:
        model: the autoencoder.
        config: its config.
        path: destination ``.pt``.
        latent_scale: LDM scale factor (None before it is computed).
        data_config: the :class:`~xraycardiac.xray2ct.data.X2CTDataConfig` dict it was trained on.
        half: store floating tensors as float16 (half the size; outputs change by ~1e-3).
    """
    extras = {
        "latent_scale": None if latent_scale is None else float(latent_scale),
        "data_config": data_config,
    }
    return write_weights_file(path, _FILE, config.to_dict(), model, half, extras)


def load_weights(
    path: str | os.PathLike[str], expected_config: X2CTAutoencoderConfig | None = None, device: str = "cpu"
) -> tuple[X2CTAutoencoderKL, X2CTAutoencoderConfig, dict[str, Any]]:
    """(model in eval mode, config, extras {"latent_scale", "data_config"}) from :func:`save_weights`' file.

    Raises:
        ValueError: unreadable or foreign file, tensors that fail the stored digest (modified or
            corrupted), a config other than ``expected_config`` (names the differing fields), or
            weights that do not fit their config.
    """
    config, data = read_model_config(path, _FILE, X2CTAutoencoderConfig)
    if expected_config is not None and config != expected_config:
        a, b = config.to_dict(), expected_config.to_dict()
        diff = {k: (a[k], b[k]) for k in config_differences(config, expected_config)}
        raise ValueError(f"{path}: weights of another autoencoder config; (file, expected) differ in {diff}")
    model = load_state(build_autoencoder(config), data["state_dict"], path, device)
    return model, config, {key: data.get(key) for key in _EXTRA_KEYS}


def load_autoencoder(
    model: str | os.PathLike[str], expected_config: X2CTAutoencoderConfig | None = None, device: str = "cpu"
) -> tuple[X2CTAutoencoderKL, X2CTAutoencoderConfig, dict[str, Any]]:
    """Load by manifest name (sha256-checked), run folder (``model.json`` + weights) or weights file.

    Returns:
        As :func:`load_weights`, with ``extras["source"]`` = {model, version, file, sha256}.

    Raises:
        ValueError / FileNotFoundError: unknown name, missing file, sha256 mismatch with
            ``model.json``, or any :func:`load_weights` error.
    """
    source = locate_model(model, what=None)
    net, config, extras = load_weights(source.file, expected_config, device)
    return net, config, {**extras, "source": source.provenance}


# --- training --------------------------------------------------------------------------------------


def train_x2ct_autoencoder(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model_config: X2CTAutoencoderConfig | None = None,
    train_config: Any = None,
    overrides: Sequence[str] = (),
    name: str = "x2ct-autoencoder",
    version: str = "0.1.0",
    split: str = "train",
    progress: Callable[..., None] | None = None,
    command: str | None = None,
    latent_scale_cases: int = 64,
) -> dict[str, Any]:
    """Train (or resume) the CT autoencoder on an XRayToCT cache and write a model package into ``out``.

    Output: ``checkpoint.pt`` (rerun to resume), ``log.jsonl``, ``model.pt`` (EMA weights, float16,
    with ``latent_scale`` and the cache's data config) and ``model.json`` (manifest entry; its
    config holds the model config plus ``latent_scale`` and ``data_config``).

    Args:
        data: cache folder (:func:`xraycardiac.xray2ct.data.build_cache`).
        out: run folder.
        model_config: :class:`X2CTAutoencoderConfig` (default: demo size).
        train_config: :class:`xraycardiac.trainer.TrainConfig` (default: its defaults).
        overrides: ``key=value`` settings applied on top of both configs (``parse_overrides``).
        name, version: manifest name and version of the result.
        split: cache split to train on.
        progress: ``progress(stage, fraction, **extra)``.
        command: the command line recorded in ``model.json`` (default: this process's argv).
        latent_scale_cases: training cases used for ``latent_scale``.

    Returns:
        The trainer summary plus ``"model"`` (path of model.pt), ``"entry"`` and ``"latent_scale"``.

    Raises:
        ValueError: a bad cache, or a model ``grid`` other than the cache's.
    """
    from xraycardiac.trainer import TrainConfig, Trainer, crop_batch, parse_overrides, write_model_package
    from xraycardiac.xray2ct.data import X2CTDataset

    mcfg = model_config or X2CTAutoencoderConfig()
    tcfg = train_config or TrainConfig()
    if overrides:
        mcfg, tcfg = parse_overrides(list(overrides), mcfg, tcfg)
    dataset = X2CTDataset(data, split)
    if dataset.config.grid != mcfg.grid:
        raise ValueError(
            f"grid: the model's grid {mcfg.grid} differs from the cache's {dataset.config.grid} "
            f"({data}); pass grid={dataset.config.grid}"
        )
    torch.manual_seed(tcfg.seed)
    network = build_autoencoder(mcfg)

    def loss_fn(net: torch.nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator):
        if mcfg.train_crop_vox:
            batch = crop_batch(batch, mcfg.train_crop_vox, gen, mcfg.grid)
        return autoencoder_loss(net, batch["ct"], mcfg.kl_weight, gen)

    out = Path(out)
    trainer = Trainer(network, loss_fn, dataset, tcfg, out, mcfg.to_dict())
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    model = trainer.averaged_model()
    scale = compute_latent_scale(model, dataset, latent_scale_cases, device=str(trainer.device))
    data_config = dataset.config.to_dict()
    weights = save_weights(model, mcfg, out / "model.pt", scale, data_config, half=True)
    entry = write_model_package(
        out, weights, name=name, version=version, command=command,
        config={**mcfg.to_dict(), "latent_scale": scale, "data_config": data_config},
        training_data=f"{len(dataset)} CT cubes ({mcfg.grid}^3) of the XRayToCT cache {Path(data).name} "
        f"(split {split})",
        description=(
            f"3D KL autoencoder (CLS-DM stage 1), {mcfg.grid}^3 -> {'x'.join(map(str, mcfg.latent_shape))}, "
            f"latent_scale {scale:.4g}, {summary['step']} steps x batch {tcfg.batch_size}"
            + (f" of random {mcfg.train_crop_vox}^3 blocks" if mcfg.train_crop_vox else "")
            + ", EMA "
            f"{tcfg.ema_decay}; train config " + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry, "latent_scale": scale}
