"""Keypoint-matching metrics against exact two-view ground truth (issue 4: the matcher's yardstick).

A matcher predicts M matches, pixels ``x1`` (M, 2) in image 1 and ``x2`` (M, 2) in image 2. The ground
truth of a synthetic pair is K keypoints on the 3D tree projected into both views, ``uv1``/``uv2``
(K, 2), with the flags ``in_field1``/``in_field2`` (on that detector), and the two (3, 4) projection
matrices (RAS mm -> pixel). A *GT match* is a keypoint in the field of both views. Pixels are
(u = column, v = row), origin top-left, pixel centres at integers, as everywhere in the library.

What is computed, for each distance threshold t in pixels (all comparisons are ``<= t``):

``precision@t`` (keypoint-correct)
    A predicted match is correct if one GT match k has ``|x1 - uv1[k]| <= t`` and ``|x2 - uv2[k]|
    <= t``, i.e. both ends land on the same GT keypoint. Correct / M. This is the strict reading:
    a geometrically right match half-way between two GT keypoints (they are ``spacing_mm`` apart
    along the vessel) counts as wrong at small t.
``epipolar_precision@t``
    The SuperGlue / LightGlue reading: a predicted match is correct if its symmetric epipolar
    distance under the true geometry (:func:`symmetric_epipolar_error_px`) is ``<= t``. Lenient
    where a vessel runs along the epipolar lines.
``recall@t``
    Fraction of the GT matches recovered. Each GT match is paired with at most one predicted
    match and vice versa, greedily by increasing cost ``max(|x1 - uv1[k]|, |x2 - uv2[k]|)`` (one
    assignment for every t: the pairs it makes with cost <= t are exactly those greedy would make
    among the pairs with cost <= t). GT match k is recovered at t if its assigned cost is <= t.
``matching_score@t``
    Correct predicted matches (keypoint-correct at t) / number of keypoints the detector reported
    in image 1 (SuperPoint / SuperGlue "M.Score"); only when those keypoints are given.
``auc@T``
    The cumulative-error AUC of SuperGlue / LightGlue pose evaluation, applied to the per-GT-match
    *transfer error* ``e_k`` = the cost of GT match k's assigned predicted match above (inf if it
    has none within the largest threshold). ``auc@T = (1/T) integral_0^T F(t) dt`` with F the
    empirical CDF of ``e_k`` over all GT matches, i.e. ``mean_k max(0, 1 - e_k / T)``. This is the
    exact area under the step CDF; SuperGlue's ``pose_auc`` joins the sorted errors with
    trapezoids instead, which differs by O(1 / K). Perfect matches give 1; every GT match
    recovered with a 4 px error gives ``1 - 4 / T``; unrecovered GT matches count 0.
``mean_epipolar_error_px``
    Mean symmetric epipolar distance of the predicted matches (NaN with no match).

Precision and the epipolar error are NaN when there is no predicted match, recall and AUC are NaN
when the pair has no GT match: average over pairs with ``nanmean``.

Numpy in and out; the epipolar geometry (fundamental matrix, point-to-line distances) is
:mod:`xraycardiac.geometry.epipolar`'s (kornia), imported when first needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "correct_in_3d",
    "MatchingMetrics",
    "assign_matches_to_gt",
    "cumulative_error_auc",
    "keypoint_correct",
    "matching_metrics",
    "sample_matching_metrics",
    "symmetric_epipolar_error_px",
]

DEFAULT_THRESHOLDS_PX = (3.0, 5.0)
DEFAULT_AUC_THRESHOLDS_PX = (5.0, 10.0, 20.0)


def _points(value: Any, name: str) -> np.ndarray:
    """(N, 2) float64 pixels, or a ValueError naming ``name``."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 1 and a.size == 0:
        a = a.reshape(0, 2)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name}: expected an (N, 2) array of pixels (u, v), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or infinite pixel coordinates")
    return a


