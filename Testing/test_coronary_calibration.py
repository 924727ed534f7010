"""Refinement of the second view's pose (xraycardiac.coronary.recon.calibration) on a procedural coronary tree.

Two views can fix view 2's pose only up to the scale of the scene (module docstring of
``calibration``): the isocentre component along the baseline is not observable. The checks are
therefore: reprojection error, the angles, the isocentre *across* the baseline, and the 3D points
after removing the one-parameter scale about view 1's source; the absolute 3D error is printed.
"""

from __future__ import annotations

import numpy as np
import pytest

from xraycardiac.coronary.recon.calibration import (
    CalibrationConfig,
    apply_corrections,
    refine_second_view,
    scale_about_source,
    triangulate_matches,
)
from xraycardiac.geometry import CArmGeometry

PERTURBATION = {
    "primary_offset_deg": 4.0,
    "secondary_offset_deg": -3.0,
    "isocenter_shift_r_mm": 8.0,
    "isocenter_shift_a_mm": -6.0,
    "isocenter_shift_s_mm": 5.0,
}


@pytest.fixture(scope="module")
def problem():
    """300 LCA centreline points seen in RAO-caudal and LAO-cranial views, with 0.3 px noise."""
    from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree

    tree = make_coronary_tree(CoronaryPhantomConfig(seed=0))
    pts = tree.points[tree.tree == 0]
    iso = tuple(float(v) for v in pts.mean(axis=0))
    common = dict(pixel_spacing_mm=(0.5, 0.5), isocenter_ras_mm=iso)
    g1 = CArmGeometry(-30.0, -20.0, sid_mm=1100.0, sod_mm=750.0, name="RAO-CAU", **common)
    g2 = CArmGeometry(45.0, 20.0, sid_mm=1150.0, sod_mm=720.0, name="LAO-CRA", **common)
    rng = np.random.default_rng(0)
    x = pts[rng.choice(len(pts), 300, replace=False)]
    x1 = g1.project(x) + rng.normal(0.0, 0.3, (len(x), 2))
    x2 = g2.project(x) + rng.normal(0.0, 0.3, (len(x), 2))
    for uv in (x1, x2):
        assert np.all((uv >= 0) & (uv <= 511)), "test setup: every point must be in the field"
    return g1, g2, x, x1, x2


def _pose_errors(result, g1, g2_true, truth, inliers=None):
    """Angle errors (deg), isocentre error across the baseline (mm), gauge-free and absolute 3D errors (mm)."""
    g = result.geometry
    d_angles = (
        g.primary_angle_deg - g2_true.primary_angle_deg,
        g.secondary_angle_deg - g2_true.secondary_angle_deg,
    )
    d_iso = np.asarray(g.isocenter_ras_mm) - np.asarray(g2_true.isocenter_ras_mm)
    b = result.gauge_direction_ras
    across = float(np.linalg.norm(d_iso - (d_iso @ b) * b))
    sel = np.ones(len(truth), bool) if inliers is None else inliers
    pts = result.points_ras_mm[sel]
    k = scale_about_source(pts, truth[sel], g1.source_position)
    scaled = g1.source_position + k * (pts - g1.source_position)
    gauge_free = float(np.mean(np.linalg.norm(scaled - truth[sel], axis=1)))
    absolute = float(np.mean(np.linalg.norm(pts - truth[sel], axis=1)))
    return d_angles, across, float(d_iso @ b), gauge_free, absolute, k


def test_refinement_recovers_the_observable_pose(problem):
    g1, g2, truth, x1, x2 = problem
    recorded = apply_corrections(g2, PERTURBATION)
    # a pessimistic C-arm (the perturbation is 2-3 sigma of the default prior)
    result = refine_second_view(
        g1, recorded, x1, x2, CalibrationConfig(prior_sigma_deg=3.0, prior_sigma_mm=6.0)
    )
    s = result.summary()
    d_angles, across, along, gauge_free, absolute, k = _pose_errors(result, g1, g2, truth)
    print(
        f"\nreprojection mean/median before {s['mean_before_px']:.2f}/{s['median_before_px']:.2f} px, after "
        f"{s['mean_after_px']:.3f}/{s['median_after_px']:.3f} px in {result.n_iterations} iterations "
        f"({result.info['seconds']:.2f} s); angle errors {d_angles[0]:+.3f} / {d_angles[1]:+.3f} deg; "
        f"isocentre error across the baseline {across:.2f} mm, along it (gauge, unobservable) {along:+.2f} mm; "
        f"3D error after removing the scale (k = {k:.4f}) {gauge_free:.3f} mm, absolute {absolute:.2f} mm"
    )
    assert s["mean_before_px"] > 5.0, f"the perturbation should be visible: {s['mean_before_px']:.2f} px"
    assert s["mean_after_px"] < 0.5, f"refined reprojection error {s['mean_after_px']:.3f} px"
    assert max(abs(a) for a in d_angles) < 0.2, f"angle errors {d_angles} deg"
    assert across < 1.0, f"isocentre error across the baseline {across:.2f} mm"
    assert gauge_free < 1.0, f"3D error after removing the scale gauge {gauge_free:.3f} mm"
    # what is left is the unobservable scale: at most ~|along| * |X - s1| / |s2 - s1|
    assert absolute < abs(along) + 1.0, f"absolute 3D error {absolute:.2f} mm vs gauge {along:+.2f} mm"
    assert result.inliers.all()


