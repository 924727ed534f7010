"""Two angiograms with their C-arm geometries -> matched keypoints, view 2 as used, 3D centreline tree.

The work of the ``coronary-reconstruct`` job (:mod:`xraycardiac.jobs.coronary_reconstruct`, which
reads the inputs and writes the outputs), callable without a job. Pixels (u = column, v = row), RAS mm.

0. **vessels**: each view's vessel mask as given (same size as its image, any value > 0 is vessel),
   else segmented from the image (``segmentation``: the learned network, ``coronary-vessel-seg-demo``,
   with its probability map, or the Frangi vesselness baseline). The masks are the accurate path: on
   a 256 px synthetic pair the 3D centreline is sub-millimetre from ground-truth masks and 12 mm off
   from the network's segmentation of the raw images (27 mm from Frangi's).
1. **match**: :func:`xraycardiac.coronary.matching.evaluate.parse_method` of ``method``
   (``vessel+epipolar`` by default; ``sift``, ``orb``, ``vessel`` with ``+ransac`` / ``+epipolar`` /
   ``+none``, ``matcher:<model>``, ``matcher-nofm:<model>``; ``foundation`` (``family:/path``) for the
   learned matcher's foundation model) on the two images, each mapped to [0, 1] by :func:`unit_range`.
   With ``refine_calibration`` an ``+epipolar`` filter must not trust the recorded geometry it is about
   to correct: the method runs unfiltered and :func:`calibration_matches` keeps the matches within the
   epipolar band the calibration prior allows
   (:func:`~xraycardiac.coronary.recon.calibration.epipolar_band_px`, tens of pixels for a few
   degrees), never narrower than ``epipolar_tolerance_px``. A learned matcher with ``+band``
   (``matcher:<model>+band``, ``vmatcher:<model>+band`` on vessel-probability keypoints) gets that same
   band as its cross-attention and assignment mask: it never matches outside what the recorded
   geometry and the prior (``prior_sigma_deg`` / ``prior_sigma_mm``) allow.
2. **refine** (``refine_calibration``): :func:`~xraycardiac.coronary.recon.acceptance.calibrate_from_matches`
   (the one calibration path) from the matches, view 1 fixed: a MAP estimate with Gaussian priors of
   standard deviation ``prior_sigma_deg`` / ``prior_sigma_mm`` on the C-arm angles / isocentre, kept
   only on held-out evidence (prior, cross-validation, the vessel masks). With fewer matches than the
   refinement needs (``CalibrationConfig.min_matches``) it is skipped, logged and recorded
   (``refined: false`` with the reason): the recorded geometry is then used as it is.
3. **reconstruct**: :func:`~xraycardiac.coronary.recon.reconstruct.reconstruct_tree` on the masks,
   seeded by the matches the refinement kept; it drops the seeds farther than 3 px from their
   epipolar lines under the geometry in use (the tight filter, now with the refined pose).
4. **check**: :func:`~xraycardiac.coronary.recon.plausibility.plausibility` of the result (points off
   the 2D centrelines or outside the vessels, rejected samples); each warning is logged and the
   summary's ``status`` is "warning".

N >= 3 views: :func:`reconstruct_views_pipeline` runs steps 0-3 on every view pair's matches, one
joint calibration of views 2..N and a reconstruction that uses every view, checked as above over every view.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from xraycardiac.coronary.matching.evaluate import parse_method
from xraycardiac.coronary.recon.acceptance import calibrate_from_matches
from xraycardiac.coronary.recon.calibration import CalibrationConfig, epipolar_band_px
from xraycardiac.coronary.recon.plausibility import plausibility
from xraycardiac.coronary.recon.reconstruct import (
    ReconstructionConfig,
    ReconstructionResult,
    reconstruct_tree,
)
from xraycardiac.coronary.segment.vessel_seg import SEGMENTATIONS
from xraycardiac.geometry import CArmGeometry

__all__ = [
    "DEFAULT_METHOD",
    "PairConfig",
    "PairReconstruction",
    "ViewsReconstruction",
    "calibration_matches",
    "reconstruct_pair",
    "reconstruct_views_pipeline",
    "unit_range",
    "vessel_mask",
]

DEFAULT_METHOD = "vessel+epipolar"


@dataclass(frozen=True)
class PairConfig:
    """Settings of :func:`reconstruct_pair`: the ``coronary-reconstruct`` job's ``params``, checked once
    here (errors name them ``params.<name>``).

    Attributes:
        method: a matcher name for ``parse_method`` (e.g. ``"vessel+epipolar"``, ``"matcher:<model>"``,
            ``"vmatcher:<model>+band"``: the learned matcher on vessel-probability keypoints with the
            prior's epipolar band as its attention mask); surrounding spaces are dropped.
        foundation: the learned matcher's foundation model (``family:/path``), ``matcher:`` methods only;
            empty = None.
        refine_calibration: False = keep the recorded view 2 (the record says so).
        epipolar_tolerance_px: the ``+epipolar`` match filter's tolerance, pixels > 0.
        device: torch device of a learned matcher (``auto``, ``cpu``, ``cuda``, ...).
        prior_sigma_deg: the calibration prior's standard deviation of each C-arm angle offset, degrees.
        prior_sigma_mm: the calibration prior's standard deviation of each isocentre shift component, mm.
        segmentation: how a view without a mask is segmented: "network" (the learned segmentation,
            :mod:`xraycardiac.coronary.segment.vessel_seg`) or "frangi" (the vesselness baseline).
    """

    method: str = DEFAULT_METHOD
    foundation: str | None = None
    refine_calibration: bool = True
    epipolar_tolerance_px: float = 3.0
    device: str = "auto"
    prior_sigma_deg: float = 1.5
    prior_sigma_mm: float = 3.0
    segmentation: str = "network"

    def __post_init__(self) -> None:
        method = self.method.strip()
        if not method:
            raise ValueError(f"params.method: expected a method name such as {DEFAULT_METHOD!r}, got ''")
        foundation = self.foundation.strip() or None if isinstance(self.foundation, str) else None
        if foundation is not None and not method.startswith(("matcher:", "vmatcher:")):
            raise ValueError(
                f"params.foundation: a foundation model is used by the learned matcher only "
                f"(method 'matcher:<model>'), but method is {method!r}; leave foundation empty"
            )
        tolerance = self.epipolar_tolerance_px
        if not (math.isfinite(tolerance) and tolerance > 0):
            raise ValueError(f"params.epipolar_tolerance_px: expected pixels > 0, got {tolerance!r}")
        for name in ("prior_sigma_deg", "prior_sigma_mm"):
            sigma = getattr(self, name)
            if not (math.isfinite(sigma) and sigma > 0):
                raise ValueError(f"params.{name}: expected a standard deviation > 0, got {sigma!r}")
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(
                f"params.segmentation: expected one of {SEGMENTATIONS}, got {self.segmentation!r}"
            )
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "foundation", foundation)

    def calibration_config(self) -> CalibrationConfig:
        """The calibration prior these settings ask for (the other fields at their defaults)."""
        return CalibrationConfig(prior_sigma_deg=self.prior_sigma_deg, prior_sigma_mm=self.prior_sigma_mm)


_EPIPOLAR = "+epipolar"


def calibration_matches(
    x1: np.ndarray,
    x2: np.ndarray,
    g1: CArmGeometry,
    g2: CArmGeometry,
    config: CalibrationConfig | None = None,
    tolerance_px: float = 3.0,
    first_fixed: bool = True,
) -> tuple[np.ndarray, float]:
    """The matches an epipolar filter may keep for calibrating a recorded geometry that may be wrong.

    Args:
        x1, x2: (M, 2) matched pixels (u, v), unfiltered.
        g1, g2: the recorded geometries.
        config: the calibration prior (:func:`~xraycardiac.coronary.recon.calibration.epipolar_band_px`).
        tolerance_px: the tight tolerance, pixels: the band is never narrower.
        first_fixed: ``g1`` is view 1 (the fixed gauge), else both views' priors widen the band.

    Returns:
        ((M,) bool mask of the matches within the band, the band in pixels).
    """
    from xraycardiac.metrics.matching import symmetric_epipolar_error_px

    band = max(float(tolerance_px), epipolar_band_px(g1, g2, config, first_fixed=first_fixed))
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


def vessel_mask(
    image: np.ndarray, mask: np.ndarray | None, view: int, segmentation: str = "network", device: str = "cpu"
) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(bool vessel mask, its source, vessel probability or None) of view ``view``: step 0 of the module.

    Args:
        image: the view's (rows, cols) angiogram in [0, 1] (:func:`unit_range`).
        mask: its (rows, cols) vessel mask (> 0 = vessel), or None to segment the image.
        view: 1 or 2, for messages (which name the job's ``inputs.image<view>`` / ``inputs.mask<view>``).
        segmentation: "network" or "frangi" (:func:`~xraycardiac.coronary.segment.vessel_seg.segment_image`).
        device: torch device of the network.

    Returns:
        The mask, its source ("mask" = given, else ``segmentation``) and the network's probability
        (None for a given mask or Frangi).

    Raises:
        ValueError: the mask is not the size of its image, or no vessel pixel is given or segmented.
    """
    if mask is not None:
        mask = mask > 0
        if mask.shape != image.shape:
            raise ValueError(
                f"inputs.mask{view}: {mask.shape[0]} x {mask.shape[1]} pixels, but inputs.image{view} is "
                f"{image.shape[0]} x {image.shape[1]}; a mask must be the size of its image"
            )
        if not mask.any():
            raise ValueError(f"no vessel found in image {view}: inputs.mask{view} is empty (no pixel > 0)")
        return mask, "mask", None
    from xraycardiac.coronary.segment.vessel_seg import segment_image

    seg = segment_image(image, segmentation, device=device)
    if not seg.mask.any():
        raise ValueError(
            f"no vessel found in image {view}: the {segmentation} segmentation is empty; check that "
            f"inputs.image{view} is an angiogram with contrast (vessels dark), or give inputs.mask{view}"
        )
    return np.asarray(seg.mask, dtype=bool), segmentation, seg.probability


@dataclass
class PairReconstruction:
    """Outcome of :func:`reconstruct_pair`.

    Attributes:
        config: the settings used; device: the torch device the matcher ran on.
        vessels: per view, where its mask came from: "mask" (given), "network" or "frangi" (segmented).
        image_shapes: per view, (rows, cols).
        match: the matcher's result (``keypoints1`` / ``keypoints2``, ``seconds``).
        matcher: the matcher ``parse_method`` built (``name``, ``info``).
        x1, x2: (M, 2) matched pixels (u, v); scores: (M,) their scores.
        geometry2: view 2 as used (refined, or the recorded one).
        calibration: :func:`calibrate_from_matches`'s record (``refined``, ``kept``, ``reason``, errors,
            corrections, ``evidence``, ``outliers``) and ``epipolar_band_px`` (the calibration
            matches' band, None when the method has no ``+epipolar`` filter).
        seeds: the matches that seeded the reconstruction (the refinement's inliers, or all).
        result: :func:`reconstruct_tree`'s result; its tree's ``meta`` has ``method`` and ``refined``.
        plausibility: :func:`~xraycardiac.coronary.recon.plausibility.plausibility`'s record (fractions of
            points off the 2D centrelines / outside the vessels, ``warnings``, ``plausible``).
        probabilities: per view, the segmentation network's vessel probability in [0, 1], or None
            (a given mask, or Frangi).
    """

    config: PairConfig
    device: str
    vessels: tuple[str, str]
    image_shapes: tuple[tuple[int, ...], tuple[int, ...]]
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
    probabilities: tuple[np.ndarray | None, np.ndarray | None]

    def matches_record(self) -> dict[str, Any]:
        """The matches as JSON-ready data: method, matcher name and info, keypoint counts, x1, x2, scores."""
        return {
            "method": self.config.method,
            "method_name": self.matcher.name,
            "method_info": json.loads(json.dumps(self.matcher.info, default=str)),
            "keypoints1": len(self.match.keypoints1),
            "keypoints2": len(self.match.keypoints2),
            "x1": self.x1.tolist(),
            "x2": self.x2.tolist(),
            "scores": self.scores.tolist(),
            "seconds": float(self.match.seconds),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: params, device, vessel sources, image shapes, matches, calibration, tree counts."""
        tree, calibration = self.result.tree, self.calibration
        return {
            "status": "ok" if self.plausibility["plausible"] else "warning",
            "params": asdict(self.config),
            "device": self.device,
            "vessels": {f"view{v}": self.vessels[v - 1] for v in (1, 2)},
            "image_shapes": [list(shape) for shape in self.image_shapes],
            "matches": len(self.x1),
            "calibration": {
                k: calibration[k] for k in ("refined", "reason", "error_before_px", "error_after_px")
            },
            "reconstruction": {
                "points": int(tree.num_points),
                "branches": len(tree.branch_names),
                "seeds": len(self.seeds[0]),
                **{k: v for k, v in self.result.stats.items() if isinstance(v, int | float)},
            },
            "plausibility": self.plausibility,
        }


def reconstruct_pair(
    images: tuple[np.ndarray, np.ndarray],
    geometries: tuple[CArmGeometry, CArmGeometry],
    masks: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    config: PairConfig | None = None,
    device: str = "cpu",
    progress: Callable[..., None] | None = None,
    log: Callable[[str], None] | None = None,
    calibration_config: CalibrationConfig | None = None,
    vessel_maps: tuple[np.ndarray, np.ndarray] | None = None,
) -> PairReconstruction:
    """Vessel masks, matches, view 2 as used and the 3D centreline of two angiograms (module docstring).

    Args:
        images: the two (rows, cols) angiograms (vessels dark; any range, see :func:`unit_range`).
        geometries: (g1, g2), each describing a detector of its image's size; view 1 stays fixed.
        masks: the two vessel masks (> 0 = vessel), each the size of its image; None = segment that image.
        config: :class:`PairConfig` (None = defaults).
        device: the torch device of a learned matcher, resolved (``config.device`` is what was asked).
        progress: ``progress(stage, fraction, **extra)`` at each step (fractions 0.1 to 0.55).
        log: gets a sentence when the refinement is skipped or rejected, and each plausibility warning.
        calibration_config: the calibration prior and loss (default: ``config.calibration_config()``).
        vessel_maps: the two views' vessel probabilities in [0, 1] for the plausibility check; None =
            the segmentation network's where it segmented both views, else the masks.

    Raises:
        ValueError: a mask of another size than its image, or no vessel (:func:`vessel_mask`).
    """
    config = config or PairConfig()
    report = progress if progress is not None else (lambda stage, fraction, **extra: None)
    g1, g2 = geometries
    (m1, source1, p1), (m2, source2, p2) = (
        vessel_mask(unit_range(images[v]), masks[v], v + 1, config.segmentation, device) for v in (0, 1)
    )
    report("matching keypoints", 0.1)
    calibration_config = calibration_config or config.calibration_config()
    banded = config.refine_calibration and config.method.endswith(_EPIPOLAR)
    matcher = parse_method(
        config.method.removesuffix(_EPIPOLAR) + "+none" if banded else config.method,
        epipolar_tolerance_px=config.epipolar_tolerance_px,
        device=device,
        foundation=config.foundation,
    )
    sample = {
        "image1": unit_range(images[0]).astype(np.float32),
        "image2": unit_range(images[1]).astype(np.float32),
        "projection_matrices": np.stack([g1.projection_matrix(), g2.projection_matrix()]),
        # the band of a "+band" matcher: what the recorded geometry and the calibration prior allow
        "band_px": max(config.epipolar_tolerance_px, epipolar_band_px(g1, g2, calibration_config)),
    }
    match = matcher.run(sample)
    x1 = np.asarray(match.x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(match.x2, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(match.scores, dtype=np.float64).reshape(-1)
    band = None
    if banded:  # the recorded geometry is what the calibration corrects: filter by the prior's band
        keep, band = calibration_matches(x1, x2, g1, g2, calibration_config, config.epipolar_tolerance_px)
        x1, x2, scores = x1[keep], x2[keep], scores[keep]
    report("matching keypoints", 0.4, matches=len(x1))

    report("refining view 2", 0.45)
    g2_used, calibration, inliers = calibrate_from_matches(
        g1, g2, x1, x2, config.refine_calibration, calibration_config, log=log, vessels=(m1, m2)
    )
    calibration["epipolar_band_px"] = band
    seeds = (x1, x2) if inliers is None else (x1[inliers], x2[inliers])

    report("reconstructing the centreline", 0.55)
    result = reconstruct_tree(m1, m2, g1, g2_used, *(seeds if len(seeds[0]) else (None, None)))
    result.tree.meta.update({"method": config.method, "refined": calibration["refined"]})
    if vessel_maps is None:
        vessel_maps = (p1, p2) if p1 is not None and p2 is not None else (m1, m2)
    check = plausibility(
        result.points3d, (g1, g2_used), (result.graphs[0].paths, result.graphs[1].paths), vessel_maps,
        result.stats, tolerance_px=ReconstructionConfig().reprojection_tol_px,
    )  # fmt: skip
    for warning in check["warnings"]:
        if log is not None:
            log(warning)
    return PairReconstruction(
        config, device, (source1, source2), (images[0].shape, images[1].shape), match, matcher, x1, x2, scores,
        g2_used, calibration, seeds, result, check, (p1, p2),
    )  # fmt: skip


@dataclass
class ViewsReconstruction:
    """Outcome of :func:`reconstruct_views_pipeline` (N >= 2 views).

    Attributes:
        config: the settings used; device: the torch device of the matcher.
        vessels: per view, where its mask came from ("mask", "network" or "frangi").
        matches: ``{(i, j): (xi, xj)}`` the matches of every view pair (0-based) the calibration got.
        geometries: every view as used (view 1 unchanged; the others refined or as recorded).
        calibration: :func:`~xraycardiac.coronary.recon.acceptance.calibrate_views`'s record (``kept``,
            ``reason``, errors before / after, ``view_params``, ``evidence``) and ``epipolar_band_px``
            per pair ("i-j", 1-based).
        result: :func:`~xraycardiac.coronary.recon.reconstruct.reconstruct_views`'s result.
        probabilities: per view, the segmentation network's vessel probability, or None.
        plausibility: :func:`~xraycardiac.coronary.recon.plausibility.plausibility`'s record over every view.
    """

    config: PairConfig
    device: str
    vessels: tuple[str, ...]
    matches: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    geometries: list[CArmGeometry]
    calibration: dict[str, Any]
    result: ReconstructionResult
    probabilities: tuple[np.ndarray | None, ...]
    plausibility: dict[str, Any]

    def matches_record(self) -> dict[str, Any]:
        """The matches as JSON-ready data: per pair "i-j" (1-based) x_i, x_j pixels."""
        return {"method": self.config.method,
                "pairs": {f"{i + 1}-{j + 1}": {"x_i": a.tolist(), "x_j": b.tolist()}
                          for (i, j), (a, b) in self.matches.items()}}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: params, views, vessel sources, matches per pair, calibration, tree counts."""
        tree = self.result.tree
        return {
            "status": "ok" if self.plausibility["plausible"] else "warning",
            "params": asdict(self.config),
            "device": self.device,
            "views": len(self.geometries),
            "vessels": {f"view{v + 1}": s for v, s in enumerate(self.vessels)},
            "matches": {f"{i + 1}-{j + 1}": len(a) for (i, j), (a, _) in self.matches.items()},
            "calibration": {
                k: self.calibration[k]
                for k in ("refined", "kept", "reason", "error_before_px", "error_after_px")
            },  # fmt: skip
            "reconstruction": {
                "points": int(tree.num_points),
                "branches": len(tree.branch_names),
                "pair": self.result.stats["pair"],
                "other_views": self.result.stats["other_views"],
                **{k: v for k, v in self.result.stats.items() if isinstance(v, int | float)},
            },
            "plausibility": self.plausibility,
        }


def reconstruct_views_pipeline(
    images: list[np.ndarray],
    geometries: list[CArmGeometry],
    masks: list[np.ndarray | None] | None = None,
    config: PairConfig | None = None,
    device: str = "cpu",
    progress: Callable[..., None] | None = None,
    log: Callable[[str], None] | None = None,
) -> ViewsReconstruction:
    """The steps of :func:`reconstruct_pair` on N >= 2 views: vessels, matches of every view pair, the joint
    calibration (:func:`~xraycardiac.coronary.recon.acceptance.calibrate_views`, view 1 fixed) and the
    reconstruction from every view (:func:`~xraycardiac.coronary.recon.reconstruct.reconstruct_views`), and
    the plausibility check over every view (each warning logged; vessel maps as :func:`reconstruct_pair`).

    Raises:
        ValueError: as many images, geometries and masks not given (the counts named), a mask of another
            size than its image, or no vessel.
    """
    from xraycardiac.coronary.recon.acceptance import calibrate_views
    from xraycardiac.coronary.recon.reconstruct import reconstruct_views

    config = config or PairConfig()
    masks = [None] * len(images) if masks is None else list(masks)
    if not (len(images) == len(geometries) == len(masks)) or len(images) < 2:
        raise ValueError(
            f"reconstruct_views_pipeline: {len(images)} images, {len(geometries)} geometries and {len(masks)} "
            "masks (None = segment) given; give one of each per view, at least 2 views"
        )
    report = progress if progress is not None else (lambda stage, fraction, **extra: None)
    vessels = [vessel_mask(unit_range(im), m, v + 1, config.segmentation, device)
               for v, (im, m) in enumerate(zip(images, masks, strict=True))]  # fmt: skip
    calibration_config = config.calibration_config()
    banded = config.refine_calibration and config.method.endswith(_EPIPOLAR)
    matcher = parse_method(
        config.method.removesuffix(_EPIPOLAR) + "+none" if banded else config.method,
        epipolar_tolerance_px=config.epipolar_tolerance_px, device=device, foundation=config.foundation,
    )  # fmt: skip
    matches, bands = {}, {}
    pairs = [(i, j) for i in range(len(images)) for j in range(i + 1, len(images))]
    for n, (i, j) in enumerate(pairs):
        report(f"matching views {i + 1} and {j + 1}", 0.1 + 0.3 * n / len(pairs))
        sample = {"image1": unit_range(images[i]).astype(np.float32), "image2": unit_range(images[j]).astype(np.float32),
                  "projection_matrices": np.stack([geometries[i].projection_matrix(), geometries[j].projection_matrix()])}  # fmt: skip
        match = matcher.run(sample)
        a, b = (np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in (match.x1, match.x2))
        if banded:
            keep, bands[f"{i + 1}-{j + 1}"] = calibration_matches(
                a, b, geometries[i], geometries[j], calibration_config, config.epipolar_tolerance_px,
                first_fixed=i == 0,
            )  # fmt: skip
            a, b = a[keep], b[keep]
        matches[(i, j)] = (a, b)
    report("refining the views", 0.45)
    masks_used = [v[0] for v in vessels]
    used, calibration, inliers, _ = calibrate_views(
        geometries, matches, config.refine_calibration, calibration_config, log, masks_used
    )
    calibration["epipolar_band_px"] = bands or None
    seeds = matches
    if inliers is not None:
        cuts = np.cumsum([len(a) for a, _ in matches.values()])[:-1]
        seeds = {
            k: (a[m], b[m]) for (k, (a, b)), m in zip(matches.items(), np.split(inliers, cuts), strict=True)
        }
    report("reconstructing the centreline", 0.55)
    # views whose poses the calibration did not confirm may be off by more than the tolerance: they
    # refine the points they support but drop none
    result = reconstruct_views(
        masks_used, used, seeds, veto_tol_px=None if calibration["refined"] else np.inf
    )
    result.tree.meta.update({"method": config.method, "refined": calibration["refined"]})
    probabilities = tuple(v[2] for v in vessels)
    vessel_maps = masks_used if any(p is None for p in probabilities) else probabilities
    check = plausibility(
        result.points3d, used, [g.paths for g in result.graphs], vessel_maps, result.stats,
        tolerance_px=ReconstructionConfig().reprojection_tol_px,
    )  # fmt: skip
    for warning in check["warnings"]:
        if log is not None:
            log(warning)
    return ViewsReconstruction(config, device, tuple(v[1] for v in vessels), matches, used, calibration, result,
                               probabilities, check)  # fmt: skip
