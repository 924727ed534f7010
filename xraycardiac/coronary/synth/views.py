"""Sampling of clinically used C-arm view pairs for synthetic coronary angiography.

A synthetic training pair (Zhao et al. 2025, Fig. 1) is two projections of one coronary tree
from the views a cardiologist would actually acquire for that artery. The angle ranges below are
the standard angiographic projections as taught in the interventional cardiology literature,
e.g. Di Mario & Sutaria, "Coronary angiography in the angioplasty era: projections with a
meaning", Heart 2005;91:968-976, and Baim & Grossman's *Cardiac Catheterization, Angiography,
and Intervention* (chapter on coronary angiography):

* right coronary artery (RCA): LAO 30-60 (optionally 0-20 cranial), RAO 20-40, AP-cranial;
* left coronary artery (LCA): RAO-caudal, LAO-cranial, AP-cranial, AP-caudal, and the
  LAO-caudal "spider" view of the left main bifurcation.

Angles follow DICOM PS3.3 C.8.7.5 (see :mod:`xraycardiac.geometry.carm`): primary + = LAO,
- = RAO; secondary + = cranial, - = caudal. Distances are in mm, the world frame is patient RAS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xraycardiac.geometry import CArmGeometry

TREE_SIDES = {"left": "left", "lca": "left", "right": "right", "rca": "right"}


@dataclass(frozen=True)
class StandardView:
    """One named projection: uniform ranges of the two C-arm angles (degrees, DICOM signs)."""

    name: str
    primary_deg: tuple[float, float]  # (low, high); + LAO, - RAO
    secondary_deg: tuple[float, float]  # (low, high); + cranial, - caudal

    def __post_init__(self) -> None:
        for attr in ("primary_deg", "secondary_deg"):
            lo, hi = (float(x) for x in getattr(self, attr))
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and -180 < lo and hi <= 180):
                raise ValueError(
                    f"StandardView({self.name!r}).{attr}: expected (low, high) degrees with "
                    f"-180 < low <= high <= 180, got {getattr(self, attr)}"
                )
            object.__setattr__(self, attr, (lo, hi))


RCA_VIEWS: tuple[StandardView, ...] = (
    StandardView("LAO", (30.0, 60.0), (0.0, 20.0)),
    StandardView("RAO", (-40.0, -20.0), (0.0, 0.0)),
    StandardView("AP-CRA", (-10.0, 10.0), (20.0, 35.0)),
)
LCA_VIEWS: tuple[StandardView, ...] = (
    StandardView("RAO-CAU", (-40.0, -20.0), (-30.0, -15.0)),
    StandardView("LAO-CRA", (30.0, 60.0), (15.0, 30.0)),
    StandardView("AP-CRA", (-10.0, 10.0), (25.0, 40.0)),
    StandardView("AP-CAU", (-10.0, 10.0), (-35.0, -20.0)),
    StandardView("LAO-CAU", (40.0, 60.0), (-35.0, -20.0)),  # "spider"
)


@dataclass(frozen=True)
class ViewSamplingConfig:
    """Ranges from which :func:`sample_view_pair` draws a pair of views (all uniform).

    Attributes:
        rca_views, lca_views: the standard projections of each tree (see the module docstring).
        sid_mm: (low, high) source-to-detector distance in mm.
        sod_mm: (low, high) source-to-isocentre distance in mm.
        min_air_gap_mm: SID - SOD >= this (room for the patient between isocentre and detector).
        isocenter_jitter_mm: each RAS coordinate of the isocentre moves by U(-j, j) mm per view.
        detector_rows, detector_cols: detector size in pixels.
        pixel_spacing_mm: (low, high) square pixel size at the detector in mm (one value per view).
        min_separation_deg: least angle between the two beam directions.
        max_attempts: draws before :func:`sample_view_pair` gives up with a ValueError.
    """

    rca_views: tuple[StandardView, ...] = RCA_VIEWS
    lca_views: tuple[StandardView, ...] = LCA_VIEWS
    sid_mm: tuple[float, float] = (900.0, 1200.0)
    sod_mm: tuple[float, float] = (600.0, 800.0)
    min_air_gap_mm: float = 250.0
    isocenter_jitter_mm: float = 10.0
    detector_rows: int = 512
    detector_cols: int = 512
    pixel_spacing_mm: tuple[float, float] = (0.3, 0.4)
    min_separation_deg: float = 25.0
    max_attempts: int = 200

    def __post_init__(self) -> None:
        for attr in ("rca_views", "lca_views"):
            views = tuple(getattr(self, attr))
            names = [v.name for v in views]
            if len(views) < 2 or len(set(names)) != len(names):
                raise ValueError(
                    f"ViewSamplingConfig.{attr}: expected at least two views with unique names, got {names}"
                )
            object.__setattr__(self, attr, views)
        for attr in ("sid_mm", "sod_mm", "pixel_spacing_mm"):
            lo, hi = (float(x) for x in getattr(self, attr))
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(
                    f"ViewSamplingConfig.{attr}: expected (low, high) with 0 < low <= high, got "
                    f"{getattr(self, attr)}"
                )
            object.__setattr__(self, attr, (lo, hi))
        if self.sid_mm[1] - self.sod_mm[0] < self.min_air_gap_mm:
            raise ValueError(
                f"ViewSamplingConfig: no SID in {self.sid_mm} and SOD in {self.sod_mm} leaves "
                f"SID - SOD >= min_air_gap_mm = {self.min_air_gap_mm} mm; widen the ranges"
            )
        for attr in ("detector_rows", "detector_cols", "max_attempts"):
            v = getattr(self, attr)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"ViewSamplingConfig.{attr}: expected a positive integer, got {v!r}")
        if not (0.0 <= self.min_separation_deg < 180.0):
            raise ValueError(
                f"ViewSamplingConfig.min_separation_deg: expected 0 <= value < 180, got {self.min_separation_deg}"
            )
        if not self.isocenter_jitter_mm >= 0.0:
            raise ValueError(
                f"ViewSamplingConfig.isocenter_jitter_mm: expected >= 0 mm, got {self.isocenter_jitter_mm}"
            )
        if not self.min_air_gap_mm > 0.0:  # the isocentre must lie strictly between source and detector
            raise ValueError(f"ViewSamplingConfig.min_air_gap_mm: expected > 0 mm, got {self.min_air_gap_mm}")

    def views_for(self, tree_side: str) -> tuple[StandardView, ...]:
        """The standard views of ``tree_side`` ("left"/"LCA" or "right"/"RCA", any case)."""
        side = TREE_SIDES.get(str(tree_side).lower())
        if side is None:
            raise ValueError(f"tree_side: expected one of {sorted(TREE_SIDES)}, got {tree_side!r}")
        return self.lca_views if side == "left" else self.rca_views


def angle_between_views(g1: CArmGeometry, g2: CArmGeometry) -> float:
    """Angle in degrees (0..180) between the two central beam directions."""
    c = float(np.clip(np.dot(g1.beam_direction, g2.beam_direction), -1.0, 1.0))
    return math.degrees(math.acos(c))


def check_view_pair(g1: CArmGeometry, g2: CArmGeometry, min_separation_deg: float = 25.0) -> float:
    """Raise a ValueError if two views are too close for stereo; return their separation (degrees).

    Nearly identical beam directions make the epipolar geometry degenerate and triangulation
    ill-conditioned, so such a pair cannot train or evaluate a two-view matcher.
    """
    sep = angle_between_views(g1, g2)
    if sep < min_separation_deg:
        raise ValueError(
            f"view pair {g1.name or 'view 1'} ({g1.primary_angle_deg:.1f}, {g1.secondary_angle_deg:.1f}) / "
            f"{g2.name or 'view 2'} ({g2.primary_angle_deg:.1f}, {g2.secondary_angle_deg:.1f}) deg: beam "
            f"directions are {sep:.2f} deg apart, at least {min_separation_deg:.2f} deg required"
        )
    return sep


def _draw_view(
    view: StandardView, rng: np.random.Generator, config: ViewSamplingConfig, isocenter: np.ndarray
) -> CArmGeometry:
    """One geometry of a named view with random angles, distances, isocentre and pixel size."""
    # SID from the part of its range that leaves SID - SOD >= min_air_gap_mm for some SOD, then SOD
    # from what that SID allows (both non-empty: checked by ViewSamplingConfig)
    sid = rng.uniform(max(config.sid_mm[0], config.sod_mm[0] + config.min_air_gap_mm), config.sid_mm[1])
    sod_lo, sod_hi = config.sod_mm[0], min(config.sod_mm[1], sid - config.min_air_gap_mm)
    sod = rng.uniform(sod_lo, sod_hi)
    spacing = rng.uniform(*config.pixel_spacing_mm)
    jitter = rng.uniform(-config.isocenter_jitter_mm, config.isocenter_jitter_mm, size=3)
    return CArmGeometry(
        primary_angle_deg=float(rng.uniform(*view.primary_deg)),
        secondary_angle_deg=float(rng.uniform(*view.secondary_deg)),
        sid_mm=float(sid),
        sod_mm=float(sod),
        detector_rows=config.detector_rows,
        detector_cols=config.detector_cols,
        pixel_spacing_mm=(float(spacing), float(spacing)),
        isocenter_ras_mm=tuple(float(x) for x in isocenter + jitter),
        name=view.name,
        extra={"standard_view": view.name},
    )


def sample_view_pair(
    tree_side: str,
    rng: np.random.Generator,
    config: ViewSamplingConfig = ViewSamplingConfig(),
    isocenter_ras: np.ndarray | tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[CArmGeometry, CArmGeometry]:
    """Draw two different standard views of one tree, at least ``min_separation_deg`` apart.

    Args:
        tree_side: "left"/"LCA" or "right"/"RCA" (case-insensitive).
        rng: numpy random generator (the only source of randomness).
        config: angle, distance and detector ranges.
        isocenter_ras: (3,) RAS mm point the C-arm is centred on (e.g. the tree's bounding-box
            centre) before the per-view jitter.

    Returns:
        Two :class:`CArmGeometry` whose ``name`` is the standard view ("LAO-CRA", ...).

    Raises:
        ValueError: bad ``tree_side`` or ``isocenter_ras``, or no pair at least
            ``min_separation_deg`` apart found in ``max_attempts`` draws (the config's ranges
            cannot satisfy it).
    """
    views = config.views_for(tree_side)
    iso = np.asarray(isocenter_ras, dtype=np.float64)
    if iso.shape != (3,) or not np.all(np.isfinite(iso)):
        raise ValueError(f"isocenter_ras: expected three finite RAS mm values, got {isocenter_ras}")
    best = 0.0
    for _ in range(config.max_attempts):
        i, j = rng.choice(len(views), size=2, replace=False)
        g1, g2 = _draw_view(views[i], rng, config, iso), _draw_view(views[j], rng, config, iso)
        sep = angle_between_views(g1, g2)
        if sep >= config.min_separation_deg:
            return g1, g2
        best = max(best, sep)
    raise ValueError(
        f"sample_view_pair: no pair of {[v.name for v in views]} views at least "
        f"min_separation_deg = {config.min_separation_deg} deg apart in {config.max_attempts} draws "
        f"(largest separation found {best:.1f} deg); widen the angle ranges or lower min_separation_deg"
    )
