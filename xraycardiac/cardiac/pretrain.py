"""``xraycardiac cardiac pretrain``: does synthetic pretraining (with or without CAL) help segmentation?

Three arms, each ending with the same fine-tuning on the few "real" labelled cases and evaluated on
the same held-out test cases (Dice and HD95 per structure, :func:`~xraycardiac.cardiac.cal.evaluate_segmentation`):

* ``none``: no pretraining (fine-tuning from a fresh, seeded network);
* ``synthetic``: pretraining on the synthetic set with every voxel trusted (confidence 1);
* ``cal``: pretraining weighted by the synthetic set's confidence maps (CAL, :mod:`xraycardiac.cardiac.cal`).

All arms start from the same seeded initial network and see the same batches. Inputs:

* ``synthetic``: a ``xraycardiac cardiac synth`` folder (``datalist.json`` with image, label and
  confidence files);
* ``finetune`` / ``test``: folders with ``images/`` and ``labels/`` of the same file names (e.g.
  ``xraycardiac cardiac phantoms`` of other seeds, or real cases mapped to the label table).

Every volume is resampled to the first synthetic case's grid (trilinear for images, nearest for
labels, as the TCDM data loader does), so HD95 is in mm of that grid: the test case's extent
divided by the grid size per axis. Images are HU clipped to [-1000, 1000] and mapped to [-1, 1].
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xraycardiac.cardiac.cal import CALConfig, SegmentationVolumes, evaluate_segmentation
from xraycardiac.cardiac.labels import FINE_LABELS

__all__ = ["ARMS", "HU_WINDOW", "compare_pretraining", "format_pretraining_table", "read_cases"]

ARMS = ("none", "synthetic", "cal")
HU_WINDOW = (-1000.0, 1000.0)


def _resize(array: np.ndarray, grid: tuple[int, ...], labels: bool) -> np.ndarray:
    x = torch.from_numpy(np.asarray(array, np.float32))[None, None]
    if tuple(x.shape[2:]) != grid:
        x = F.interpolate(x, grid, mode="nearest" if labels else "trilinear")
    return x[0, 0].numpy()


def _unit(hu: np.ndarray) -> np.ndarray:
    lo, hi = HU_WINDOW
    return (np.clip(hu, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def read_cases(
    root: str | os.PathLike[str], grid: tuple[int, ...] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None, list[tuple[float, ...]]]:
    """(images in [-1, 1], label maps, confidences or None, spacing mm (K, J, I) on ``grid``) of a folder.

    ``root`` is a ``cardiac synth`` folder (``datalist.json``; its consecutive labels are read back as
    table values, ``synth.dataset_label_values``) or holds ``images/`` + ``labels/`` (table values).

    Raises:
        FileNotFoundError: neither layout. ValueError: an image without its label map, no case.
    """
    from xraycardiac.io import read_volume

    root = Path(root)
    to_table = None  # a cardiac synth folder's labels are consecutive: back to table values
    if (root / "datalist.json").is_file():
        from xraycardiac.cardiac.synth import dataset_label_values

        entries = json.loads((root / "datalist.json").read_text(encoding="utf-8"))["training"]
        triples = [(root / e["image"], root / e["label"], root / e["confidence"]) for e in entries]
        to_table = np.zeros(256, dtype=np.int64)
        for file_value, table_value in dataset_label_values(root).items():
            to_table[file_value] = table_value
    elif (root / "images").is_dir() and (root / "labels").is_dir():
        triples = []
        for img in sorted(
            p for p in (root / "images").iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd"))
        ):
            if not (root / "labels" / img.name).is_file():
                raise ValueError(f"{img}: no label map {root / 'labels' / img.name} of the same name")
            triples.append((img, root / "labels" / img.name, None))
    else:
        raise FileNotFoundError(f"{root}: expected datalist.json (cardiac synth) or images/ + labels/")
    if not triples:
        raise ValueError(f"{root}: no case")
    images, labels, confs, spacings = [], [], [], []
    for img_path, lab_path, conf_path in triples:
        img = read_volume(img_path)
        g = grid or tuple(img.array.shape)
        grid = g
        extent = np.asarray(img.array.shape) * np.asarray(img.spacing[::-1])
        spacings.append(tuple(float(v) for v in extent / np.asarray(g)))
        images.append(_unit(_resize(img.array, g, labels=False)))
        lab = np.rint(_resize(read_volume(lab_path).array, g, labels=True)).astype(np.int64)
        labels.append(lab if to_table is None else to_table[lab])
        if conf_path is not None:
            confs.append(np.clip(_resize(read_volume(conf_path).array, g, labels=False), 0.0, 1.0))
    return images, labels, (confs if confs else None), spacings


def compare_pretraining(
    synthetic: str | os.PathLike[str],
    finetune_dir: str | os.PathLike[str],
    test_dir: str | os.PathLike[str],
    config: CALConfig | None = None,
    arms: Sequence[str] = ARMS,
    out: str | os.PathLike[str] | None = None,
    progress: Callable[..., None] | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate each arm (module docstring).

    Args:
        synthetic, finetune_dir, test_dir: the three folders (module docstring).
        config: :class:`~xraycardiac.cardiac.cal.CALConfig` (steps of both stages, network, seed).
        arms: subset of :data:`ARMS`, in order.
        out: run folder (each arm's checkpoints in ``out/<arm>/``; resumable); None = temporary.
        progress: ``progress(stage, fraction)``.

    Returns:
        One row per arm: ``arm``, ``dice`` / ``hd95_mm`` (``{label: mean over test cases}``),
        ``mean_dice``, ``mean_hd95_mm`` (over the structures present in the test set).
    """
    from xraycardiac.cardiac.cal import finetune, predict_labels, pretrain_segmenter

    config = config or CALConfig()
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"arms: expected a non-empty subset of {ARMS}, got {list(arms)}")
    s_img, s_lab, s_conf, _ = read_cases(synthetic)
    grid = tuple(s_img[0].shape)
    if s_conf is None:
        raise ValueError(f"{synthetic}: not a `cardiac synth` folder (no confidence maps)")
    f_img, f_lab, _, _ = read_cases(finetune_dir, grid)
    t_img, t_lab, _, t_spacing = read_cases(test_dir, grid)
    n = config.n_classes
    datasets = {
        "synthetic": SegmentationVolumes(s_img, s_lab, None, n),
        "cal": SegmentationVolumes(s_img, s_lab, s_conf, n),
    }
    tuning = SegmentationVolumes(f_img, f_lab, None, n)
    present = [v for v in FINE_LABELS if any(np.any(t == v) for t in t_lab)]
    rows = []
    for k, arm in enumerate(arms):
        if progress is not None:
            progress(f"arm {arm}", k / len(arms))
        folder = None if out is None else Path(out) / arm
        network = None
        if arm != "none":
            network, _ = pretrain_segmenter(datasets[arm], config, folder)
        if network is None:
            from xraycardiac.cardiac.cal import build_segmenter

            torch.manual_seed(config.seed)
            network = build_segmenter(config)
        network, _ = finetune(network, tuning, config, folder)
        device = next(network.parameters()).device
        per_case = []
        for img, lab, spacing in zip(t_img, t_lab, t_spacing, strict=True):
            pred = predict_labels(network, torch.from_numpy(img)[None, None].to(device))[0].cpu().numpy()
            per_case.append(evaluate_segmentation(pred, lab, present, spacing))
        dice = {v: float(np.nanmean([c[v]["dice"] for c in per_case])) for v in present}
        hd = {v: float(np.nanmean([min(c[v]["hd95_mm"], 1e6) for c in per_case])) for v in present}
        rows.append({
            "arm": arm, "dice": dice, "hd95_mm": hd, "test_cases": len(t_img),
            "mean_dice": float(np.mean(list(dice.values()))) if dice else math.nan,
            "mean_hd95_mm": float(np.mean(list(hd.values()))) if hd else math.nan,
        })  # fmt: skip
    return rows


def format_pretraining_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per arm, Dice per structure, mean Dice and mean HD95 (mm)."""
    from xraycardiac.cardiac.labels import label_info

    labels = list(rows[0]["dice"]) if rows else []
    head = ["arm", *(label_info(v).key for v in labels), "mean Dice", "mean HD95 mm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["arm"],
            *(f"{r['dice'][v]:.3f}" for v in labels),
            f"{r['mean_dice']:.3f}",
            f"{r['mean_hd95_mm']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
