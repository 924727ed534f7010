"""Training of the TCDM (:mod:`xraycardiac.cardiac.tcdm`): self-templates, the case folder, the trainer run.

Training (:func:`train_cardiac_tcdm`) reads ``DIR/images/<name>`` (CT, HU) and ``DIR/labels/<name>``
(cardiac table values, same grid), NIfTI/NRRD/MetaImage, each resampled as an array to ``grid³``
(trilinear / nearest: the cases should already share a cardiac field of view). Templates: each
case is its own template under a random diffeomorphism drawn per step (:func:`make_self_template`:
the DDF and its inverse are known, so the consistency term applies), unless
``DIR/templates/images/<name>`` + ``DIR/templates/labels/<name>`` give one already in that case's
frame (u = 0, no consistency term).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, check_labels, save_tcdm, tcdm_loss, warp

__all__ = [
    "CardiacCTDataset", "find_cases", "make_self_template", "random_deformation", "train_cardiac_tcdm",
]  # fmt: skip

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def random_deformation(
    shape: Sequence[int], strength_vox: float, control_spacing_vox: int, generator: torch.Generator,
    batch: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A random diffeomorphism and its inverse: (ddf, inverse_ddf), each (batch, 3, D, H, W) voxels.

    A stationary velocity v (Gaussian noise on a control grid every ``control_spacing_vox`` voxels,
    trilinearly upsampled, scaled to a largest magnitude of ``strength_vox``) is integrated by
    scaling and squaring (``monai.networks.blocks.DVF2DDF``, 7 steps): ddf = exp(v), inverse =
    exp(-v), the MGM's construction. ``warp(warp(f, inverse), ddf) ≈ f``.
    """
    from monai.networks.blocks import DVF2DDF

    size = tuple(int(n) for n in shape)
    coarse = [max(2, math.ceil(n / control_spacing_vox) + 1) for n in size]
    v = torch.randn((batch, 3, *coarse), generator=generator, device=generator.device)
    v = F.interpolate(v, size=size, mode="trilinear", align_corners=True)
    peak = v.norm(dim=1).flatten(1).amax(1).clamp(min=1e-6).view(batch, 1, 1, 1, 1)
    v = v * (float(strength_vox) / peak)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*grid_sample.*")
        integrate = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="zeros")
        return integrate(v), integrate(-v)


def make_self_template(
    batch: dict[str, Any], config: TCDMConfig, generator: torch.Generator
) -> dict[str, Any]:
    """The batch with each case as its own deformed template (``template_*``, ``ddf``, ``inverse_ddf``).

    template = case o (id + u⁻) (image trilinear, labels nearest), so the case is the template
    seen through u: exactly what the MGM gives at synthesis time.
    """
    image = torch.as_tensor(batch["image"]).float()
    labels = check_labels(batch["mask"], config.n_classes, "batch['mask']")
    strength, spacing = config.deform_strength_vox, config.deform_control_spacing_vox
    ddf, inv = random_deformation(image.shape[2:], strength, spacing, generator, image.shape[0])
    ddf, inv = ddf.to(image.device), inv.to(image.device)
    t_lab = warp(labels[:, None].float(), inv, mode="nearest")[:, 0].round().long()
    out = {**batch, "ddf": ddf, "inverse_ddf": inv}
    out["template_image"], out["template_mask"] = warp(image, inv), t_lab
    return out


def find_cases(root: str | os.PathLike[str]) -> list[dict[str, Path | None]]:
    """The training cases of a folder (module docstring): ``{"image", "labels", "template_*"}`` paths.

    Raises:
        FileNotFoundError: no ``images/`` or ``labels/`` folder.
        ValueError: an image without its label map, a partial ``templates/`` folder, no case.
    """
    root = Path(root)
    if not ((root / "images").is_dir() and (root / "labels").is_dir()):
        raise FileNotFoundError(f"{root}: expected the folders images/ and labels/ (files of the same names)")
    tdir = root / "templates"
    cases: list[dict[str, Path | None]] = []
    for img in sorted(p for p in (root / "images").iterdir() if p.name.endswith(_EXTENSIONS)):
        lab = root / "labels" / img.name
        if not lab.is_file():
            raise ValueError(f"{img}: no label map {lab} of the same name")
        case: dict[str, Path | None] = {"image": img, "labels": lab}
        t_img, t_lab = tdir / "images" / img.name, tdir / "labels" / img.name
        if tdir.is_dir() and not (t_img.is_file() and t_lab.is_file()):
            raise ValueError(f"{tdir}: no template {t_img} + {t_lab} for case {img.name} (give all or none)")
        case["template_image"], case["template_labels"] = (t_img, t_lab) if tdir.is_dir() else (None, None)
        cases.append(case)
    if not cases:
        raise ValueError(f"{root / 'images'}: no image file ({', '.join(_EXTENSIONS)})")
    return cases