def _pair(x1: Any, x2: Any, names: tuple[str, str] = ("x1", "x2")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _points(x1, names[0]), _points(x2, names[1])
    if len(a) != len(b):
        raise ValueError(f"{names[0]} has {len(a)} points but {names[1]} has {len(b)}: matches come in pairs")
    return a, b


def _projection(p: Any, name: str) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.shape != (3, 4):
        raise ValueError(
            f"{name}: expected a (3, 4) projection matrix (RAS mm -> pixel), got shape {a.shape}"
        )
    return a


def _thresholds(values: Sequence[float], name: str) -> tuple[float, ...]:
    t = tuple(float(v) for v in values)
    if not t or not all(np.isfinite(v) and v > 0 for v in t):
        raise ValueError(f"{name}: expected one or more distances > 0 pixels, got {values!r}")
    return t


def symmetric_epipolar_error_px(x1: np.ndarray, x2: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance of M matches under the true geometry, in pixels.

    The larger of the two point-to-epipolar-line distances: ``x2`` to the line of ``x1`` in image 2
    and ``x1`` to the line of ``x2`` in image 1 (as :meth:`GTMatches.epipolar_error_px`).

    Args:
        x1, x2: (M, 2) matched pixels (u, v) in image 1 and image 2.
        p1, p2: (3, 4) projection matrices of the two views (RAS mm -> pixel).

    Returns:
        (M,) float64 pixels; 0 for a match that is the projection of one 3D point.
    """
    from xraycardiac.geometry.epipolar import epipolar_distance, fundamental_matrix

    x1, x2 = _pair(x1, x2)
    p1, p2 = _projection(p1, "p1"), _projection(p2, "p2")
    if len(x1) == 0:
        return np.zeros(0)
    d2 = epipolar_distance(fundamental_matrix(p1, p2), x1, x2)
    d1 = epipolar_distance(fundamental_matrix(p2, p1), x2, x1)
    return np.maximum(d1, d2)


def correct_in_3d(
    x1: np.ndarray,
    x2: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    centreline_ras_mm: np.ndarray,
    epipolar_px: float = 5.0,
    distance_mm: float = 2.0,
) -> np.ndarray:
    """Which matches are correct by geometry alone: epipolar-consistent AND on the true vessel in 3D.

    Issue 19's criterion, which needs no keypoint ground truth (a match between two points of the
    same vessel counts even where no GT keypoint lies): the symmetric epipolar distance under the
    true geometry is <= ``epipolar_px`` and the triangulated point lies within ``distance_mm`` of the
    true 3D centreline.

    Args:
        x1, x2: (M, 2) matched pixels (u, v).
        p1, p2: (3, 4) true projection matrices (RAS mm -> pixel).
        centreline_ras_mm: (K, 3) points of the true centreline, RAS mm, dense (e.g. every 0.5 mm: the
            spacing adds up to half of it to the distance).
        epipolar_px: epipolar tolerance, pixels.
        distance_mm: 3D tolerance, mm.

    Returns:
        (M,) bool.
    """
    from scipy.spatial import cKDTree

    from xraycardiac.geometry.epipolar import triangulate

    x1, x2 = _pair(x1, x2)
    line = np.asarray(centreline_ras_mm, dtype=np.float64).reshape(-1, 3)
    if len(x1) == 0 or len(line) == 0:
        return np.zeros(len(x1), dtype=bool)
    ok = symmetric_epipolar_error_px(x1, x2, p1, p2) <= epipolar_px
    if ok.any():
        d, _ = cKDTree(line).query(triangulate(p1, p2, x1[ok], x2[ok]))
        ok[np.flatnonzero(ok)] = d <= distance_mm
    return ok


def _costs(x1: np.ndarray, x2: np.ndarray, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """(M, G) ``max(|x1_m - g1_k|, |x2_m - g2_k|)`` in pixels."""
    d1 = np.linalg.norm(x1[:, None, :] - g1[None, :, :], axis=-1)
    d2 = np.linalg.norm(x2[:, None, :] - g2[None, :, :], axis=-1)
    return np.maximum(d1, d2)


def keypoint_correct(
    x1: np.ndarray, x2: np.ndarray, gt1: np.ndarray, gt2: np.ndarray, threshold_px: float
) -> np.ndarray:
    """Which predicted matches land on one GT match in both images.

    Args:
        x1, x2: (M, 2) predicted matches, pixels (u, v).
        gt1, gt2: (G, 2) GT matches (the same 3D keypoint in image 1 / image 2), pixels.
        threshold_px: distance allowed in each image, pixels.

    Returns:
        (M,) bool: some GT match k has ``|x1 - gt1[k]| <= t`` and ``|x2 - gt2[k]| <= t``.
    """
    x1, x2 = _pair(x1, x2)
    gt1, gt2 = _pair(gt1, gt2, ("gt1", "gt2"))
    if len(x1) == 0 or len(gt1) == 0:
        return np.zeros(len(x1), dtype=bool)
    return _costs(x1, x2, gt1, gt2).min(axis=1) <= float(threshold_px)


def assign_matches_to_gt(
    x1: np.ndarray, x2: np.ndarray, gt1: np.ndarray, gt2: np.ndarray, max_error_px: float
) -> np.ndarray:
    """Transfer error of each GT match: one-to-one greedy assignment of predicted matches to GT matches.

    Pairs (predicted m, GT k) are taken by increasing cost ``max(|x1_m - gt1_k|, |x2_m - gt2_k|)``
    while neither is taken yet; pairs costlier than ``max_error_px`` are never taken.

    Args:
        x1, x2: (M, 2) predicted matches, pixels (u, v).
        gt1, gt2: (G, 2) GT matches, pixels.
        max_error_px: the largest cost considered, pixels.

    Returns:
        (G,) float64 cost of each GT match's predicted match in pixels, inf where it has none.
    """
    x1, x2 = _pair(x1, x2)
    gt1, gt2 = _pair(gt1, gt2, ("gt1", "gt2"))
    errors = np.full(len(gt1), np.inf)
    if len(x1) == 0 or len(gt1) == 0:
        return errors
    cost = _costs(x1, x2, gt1, gt2)
    m_idx, k_idx = np.nonzero(cost <= float(max_error_px))
    order = np.argsort(cost[m_idx, k_idx], kind="stable")
    used_m = np.zeros(len(x1), dtype=bool)
    for m, k in zip(m_idx[order], k_idx[order], strict=True):
        if not used_m[m] and np.isinf(errors[k]):
            used_m[m] = True
            errors[k] = cost[m, k]
    return errors


def cumulative_error_auc(errors: np.ndarray, thresholds_px: Sequence[float]) -> list[float]:
    """Area under the empirical CDF of ``errors`` up to each threshold, normalised to [0, 1].

    ``auc(T) = (1/T) integral_0^T P(e <= t) dt = mean(max(0, 1 - e / T))`` (inf errors count 0).

    Args:
        errors: (G,) errors in pixels, >= 0 or inf.
        thresholds_px: thresholds T in pixels.

    Returns:
        One AUC per threshold; NaN for an empty ``errors``.
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if np.any(np.isnan(e)) or np.any(e < 0):
        raise ValueError("errors: expected distances >= 0 (inf allowed), got NaN or negative values")
    ts = _thresholds(thresholds_px, "thresholds_px")
    if e.size == 0:
        return [float("nan")] * len(ts)
    return [float(np.mean(np.clip(1.0 - e / t, 0.0, 1.0))) for t in ts]


@dataclass(frozen=True)
class MatchingMetrics:
    """Metrics of one image pair (module docstring for the definitions).

    Attributes:
        num_matches: M, predicted matches.
        num_gt_matches: GT matches (keypoints in the field of both views).
        num_keypoints1: keypoints the detector reported in image 1, or None.
        precision: threshold px -> keypoint-correct precision.
        epipolar_precision: threshold px -> epipolar-correct precision.
        recall: threshold px -> fraction of GT matches recovered.
        matching_score: threshold px -> correct / ``num_keypoints1``; None without keypoints.
        auc: threshold px -> cumulative transfer-error AUC.
        mean_epipolar_error_px: mean symmetric epipolar distance of the predicted matches.
    """

    num_matches: int
    num_gt_matches: int
    num_keypoints1: int | None
    precision: dict[float, float]
    epipolar_precision: dict[float, float]
    recall: dict[float, float]
    matching_score: dict[float, float] | None
    auc: dict[float, float]
    mean_epipolar_error_px: float

    def as_dict(self) -> dict[str, float]:
        """Flat ``{"precision@3px": ..., "auc@10px": ...}`` (counts included), e.g. for a table or JSON."""
        out: dict[str, float] = {"num_matches": self.num_matches, "num_gt_matches": self.num_gt_matches}
        if self.num_keypoints1 is not None:
            out["num_keypoints1"] = self.num_keypoints1
        groups = ("precision", "epipolar_precision", "recall", "matching_score", "auc")
        for group in groups:
            for t, v in (getattr(self, group) or {}).items():
                out[f"{group}@{t:g}px"] = v
        out["mean_epipolar_error_px"] = self.mean_epipolar_error_px
        return out


def matching_metrics(
    x1: np.ndarray,
    x2: np.ndarray,
    uv1: np.ndarray,
    uv2: np.ndarray,
    in_field1: np.ndarray,
    in_field2: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    *,
    keypoints1: np.ndarray | None = None,
    thresholds_px: Sequence[float] = DEFAULT_THRESHOLDS_PX,
    auc_thresholds_px: Sequence[float] = DEFAULT_AUC_THRESHOLDS_PX,
) -> MatchingMetrics:
    """Score M predicted matches of one image pair against its ground truth.

    Args:
        x1, x2: (M, 2) predicted matches, pixels (u = column, v = row) in image 1 / image 2.
        uv1, uv2: (K, 2) GT keypoint pixels in view 1 / view 2 (``keypoints.json``'s ``uv1``/``uv2``).
        in_field1, in_field2: (K,) bool, the keypoint is on that detector; GT matches are the
            keypoints with both.
        p1, p2: (3, 4) projection matrices (RAS mm -> pixel) of the two views.
        keypoints1: (N, 2) keypoints the detector reported in image 1, for the matching score;
            None to skip it.
        thresholds_px: thresholds for precision, recall and matching score, pixels.
        auc_thresholds_px: thresholds for the transfer-error AUC, pixels.

    Returns:
        :class:`MatchingMetrics`.

    Raises:
        ValueError: arrays of the wrong shape, non-finite pixels, bad thresholds.
    """
    x1, x2 = _pair(x1, x2)
    uv1, uv2 = _pair(uv1, uv2, ("uv1", "uv2"))
    flags = []
    for name, f in (("in_field1", in_field1), ("in_field2", in_field2)):
        f = np.asarray(f)
        if f.shape != (len(uv1),):
            raise ValueError(
                f"{name}: expected ({len(uv1)},) flags, one per GT keypoint, got shape {f.shape}"
            )
        flags.append(f.astype(bool))
    p1, p2 = _projection(p1, "p1"), _projection(p2, "p2")
    ts = _thresholds(thresholds_px, "thresholds_px")
    auc_ts = _thresholds(auc_thresholds_px, "auc_thresholds_px")
    n_kp1 = None if keypoints1 is None else len(_points(keypoints1, "keypoints1"))

    both = flags[0] & flags[1]
    gt1, gt2 = uv1[both], uv2[both]
    nan = float("nan")
    m, g = len(x1), len(gt1)
    best = _costs(x1, x2, gt1, gt2).min(axis=1) if m and g else np.full(m, np.inf)
    epi = symmetric_epipolar_error_px(x1, x2, p1, p2)
    transfer = assign_matches_to_gt(x1, x2, gt1, gt2, max(ts + auc_ts))
    correct = {t: int(np.count_nonzero(best <= t)) for t in ts}
    return MatchingMetrics(
        num_matches=m,
        num_gt_matches=g,
        num_keypoints1=n_kp1,
        precision={t: correct[t] / m if m else nan for t in ts},
        epipolar_precision={t: float(np.mean(epi <= t)) if m else nan for t in ts},
        recall={t: float(np.mean(transfer <= t)) if g else nan for t in ts},
        matching_score=None if n_kp1 is None else {t: correct[t] / n_kp1 if n_kp1 else nan for t in ts},
        auc=dict(zip(auc_ts, cumulative_error_auc(transfer, auc_ts), strict=True)),
        mean_epipolar_error_px=float(epi.mean()) if m else nan,
    )


def sample_matching_metrics(
    x1: np.ndarray,
    x2: np.ndarray,
    sample: Mapping[str, Any],
    *,
    keypoints1: np.ndarray | None = None,
    thresholds_px: Sequence[float] = DEFAULT_THRESHOLDS_PX,
    auc_thresholds_px: Sequence[float] = DEFAULT_AUC_THRESHOLDS_PX,
) -> MatchingMetrics:
    """:func:`matching_metrics` against a sample as :func:`xraycardiac.coronary.synth.dataset.read_sample` reads it.

    Args:
        x1, x2: (M, 2) predicted matches, pixels (u, v).
        sample: dict with ``keypoints`` (``uv1``, ``uv2``, ``in_field1``, ``in_field2``) and
            ``projection_matrices`` (2, 3, 4).
        keypoints1, thresholds_px, auc_thresholds_px: as :func:`matching_metrics`.
    """
    try:
        kp, pm = sample["keypoints"], np.asarray(sample["projection_matrices"], dtype=np.float64)
    except KeyError as exc:
        raise ValueError(f"sample: missing {exc}; pass the dict read_sample returns") from None
    if pm.shape != (2, 3, 4):
        raise ValueError(f"sample['projection_matrices']: expected shape (2, 3, 4), got {pm.shape}")
    return matching_metrics(
        x1, x2, kp["uv1"], kp["uv2"], kp["in_field1"], kp["in_field2"], pm[0], pm[1],
        keypoints1=keypoints1, thresholds_px=thresholds_px, auc_thresholds_px=auc_thresholds_px,
    )  # fmt: skip
