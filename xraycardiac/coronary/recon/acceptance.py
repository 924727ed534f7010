"""Accept or reject a refinement of view 2: the one calibration path, never worse than the recorded pose.

:func:`calibrate_from_matches` (the ``coronary-reconstruct`` job, :func:`reconstruct_tree` with
``refine_calibration``, the pipeline evaluation and the benchmark all go through it) refines view 2
by :func:`~xraycardiac.coronary.recon.calibration.refine_second_view` (a MAP estimate: robust
reprojection error plus the Gaussian prior on the C-arm angles and the isocentre) and keeps the
refined pose only when evidence it was not fitted to prefers it; otherwise the recorded geometry is
used and the record says which test failed. The tests, in order:

1. **enough matches / inliers**: at least ``min_matches`` matches, and as many inliers of the
   refined pose;
2. **plausible under the prior**: the corrections' squared Mahalanobis distance
   (:func:`~xraycardiac.coronary.recon.calibration.prior_chi2`) below the chi-square quantile
   ``1 - prior_alpha`` of its degrees of freedom. Wrong matches that agree with one another can
   pull the pose far along the weakly observed direction (issue 20: 3 -> 9 deg where accepted);
   a pose the prior gives odds of 1 in 1000 is not taken on the word of the matches alone;
3. **cross-validation** on held-out matches: the matches are split into ``folds`` (seeded), the
   pose is refined on all folds but one, and each held-out match is triangulated with that pose;
   the refinement is kept only if the held-out matches' truncated squared error
   ``mean(min(e, inlier_threshold_px)^2)`` is below ``(1 - cv_margin)`` times that of the recorded
   pose on the same matches, and at least ``min_heldout_inliers`` of the matches are inliers of
   the pose refined without them. A refinement that only fits the noise or the wrong matches of
   its own sample loses here;
4. **vessel trees** (with ``vessels``): the refined pose must explain at least as many vessel
   centreline samples as the recorded one
   (:func:`~xraycardiac.coronary.recon.centrelines.epipolar_consistency`, no matches involved).

Outliers (matches that are not inliers of the refined pose) are reported by index either way.

What none of the tests can see (issue 20, "never worse in 3D"): the scale of the scene about view 1's
source, which leaves every image, match and vessel as it was, for any number of views. The refinement
leaves it where the isocentre prior puts it (the calibration module docstring); when the recorded
errors happened to cancel the error of that scale, a kept refinement is worse in 3D than the recorded
geometry. A kept refinement's record gives the scale's 1-sigma spread (``scale``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xraycardiac.coronary.recon.calibration import (
    PARAMETERS,
    CalibrationConfig,
    CalibrationResult,
    match_table,
    prior_chi2,
    refine_views,
    triangulate_matches,
    view_parameters,
)
from xraycardiac.coronary.recon.centrelines import epipolar_consistency
from xraycardiac.geometry import CArmGeometry

__all__ = [
    "AcceptanceConfig",
    "calibrate_from_matches",
    "calibrate_views",
    "cross_validate",
    "guarded_refinement",
]


@dataclass(frozen=True)
class AcceptanceConfig:
    """How much evidence a refinement needs (module docstring, tests 2 and 3).

    Attributes:
        folds: number of cross-validation folds (>= 2; more when the matches are too few to leave
            ``min_matches`` in every training set, up to leave-one-out).
        cv_margin: the held-out cost of the refined poses must be below ``(1 - cv_margin)`` times
            that of the recorded pose (0 <= cv_margin < 1). 0.5: on 16 held-out pairs the true
            matches' refinements cut it by 80-100 %, while the refinements from the demo matcher's
            matches (20-60 % inliers) that turned the pose the wrong way cut it by 20-40 %.
        min_heldout_inliers: fraction of the matches that must be inliers of the pose refined
            without them (held-out error below ``inlier_threshold_px``), 0 to 1.
        prior_alpha: a refinement whose corrections the prior puts beyond its ``1 - prior_alpha``
            quantile is rejected (0 < prior_alpha < 1; None = no such test).
        seed: seed of the fold split.
    """

    folds: int = 5
    cv_margin: float = 0.5
    min_heldout_inliers: float = 0.5
    prior_alpha: float | None = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.folds, int) and not isinstance(self.folds, bool) and self.folds >= 2):
            raise ValueError(f"AcceptanceConfig.folds: expected an integer >= 2, got {self.folds!r}")
        if not (isinstance(self.cv_margin, int | float) and 0.0 <= self.cv_margin < 1.0):
            raise ValueError(
                f"AcceptanceConfig.cv_margin: expected a number in [0, 1), got {self.cv_margin!r}"
            )
        if not (isinstance(self.min_heldout_inliers, int | float) and 0.0 <= self.min_heldout_inliers <= 1.0):
            raise ValueError(
                f"AcceptanceConfig.min_heldout_inliers: expected a fraction in [0, 1], got {self.min_heldout_inliers!r}"
            )
        a = self.prior_alpha
        if a is not None and not (isinstance(a, int | float) and 0.0 < a < 1.0):
            raise ValueError(f"AcceptanceConfig.prior_alpha: expected None or a number in (0, 1), got {a!r}")


def _truncated_cost(errors_px: np.ndarray, tau_px: float) -> float:
    """Mean of ``min(e, tau)^2`` (pixels^2): wrong matches cost at most tau^2 whatever the pose."""
    return float(np.mean(np.minimum(errors_px, tau_px) ** 2)) if len(errors_px) else float("nan")


def _errors(values: np.ndarray) -> dict[str, float | None]:
    """Mean / median of per-match errors (None when there is no match)."""
    if len(values) == 0:
        return {"mean": None, "median": None}
    return {"mean": float(np.mean(values)), "median": float(np.median(values))}


def _cross_validate(
    views: list[CArmGeometry],
    table: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    config: CalibrationConfig,
    folds: int,
    seed: int,
) -> dict[str, Any]:
    """:func:`cross_validate` on N views: the folds split all pairs' matches, concatenated in pair order."""
    pairs = list(table)
    m = sum(len(a) for a, _ in table.values())
    recorded = _pair_errors(views, table) if m else np.zeros(0)
    k = min(folds, m)  # more folds leave more matches to each training set (up to leave-one-out)
    while k < m and m - int(np.ceil(m / k)) < config.min_matches:
        k += 1
    if m - int(np.ceil(m / max(k, 1))) < config.min_matches:
        k = 0
    heldout = np.full(m, np.nan)
    out: dict[str, Any] = {"folds": k if k >= 2 else 0, "recorded_px": recorded, "heldout_px": heldout}
    tau = config.inlier_threshold_px
    if k < 2:
        return out | {"cost_refined": float("nan"), "cost_recorded": _truncated_cost(recorded, tau),
                      "inliers_refined": 0, "inliers_recorded": int(np.sum(recorded < tau))}  # fmt: skip
    fold_of = np.random.default_rng(seed).permutation(m) % k
    pair_index = np.concatenate([np.full(len(table[key][0]), n) for n, key in enumerate(pairs)])
    for f in range(k):
        test = fold_of == f

        def part(sel: np.ndarray) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
            return {
                key: (a[s], b[s])
                for n, (key, (a, b)) in enumerate(table.items())
                for s in [sel[pair_index == n]]
            }

        train = part(~test)
        try:
            poses = list(refine_views(views, train, config).geometries)
        except ValueError:  # a view left without training matches in this fold: it stays as recorded
            known = {v for key, (a, _) in train.items() if len(a) for v in key} | {0}
            sub = [v for v in range(len(views)) if v in known]
            poses = list(views)
            if len(sub) >= 2:
                fit = refine_views([views[v] for v in sub], _reindex(train, sub), config).geometries
                for v, g in zip(sub, fit, strict=True):
                    poses[v] = g
        heldout[test] = _pair_errors(poses, part(test))
    return out | {
        "cost_refined": _truncated_cost(heldout, tau),
        "cost_recorded": _truncated_cost(recorded, tau),
        "inliers_refined": int(np.sum(heldout < tau)),
        "inliers_recorded": int(np.sum(recorded < tau)),
    }


