"""Training of the TCDM (:mod:`xraycardiac.cardiac.tcdm`): self-templates, the case folder, the trainer run.

Training (:func:`train_cardiac_tcdm`) reads ``DIR/images/<name>`` (CT, HU) and ``DIR/labels/<name>``
(cardiac table values, same grid), NIfTI/NRRD/MetaImage, each resampled as an array to ``grid³``
(trilinear / nearest: the cases should already share a cardiac field of view). Templates: each
case is its own template under a random diffeomorphism drawn per step (:func:`make_self_template`:
the DDF and its inverse are known, so the consistency term applies), unless
``DIR/templates/images/<name>`` + ``DIR/templates/labels/<name>`` give one already in that case's
frame (u = 0, no consistency term).

Random label merging (``TCDMConfig.label_merge_prob``, :func:`merge_labels`): per case and step the
chambers and myocardium may become one heart label (coronaries merged or not), so one model
conditions on coarse (TotalSegmentator-like) or fine label maps. ``init`` starts from another TCDM's
weights (fine-tuning); a model of fewer classes is widened by :func:`widen_classes`.
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

from xraycardiac.cardiac.labels import CORONARY_LABELS, LA, LV, MYO, RA, RV, WHOLE_HEART
from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, check_labels, save_tcdm, tcdm_loss, warp

__all__ = [
    "CardiacCTDataset", "find_cases", "jitter_structures", "make_self_template", "merge_labels", "random_deformation",
    "train_cardiac_tcdm", "widen_classes",
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


def jitter_structures(
    batch: dict[str, Any], config: TCDMConfig, generator: torch.Generator
) -> dict[str, Any]:
    """The batch with each structure's HU shifted by its own N(0, ``structure_hu_jitter``) offset per case.

    Applied to the case before its self-template is drawn, so template and case agree; the offset is
    converted to the [-1, 1] scale of ``hu_window`` and the result clipped to it.
    """
    if config.structure_hu_jitter <= 0:
        return batch
    mask = torch.as_tensor(batch["mask"]).long()
    lo, hi = config.hu_window
    std = 2.0 * config.structure_hu_jitter / (hi - lo)
    offsets = torch.randn((mask.shape[0], config.n_classes), generator=generator, device=generator.device)
    shift = torch.gather(offsets.to(mask.device) * std, 1, mask.flatten(1)).view(mask.shape)
    return {**batch, "image": (torch.as_tensor(batch["image"]).float() + shift[:, None]).clamp(-1.0, 1.0)}


def merge_labels(batch: dict[str, Any], config: TCDMConfig, generator: torch.Generator) -> dict[str, Any]:
    """The batch with random label merging (``TCDMConfig.label_merge_prob``), the same in mask and template.

    Per case, with probability ``label_merge_prob``: LV, RV, LA, RA and myocardium (1-5) become the
    undivided heart (10), and with probability 1/2 the coronaries (8, 9) join it. A model without
    the heart class (``n_classes`` <= 10) gets the batch unchanged.
    """
    if config.label_merge_prob <= 0 or config.n_classes <= WHOLE_HEART:
        return batch
    mask = torch.as_tensor(batch["mask"])
    draws = torch.rand((mask.shape[0], 2), generator=generator, device=generator.device).cpu()
    heart = (draws[:, 0] < config.label_merge_prob).tolist()
    coronary = (draws[:, 1] < 0.5).tolist()
    lut = torch.arange(config.n_classes)
    merged = lut.clone()
    merged[[LV, RV, LA, RA, MYO]] = WHOLE_HEART
    with_coronaries = merged.clone()
    with_coronaries[list(CORONARY_LABELS)] = WHOLE_HEART
    luts = [
        with_coronaries if h and c else merged if h else lut for h, c in zip(heart, coronary, strict=True)
    ]
    out = dict(batch)
    for key in ("mask", "template_mask"):
        if key in batch:
            labels = torch.as_tensor(batch[key]).long()
            out[key] = torch.stack([t.to(labels.device)[lab] for t, lab in zip(luts, labels, strict=True)])
    return out


def widen_classes(
    state_dict: dict[str, torch.Tensor], old: TCDMConfig, new: TCDMConfig
) -> dict[str, torch.Tensor]:
    """A TCDM state dict of ``old.n_classes`` classes made to fit ``new`` (more classes, otherwise the same).

    The one-hot channels of the added classes are inserted into the input convolution (both the
    target's and the template's): each gets the mean kernel of the heart structures 1-5 the old model
    knows (the undivided heart starts as their average), and the bias absorbs the -1 those channels
    carry everywhere else, so every voxel of an old class gets the old model's first activation.

    Raises:
        ValueError: fewer classes in ``new``, or configs that differ in anything else.
    """
    net = (
        "channels",
        "attention_levels",
        "num_res_blocks",
        "norm_num_groups",
        "num_head_channels",
        "use_template",
    )
    differ = [f for f in net if getattr(old, f) != getattr(new, f)]
    if new.n_classes < old.n_classes or differ:
        raise ValueError(
            f"init: a TCDM of {old.n_classes} classes can only be widened to as many or more classes with the "
            f"same network settings; got n_classes {new.n_classes}, differing {differ or 'nothing else'}"
        )
    key = next(k for k in state_dict if k.startswith("conv_in") and k.endswith("weight"))
    w, b = state_dict[key].float(), state_dict[key.replace("weight", "bias")].float()
    n, extra = old.n_classes, new.n_classes - old.n_classes
    heart = (
        w[:, [1 + c for c in (LV, RV, LA, RA, MYO) if c < n]].mean(1, keepdim=True).repeat(1, extra, 1, 1, 1)
    )
    parts = [w[:, : 1 + n], heart]
    if old.use_template:
        t_heart = w[:, [2 + n + c for c in (LV, RV, LA, RA, MYO) if c < n]].mean(1, keepdim=True)
        parts += [w[:, 1 + n : 2 + 2 * n], t_heart.repeat(1, extra, 1, 1, 1)]
        heart = torch.cat([heart, t_heart.repeat(1, extra, 1, 1, 1)], 1)
    out = dict(state_dict)
    out[key] = torch.cat(parts, 1).to(state_dict[key].dtype)
    out[key.replace("weight", "bias")] = (b + heart.sum((1, 2, 3, 4))).to(state_dict[key].dtype)
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
    init: str | os.PathLike[str] | None = None,
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
        init: start from this TCDM (name, run folder or weights file) instead of random weights;
            it must have the same network settings, with at most fewer classes (widened by
            :func:`widen_classes`). Ignored when ``out`` holds a checkpoint (that run resumes).

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
    if init is not None:
        from xraycardiac.cardiac.tcdm import load_tcdm

        start = load_tcdm(init)[0]
        network.load_state_dict(widen_classes(start.state_dict(), start.config, mcfg))

    def loss_fn(net: torch.nn.Module, batch: dict[str, Any], gen: torch.Generator):
        if mcfg.use_template and "template_image" not in batch:
            batch = make_self_template(jitter_structures(batch, mcfg, gen), mcfg, gen)
        batch = merge_labels(batch, mcfg, gen)
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
            + (f", random label merging p={mcfg.label_merge_prob:g}" if mcfg.n_classes > WHOLE_HEART else "")
            + (f", structure HU jitter {mcfg.structure_hu_jitter:g} HU" if mcfg.structure_hu_jitter else "")
            + (f", started from {init}" if init is not None else "")
            + "; train config "
            + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}