def test_robust_loss_survives_20_percent_wrong_matches(problem):
    g1, g2, truth, x1, x2 = problem
    rng = np.random.default_rng(1)
    bad = rng.choice(len(x2), len(x2) // 5, replace=False)
    y2 = x2.copy()
    y2[bad] = x2[rng.permutation(bad)] + rng.normal(0.0, 20.0, (len(bad), 2))  # wrong vessel points
    good = np.ones(len(x2), bool)
    good[bad] = False
    recorded = apply_corrections(g2, PERTURBATION)
    rows = {}
    for name, config in (
        ("robust (soft_l1 + inlier refit)", CalibrationConfig()),
        ("soft_l1 alone", CalibrationConfig(reject_rounds=0)),
        ("plain least squares", CalibrationConfig(loss="linear", reject_rounds=0)),
    ):
        r = refine_second_view(g1, recorded, x1, y2, config)
        d_angles, across, _, gauge_free, _, _ = _pose_errors(r, g1, g2, truth, good)
        rows[name] = (float(r.error_after_px[good].mean()), max(abs(a) for a in d_angles), gauge_free, r)
        print(
            f"\n{name:32s}: inlier reprojection {rows[name][0]:.3f} px, worst angle error {rows[name][1]:.2f} deg, "
            f"isocentre across baseline {across:.2f} mm, gauge-free 3D {gauge_free:.2f} mm, "
            f"inliers found {np.mean(r.inliers == good):.1%}, {r.info['seconds']:.2f} s"
        )
    err, angle, gauge_free, robust = rows["robust (soft_l1 + inlier refit)"]
    assert err < 1.0, f"robust: inlier reprojection error {err:.3f} px"
    assert angle < 0.3, f"robust: angle error {angle:.2f} deg"
    assert gauge_free < 1.0, f"robust: gauge-free 3D error {gauge_free:.2f} mm"
    assert np.mean(robust.inliers == good) > 0.95
    plain = rows["plain least squares"]
    assert plain[0] > 2 * err and plain[1] > 10 * angle, f"plain least squares should do worse: {plain[:3]}"


def test_too_few_matches_and_bad_input(problem):
    g1, g2, _, x1, x2 = problem
    with pytest.raises(ValueError, match="5 matches given; at least 6 are needed"):
        refine_second_view(g1, g2, x1[:5], x2[:5])
    with pytest.raises(ValueError, match="x1 has 10 matches but x2 has 9"):
        refine_second_view(g1, g2, x1[:10], x2[:9])
    with pytest.raises(ValueError, match=r"x2 must be \(M, 2\)"):
        refine_second_view(g1, g2, x1, x2[:, :1])
    with pytest.raises(ValueError, match="CalibrationConfig.loss"):
        CalibrationConfig(loss="l2")
    with pytest.raises(ValueError, match="nothing to refine"):
        CalibrationConfig(refine_angles=False, refine_isocenter=False)
    with pytest.raises(ValueError, match="CalibrationConfig.f_scale_px"):
        CalibrationConfig(f_scale_px=0.0)


def test_exact_geometry_is_left_alone_and_triangulation_is_exact(problem):
    g1, g2, truth, _, _ = problem
    x1, x2 = g1.project(truth), g2.project(truth)
    points, err = triangulate_matches(g1, g2, x1, x2)
    assert np.abs(points - truth).max() < 1e-6 and err.max() < 1e-6
    result = refine_second_view(g1, g2, x1[:40], x2[:40], CalibrationConfig(refine_sid=True))
    moved = {k: v for k, v in result.params.items() if abs(v) > 1e-3}
    assert not moved, f"exact data moved the geometry: {moved}"
    assert result.summary()["mean_after_px"] < 1e-3


def _rotation_error_deg(g, g_true):
    r = g.rotation @ g_true.rotation.T
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def test_mostly_wrong_matches_never_make_the_pose_worse(problem):
    """Issue 20 item 2: 30 matches, 70 % of them to the wrong vessel point (the learned matcher's
    precision on held-out pairs), view 2 recorded 1.8 deg off. The robust fit finds a pose that a
    handful of the wrong matches agree on (the old guard accepted one 10 deg off); held-out
    matches do not confirm it enough, so the recorded pose is kept."""
    from xraycardiac.coronary.recon.reconstruct import calibrate_from_matches

    g1, g2, _, x1, x2 = problem
    recorded = apply_corrections(
        g2,
        {"primary_offset_deg": 1.5, "secondary_offset_deg": -1.0, "isocenter_shift_r_mm": 2.0,
         "isocenter_shift_a_mm": -2.0, "isocenter_shift_s_mm": 1.0},
    )  # fmt: skip
    rng = np.random.default_rng(12)
    idx = rng.choice(len(x1), 30, replace=False)
    a1, a2 = x1[idx].copy(), x2[idx].copy()
    wrong = rng.random(30) < 0.7
    a2[wrong] = x2[rng.choice(len(x2), int(wrong.sum()))]
    g2_used, record, inliers = calibrate_from_matches(g1, recorded, a1, a2)
    used, before = _rotation_error_deg(g2_used, g2), _rotation_error_deg(recorded, g2)
    print(f"\nrotation error recorded {before:.2f} deg, used {used:.2f} deg: {record['reason']}")
    assert used <= before, f"the pose used is worse than the recorded one: {before:.2f} -> {used:.2f} deg"
    assert not record["refined"] and record["kept"] == "recorded", record["reason"]
    assert g2_used is recorded and inliers is None
    cv = record["evidence"]["cross_validation"]
    assert cv["folds"] == 5 and cv["cost_refined"] > 0.5 * cv["cost_recorded"], cv


def test_matches_that_agree_on_a_pose_the_prior_rules_out_are_not_kept(problem):
    """80 % of the matches are exact for a view 2 turned 8 deg away (a coherent wrong group, as a
    matcher's systematic errors are); the robust fit follows the majority, and held-out matches
    of the same group confirm it. A C-arm whose angles are good to 1.5 deg cannot be there: the
    prior test keeps the recorded pose, which is closer."""
    from xraycardiac.coronary.recon.reconstruct import calibrate_from_matches

    g1, g2, truth, x1, x2 = problem
    recorded = apply_corrections(g2, {"primary_offset_deg": 1.0, "secondary_offset_deg": -1.0})
    wrong = apply_corrections(g2, {"primary_offset_deg": 8.0, "secondary_offset_deg": 5.0})
    y2 = x2.copy()
    group = np.random.default_rng(3).random(len(x2)) < 0.8
    y2[group] = wrong.project(truth[group])
    g2_used, record, _ = calibrate_from_matches(g1, recorded, x1, y2)
    used, before = _rotation_error_deg(g2_used, g2), _rotation_error_deg(recorded, g2)
    assert used <= before, f"the pose used is worse than the recorded one: {before:.2f} -> {used:.2f} deg"
    fitted = apply_corrections(recorded, record["candidate"]["params"])
    errors = {n: _rotation_error_deg(g, g2) for n, g in (("recorded", recorded), ("candidate", fitted))}
    print(f"\nrotation errors {errors}; kept {record['kept']}: {record['reason']}")
    assert errors["candidate"] > 4 * errors["recorded"], (
        f"test setup: the fit should follow the wrong group {errors}"
    )
    assert not record["refined"] and "implausible under the prior" in record["reason"], record["reason"]
    assert g2_used is recorded
    chi2 = record["evidence"]["prior_chi2"]
    assert chi2["value"] > chi2["limit"] and chi2["dof"] == 4


def test_the_prior_band_keeps_the_true_matches_of_a_wrong_recorded_pose(problem):
    """Issue 20 item 3: with view 2 off by 2 deg / 3 mm (the realistic model), the job's 3 px epipolar
    filter throws away most true matches; the band the prior allows keeps them, and the
    calibration from them is accepted and brings the pose back."""
    from xraycardiac.coronary.recon.calibration import epipolar_band_px
    from xraycardiac.coronary.recon.reconstruct import calibrate_from_matches
    from xraycardiac.metrics.matching import symmetric_epipolar_error_px

    g1, g2, _, x1, x2 = problem
    recorded = apply_corrections(
        g2,
        {"primary_offset_deg": 2.0, "secondary_offset_deg": -2.0, "isocenter_shift_r_mm": 3.0,
         "isocenter_shift_a_mm": -3.0, "isocenter_shift_s_mm": 3.0},
    )  # fmt: skip
    err = symmetric_epipolar_error_px(x1, x2, g1.projection_matrix(), recorded.projection_matrix())
    band = epipolar_band_px(g1, recorded)
    print(
        f"\nband {band:.1f} px; true matches within 3 px {np.mean(err <= 3):.0%}, within the band {np.mean(err <= band):.0%}"
    )
    assert np.mean(err <= 3.0) < 0.3
    assert np.mean(err <= band) > 0.95
    keep = err <= band
    g2_used, record, _ = calibrate_from_matches(g1, recorded, x1[keep], x2[keep])
    assert record["refined"], record["reason"]
    assert _rotation_error_deg(g2_used, g2) < 0.25 * _rotation_error_deg(recorded, g2)
