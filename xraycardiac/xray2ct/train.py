"""Training of the XRayToCT (CLS-DM) stages 2 and 3 on the shared trainer: X-ray encoder, then LDM.

Both run on :class:`xraycardiac.trainer.Trainer` (EMA, checkpoints, exact resume, DDP under
torchrun) over an XRayToCT cache (:func:`xraycardiac.xray2ct.data.build_cache`), with the frozen
parts of the earlier stages:

* :func:`train_x2ct_encoder`: the :class:`~xraycardiac.xray2ct.encoder.XRayEncoder` against the frozen
  autoencoder's *scaled* latent ``ae.encode(ct)[0] * latent_scale`` (the posterior mean; the
  ``latent_scale`` stored in the autoencoder package), with the encoder's three losses
  (``contrastive_weight``, ``mse_weight``, ``reconstruction_weight``). ``contrastive_weight=0`` is
  CLS-DM's ablation "without contrastive alignment" (MSE alignment and the reconstruction only).
* :func:`train_x2ct_ldm`: the :class:`~xraycardiac.xray2ct.ldm.X2CTDenoiser` on the same scaled latents,
  conditioned on the frozen encoder's condition map (the encoder sees the same augmented views).

Details shared by both:

* **Geometry.** Every batch carries its cases' own projection matrices (the encoder's views, picked
  by name) and cube ``ijk_to_ras`` from the cache: the same relative geometry for every ``phantom:``
  or CT case (the views of :func:`~xraycardiac.xray2ct.data.view_geometries` about the cube centre),
  a drawn one per ``body:`` case (:mod:`xraycardiac.xray2ct.body_source`). The cache's data config
  geometry about the RAS origin is the fallback for items without one.
* **Views.** The encoder takes ("pa", "lateral") (``n_views=2``, "biplanar") or ("pa",)
  (``n_views=1``, "single"), picked by name from the cache's views, PA first.
* **Augmentation.** :func:`~xraycardiac.xray2ct.data.augment_views` (the cache config's ranges) is
  applied to the views of every batch with the trainer's generator, so a resumed run replays it.
* **Latents once per case.** The frozen autoencoder's latent of a case never changes (the
  augmentation touches the views only), so :class:`_WithLatents` encodes each case once, before
  training, and hands it to the loss as ``batch["latent"]`` (at 64³ the encoding is ~0.4 s per case on
  a CPU, a third of a training step). Losses are the same as when encoding every step.
* **Defaults derived from the parts.** Unless a model config is given, the encoder config takes
  ``grid``, ``latent_channels`` and ``latent_factor`` from the autoencoder and ``view_size`` from
  the cache; the LDM config takes ``latent_channels`` from the autoencoder, ``cond_channels`` and
  ``n_views`` from the encoder, and a global view embedding in single-view mode (X-ray2CTPA).
  ``key=value`` overrides apply on top; parts that do not fit are refused naming the field.
* **Packages.** ``model.pt`` (EMA weights, float16) and ``model.json`` (manifest entry; its config
  holds the model config plus ``autoencoder_sha256`` (and ``encoder_sha256``) of the frozen parts,
  the cache's ``data_config`` and ``views``), so :func:`xraycardiac.xray2ct.bundle.write_bundle`
  can check that a bundle's parts were trained together. The checkpoint's model config includes
  those sha256s: resuming with other frozen parts is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xraycardiac.trainer import parse_overrides
from xraycardiac.xray2ct.bundle import (
    check_autoencoder_data,
    check_encoder_fits,
    check_ldm_fits,
    locate_run,
    view_names,
)
from xraycardiac.xray2ct.data import (
    X2CTDataConfig,
    X2CTDataset,
    augment_views,
    cube_ijk_to_ras,
    view_geometries,
)
from xraycardiac.xray2ct.encoder import (
    XRayEncoder,
    XRayEncoderConfig,
    load_encoder,
    make_encoder_loss_fn,
    save_encoder,
)
from xraycardiac.xray2ct.ldm import X2CTLDMConfig, build_ldm, load_ldm, make_ldm_loss_fn, save_ldm

__all__ = ["apply_overrides", "cache_geometry", "train_x2ct_encoder", "train_x2ct_ldm"]


apply_overrides = parse_overrides
"""Kept for callers of the x2ct API: :func:`xraycardiac.trainer.parse_overrides` (all keys at once)."""


def cache_geometry(config: X2CTDataConfig, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Geometry of the cache's views about the RAS origin.

    Args:
        config: the cache's data config.
        names: view names in the encoder's order, e.g. ("pa", "lateral").

    Returns:
        ``(P (V, 3, 4) RAS mm -> pixel, cube ijk_to_ras (4, 4), indices of the views in the cache)``.

    Raises:
        ValueError: a view the cache does not hold (names ``views``).
    """
    missing = [n for n in names if n not in config.views]
    if missing:
        raise ValueError(f"views: the cache holds views {list(config.views)}; {missing} missing")
    geoms = view_geometries(config, (0.0, 0.0, 0.0))
    p = np.stack([geoms[n].projection_matrix() for n in names])
    return p, cube_ijk_to_ras(config, (0.0, 0.0, 0.0)), [config.views.index(n) for n in names]


