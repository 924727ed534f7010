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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xraycardiac.coronary.recon.calibration import (
    CalibrationConfig,
    CalibrationResult,
    prior_chi2,
    refine_second_view,
    triangulate_matches,
)
from xraycardiac.coronary.recon.centrelines import epipolar_consistency
from xraycardiac.geometry import CArmGeometry

__all__ = ["AcceptanceConfig", "calibrate_from_matches", "cross_validate", "guarded_refinement"]


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
    config = config or CalibrationConfig()
    x1 = np.asarray(x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(x2, dtype=np.float64).reshape(-1, 2)
    m = len(x1)
    recorded = triangulate_matches(g1, g2, x1, x2)[1] if m else np.zeros(0)
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
    for f in range(k):
        test = fold_of == f
        pose = refine_second_view(g1, g2, x1[~test], x2[~test], config).geometry
        heldout[test] = triangulate_matches(g1, pose, x1[test], x2[test])[1]
    return out | {
        "cost_refined": _truncated_cost(heldout, tau),
        "cost_recorded": _truncated_cost(recorded, tau),
        "inliers_refined": int(np.sum(heldout < tau)),
        "inliers_recorded": int(np.sum(recorded < tau)),
    }


def _errors(values: np.ndarray) -> dict[str, float | None]:
    """Mean / median of per-match errors (None when there is no match)."""
    if len(values) == 0:
        return {"mean": None, "median": None}
    return {"mean": float(np.mean(values)), "median": float(np.median(values))}


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
    ``refine_calibration`` and of the pipeline evaluation (module docstring for the tests).

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
        not inliers of the refined pose) and ``inlier_fraction``.
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
    from scipy.stats import chi2

    config = config or CalibrationConfig()
    acceptance = acceptance or AcceptanceConfig()
    x1 = np.asarray(x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(x2, dtype=np.float64).reshape(-1, 2)
    before = triangulate_matches(g1, g2, x1, x2)[1] if len(x1) else np.zeros(0)
    record: dict[str, Any] = {"refined": False, "kept": "recorded", "reason": "", "matches": len(x1)}

    def keep_recorded(reason: str) -> tuple[CArmGeometry, dict[str, Any], None, None]:
        record.update(
            reason=reason, error_before_px=_errors(before), error_after_px=_errors(before), params={}
        )
        if refine and log is not None:
            log(f"calibration not refined: {reason}")
        return g2, record, None, None

    if not refine:
        return keep_recorded("refine_calibration is false")
    if len(x1) < config.min_matches:
        return keep_recorded(
            f"only {len(x1)} matches; refining view 2 needs at least {config.min_matches} "
            "(the recorded geometry is used)"
        )
    result = refine_second_view(g1, g2, x1, x2, config)
    n_in = int(np.sum(result.inliers))
    record.update(
        inlier_fraction=n_in / len(x1),
        outliers=np.flatnonzero(~result.inliers).tolist(),
        candidate={
            "params": {k: float(v) for k, v in result.params.items()},
            "error_after_px": _errors(result.error_after_px),
            "summary": result.summary(),
        },
    )
    evidence: dict[str, Any] = {}
    record["evidence"] = evidence
    if n_in < config.min_matches:  # the matches agree on no pose: keep the recorded one
        return keep_recorded(
            f"only {n_in} of {len(x1)} matches are inliers of the refined pose (at least "
            f"{config.min_matches} needed); the recorded geometry is used"
        )
    if acceptance.prior_alpha is not None:
        dof = len(config.active())
        limit = float(chi2.ppf(1.0 - acceptance.prior_alpha, dof))
        evidence["prior_chi2"] = {"value": prior_chi2(result.params, config), "limit": limit, "dof": dof}
        if evidence["prior_chi2"]["value"] > limit:
            return keep_recorded(
                f"the refined pose is implausible under the prior (chi-square {evidence['prior_chi2']['value']:.1f} "
                f"> {limit:.1f} with {dof} degrees of freedom; sigmas {config.prior_sigma_deg:g} deg, "
                f"{config.prior_sigma_mm:g} mm): the matches agree on a pose the C-arm cannot be in; "
                "the recorded geometry is used"
            )
    cv = cross_validate(g1, g2, x1, x2, config, acceptance.folds, acceptance.seed)
    evidence["cross_validation"] = {k: v for k, v in cv.items() if not isinstance(v, np.ndarray)}
    if cv["folds"] < 2:
        return keep_recorded(
            f"{len(x1)} matches are too few to cross-validate the refinement (each fold needs "
            f"{config.min_matches} to refine); the recorded geometry is used"
        )
    if not cv["cost_refined"] < (1.0 - acceptance.cv_margin) * cv["cost_recorded"]:
        return keep_recorded(
            f"the refinement does not predict held-out matches better ({cv['folds']}-fold cross-validation: "
            f"truncated squared error {cv['cost_refined']:.2f} px^2 vs {cv['cost_recorded']:.2f} px^2 for the "
            f"recorded pose, a {acceptance.cv_margin:.0%} gain needed); the recorded geometry is used"
        )
    if cv["inliers_refined"] < acceptance.min_heldout_inliers * len(x1):
        return keep_recorded(
            f"only {cv['inliers_refined']} of {len(x1)} held-out matches are inliers of the pose refined without "
            f"them (at least {acceptance.min_heldout_inliers:.0%} needed): too few matches agree on the "
            "refined pose; the recorded geometry is used"
        )
    if vessels is not None:
        scores = {
            name: epipolar_consistency(*vessels, g1, g)
            for name, g in (("recorded", g2), ("refined", result.geometry))
        }
        evidence["vessel_consistency"] = scores
        record["vessel_consistency"] = scores
        if scores["refined"] < scores["recorded"]:
            return keep_recorded(
                f"the refined pose explains fewer vessel samples ({scores['refined']}) than the recorded one "
                f"({scores['recorded']}): the matches agree on a wrong pose; the recorded geometry is used"
            )
    record.update(
        refined=True,
        kept="refined",
        reason=(
            f"held-out matches fit better ({cv['folds']}-fold cross-validation: {cv['cost_refined']:.2f} vs "
            f"{cv['cost_recorded']:.2f} px^2), the corrections are plausible under the prior"
            + (", and the vessel trees agree" if vessels is not None else "")
        ),
        error_before_px=_errors(result.error_before_px),
        error_after_px=_errors(result.error_after_px),
        params={k: float(v) for k, v in result.params.items()},
        summary=result.summary(),
    )
    return result.geometry, record, np.asarray(result.inliers, dtype=bool), result
