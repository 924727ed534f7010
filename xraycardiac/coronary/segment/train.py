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

__all__ = [
    "best_postprocessing",
    "build_scene_bank",
    "choose_postprocessing",
    "skeleton_target",
    "train_vessel_seg",
]

SCENES = "scenes.npz"
VAL_SCENES = "val_scenes.npz"
# fields chosen after training (on validation scenes): they do not change a resumed run's optimisation
POSTPROCESSING = ("threshold", "min_object_px", "min_object_fraction", "val_scenes", "val_seed")


def build_scene_bank(
    config: VesselSegConfig,
    cache: Path | None = None,
    progress: Callable[..., None] | None = None,
    validation: bool = False,
) -> list[Any]:
    """The training scenes of ``config``, or its validation scenes (read from ``cache`` when it holds them,
    else made and saved).

    Args:
        config: ``n_scenes`` from ``scene_seed`` (training) or ``val_scenes`` from ``val_seed``
            (``validation``); sizes and backgrounds cycle through ``scene_sizes`` / ``backgrounds``.
        cache: ``.npz`` file of the bank (checked against the fields that make it).
        progress: ``progress(stage, fraction)``.
        validation: make the validation bank.

    Returns:
        A list of :class:`~xraycardiac.coronary.synth.appearance.VesselScene` (validation scenes keep
        their centreline; cached training scenes do not need it).
    """
    from xraycardiac.coronary.synth.appearance import VesselScene, make_scene
    from xraycardiac.coronary.synth.projection import OutsideFieldOfViewError
    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.outputs import atomic_path

    n, first = (config.val_scenes, config.val_seed) if validation else (config.n_scenes, config.scene_seed)
    key = json.dumps({"n_scenes": n, "scene_seed": first, "scene_sizes": list(config.scene_sizes),
                      "backgrounds": list(config.backgrounds)}, sort_keys=True)  # fmt: skip
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                # the view (its pixel size sets the catheters' width) is kept since session 6; older banks lack it
                return [
                    VesselScene(z[f"t{i}"], z[f"t{i}"] > 0.05, z[f"c{i}"] if f"c{i}" in z else np.zeros((0, 2)),
                                z[f"b{i}"] if z[f"b{i}"].size > 1 else None, str(z[f"s{i}"]),
                                CArmGeometry.from_dict(json.loads(str(z[f"g{i}"]))) if f"g{i}" in z else None)
                    for i in range(int(z["n"]))
                ]  # fmt: skip
    scenes, seed = [], first
    while len(scenes) < n:
        i = len(scenes)
        size = config.scene_sizes[i % len(config.scene_sizes)]
        background = config.backgrounds[i % len(config.backgrounds)]
        try:
            scenes.append(make_scene(seed, size, background=background))
        except OutsideFieldOfViewError:
            pass
        seed += 1
        if progress is not None:
            progress(f"{'validation' if validation else 'training'} scenes {len(scenes)}/{n}", 0.0)
    if cache is not None:
        arrays: dict[str, Any] = {"key": np.array(key), "n": np.array(len(scenes))}
        for i, s in enumerate(scenes):
            arrays[f"t{i}"] = s.thickness_mm
            arrays[f"b{i}"] = s.background_mu if s.background_mu is not None else np.zeros(1, np.float32)
            arrays[f"s{i}"] = np.array(s.background)
            arrays[f"g{i}"] = np.array(json.dumps(s.geometry.to_dict()))
            if validation:
                arrays[f"c{i}"] = s.centreline_px
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache, ".npz") as tmp:
            np.savez(tmp, **arrays)
    return scenes


THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_OBJECTS_PX = (20, 100, 400)
MIN_OBJECT_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4)


