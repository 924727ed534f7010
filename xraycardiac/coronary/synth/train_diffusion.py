"""``xraycardiac train angio-diffusion``: train the mask-conditioned angiogram IDDPM on (mask, image) pairs.

Training data, either of two layouts (detected from the folder):

1. a synthetic coronary pair dataset (``dataset.json`` of format ``xraycardiac.coronary_pairs``,
   from ``xraycardiac coronary synth``): both views of the pairs of the trees in the chosen split
   (``split_of_tree``), with their masks and path-length maps;
2. any folder of real or other angiograms::

       DIR/images/<name>.png        grey angiogram frames (8 or 16 bit; RGB is converted to grey)
       DIR/masks/<name>.png         vessel masks of the same size, nonzero = vessel
       DIR/thickness/<name>.npy     optional: (rows, cols) path length in mm (needed for a
                                    "mask+thickness" model; use condition=mask otherwise)

   e.g. XCAD (its ``images/`` and ``masks/``), or ARCADE after rasterising its COCO polygons to
   PNG masks. Every image needs a mask of the same name; frames are resized to ``image_size``.

Output folder ``OUT``: ``checkpoint.pt`` (resumable: rerun the same command), ``log.jsonl``, and
at the end an importable model package: ``model.pt`` (EMA weights, float16) + ``model.json`` (the
manifest entry: name, version, sha256, training data and command, config), so
``xraycardiac models import OUT`` installs it and ``--renderer-model OUT`` uses it directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.coronary.synth.render_diffusion import AngioDiffusionConfig

__all__ = ["MaskImagePairs", "find_pairs", "train_angio_diffusion"]  # noqa: F822 -- made on first use


def _read_grey(path: Path) -> np.ndarray:
    """A PNG as float32 in [0, 1] (8/16-bit grey or RGB converted to grey)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32)
                return arr / (65535.0 if arr.max() > 255 else 255.0)
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def find_pairs(root: str | os.PathLike[str], split: str = "train") -> list[dict[str, Path | None]]:
    """The (image, mask, thickness) files of a training folder (see the module docstring for layouts).

    Args:
        root: a coronary pair dataset or a folder with ``images/`` and ``masks/``.
        split: "train", "val", "test" or "all" (coronary pair datasets only; folders use all).

    Returns:
        One ``{"image", "mask", "thickness"}`` dict of paths per training image (thickness may be None).

    Raises:
        FileNotFoundError: ``root`` missing, or neither layout found (says what was expected).
        ValueError: an image without its mask, or no image at all.
    """
    from xraycardiac.coronary.synth import dataset as ds

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {root} not found")
    items: list[dict[str, Path | None]] = []
    if (root / ds.INFO_NAME).is_file():
        for sample in ds.list_samples(root, split=None if split == "all" else split):
            for v in (1, 2):
                items.append(
                    {"image": sample / f"view{v}.png", "mask": sample / f"mask{v}.png",
                     "thickness": sample / f"thickness{v}.npy"}
                )  # fmt: skip
        if not items:
            raise ValueError(f"{root}: the coronary pair dataset has no sample in split {split!r}")
        return items
    images, masks = root / "images", root / "masks"
    if not (images.is_dir() and masks.is_dir()):
        raise FileNotFoundError(
            f"{root}: expected a coronary pair dataset (dataset.json) or the folders images/ and masks/ "
            "(PNG files of the same names; optional thickness/<name>.npy)"
        )
    for img in sorted(images.glob("*.png")):
        mask = masks / img.name
        if not mask.is_file():
            raise ValueError(f"{img}: no mask {mask} of the same name")
        thick = root / "thickness" / f"{img.stem}.npy"
        items.append({"image": img, "mask": mask, "thickness": thick if thick.is_file() else None})
    if not items:
        raise ValueError(f"{images}: no .png image")
    return items


