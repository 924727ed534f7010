"""Is a 3D centreline reconstruction plausible? Checks that need no ground truth (issue 19, item 6).

A reconstruction from two images can "succeed" and still be wrong: on Frangi segmentations of
synthetic pairs the mean error was 8.7 mm with 21 % of the points more than 2 mm from any vessel.
:func:`plausibility` measures, for the final tree's points projected into both views (view 2 as
used, i.e. refined or recorded; every view of an N-view reconstruction):

* ``reprojection_over_tol``: the fraction of points whose projection lies farther than
  ``tolerance_px`` from the 2D centreline (skeleton) of any view;
* ``outside_vessels``: the fraction of points whose projection falls outside the vessel map of
  any view (the vessel probability >= 0.5 of the segmentation network when there is one, even
  when the masks came from elsewhere, else the mask), allowing ``margin_px`` (1 px);
* ``dropped``: the fraction of the matched samples that the reconstruction's own checks (left-right
  consistency, reprojection, short runs) removed.

A point that projects off a view's detector (a third view that does not see the whole tree) counts
for neither projection check in that view.

Each over its limit (``max_fraction`` = 0.1, 0.1, 0.2) adds a sentence to ``warnings``;
``plausible`` is False when there is any. The ``dropped`` limit was 0.5 until it passed a 26 mm tree:
on held-out 512 px pairs (``benchmarks/coronary_vessel_seg.py --pairs 4``, trees 50200-50203,
exact geometry) the trees within 0.25 mm of the truth dropped 4-6 % of their matched samples, every
tree 4.7 mm or more off dropped 50-83 % (network, Frangi and true-mask vessels alike), while the
two projection checks were 0 % for all of them (a wrong correspondence still lies on both views'
vessels). The ``coronary-reconstruct`` job writes the record into
its report, logs the warnings and the Slicer module shows them in its status line.

The ``dropped`` limit scales with the pixel size (:func:`dropped_limit`). Most drops are the left-right
check's: a sample is kept when the two matching directions agree within ``consistency_mm`` in 3D.
With a right geometry they disagree where a vessel crosses the epipolar lines at a shallow angle
``a``: a localisation error of about a pixel at the isocentre, ``d`` (detector spacing x SOD / SID),
moves the point in depth by about ``d / sin a``, so a sample is dropped when ``sin a < k d /
consistency_mm`` (a heavy tail: the share grows in proportion to ``d``, not like a Gaussian's). With
the crossing angles spread evenly over [0, 90] deg the share dropped is ``(2 / pi) asin(k d /
consistency_mm)``; the limit ``L_ref`` set at ``r_ref = consistency_mm / d`` pixels becomes
``(2 / pi) asin(min(1, sin(pi L_ref / 2) r_ref / r))`` at ``r`` pixels, never below ``L_ref`` (finer
pixels were not measured). ``r_ref`` = :data:`DROPPED_REFERENCE_PX` (1 mm over 0.20-0.28 mm at 512 px,
where 0.2 was set); at 256 px (0.38-0.58 mm) it is 0.31-0.51. On 40 tuning pairs at 256 px (trees
60000-60019, true masks and matches; the flag at 0.2 -> now): exact geometry dropped 0.2-42 % (median
11 %), flagged 14 -> 3; view 2 off by 5 deg (2.3 mm mean 3D error) 0.6-65 % (median 24 %), flagged
23 -> 11; its isocentre off by 10 mm (9.0 mm) 10-73 % (median 52 %), flagged 38 -> 30. At 512 px the
limit stays 0.2 (exact geometry on 4 pairs of trees 61000-61003: 2, 59, 7 and 2 %). The check flags
gross errors, not a few degrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from xraycardiac.geometry import CArmGeometry

__all__ = ["DROPPED_REFERENCE_PX", "dropped_limit", "plausibility"]

DROPPED_REFERENCE_PX = 4.0
"""Left-right tolerance in pixels at the isocentre (1 mm / ~0.25 mm) of the 512 px pairs the 0.2 limit was set on."""


def _rasterise(paths: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Bool image of the pixels the (u, v) polylines pass through (sampled every 0.5 px)."""
    out = np.zeros(shape, dtype=bool)
    for path in paths:
        p = np.asarray(path, dtype=np.float64).reshape(-1, 2)
        if len(p) > 1:
            steps = np.maximum(np.ceil(2 * np.linalg.norm(np.diff(p, axis=0), axis=1)).astype(int), 1)
            p = np.concatenate(
                [np.linspace(a, b, n, endpoint=False) for a, b, n in zip(p[:-1], p[1:], steps, strict=True)]
                + [p[-1:]]
            )
        ij = np.round(p).astype(int)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < shape[1]) & (ij[:, 1] >= 0) & (ij[:, 1] < shape[0])
        out[ij[ok, 1], ij[ok, 0]] = True
    return out