def _frozen_autoencoder(autoencoder: str | Path, dataset: X2CTDataset) -> tuple[Any, Any, float, str]:
    """(model, config, latent_scale, sha256) of the autoencoder package, checked against the cache."""
    from xraycardiac.xray2ct.autoencoder import load_autoencoder

    ae, ae_cfg, extras = load_autoencoder(autoencoder)
    where = str(extras["source"]["file"])
    scale = extras.get("latent_scale")
    if not (isinstance(scale, int | float) and scale > 0):
        raise ValueError(f"autoencoder: {where} has no latent_scale (train it with train_x2ct_autoencoder)")
    check_autoencoder_data(extras.get("data_config"), dataset.config, where)
    ae.requires_grad_(False)
    return ae.eval(), ae_cfg, float(scale), str(extras["source"]["sha256"])


class _WithLatents(torch.utils.data.Dataset):
    """The cache's items plus ``"latent"`` (C, d, h, w): the frozen autoencoder's scaled latent of each case.

    :meth:`encode` fills them once, in the main process, before training (so DataLoader workers
    only read them).
    """

    def __init__(self, dataset: X2CTDataset, index: list[int]) -> None:
        self.dataset, self.index, self.latents = dataset, index, []

    @torch.no_grad()
    def encode(self, encode_latent: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.latents = [
            encode_latent(self.dataset[i]["ct"][None].to(device))[0].cpu() for i in range(len(self))
        ]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        assert self.latents, "_WithLatents.encode() runs before training"
        item = self.dataset[index]
        p = item["projection_matrices"][self.index]  # the views the encoder takes, in its order
        return {**item, "projection_matrices": p, "latent": self.latents[index]}


def _view_augment(
    config: X2CTDataConfig, index: list[int]
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    def augment(views: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_views(views[:, index], config, generator)

    return augment


def _description(kind: str, tcfg: Any, summary: dict[str, Any], extra: str) -> str:
    loss = (summary.get("last_log") or {}).get("loss")
    return (
        f"{kind}, {summary['step']} steps x batch {tcfg.batch_size}, EMA {tcfg.ema_decay}"
        + (f", last logged loss {loss:.4g}" if isinstance(loss, float) else "")
        + f"; {extra}; train config "
        + json.dumps(asdict(tcfg), sort_keys=True)
    )


def train_x2ct_encoder(
    data: str | Path,
    out: str | Path,
    autoencoder: str | Path,
    model_config: XRayEncoderConfig | None = None,
    train_config: Any = None,
    overrides: Sequence[str] = (),
    name: str = "x2ct-encoder",
    version: str = "0.1.0",
    split: str = "train",
    progress: Callable[..., None] | None = None,
    command: str | None = None,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or resume) the X-ray encoder against the frozen autoencoder; write a model package.

    Output in ``out``: ``checkpoint.pt`` (rerun to resume), ``log.jsonl`` (step, loss, contrastive,
    mse, reconstruction, contrastive_top1), ``model.pt`` (EMA weights, float16) and ``model.json``.

    Args:
        data: XRayToCT cache folder.
        out: run folder.
        autoencoder: the autoencoder package (run folder, weights file or model name).
        model_config: :class:`XRayEncoderConfig`; None derives it from the autoencoder and the cache
            (see the module docstring).
        train_config: :class:`xraycardiac.trainer.TrainConfig` (default: its defaults).
        overrides: ``key=value`` settings of either config (e.g. ``contrastive_weight=0``,
            ``n_views=1``, ``steps=500``); unknown keys are errors.
        name, version: manifest name and version of the result.
        split: cache split to train on ("train", "val", "test", "all").
        progress: ``progress(stage, fraction, **extra)``.
        command: the command line recorded in ``model.json``.
        init: start from these encoder weights (run folder, weights file or model name; its config
            must equal the encoder config) instead of random ones: fine-tuning; its sha256 is recorded.

    Returns:
        The trainer summary plus ``"model"`` (model.pt path) and ``"entry"`` (the model.json entry).

    Raises:
        ValueError: a bad cache, an autoencoder without latent_scale or trained on another cube, or an
            encoder config that does not fit them (names the field).
    """
    from xraycardiac.trainer import TrainConfig, Trainer, write_model_package

    dataset = X2CTDataset(data, split)
    ae, ae_cfg, scale, ae_sha = _frozen_autoencoder(autoencoder, dataset)
    dcfg = dataset.config
    mcfg = model_config or XRayEncoderConfig(
        view_size=dcfg.image_size, grid=ae_cfg.grid, latent_channels=ae_cfg.latent_channels,
        latent_factor=ae_cfg.downsample_factor,
    )  # fmt: skip
    tcfg = train_config or TrainConfig()
    if overrides:
        mcfg, tcfg = apply_overrides(overrides, mcfg, tcfg)
    check_encoder_fits(mcfg, ae_cfg, dcfg, "encoder config")
    names = view_names(mcfg.n_views)
    p, a, index = cache_geometry(dcfg, names)
    torch.manual_seed(tcfg.seed)
    network = XRayEncoder(mcfg)
    record = {"autoencoder_sha256": ae_sha, "views": list(names)}
    if init is not None:
        src = locate_run(init, "encoder")
        network.load_state_dict(load_encoder(src.file, expected=mcfg).state_dict())
        record["init_sha256"] = src.sha256

    def encode_latent(ct: torch.Tensor) -> torch.Tensor:
        return ae.encode(ct)[0] * scale

    loss_fn = make_encoder_loss_fn(encode_latent, mcfg, p, a, augment=_view_augment(dcfg, index))
    out = Path(out)
    items = _WithLatents(dataset, index)
    trainer = Trainer(network, loss_fn, items, tcfg, out, {**mcfg.to_dict(), **record})
    ae.to(trainer.device)
    items.encode(encode_latent, trainer.device)
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    weights = save_encoder(trainer.averaged_model(), out / "model.pt", half=True)
    mode = "biplanar" if mcfg.n_views == 2 else "single-view"
    ablation = "" if mcfg.contrastive_weight > 0 else " (ablation: no contrastive alignment)"
    entry = write_model_package(
        out, weights, name=name, version=version, command=command,
        config={**mcfg.to_dict(), **record, "data_config": dcfg.to_dict()},
        training_data=f"{len(dataset)} cases ({dcfg.grid}^3 CT + {'/'.join(names)} DRRs of "
        f"{dcfg.image_size}^2) of the XRayToCT cache {Path(data).name} (split {split})",
        description=_description(
            f"X-ray encoder (CLS-DM), {mode}{ablation}", tcfg, summary,
            f"losses contrastive {mcfg.contrastive_weight} / mse {mcfg.mse_weight} / reconstruction "
            f"{mcfg.reconstruction_weight} against autoencoder {ae_sha[:12]} (latent_scale {scale:.4g})",
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}


def train_x2ct_ldm(
    data: str | Path,
    out: str | Path,
    autoencoder: str | Path,
    encoder: str | Path,
    model_config: X2CTLDMConfig | None = None,
    train_config: Any = None,
    overrides: Sequence[str] = (),
    name: str = "x2ct-ldm",
    version: str = "0.1.0",
    split: str = "train",
    progress: Callable[..., None] | None = None,
    command: str | None = None,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or resume) the latent diffusion model on the frozen autoencoder and encoder; write a package.

    Output in ``out``: ``checkpoint.pt``, ``log.jsonl`` (step, loss, mse), ``model.pt`` (EMA weights,
    float16), ``model.json``.

    Args:
        data: XRayToCT cache folder.
        out: run folder.
        autoencoder: the autoencoder package (run folder, weights file or model name).
        encoder: the trained encoder (run folder, weights file or model name).
        model_config: :class:`X2CTLDMConfig`; None derives it from the other parts.
        train_config: :class:`xraycardiac.trainer.TrainConfig`.
        overrides: ``key=value`` settings of either config (e.g. ``sampler=rflow``, ``steps=2000``).
        name, version: manifest name and version of the result.
        split: cache split.
        progress: ``progress(stage, fraction, **extra)``.
        command: the command line recorded in ``model.json``.
        init: start from these LDM weights (run folder, weights file or model name; same config)
            instead of random ones: fine-tuning; its sha256 is recorded.

    Returns:
        The trainer summary plus ``"model"`` and ``"entry"``.

    Raises:
        ValueError: parts that do not fit (names the file or config field), an encoder trained with
            another autoencoder (per its model.json), or a bad cache.
    """
    from xraycardiac.trainer import TrainConfig, Trainer, write_model_package

    dataset = X2CTDataset(data, split)
    ae, ae_cfg, scale, ae_sha = _frozen_autoencoder(autoencoder, dataset)
    dcfg = dataset.config
    enc_src = locate_run(encoder, "encoder")
    enc = load_encoder(enc_src.file)
    check_encoder_fits(enc.config, ae_cfg, dcfg, str(enc_src.file))
    trained_with = enc_src.config.get("autoencoder_sha256")
    if trained_with is not None and trained_with != ae_sha:
        raise ValueError(
            f"encoder: {enc_src.file} was trained with another autoencoder (autoencoder_sha256 "
            f"{trained_with[:12]}... in its model.json, given {ae_sha[:12]}...)"
        )
    enc.requires_grad_(False)
    ecfg = enc.config
    mcfg = model_config or X2CTLDMConfig(
        latent_channels=ae_cfg.latent_channels, cond_channels=ecfg.latent_channels,
        global_embedding=ecfg.n_views == 1, n_views=ecfg.n_views,
    )  # fmt: skip
    tcfg = train_config or TrainConfig()
    if overrides:
        mcfg, tcfg = apply_overrides(overrides, mcfg, tcfg)
    check_ldm_fits(mcfg, ecfg, ae_cfg, "ldm config")
    names = view_names(ecfg.n_views)
    p, a, index = cache_geometry(dcfg, names)
    torch.manual_seed(tcfg.seed)
    unet, scheduler = build_ldm(mcfg)
    record = {"autoencoder_sha256": ae_sha, "encoder_sha256": enc_src.sha256, "views": list(names)}
    if init is not None:
        src = locate_run(init, "ldm")
        unet.load_state_dict(load_ldm(src.file, expected=mcfg).state_dict())
        record["init_sha256"] = src.sha256

    def encode_latent(ct: torch.Tensor) -> torch.Tensor:
        return ae.encode(ct)[0] * scale

    loss_fn = make_ldm_loss_fn(enc, encode_latent, scheduler, p, a, augment=_view_augment(dcfg, index))
    out = Path(out)
    items = _WithLatents(dataset, index)
    trainer = Trainer(unet, loss_fn, items, tcfg, out, {**mcfg.to_dict(), **record})
    ae.to(trainer.device)
    items.encode(encode_latent, trainer.device)
    enc.to(trainer.device)
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    weights = save_ldm(trainer.averaged_model(), out / "model.pt", half=True)
    entry = write_model_package(
        out, weights, name=name, version=version, command=command,
        config={**mcfg.to_dict(), **record, "data_config": dcfg.to_dict()},
        training_data=f"{len(dataset)} cases ({dcfg.grid}^3 CT + {'/'.join(names)} DRRs) of the XRayToCT "
        f"cache {Path(data).name} (split {split})",
        description=_description(
            f"latent diffusion (CLS-DM), {mcfg.sampler}/{mcfg.prediction_type}, "
            f"{'global embedding + ' if mcfg.global_embedding else ''}condition map", tcfg, summary,
            f"autoencoder {ae_sha[:12]}, encoder {enc_src.sha256[:12]}",
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}