class CardiacCTDataset(torch.utils.data.Dataset):
    """(image, mask[, template]) training items at ``config.grid³`` (see the module docstring).

    Items: ``"image"`` (1, G, G, G) float32 in [-1, 1], ``"mask"`` (G, G, G) int64 and, with a
    ``templates/`` folder, ``"template_image"`` / ``"template_mask"`` likewise.
    """

    def __init__(self, root: str | os.PathLike[str], config: TCDMConfig) -> None:
        self.root, self.config, self.cases = Path(root), config, find_cases(root)

    def __len__(self) -> int:
        return len(self.cases)

    def _pair(self, image_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        from xraycardiac.io import read_volume

        img, lab = read_volume(image_path).array, read_volume(labels_path).array
        if img.shape != lab.shape:
            raise ValueError(f"{labels_path}: shape {lab.shape} differs from its image's {img.shape}")
        g = (self.config.grid,) * 3
        x = F.interpolate(torch.from_numpy(np.asarray(img, np.float32))[None, None], g, mode="trilinear")
        y = F.interpolate(torch.from_numpy(np.asarray(lab, np.float32))[None, None], g, mode="nearest")
        labels = check_labels(y[0, 0].round(), self.config.n_classes, str(labels_path))[0]
        return self.config.hu_to_unit(x[0]), labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[index]
        image, mask = self._pair(case["image"], case["labels"])
        item = {"image": image, "mask": mask}
        if case["template_image"] is not None:
            pair = self._pair(case["template_image"], case["template_labels"])
            item["template_image"], item["template_mask"] = pair
        return item


def train_cardiac_tcdm(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    progress: Callable[..., None] | None = None,
    model_config: TCDMConfig | None = None,
    train_config: Any = None,
    name: str = "cardiac-tcdm",
    version: str = "0.1.0",
    command: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) the TCDM on the shared trainer and write an importable model package.

    Output folder: ``checkpoint.pt`` (rerun to resume), ``log.jsonl``, ``model.pt`` (EMA weights)
    and ``model.json`` (manifest entry).

    Args:
        data_dir: training folder (module docstring).
        out: run folder.
        overrides: ``key=value`` settings of :class:`TCDMConfig` and ``TrainConfig``.
        progress: ``progress(stage, fraction, **extra)``.
        model_config, train_config: starting configs (defaults: demo size, trainer defaults).
        name, version, command: manifest name, version and recorded command line.

    Returns:
        The trainer summary plus ``"model"`` (path of model.pt) and ``"entry"``.
    """
    from xraycardiac.trainer import TrainConfig, Trainer, crop_batch, parse_overrides, write_model_package

    mcfg, tcfg = model_config or TCDMConfig(), train_config or TrainConfig()
    if overrides:
        mcfg, tcfg = parse_overrides(list(overrides), mcfg, tcfg)
    dataset = CardiacCTDataset(data_dir, mcfg)
    torch.manual_seed(tcfg.seed)
    network, scheduler = build_tcdm(mcfg)

    def loss_fn(net: torch.nn.Module, batch: dict[str, Any], gen: torch.Generator):
        if mcfg.use_template and "template_image" not in batch:
            batch = make_self_template(batch, mcfg, gen)
        if mcfg.train_crop_vox:
            batch = crop_batch(batch, mcfg.train_crop_vox, gen, mcfg.grid)
        return tcdm_loss(net, scheduler, batch, gen)

    out = Path(out)
    trainer = Trainer(network, loss_fn, dataset, tcfg, out, mcfg.to_dict())
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    weights = save_tcdm(trainer.averaged_model(), out / "model.pt", half=True)
    mode = "given templates" if dataset.cases[0]["template_image"] is not None else "self-templates"
    entry = write_model_package(
        out, weights, name=name, version=version, command=command, config=mcfg.to_dict(),
        training_data=f"{len(dataset)} cardiac CT cases ({mcfg.grid}^3) from {Path(data_dir).name}, {mode}",
        description=(
            f"template-conditioned cardiac CT diffusion (TCDM), use_template={mcfg.use_template}, "
            f"{summary['step']} steps x batch {tcfg.batch_size}"
            + (f" of random {mcfg.train_crop_vox}^3 blocks" if mcfg.train_crop_vox else "")
            + "; train config "
            + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}