def _sample(image: np.ndarray, uv: np.ndarray, outside: float) -> np.ndarray:
    """Nearest-pixel values of ``image`` at (u, v); ``outside`` off the image."""
    ij = np.round(uv).astype(int)
    rows, cols = image.shape
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < cols) & (ij[:, 1] >= 0) & (ij[:, 1] < rows)
    out = np.full(len(uv), outside, dtype=np.float64)
    out[ok] = image[ij[ok, 1], ij[ok, 0]]
    return out


def dropped_limit(limit: float, geometries: Sequence[CArmGeometry], consistency_mm: float) -> float:
    """The ``dropped`` limit at these views' pixel size (module docstring).

    Args:
        limit: the limit at :data:`DROPPED_REFERENCE_PX` (a fraction in (0, 1)).
        geometries: the views; the coarsest pixel at the isocentre (spacing x SOD / SID, mm) counts.
        consistency_mm: the reconstruction's left-right tolerance, mm.

    Returns:
        ``(2 / pi) asin(min(1, sin(pi limit / 2) r_ref / r))`` with ``r = consistency_mm / pixel``, never
        below ``limit``.
    """
    pixel_mm = max(max(g.pixel_spacing_mm) * g.sod_mm / g.sid_mm for g in geometries)
    ratio = DROPPED_REFERENCE_PX * pixel_mm / consistency_mm
    return float(max(limit, 2.0 / np.pi * np.arcsin(min(1.0, np.sin(np.pi * limit / 2.0) * ratio))))


