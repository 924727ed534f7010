"""A coronary pair dataset shown in another appearance family: same trees, views and ground truth, new images.

The matcher must be scored on looks it never saw in training (issue 19), and trained on many looks,
without a second geometry pipeline: :func:`restyle_dataset` copies a pair dataset
(:mod:`xraycardiac.coronary.synth.dataset`) and redraws each view's image from its stored vessel
path lengths (``thickness*.npy``), mask and C-arm geometry. Keypoints, matches, masks, geometry and
trees are copied unchanged, so every evaluation and the matcher's training read the copy as they
read the original. Families (:data:`FAMILIES`; :mod:`xraycardiac.coronary.synth.appearance` for each
ingredient):

* ``training``: the training families of :class:`~xraycardiac.coronary.synth.appearance.AppearanceConfig`
  (chest-phantom / procedural / low-frequency backgrounds at the view's own angles, Beer-Lambert /
  flat / blurred-edge profiles, Poisson / Gaussian noise, catheters, blur, display);
* ``real-ct``: the same looks over DRRs of the real chest CT (:mod:`xraycardiac.data.fixtures`),
  never used in training;
* ``halo-correlated``: the held-out "halo" profile and "correlated" noise over the chest phantom;
* ``diffusion``: the ``angio-diffusion-demo`` IDDPM conditioned on the mask and path lengths.

Vessels stay dark (no inverted polarity) and no collimator shutter is drawn: a shutter hides
vessels whose ground-truth matches the copy keeps. Each view's draw is seeded by
``(seed, tree index, pair index, view)``, so a copy is reproducible.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FAMILIES", "restyle_dataset"]

FAMILIES = ("training", "real-ct", "halo-correlated", "diffusion")
_TRAINING_BACKGROUNDS = ("chest-phantom", "procedural", "lowfreq")


def _draw(family: str, scene: Any, rng: np.random.Generator, renderer: Any) -> np.ndarray:
    """One image of ``scene`` in ``family``, float32 in [0, 1], vessels dark."""
    from xraycardiac.coronary.synth.appearance import AppearanceConfig, render_randomised, with_background

    if family == "diffusion":
        return np.asarray(renderer.render(scene.mask, scene.thickness_mm, seed=int(rng.integers(2**31))))
    seed = int(rng.integers(2**31))
    if family == "training":
        look = AppearanceConfig(p_invert=0.0, p_collimator=0.0)
        background = _TRAINING_BACKGROUNDS[int(rng.integers(len(_TRAINING_BACKGROUNDS)))]
    elif family == "real-ct":
        look, background = AppearanceConfig(p_invert=0.0, p_collimator=0.0), "real-ct"
    else:
        look = AppearanceConfig(profiles=("halo",), noises=("correlated",), p_invert=0.0, p_collimator=0.0)
        background = "chest-phantom"
    image, _, _ = render_randomised(with_background(scene, background, seed), look, rng)
    return image


def restyle_dataset(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    family: str,
    seed: int = 0,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Copy the pair dataset ``data`` to ``out`` with every view redrawn in ``family`` (module docstring).

    Args:
        data: a coronary pair dataset (``xraycardiac coronary synth``), with its thickness maps.
        out: the new dataset folder; must not exist (nothing half-written is left on failure).
        family: one of :data:`FAMILIES`.
        seed: base seed of the draws.
        progress: ``progress(stage, fraction)``.

    Returns:
        ``{"family", "seed", "source", "pairs"}`` (also written to ``out/restyle.json``).

    Raises:
        ValueError: an unknown family. FileExistsError: ``out`` exists. FileNotFoundError: no dataset.
    """
    from xraycardiac.anatomy.coronary_tree import CoronaryTree
    from xraycardiac.coronary.synth.appearance import VesselScene
    from xraycardiac.coronary.synth.dataset import list_samples, read_sample, write_json_atomic
    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.io import write_png

    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    src, dst = Path(data), Path(out)
    if dst.exists():
        raise FileExistsError(f"out: {dst} exists; give a new folder")
    paths = list_samples(src)
    renderer = None
    if family == "diffusion":
        from xraycardiac.coronary.synth.render_diffusion import load_renderer

        renderer = load_renderer()
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*"))
    try:
        centres: dict[Path, np.ndarray] = {}
        for i, path in enumerate(paths):
            if progress is not None:
                progress(f"{family}: {path.name}", i / len(paths))
            sample = read_sample(path, load_thickness=True)
            if path.parent not in centres:
                tree = CoronaryTree.load_json(path.parent / "tree.json")
                ids = [("left", "right").index(t) for t in sample["meta"].get("opacified_trees", ["left"])]
                centres[path.parent] = np.asarray(tree.points)[np.isin(tree.tree, ids)].mean(axis=0)
            index = [int(x) for x in path.name.split("_")[1:3]]
            for v in (1, 2):
                g = CArmGeometry.from_dict(sample["geometry"][f"view{v}"])
                scene = VesselScene(
                    sample[f"thickness{v}"], sample[f"mask{v}"], np.zeros((0, 2)), None, "lowfreq", g,
                    centres[path.parent],
                )  # fmt: skip
                rng = np.random.default_rng([int(seed), *index, v])
                image = _draw(family, scene, rng, renderer)
                write_png(image, tmp / path.relative_to(src) / f"view{v}.png", window=(0.0, 1.0))
        record = {"family": family, "seed": int(seed), "source": str(src), "pairs": len(paths)}
        write_json_atomic(tmp / "restyle.json", record)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress is not None:
        progress("done", 1.0)
    return record
