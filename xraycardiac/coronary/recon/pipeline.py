"""Two angiograms with their C-arm geometries -> matched keypoints, view 2 as used, 3D centreline tree.

The work of the ``coronary-reconstruct`` job (:mod:`xraycardiac.jobs.coronary_reconstruct`, which
reads the inputs and writes the outputs; the steps are described there), callable without a job:

1. **match**: :func:`xraycardiac.coronary.matching.evaluate.parse_method` of ``method`` on the two
   images (each mapped to [0, 1] by :func:`unit_range`);
2. **refine**: :func:`~xraycardiac.coronary.recon.reconstruct.calibrate_from_matches` (the one
   calibration path) from the matches, with the vessel masks as its accept/reject check;
3. **reconstruct**: :func:`~xraycardiac.coronary.recon.reconstruct.reconstruct_tree` on the masks,
   seeded by the matches the refinement kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xraycardiac.coronary.matching.evaluate import parse_method
from xraycardiac.coronary.recon.plausibility import plausibility
from xraycardiac.coronary.recon.reconstruct import (
    ReconstructionConfig,
    ReconstructionResult,
    calibrate_from_matches,
    reconstruct_tree,
)
from xraycardiac.geometry import CArmGeometry

__all__ = ["PairReconstruction", "reconstruct_pair", "unit_range"]


def unit_range(image: np.ndarray) -> np.ndarray:
    """The image in [0, 1]: as it is when already there, else by its 0.5 / 99.5 percentiles."""
    if image.min() >= 0.0 and image.max() <= 1.0:
        return image
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


@dataclass
class PairReconstruction:
    """Outcome of :func:`reconstruct_pair`.

    Attributes:
        match: the matcher's result (``keypoints1`` / ``keypoints2``, ``seconds``).
        matcher: the matcher ``parse_method`` built (``name``, ``info``).
        x1, x2: (M, 2) matched pixels (u, v); scores: (M,) their scores.
        geometry2: view 2 as used (refined, or the recorded one).
        calibration: :func:`calibrate_from_matches`'s record (``refined``, ``reason``, errors, corrections).
        seeds: the matches that seeded the reconstruction (the refinement's inliers, or all).
        result: :func:`reconstruct_tree`'s result.
        plausibility: :func:`~xraycardiac.coronary.recon.plausibility.plausibility`'s record (fractions of
            points off the 2D centrelines / outside the vessels, ``warnings``, ``plausible``).
    """

    match: Any
    matcher: Any
    x1: np.ndarray
    x2: np.ndarray
    scores: np.ndarray
    geometry2: CArmGeometry
    calibration: dict[str, Any]
    seeds: tuple[np.ndarray, np.ndarray]
    result: ReconstructionResult
    plausibility: dict[str, Any]


def reconstruct_pair(
    images: tuple[np.ndarray, np.ndarray],
    geometries: tuple[CArmGeometry, CArmGeometry],
    masks: tuple[np.ndarray, np.ndarray],
    method: str,
    refine_calibration: bool = True,
    epipolar_tolerance_px: float = 3.0,
    device: str = "cpu",
    foundation: str | None = None,
    progress: Callable[..., None] | None = None,
    log: Callable[[str], None] | None = None,
    vessel_maps: tuple[np.ndarray, np.ndarray] | None = None,
) -> PairReconstruction:
    """Match, refine view 2 and reconstruct the 3D centreline of two angiograms (module docstring).

    Args:
        images: the two (rows, cols) angiograms (vessels dark; any range, see :func:`unit_range`).
        geometries: (g1, g2), each describing a detector of its image's size; view 1 stays fixed.
        masks: the two bool vessel masks, each the size of its image.
        method: a matcher name for ``parse_method`` (e.g. ``"vessel+epipolar"``, ``"matcher:<model>"``).
        refine_calibration: False = keep the recorded view 2 (the record says so).
        epipolar_tolerance_px: the ``+epipolar`` match filter's tolerance, pixels.
        device: torch device of a learned matcher. foundation: its foundation model (``family:/path``).
        progress: ``progress(stage, fraction, **extra)`` at each step (fractions 0.1 to 0.55).
        log: gets a sentence when the refinement is skipped or rejected, and each plausibility warning.
        vessel_maps: the two views' vessel probabilities in [0, 1] for the plausibility check (the
            segmentation network's); None = the masks.
    """
    report = progress if progress is not None else (lambda stage, fraction, **extra: None)
    g1, g2 = geometries
    report("matching keypoints", 0.1)
    matcher = parse_method(
        method, epipolar_tolerance_px=epipolar_tolerance_px, device=device, foundation=foundation
    )
    sample = {
        "image1": unit_range(images[0]).astype(np.float32),
        "image2": unit_range(images[1]).astype(np.float32),
        "projection_matrices": np.stack([g1.projection_matrix(), g2.projection_matrix()]),
    }
    match = matcher.run(sample)
    x1 = np.asarray(match.x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(match.x2, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(match.scores, dtype=np.float64).reshape(-1)
    report("matching keypoints", 0.4, matches=len(x1))

    report("refining view 2", 0.45)
    g2_used, calibration, inliers = calibrate_from_matches(
        g1, g2, x1, x2, refine_calibration, log=log, vessels=(masks[0], masks[1])
    )
    seeds = (x1, x2) if inliers is None else (x1[inliers], x2[inliers])

    report("reconstructing the centreline", 0.55)
    result = reconstruct_tree(masks[0], masks[1], g1, g2_used, *(seeds if len(seeds[0]) else (None, None)))
    check = plausibility(
        result.points3d, (g1, g2_used), (result.graphs[0].paths, result.graphs[1].paths),
        vessel_maps if vessel_maps is not None else (masks[0], masks[1]), result.stats,
        tolerance_px=ReconstructionConfig().reprojection_tol_px,
    )  # fmt: skip
    for warning in check["warnings"]:
        if log is not None:
            log(warning)
    return PairReconstruction(match, matcher, x1, x2, scores, g2_used, calibration, seeds, result, check)