def _reindex(
    table: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]], sub: list[int]
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """The matches among the views ``sub``, renumbered 0..len(sub)-1."""
    new = {v: n for n, v in enumerate(sub)}
    return {(new[i], new[j]): xy for (i, j), xy in table.items() if i in new and j in new and len(xy[0])}


def _pair_errors(
    views: list[CArmGeometry], table: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Per-match RMS reprojection error (pixels) of each pair's matches triangulated with its two views."""
    errs = [triangulate_matches(views[i], views[j], a, b)[1] for (i, j), (a, b) in table.items() if len(a)]
    return np.concatenate(errs) if errs else np.zeros(0)


def cross_validate(
    g1: CArmGeometry,
    g2: CArmGeometry,
    x1: np.ndarray,
    x2: np.ndarray,
    config: CalibrationConfig | None = None,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out reprojection error of refinements of view 2, against the recorded pose on the same matches.

    Args:
        g1, g2: view 1 (fixed) and the recorded view 2.
        x1, x2: (M, 2) matched pixels (u, v).
        config: the refinement's settings (:class:`CalibrationConfig`).
        folds: requested number of folds; fewer are used when a training set would keep fewer than
            ``config.min_matches`` matches (at least 2, else the result has ``folds`` = 0).
        seed: seed of the split.

    Returns:
        ``folds`` (used), ``heldout_px`` (M,) error of each match under the pose refined without it
        (NaN when not cross-validated), ``recorded_px`` (M,) under the recorded pose, ``cost_refined``
        / ``cost_recorded`` (truncated mean squared error, pixels^2, :func:`_truncated_cost`),
        ``inliers_refined`` / ``inliers_recorded`` (held-out matches within ``inlier_threshold_px``).
    """
    x1 = np.asarray(x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(x2, dtype=np.float64).reshape(-1, 2)
    return _cross_validate([g1, g2], {(0, 1): (x1, x2)}, config or CalibrationConfig(), folds, seed)


def calibrate_from_matches(
    g1: CArmGeometry,
    g2: CArmGeometry,
    x1: np.ndarray,
    x2: np.ndarray,
    refine: bool = True,
    config: CalibrationConfig | None = None,
    log: Callable[[str], None] | None = None,
    vessels: tuple[np.ndarray, np.ndarray] | None = None,
    acceptance: AcceptanceConfig | None = None,
) -> tuple[CArmGeometry, dict[str, Any], np.ndarray | None]:
    """Refine view 2 from matches and keep the refinement only when it wins on held-out evidence.

    The step of the ``coronary-reconstruct`` job, of :func:`reconstruct_tree` with
    ``refine_calibration`` and of the pipeline evaluation (module docstring for the tests);
    :func:`calibrate_views` with two views.

    Args:
        g1, g2: recorded geometries of the two views (view 1 is the fixed reference).
        x1, x2: (M, 2) matched pixels (u, v) in views 1 and 2.
        refine: False = only measure the reprojection error of the recorded geometry.
        config: :class:`CalibrationConfig` (the prior, the robust loss; default: defaults).
        log: called with a sentence when the recorded geometry is kept.
        vessels: optional (vessels1, vessels2) masks or angiograms of the two views (test 4).
        acceptance: :class:`AcceptanceConfig` (default: defaults).

    Returns:
        (view 2 to use, record, inlier mask or None): the record (``calibration.json``) holds
        ``refined``, ``kept`` ("refined" / "recorded"), ``reason``, ``matches``, ``error_before_px`` /
        ``error_after_px`` (mean, median of the keypoint reprojection error of the pose used),
        ``params`` (corrections of the pose used, degrees / mm) and, once a refinement was made,
        ``candidate`` (its corrections and errors), ``evidence`` (prior chi-square and its limit,
        cross-validation costs, vessel consistency), ``outliers`` (indices of the matches that are
        not inliers of the refined pose) and ``inlier_fraction``; a kept refinement adds ``scale``: the 1-sigma
        spread (``sd_fraction``, ``sd_mm`` at the matched points) of the one scale about view 1's source that
        no image observes and the isocentre prior holds (:mod:`~xraycardiac.coronary.recon.calibration`).
    """
    return guarded_refinement(g1, g2, x1, x2, refine, config, log, vessels, acceptance)[:3]


def guarded_refinement(
    g1: CArmGeometry,
    g2: CArmGeometry,
    x1: np.ndarray,
    x2: np.ndarray,
    refine: bool = True,
    config: CalibrationConfig | None = None,
    log: Callable[[str], None] | None = None,
    vessels: tuple[np.ndarray, np.ndarray] | None = None,
    acceptance: AcceptanceConfig | None = None,
) -> tuple[CArmGeometry, dict[str, Any], np.ndarray | None, CalibrationResult | None]:
    """:func:`calibrate_from_matches` plus the :class:`CalibrationResult` of an accepted refinement (else None)."""
    x1 = np.asarray(x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(x2, dtype=np.float64).reshape(-1, 2)
    if len(x1) != len(x2):
        raise ValueError(f"calibrate_from_matches: x1 has {len(x1)} matches but x2 has {len(x2)}")
    views, record, inliers, result = calibrate_views(
        [g1, g2], {(0, 1): (x1, x2)}, refine, config, log, vessels, acceptance
    )
    return views[1], record, inliers, result


def calibrate_views(
    geometries: Sequence[CArmGeometry],
    matches: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    refine: bool = True,
    config: CalibrationConfig | None = None,
    log: Callable[[str], None] | None = None,
    vessels: Sequence[np.ndarray] | None = None,
    acceptance: AcceptanceConfig | None = None,
) -> tuple[list[CArmGeometry], dict[str, Any], np.ndarray | None, CalibrationResult | None]:
    """Refine N >= 2 views jointly (:func:`~xraycardiac.coronary.recon.calibration.refine_views`, view 1
    fixed) and keep the refinement only when it passes the tests of the module docstring on all views.

    Args:
        geometries: recorded geometries of the views (view 1 is the fixed reference).
        matches: ``{(i, j): (xi, xj)}`` matched pixels of view pairs (0-based ``i < j``).
        refine, config, log, acceptance: as :func:`calibrate_from_matches`.
        vessels: optional vessel masks or angiograms, one per view (test 4, summed over the pairs).

    Returns:
        (views to use, record, inlier mask over all matches in pair order or None, the accepted
        :class:`CalibrationResult` or None); the record as :func:`calibrate_from_matches`'s plus
        ``views`` (N) and ``view_params`` (the corrections of each view used, view 1's all 0).

    Raises:
        ValueError: fewer than 2 views, bad matches (:func:`~xraycardiac.coronary.recon.calibration.match_table`:
            mismatched counts name the pair), or ``vessels`` not one per view.
    """
    from scipy.stats import chi2

    config = config or CalibrationConfig()
    acceptance = acceptance or AcceptanceConfig()
    views = list(geometries)
    if len(views) < 2:
        raise ValueError(f"calibrate_views: {len(views)} view(s) given; at least 2 are needed")
    if vessels is not None and len(vessels) != len(views):
        raise ValueError(
            f"calibrate_views: {len(vessels)} vessel images for {len(views)} views; give one per view"
        )
    table = match_table(matches, len(views), "calibrate_views", connected=False)
    n = sum(len(a) for a, _ in table.values())
    unseen = [
        v + 1 for v in range(1, len(views)) if not any(v in k and len(xy[0]) for k, xy in table.items())
    ]
    before = _pair_errors(views, table)
    zero = dict.fromkeys(PARAMETERS, 0.0)
    record: dict[str, Any] = {
        "refined": False,
        "kept": "recorded",
        "reason": "",
        "matches": n,
        "views": len(views),
    }

    def keep_recorded(reason: str) -> tuple[list[CArmGeometry], dict[str, Any], None, None]:
        record.update(reason=reason, error_before_px=_errors(before), error_after_px=_errors(before), params={},
                      view_params=[dict(zero) for _ in views])  # fmt: skip
        if refine and log is not None:
            log(f"calibration not refined: {reason}")
        return views, record, None, None

    if not refine:
        return keep_recorded("refine_calibration is false")
    if n < config.min_matches:
        return keep_recorded(
            f"only {n} matches; refining {'view 2' if len(views) == 2 else 'the views'} needs at least "
            f"{config.min_matches} (the recorded geometry is used)"
        )
    if unseen:
        return keep_recorded(
            f"view(s) {unseen} have no match with another view; the recorded geometry is used"
        )
    result = refine_views(views, table, config)
    n_in = int(np.sum(result.inliers))
    record.update(
        inlier_fraction=n_in / n,
        outliers=np.flatnonzero(~result.inliers).tolist(),
        candidate={
            "params": {k: float(v) for k, v in result.params.items()},
            "view_params": [dict(p) for p in result.view_params],
            "error_after_px": _errors(result.error_after_px),
            "summary": result.summary(),
        },
    )
    evidence: dict[str, Any] = {}
    record["evidence"] = evidence
    if n_in < config.min_matches:  # the matches agree on no pose: keep the recorded one
        return keep_recorded(
            f"only {n_in} of {n} matches are inliers of the refined pose (at least "
            f"{config.min_matches} needed); the recorded geometry is used"
        )
    if acceptance.prior_alpha is not None:
        dof = len(view_parameters(config, len(views))) * (len(views) - 1)
        limit = float(chi2.ppf(1.0 - acceptance.prior_alpha, dof))
        value = sum(prior_chi2(p, config) for p in result.view_params[1:])
        evidence["prior_chi2"] = {"value": value, "limit": limit, "dof": dof}
        if value > limit:
            return keep_recorded(
                f"the refined pose is implausible under the prior (chi-square {value:.1f} "
                f"> {limit:.1f} with {dof} degrees of freedom; sigmas {config.prior_sigma_deg:g} deg, "
                f"{config.prior_sigma_mm:g} mm): the matches agree on a pose the C-arm cannot be in; "
                "the recorded geometry is used"
            )
    cv = _cross_validate(views, table, config, acceptance.folds, acceptance.seed)
    evidence["cross_validation"] = {k: v for k, v in cv.items() if not isinstance(v, np.ndarray)}
    if cv["folds"] < 2:
        return keep_recorded(
            f"{n} matches are too few to cross-validate the refinement (each fold needs "
            f"{config.min_matches} to refine); the recorded geometry is used"
        )
    if not cv["cost_refined"] < (1.0 - acceptance.cv_margin) * cv["cost_recorded"]:
        return keep_recorded(
            f"the refinement does not predict held-out matches better ({cv['folds']}-fold cross-validation: "
            f"truncated squared error {cv['cost_refined']:.2f} px^2 vs {cv['cost_recorded']:.2f} px^2 for the "
            f"recorded pose, a {acceptance.cv_margin:.0%} gain needed); the recorded geometry is used"
        )
    if cv["inliers_refined"] < acceptance.min_heldout_inliers * n:
        return keep_recorded(
            f"only {cv['inliers_refined']} of {n} held-out matches are inliers of the pose refined without "
            f"them (at least {acceptance.min_heldout_inliers:.0%} needed): too few matches agree on the "
            "refined pose; the recorded geometry is used"
        )
    if vessels is not None:
        scores = {
            name: sum(epipolar_consistency(vessels[i], vessels[j], gs[i], gs[j]) for i, j in table)
            for name, gs in (("recorded", views), ("refined", result.geometries))
        }
        evidence["vessel_consistency"] = scores
        record["vessel_consistency"] = scores
        if scores["refined"] < scores["recorded"]:
            return keep_recorded(
                f"the refined pose explains fewer vessel samples ({scores['refined']}) than the recorded one "
                f"({scores['recorded']}): the matches agree on a wrong pose; the recorded geometry is used"
            )
    scale = result.info["scale"]
    record.update(
        refined=True,
        kept="refined",
        reason=(
            f"held-out matches fit better ({cv['folds']}-fold cross-validation: {cv['cost_refined']:.2f} vs "
            f"{cv['cost_recorded']:.2f} px^2), the corrections are plausible under the prior"
            + (", and the vessel trees agree" if vessels is not None else "")
            + f"; the scale of the scene, which no image shows, is held by the isocentre prior (1 sigma "
            f"{100 * scale['sd_fraction']:.2f} %, {scale['sd_mm']:.1f} mm at the points: a known length would fix it)"
        ),
        scale=scale,
        error_before_px=_errors(result.error_before_px),
        error_after_px=_errors(result.error_after_px),
        params={k: float(v) for k, v in result.params.items()},
        view_params=[dict(p) for p in result.view_params],
        summary=result.summary(),
    )
    return list(result.geometries), record, np.asarray(result.inliers, dtype=bool), result
