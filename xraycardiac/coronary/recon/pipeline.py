"""Two angiograms with their C-arm geometries -> matched keypoints, view 2 as used, 3D centreline tree.

The work of the ``coronary-reconstruct`` job (:mod:`xraycardiac.jobs.coronary_reconstruct`, which
reads the inputs and writes the outputs; the steps are described there), callable without a job:

1. **match**: :func:`xraycardiac.coronary.matching.evaluate.parse_method` of ``method`` on the two
   images (each mapped to [0, 1] by :func:`unit_range`). With ``refine_calibration`` an ``+epipolar``
   filter must not trust the recorded geometry it is about to correct: the method runs unfiltered
   and :func:`calibration_matches` keeps the matches within the epipolar band the calibration
   prior allows (:func:`~xraycardiac.coronary.recon.calibration.epipolar_band_px`, tens of pixels
   for a few degrees), never narrower than ``epipolar_tolerance_px``;
2. **refine**: :func:`~xraycardiac.coronary.recon.reconstruct.calibrate_from_matches` (the one
   calibration path) from the matches, with the vessel masks as its accept/reject check;
3. **reconstruct**: :func:`~xraycardiac.coronary.recon.reconstruct.reconstruct_tree` on the masks,
   seeded by the matches the refinement kept; it drops the seeds farther than 3 px from their
   epipolar lines under the geometry in use (the tight filter, now with the refined pose).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xraycardiac.coronary.matching.evaluate import parse_method
from xraycardiac.coronary.recon.acceptance import calibrate_from_matches
from xraycardiac.coronary.recon.calibration import CalibrationConfig, epipolar_band_px
from xraycardiac.coronary.recon.reconstruct import ReconstructionResult, reconstruct_tree
from xraycardiac.geometry import CArmGeometry

__all__ = ["PairReconstruction", "calibration_matches", "reconstruct_pair", "unit_range"]

_EPIPOLAR = "+epipolar"


def calibration_matches(
    x1: np.ndarray,
    x2: np.ndarray,
    g1: CArmGeometry,
    g2: CArmGeometry,
    config: CalibrationConfig | None = None,
    tolerance_px: float = 3.0,
) -> tuple[np.ndarray, float]:
    """The matches an epipolar filter may keep for calibrating a recorded geometry that may be wrong.

    Args:
        x1, x2: (M, 2) matched pixels (u, v), unfiltered.
        g1, g2: the recorded geometries.
        config: the calibration prior (:func:`~xraycardiac.coronary.recon.calibration.epipolar_band_px`).
        tolerance_px: the tight tolerance, pixels: the band is never narrower.

    Returns:
        ((M,) bool mask of the matches within the band, the band in pixels).
    """
    from xraycardiac.metrics.matching import symmetric_epipolar_error_px

    band = max(float(tolerance_px), epipolar_band_px(g1, g2, config))
    if len(x1) == 0:
        return np.zeros(0, dtype=bool), band
    err = symmetric_epipolar_error_px(x1, x2, g1.projection_matrix(), g2.projection_matrix())
    return err <= band, band


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
        calibration: :func:`calibrate_from_matches`'s record (``refined``, ``kept``, ``reason``, errors,
            corrections, ``evidence``, ``outliers``) and ``epipolar_band_px`` (the calibration
            matches' band, None when the method has no ``+epipolar`` filter).
        seeds: the matches that seeded the reconstruction (the refinement's inliers, or all).
        result: :func:`reconstruct_tree`'s result.
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
    calibration_config: CalibrationConfig | None = None,
) -> PairReconstruction:
    """Match, refine view 2 and reconstruct the 3D centreline of two angiograms (module docstring).

    Args:
        images: the two (rows, cols) angiograms (vessels dark; any range, see :func:`unit_range`).
        geometries: (g1, g2), each describing a detector of its image's size; view 1 stays fixed.
        masks: the two bool vessel masks, each the size of its image.
        method: a matcher name for ``parse_method`` (e.g. ``"vessel+epipolar"``, ``"matcher:<model>"``).
        refine_calibration: False = keep the recorded view 2 (the record says so).
        epipolar_tolerance_px: the ``+epipolar`` match filter's tolerance, pixels (with
            ``refine_calibration`` the calibration's wider band, module docstring, step 1).
        device: torch device of a learned matcher. foundation: its foundation model (``family:/path``).
        progress: ``progress(stage, fraction, **extra)`` at each step (fractions 0.1 to 0.55).
        log: gets a sentence when the refinement is skipped or rejected.
        calibration_config: the calibration prior and loss (default :class:`CalibrationConfig`).
    """
    report = progress if progress is not None else (lambda stage, fraction, **extra: None)
    g1, g2 = geometries
    report("matching keypoints", 0.1)
    banded = refine_calibration and method.endswith(_EPIPOLAR)
    matcher = parse_method(
        method.removesuffix(_EPIPOLAR) + "+none" if banded else method,
        epipolar_tolerance_px=epipolar_tolerance_px, device=device, foundation=foundation,
    )  # fmt: skip
    sample = {
        "image1": unit_range(images[0]).astype(np.float32),
        "image2": unit_range(images[1]).astype(np.float32),
        "projection_matrices": np.stack([g1.projection_matrix(), g2.projection_matrix()]),
    }
    match = matcher.run(sample)
    x1 = np.asarray(match.x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(match.x2, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(match.scores, dtype=np.float64).reshape(-1)
    band = None
    if banded:  # the recorded geometry is what the calibration corrects: filter by the prior's band
        keep, band = calibration_matches(x1, x2, g1, g2, calibration_config, epipolar_tolerance_px)
        x1, x2, scores = x1[keep], x2[keep], scores[keep]
    report("matching keypoints", 0.4, matches=len(x1))

    report("refining view 2", 0.45)
    g2_used, calibration, inliers = calibrate_from_matches(
        g1, g2, x1, x2, refine_calibration, calibration_config, log=log, vessels=(masks[0], masks[1])
    )
    calibration["epipolar_band_px"] = band
    seeds = (x1, x2) if inliers is None else (x1[inliers], x2[inliers])

    report("reconstructing the centreline", 0.55)
    result = reconstruct_tree(masks[0], masks[1], g1, g2_used, *(seeds if len(seeds[0]) else (None, None)))
    return PairReconstruction(match, matcher, x1, x2, scores, g2_used, calibration, seeds, result)