def _make_dataset_class() -> type:
    import torch

    from xraycardiac.coronary.synth.render_diffusion import encode_condition, resize_square

    class MaskImagePairs(torch.utils.data.Dataset):
        """(image, condition) training items for the angiogram IDDPM.

        Each item: ``{"image": (1, S, S) float32 in [-1, 1], "condition": (Cc, S, S) float32}``
        with S = ``config.image_size`` (see ``encode_condition``).

        Args:
            root: a training folder (:func:`find_pairs`).
            config: the model config (size and condition channels).
            split: see :func:`find_pairs`.
        """

        def __init__(self, root: str | os.PathLike[str], config: AngioDiffusionConfig, split: str = "train"):
            self.root, self.config = Path(root), config
            self.items = find_pairs(root, split)
            if config.condition == "mask+thickness":
                missing = [it["image"] for it in self.items if it["thickness"] is None]
                if missing:
                    raise ValueError(
                        f"{missing[0]}: no thickness map (thickness/<name>.npy) for a mask+thickness model "
                        f"({len(missing)} of {len(self.items)} images lack one); train with condition=mask"
                    )

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index: int) -> dict[str, Any]:
            it = self.items[index]
            image = _read_grey(it["image"])
            mask = _read_grey(it["mask"]) > 0
            if image.shape != mask.shape:
                raise ValueError(f"{it['mask']}: shape {mask.shape} differs from its image's {image.shape}")
            thick = None
            if self.config.condition == "mask+thickness":
                thick = np.load(it["thickness"]).astype(np.float32)
                if thick.shape != image.shape:
                    raise ValueError(
                        f"{it['thickness']}: shape {thick.shape} differs from its image's {image.shape}"
                    )
            cond = encode_condition(mask, thick, self.config)[0]
            img = resize_square(torch.from_numpy(image)[None, None], self.config.image_size, "bilinear")
            return {"image": img[0] * 2.0 - 1.0, "condition": cond}

    return MaskImagePairs


def __getattr__(name: str) -> Any:
    if name == "MaskImagePairs":
        cls = _make_dataset_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def train_angio_diffusion(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model_config: AngioDiffusionConfig | None = None,
    train_config: Any = None,
    name: str = "angio-diffusion",
    version: str = "0.1.0",
    split: str = "train",
    progress: Callable[..., None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) the angiogram IDDPM and write an importable model package into ``out``.

    Args:
        data: training folder (see the module docstring).
        out: output folder (checkpoint, log, ``model.pt`` + ``model.json``).
        model_config: :class:`AngioDiffusionConfig` (default: the demo model's).
        train_config: :class:`xraycardiac.trainer.TrainConfig` (default: its defaults).
        name, version: manifest name and version of the result.
        split: which split of a coronary pair dataset to train on.
        progress: ``progress(stage, fraction, **extra)``.
        command: the command line recorded in ``model.json`` (default: this process's argv).

    Returns:
        The trainer summary plus ``"model": path of model.pt`` and ``"entry"`` (the manifest entry).
    """
    import torch

    from xraycardiac.coronary.synth.render_diffusion import build_network, build_scheduler, save_weights
    from xraycardiac.diffusion import hybrid_loss
    from xraycardiac.trainer import TrainConfig, Trainer, write_model_package

    mcfg = model_config or AngioDiffusionConfig()
    tcfg = train_config or TrainConfig()
    dataset = __getattr__("MaskImagePairs")(data, mcfg, split)
    torch.manual_seed(tcfg.seed)
    network = build_network(mcfg)
    scheduler = build_scheduler(mcfg, "ddpm")

    def loss_fn(net, batch, gen):
        scheduler.to(batch["image"].device)
        return hybrid_loss(net, scheduler, batch["image"], batch["condition"], gen, mcfg.vlb_weight)

    out = Path(out)
    trainer = Trainer(network, loss_fn, dataset, tcfg, out, mcfg.to_dict())
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    weights = save_weights(trainer.averaged_model(), mcfg, out / "model.pt")
    entry = write_model_package(
        out, weights, name=name, version=version, command=command, config=mcfg.to_dict(),
        training_data=f"{len(dataset)} (mask, angiogram) images from {Path(data).name} (split {split})",
        description=(
            f"mask-conditioned angiogram IDDPM, {mcfg.image_size}x{mcfg.image_size}, {mcfg.condition}, "
            f"{summary['step']} steps x batch {tcfg.batch_size}, EMA {tcfg.ema_decay}; train config "
            + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}