def best_postprocessing(
    probabilities: list[np.ndarray], labels: list[np.ndarray]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The mask settings (``THRESHOLDS`` x ``MIN_OBJECTS_PX`` x ``MIN_OBJECT_FRACTIONS``) of best mean Dice.

    Args:
        probabilities: (rows, cols) vessel probability maps.
        labels: their (rows, cols) bool ground-truth masks.

    Returns:
        (the best row: ``threshold``, ``min_object_px``, ``min_object_fraction``, ``dice``; the table: one
        row per setting with its mean ``dice``).
    """
    from xraycardiac.coronary.segment.vessel_seg import vessel_mask
    from xraycardiac.metrics.chest_masks import dice as dice_of

    table = []
    for threshold in THRESHOLDS:
        for min_px in MIN_OBJECTS_PX:
            for fraction in MIN_OBJECT_FRACTIONS:
                dice = [dice_of(vessel_mask(prob, threshold, min_px, fraction), np.asarray(label, dtype=bool))
                        for prob, label in zip(probabilities, labels, strict=True)]  # fmt: skip
                table.append({"threshold": threshold, "min_object_px": min_px, "min_object_fraction": fraction,
                              "dice": float(np.nanmean(dice))})  # fmt: skip
    return max(table, key=lambda r: r["dice"]), table


def choose_postprocessing(
    network: Any, config: VesselSegConfig, scenes: list[Any], seed: int = 0
) -> tuple[VesselSegConfig, list[dict[str, float]]]:
    """``config`` with the mask settings that give the best mean Dice on validation ``scenes``.

    Each scene is shown once in a training-family look (seeded by ``seed`` and its index; vessels
    dark, as clinical frames are) and segmented whole by ``network``; no held-out family is used.

    Returns:
        (the config with its mask settings replaced, the table of :func:`best_postprocessing`).
    """
    from dataclasses import replace

    from xraycardiac.coronary.segment.vessel_seg import VesselSegmenter
    from xraycardiac.coronary.synth.appearance import AppearanceConfig, render_randomised

    segmenter = VesselSegmenter(network.eval(), config, "cpu", {})
    look = AppearanceConfig(profiles=config.profiles, noises=config.noises, p_invert=0.0)
    probs, labels = [], []
    for k, scene in enumerate(scenes):
        image, label, _ = render_randomised(scene, look, np.random.default_rng([seed, 73, k]))
        probs.append(segmenter(image).probability)
        labels.append(label)
    best, table = best_postprocessing(probs, labels)
    chosen = {k: best[k] for k in ("threshold", "min_object_px", "min_object_fraction")}
    return replace(config, **chosen), table


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

    trainer = Trainer(network, loss_fn, dataset, tcfg, out, mcfg.to_dict(), resume_free=POSTPROCESSING)
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    chosen = ""
    if mcfg.val_scenes:
        val = build_scene_bank(mcfg, out / VAL_SCENES, progress, validation=True)
        if progress is not None:
            progress(f"choosing the threshold on {len(val)} validation scenes", 1.0)
        mcfg, table = choose_postprocessing(trainer.averaged_model(), mcfg, val, tcfg.seed)
        best = max(r["dice"] for r in table)
        (out / "postprocessing.json").write_text(json.dumps(table, indent=1))
        chosen = (
            f"; mask threshold {mcfg.threshold}, min_object_px {mcfg.min_object_px} and min_object_fraction "
            f"{mcfg.min_object_fraction} chosen after training on "
            f"{len(val)} validation scenes (trees {mcfg.val_seed}.., training families; mean Dice {best:.3f})"
        )
    weights = save_weights(trainer.averaged_model(), mcfg, out / "model.pt")
    n_params = sum(p.numel() for p in network.parameters())
    entry = write_model_package(
        out, weights, name=name, version=version, command=command, config=mcfg.to_dict(),
        training_data=(
            f"{len(scenes)} synthetic scenes (procedural coronary trees {mcfg.scene_seed}.., one standard view "
            f"each at {list(mcfg.scene_sizes)} px, backgrounds {list(mcfg.backgrounds)}), "
            f"{mcfg.crop_px} px crops zoomed {list(mcfg.zoom)} with randomised appearance (profiles "
            f"{list(mcfg.profiles)}, noise {list(mcfg.noises)}); no real CT, no held-out family{chosen}"
        ),
        description=(
            f"coronary vessel segmentation (MONAI UNet 2D {list(mcfg.channels)}, {n_params / 1e6:.2f}M parameters, "
            f"probability output), {summary['step']} steps x batch {tcfg.batch_size}, EMA {tcfg.ema_decay}; "
            "train config " + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}