def plausibility(
    points3d: np.ndarray,
    geometries: Sequence[CArmGeometry],
    centrelines: Sequence[Sequence[np.ndarray]],
    vessel_maps: Sequence[np.ndarray],
    stats: Mapping[str, Any],
    tolerance_px: float = 1.5,
    margin_px: float = 1.0,
    max_fraction: tuple[float, float, float] = (0.1, 0.1, 0.2),
    consistency_mm: float = 1.0,
) -> dict[str, Any]:
    """Ground-truth-free plausibility of a reconstruction (module docstring).

    Args:
        points3d: (N, 3) reconstructed centreline points, RAS mm.
        geometries: every view as used (view 1, view 2 refined or recorded, ...); at least 2.
        centrelines: each view's 2D centreline polylines ((P, 2) pixels (u, v)), e.g. the
            reconstruction's ``graphs[i].paths``.
        vessel_maps: each view's vessel probability in [0, 1] or bool mask, the size of its detector.
        stats: the reconstruction's ``stats``: ``matched_samples`` (view-1 samples the curve matching
            paired), ``inconsistent_dropped`` (removed by the left-right check before that count) and
            ``rejected_reprojection`` (removed by the reprojection check after it).
        tolerance_px: reprojection tolerance, pixels.
        margin_px: a projection within this of a vessel pixel counts as on the vessel.
        max_fraction: warning limits of (reprojection_over_tol, outside_vessels, dropped); the last at
            :data:`DROPPED_REFERENCE_PX`, scaled to the views' pixel size (:func:`dropped_limit`).
        consistency_mm: the left-right tolerance of the reconstruction (``ReconstructionConfig``), mm.

    Returns:
        ``points``, ``reprojection_px`` (mean / p95 over points of the largest of the views'
        errors), ``reprojection_over_tol``, ``outside_vessels``, ``dropped`` (fractions),
        ``tolerance_px``, ``max_fraction`` (the limits used), ``warnings`` (sentences) and ``plausible``.

    Raises:
        ValueError: not one geometry, centreline set and vessel map per view (counts named), fewer than
            2 views, or a vessel map unlike its detector.
    """
    if not (len(geometries) == len(centrelines) == len(vessel_maps) >= 2):
        raise ValueError(
            f"plausibility: {len(geometries)} geometries, {len(centrelines)} centrelines and {len(vessel_maps)} "
            "vessel maps given; give one of each per view, at least 2 views"
        )
    pts = np.asarray(points3d, dtype=np.float64).reshape(-1, 3)
    n = len(pts)
    worst = np.zeros(n)
    outside = np.zeros(n, dtype=bool)
    for g, paths, vmap in zip(geometries, centrelines, vessel_maps, strict=True):
        shape = (g.detector_rows, g.detector_cols)
        vmap = np.asarray(vmap)
        if vmap.shape != shape:
            raise ValueError(f"plausibility: vessel map {vmap.shape} differs from its detector {shape}")
        uv = g.project(pts) if n else np.zeros((0, 2))
        skeleton = _rasterise(paths, shape)
        dist = ndimage.distance_transform_edt(~skeleton) if skeleton.any() else np.full(shape, np.inf)
        worst = np.maximum(worst, _sample(dist, uv, 0.0))  # off a view's field: no evidence either way
        vessel = vmap >= 0.5 if vmap.dtype != bool else vmap
        near = ndimage.distance_transform_edt(~vessel) <= margin_px if vessel.any() else vessel
        outside |= _sample(near.astype(np.float64), uv, 1.0) < 0.5
    inconsistent = int(stats.get("inconsistent_dropped", 0))
    rejected = inconsistent + int(stats.get("rejected_reprojection", 0))
    candidates = int(stats.get("matched_samples", 0)) + inconsistent
    fractions = {
        "reprojection_over_tol": float(np.mean(worst > tolerance_px)) if n else 1.0,
        "outside_vessels": float(np.mean(outside)) if n else 1.0,
        "dropped": float(rejected / candidates) if candidates > 0 else 1.0,
    }
    what = {
        "reprojection_over_tol": f"of the points project farther than {tolerance_px:g} px from a 2D centreline",
        "outside_vessels": "of the points project outside the vessels of a view",
        "dropped": "of the matched samples were rejected by the consistency / reprojection checks",
    }
    if not (np.isfinite(consistency_mm) and consistency_mm > 0):
        raise ValueError(
            f"plausibility: consistency_mm must be a finite number of mm > 0, got {consistency_mm!r}"
        )
    max_fraction = (*max_fraction[:2], dropped_limit(max_fraction[2], geometries, consistency_mm))
    warnings = [
        f"{100 * fractions[k]:.0f} % {what[k]} (limit {100 * lim:.0f} %): the 3D centreline is implausible; "
        "check the vessel segmentation and the geometry"
        for k, lim in zip(what, max_fraction, strict=True)
        if fractions[k] > lim
    ]
    finite = worst[np.isfinite(worst)]
    return {
        "points": n,
        "reprojection_px": {
            "mean": float(finite.mean()) if len(finite) else None,
            "p95": float(np.percentile(finite, 95)) if len(finite) else None,
        },
        **fractions,
        "tolerance_px": float(tolerance_px),
        "max_fraction": dict(zip(what, (float(x) for x in max_fraction), strict=True)),
        "warnings": warnings,
        "plausible": not warnings,
    }
