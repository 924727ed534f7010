"""``xraycardiac train coronary-vessel-seg``: train the vessel segmentation network on randomised angiograms.

Data: a bank of ``n_scenes`` scenes (:func:`xraycardiac.coronary.synth.appearance.make_scene`:
procedural tree seeds ``scene_seed ..``, one standard view each, detector sizes cycling through
``scene_sizes``, backgrounds cycling through ``backgrounds``), built once and cached in
``OUT/scenes.npz`` (a resumed run reuses it). Every training item is a fresh draw: a random crop
of a scene rescaled by ``zoom`` (:func:`~xraycardiac.coronary.synth.appearance.crop_scene`) and a
random look (:func:`~xraycardiac.coronary.synth.appearance.render_randomised` with the config's
``profiles`` / ``noises``), seeded by the item's index, so the shared trainer's exact resume holds.
The real chest CT background and the held-out profile / noise models are never drawn.

Loss: binary cross-entropy on the logits plus soft Dice (1 - Dice of the probabilities over the
batch), equal weights (nnU-Net's default pair), plus ``skeleton_weight`` times a skeleton-recall
term (1 - mean probability on the label's skeleton, :func:`skeleton_target`; Kirchhoff et al.,
"Skeleton Recall Loss", ECCV 2024): Dice is dominated by the wide proximal vessels, the skeleton
term weighs a thin distal branch like a thick one, which is what centreline recall measures. Output folder: ``checkpoint.pt``, ``log.jsonl``,
``model.pt`` (EMA weights) + ``model.json`` (``xraycardiac models import OUT`` installs it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.coronary.segment.vessel_seg import VesselSegConfig

__all__ = ["build_scene_bank", "skeleton_target", "train_vessel_seg"]

SCENES = "scenes.npz"


def build_scene_bank(
    config: VesselSegConfig, cache: Path | None = None, progress: Callable[..., None] | None = None
) -> list[Any]:
    """The training scenes of ``config`` (read from ``cache`` when it holds them, else made and saved).

    Returns:
        A list of :class:`~xraycardiac.coronary.synth.appearance.VesselScene`.
    """
    from xraycardiac.coronary.synth.appearance import VesselScene, make_scene
    from xraycardiac.coronary.synth.projection import OutsideFieldOfViewError
    from xraycardiac.outputs import atomic_path

    key = json.dumps({k: v for k, v in asdict(config).items() if k in (
        "n_scenes", "scene_seed", "scene_sizes", "backgrounds")}, sort_keys=True)  # fmt: skip
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return [
                    VesselScene(z[f"t{i}"], z[f"t{i}"] > 0.05, np.zeros((0, 2)),
                                z[f"b{i}"] if z[f"b{i}"].size > 1 else None, str(z[f"s{i}"]))
                    for i in range(int(z["n"]))
                ]  # fmt: skip
    scenes, seed = [], config.scene_seed
    while len(scenes) < config.n_scenes:
        i = len(scenes)
        size = config.scene_sizes[i % len(config.scene_sizes)]
        background = config.backgrounds[i % len(config.backgrounds)]
        try:
            scenes.append(make_scene(seed, size, background=background))
        except OutsideFieldOfViewError:
            pass
        seed += 1
        if progress is not None:
            progress(f"training scenes {len(scenes)}/{config.n_scenes}", 0.0)
    if cache is not None:
        arrays: dict[str, Any] = {"key": np.array(key), "n": np.array(len(scenes))}
        for i, s in enumerate(scenes):
            arrays[f"t{i}"] = s.thickness_mm
            arrays[f"b{i}"] = s.background_mu if s.background_mu is not None else np.zeros(1, np.float32)
            arrays[f"s{i}"] = np.array(s.background)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache, ".npz") as tmp:
            np.savez(tmp, **arrays)
    return scenes


def skeleton_target(label: np.ndarray) -> np.ndarray:
    """The skeleton of a (rows, cols) bool vessel label (bool, on the label), target of the skeleton-recall term."""
    from skimage.morphology import skeletonize

    return skeletonize(np.asarray(label, dtype=bool)) & label


def _make_dataset(scenes: list[Any], config: VesselSegConfig, length: int, seed: int) -> Any:
    import torch

    from xraycardiac.coronary.synth.appearance import AppearanceConfig, crop_scene, render_randomised

    look = AppearanceConfig(profiles=config.profiles, noises=config.noises)

    class _Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return length

        def __getitem__(self, index: int) -> dict[str, Any]:
            rng = np.random.default_rng(np.random.SeedSequence([seed, 71, int(index)]))
            scene = scenes[int(index) % len(scenes)]
            zoom = float(rng.uniform(*config.zoom))
            crop = crop_scene(scene, rng, config.crop_px, zoom, config.p_vessel_crop)
            image, label, _ = render_randomised(crop, look, rng)
            item = {
                "image": torch.from_numpy(image)[None],
                "label": torch.from_numpy(label.astype(np.float32))[None],
            }
            if config.skeleton_weight > 0:
                item["skeleton"] = torch.from_numpy(skeleton_target(label).astype(np.float32))[None]
            return item

    return _Items()


def train_vessel_seg(
    out: str | Path,
    model_config: VesselSegConfig | None = None,
    train_config: Any = None,
    name: str = "coronary-vessel-seg",
    version: str = "0.1.0",
    progress: Callable[..., None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) the vessel segmentation network and write an importable model package into ``out``.

    Args:
        out: run folder (``scenes.npz``, checkpoint, log, ``model.pt`` + ``model.json``).
        model_config: :class:`VesselSegConfig` (default: the demo model's).
        train_config: :class:`xraycardiac.trainer.TrainConfig` (default: its defaults).
        name, version: manifest name and version of the result.
        progress: ``progress(stage, fraction, **extra)``.
        command: the command line recorded in ``model.json`` (default: this process's argv).

    Returns:
        The trainer summary plus ``"model"`` (path of model.pt) and ``"entry"`` (the manifest entry).
    """
    import torch
    import torch.nn.functional as F

    from xraycardiac.coronary.segment.vessel_seg import build_network, save_weights
    from xraycardiac.trainer import TrainConfig, Trainer, write_model_package

    mcfg = model_config or VesselSegConfig()
    tcfg = train_config or TrainConfig()
    out = Path(out)
    scenes = build_scene_bank(mcfg, out / SCENES, progress)
    dataset = _make_dataset(scenes, mcfg, tcfg.steps * tcfg.batch_size, tcfg.seed)
    torch.manual_seed(tcfg.seed)
    network = build_network(mcfg)

    def loss_fn(net: Any, batch: dict[str, Any], gen: Any) -> tuple[Any, dict[str, float]]:
        logits = net(batch["image"])
        label = batch["label"]
        bce = F.binary_cross_entropy_with_logits(logits, label)
        prob = torch.sigmoid(logits)
        dice = (2 * (prob * label).sum() + 1.0) / (prob.sum() + label.sum() + 1.0)
        loss = bce + (1 - dice)
        metrics = {"bce": float(bce.detach()), "dice": float(dice.detach())}
        if mcfg.skeleton_weight > 0:
            skel = batch["skeleton"]
            recall = ((prob * skel).sum() + 1.0) / (skel.sum() + 1.0)
            loss = loss + mcfg.skeleton_weight * (1 - recall)
            metrics["skeleton_recall"] = float(recall.detach())
        return loss, metrics

    trainer = Trainer(network, loss_fn, dataset, tcfg, out, mcfg.to_dict())
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    weights = save_weights(trainer.averaged_model(), mcfg, out / "model.pt")
    n_params = sum(p.numel() for p in network.parameters())
    entry = write_model_package(
        out, weights, name=name, version=version, command=command, config=mcfg.to_dict(),
        training_data=(
            f"{len(scenes)} synthetic scenes (procedural coronary trees {mcfg.scene_seed}.., one standard view "
            f"each at {list(mcfg.scene_sizes)} px, backgrounds {list(mcfg.backgrounds)}), "
            f"{mcfg.crop_px} px crops zoomed {list(mcfg.zoom)} with randomised appearance (profiles "
            f"{list(mcfg.profiles)}, noise {list(mcfg.noises)}); no real CT, no held-out family"
        ),
        description=(
            f"coronary vessel segmentation (MONAI UNet 2D {list(mcfg.channels)}, {n_params / 1e6:.2f}M parameters, "
            f"probability output), {summary['step']} steps x batch {tcfg.batch_size}, EMA {tcfg.ema_decay}; "
            "train config " + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}
