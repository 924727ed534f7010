"""Ground-truth keypoint correspondences: epipolar consistency, triangulation, field and overlap flags."""

from __future__ import annotations

import numpy as np
import pytest
from coronary_helpers import make_tree

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.coronary.synth.correspondences import ground_truth_matches, sample_keypoints
from xraycardiac.geometry import CArmGeometry, triangulate


def branching_tree() -> CoronaryTree:
    """LM -> LAD + LCx, LAD -> D1, and a separate RCA; 0.5 mm point spacing, RAS mm around the origin."""
    s = np.arange(0.5, 60.0, 0.5)
    lm = np.stack([np.arange(0.0, 10.0, 0.5), np.zeros(20), np.zeros(20)], axis=1)
    lad = lm[-1] + np.stack([0.4 * s, 10 * np.sin(s / 30), -0.9 * s], axis=1)
    lcx = lm[-1] + np.stack([0.8 * s[:80], -0.5 * s[:80], -0.2 * s[:80]], axis=1)
    d1 = lad[30] + np.stack([0.7 * s[:50], 0.3 * s[:50], -0.6 * s[:50]], axis=1)
    a = np.linspace(0.0, 2.0, 100)
    rca = np.stack([-10 - 25 * np.sin(a), -5 + 10 * np.cos(a), 10 - 25 * (1 - np.cos(a))], axis=1)
    n_lm = len(lm)
    return make_tree(
        [
            ("LM", 0, -1, lm, 2.2),
            ("LAD", 0, n_lm - 1, lad, 1.5),
            ("LCx", 0, n_lm - 1, lcx, 1.3),
            ("D1", 0, n_lm + 30, d1, 1.0),
            ("RCA", 1, -1, rca, 1.6),
        ]
    )


def views(tree: CoronaryTree) -> tuple[CArmGeometry, CArmGeometry]:
    centre = tuple((tree.points.min(0) + tree.points.max(0)) / 2)
    common = dict(
        detector_rows=512, detector_cols=512, pixel_spacing_mm=(0.35, 0.35), isocenter_ras_mm=centre
    )
    return (
        CArmGeometry(45.0, 20.0, sid_mm=1100.0, sod_mm=760.0, name="LAO-CRA", **common),
        CArmGeometry(-30.0, -20.0, sid_mm=1000.0, sod_mm=700.0, name="RAO-CAU", **common),
    )


def test_keypoints_cover_bifurcations_endpoints_and_the_centreline():
    tree = branching_tree()
    kp = sample_keypoints(tree, spacing_mm=5.0)
    idx = set(kp.point_index.tolist())
    children = np.bincount(tree.parents[tree.parents >= 0], minlength=len(tree.points))
    bif, ends = np.flatnonzero(children >= 2), np.flatnonzero(children == 0)
    assert len(bif) == 2 and len(ends) == 4, "bad test tree"
    assert set(bif) <= idx, f"bifurcations missing: {set(bif) - idx}"
    assert set(ends) <= idx, f"endpoints missing: {set(ends) - idx}"
    assert set(np.flatnonzero(tree.parents < 0)) <= idx, "ostia missing"
    assert set(kp.kind[np.isin(kp.point_index, bif)]) == {"bifurcation"}
    assert set(kp.kind[np.isin(kp.point_index, ends)]) == {"endpoint"}
    assert np.allclose(kp.points, tree.points[kp.point_index])
    assert set(kp.branch) == set(tree.branch_names) and set(kp.tree_id) == {0, 1}
    # centreline samples every 5 mm of arc (0.5 mm point spacing: 5.0 .. 5.5 mm) between keypoints
    is_kp = np.zeros(len(tree.points), bool)
    is_kp[kp.point_index] = True
    gaps = []
    for i in kp.point_index[kp.kind == "centreline"]:
        arc, j = 0.0, i
        while True:
            p = tree.parents[j]
            arc += np.linalg.norm(tree.points[j] - tree.points[p])
            j = p
            if is_kp[j]:
                break
        gaps.append(arc)
    child = np.flatnonzero(tree.parents >= 0)
    step = np.linalg.norm(tree.points[child] - tree.points[tree.parents[child]], axis=1)
    assert 4.999 <= min(gaps) and max(gaps) <= 5.0 + step.max() + 1e-9, (
        f"centreline spacing {min(gaps):.2f}..{max(gaps):.2f} mm, expected 5.0..{5.0 + step.max():.2f}"
    )
    n_expected = step.sum() / 5.0  # total arc length / spacing, plus the special points
    assert n_expected <= len(kp) <= n_expected + 10, f"{len(kp)} keypoints for {step.sum():.0f} mm of tree"


def test_gt_pairs_are_epipolar_consistent_and_triangulate_back():
    tree = branching_tree()
    kp = sample_keypoints(tree, 5.0)
    g1, g2 = views(tree)
    gt = ground_truth_matches(kp, g1, g2, overlap_px=3.0)
    assert gt.in_field1.all() and gt.in_field2.all(), "bad test geometry: the tree leaves the field"
    assert len(gt.matches) == len(kp)
    err = gt.epipolar_error_px()
    assert err.shape == (len(kp),) and err.max() < 1e-3, f"epipolar error up to {err.max():.2e} px"
    x1, x2 = gt.matched_uv()
    xyz = triangulate(gt.p1, gt.p2, x1, x2)
    d = np.linalg.norm(xyz - kp.points[gt.index1[gt.matches[:, 0]]], axis=1).max()
    assert d < 1e-6, f"re-triangulated keypoints up to {d:.2e} mm from the truth"
    np.testing.assert_allclose(gt.uv1, g1.project(kp.points))
    m = gt.match_matrix()
    assert m.shape == (len(kp) + 1, len(kp) + 1) and m[:-1, :-1].sum() == len(kp) and m[-1].sum() == 0


def test_keypoint_outside_the_detector_is_excluded_from_matches():
    tree = branching_tree()
    kp = sample_keypoints(tree, 5.0)
    g1, g2 = views(tree)
    k = 7
    u_axis, _ = g1.detector_axes
    kp.points[k] = kp.points[k] + 300.0 * u_axis  # far off view 1's detector (view 2: either way)
    gt = ground_truth_matches(kp, g1, g2)
    assert not gt.in_field1[k], f"moved keypoint projects at {gt.uv1[k]} yet is in the field"
    assert k not in gt.index1 and len(gt.index1) == len(kp) - 1
    matched = set(gt.index1[gt.matches[:, 0]].tolist())
    assert k not in matched and len(matched) == int((gt.in_field1 & gt.in_field2).sum())
    assert set(gt.index2[gt.matches[:, 1]].tolist()) == matched  # pairs are the same keypoint
    assert (gt.index1[gt.matches[:, 0]] == gt.index2[gt.matches[:, 1]]).all()
    m = gt.match_matrix()
    assert np.allclose(m[:-1].sum(1), 1) and np.allclose(m[:, :-1].sum(0), 1), "each keypoint assigned once"
    if gt.in_field2[k]:  # then it waits in view 2's dustbin row
        j = int(np.flatnonzero(gt.index2 == k)[0])
        assert m[-1, j] == 1.0


def test_projected_crossing_is_flagged_ambiguous():
    """Two straight vessels 20 mm apart in depth cross in the AP view but not at LAO 45."""
    x = np.arange(-20.0, 20.01, 1.0)
    lca = np.stack([x, np.full_like(x, -10.0), np.zeros_like(x)], axis=1)  # along x, posterior
    rca = np.stack([np.zeros_like(x), np.full_like(x, 10.0), x + 0.5], axis=1)  # along z, anterior
    tree = make_tree([("LAD", 0, -1, lca, 1.0), ("RCA", 1, -1, rca, 1.0)])
    kp = sample_keypoints(tree, 5.0)
    ap = CArmGeometry(0.0, 0.0, detector_rows=256, detector_cols=256, pixel_spacing_mm=(0.4, 0.4))
    lao = ap.with_(primary_angle_deg=45.0)
    gt = ground_truth_matches(kp, ap, lao, overlap_px=3.0)
    at_crossing = np.flatnonzero((kp.tree_id == 0) & np.isclose(kp.points[:, 0], 0.0))
    assert len(at_crossing) == 1, "bad test tree: no LCA keypoint at the crossing"
    k = int(at_crossing[0])
    assert gt.ambiguous1[k], f"the keypoint at the crossing is not flagged in the AP view (uv {gt.uv1[k]})"
    assert not gt.ambiguous2[k], "the keypoint at the crossing is flagged at LAO 45 where the vessels part"
    far = np.abs(kp.points[:, 0]) + np.abs(kp.points[:, 2]) >= 10.0  # far from the crossing on both lines
    assert not gt.ambiguous1[far].any(), (
        f"{int(gt.ambiguous1[far].sum())} keypoints far from the crossing flagged"
    )
    # with only the left tree opacified (a selective injection) the right one cannot hide it
    kp_left = sample_keypoints(tree, 5.0, trees=(0,))
    assert set(kp_left.tree_id) == {0} and len(kp_left) == int((kp.tree_id == 0).sum())
    gt_left = ground_truth_matches(kp_left, ap, lao, overlap_px=3.0)
    assert not gt_left.ambiguous1.any(), "keypoints flagged by a tree that is not opacified"
    # a vessel running along the beam (foreshortened) is ambiguous with itself
    lat = ap.with_(primary_angle_deg=90.0)  # beam along -x: the LCA line collapses to a dot
    gt_lat = ground_truth_matches(kp, lat, ap)
    assert gt_lat.ambiguous1[kp.tree_id == 0].all(), "foreshortened vessel not flagged"


def test_mismatched_projection_is_rejected():
    from xraycardiac.coronary.synth.projection import project_vessels

    tree = branching_tree()
    kp = sample_keypoints(tree, 5.0)
    g1, g2 = views(tree)
    small = g1.with_(detector_rows=64, detector_cols=64, pixel_spacing_mm=(2.0, 2.0))
    proj = project_vessels(tree, small, voxel_mm=0.5)
    with pytest.raises(ValueError, match="projection1"):
        ground_truth_matches(kp, g1, g2, proj, None)
    with pytest.raises(ValueError, match="spacing_mm"):
        sample_keypoints(tree, 0.0)


def test_sampled_views_projections_and_matches_agree():
    """End to end: a sampled standard view pair, both vessel masks, and GT keypoints lying on the masks."""
    from xraycardiac.coronary.synth.projection import project_vessels
    from xraycardiac.coronary.synth.views import ViewSamplingConfig, angle_between_views, sample_view_pair

    tree = branching_tree()
    centre = (tree.points.min(0) + tree.points.max(0)) / 2
    cfg = ViewSamplingConfig(detector_rows=192, detector_cols=192, pixel_spacing_mm=(0.9, 1.0))
    g1, g2 = sample_view_pair("left", np.random.default_rng(3), cfg, centre)
    p1, p2 = project_vessels(tree, g1, voxel_mm=0.4), project_vessels(tree, g2, voxel_mm=0.4)
    gt = ground_truth_matches(sample_keypoints(tree, 5.0), g1, g2, p1, p2)
    assert angle_between_views(g1, g2) >= 25.0
    assert len(gt.matches) > 30, f"only {len(gt.matches)} matches in the sampled pair"
    for uv, proj, idx in ((gt.uv1, p1, gt.index1), (gt.uv2, p2, gt.index2)):
        c, r = np.clip(np.round(uv[idx]), 0, 191).astype(int).T
        on = proj.mask[r, c].mean()
        assert on >= 0.99, (
            f"{on:.1%} of in-field keypoints of view {proj.geometry.name} lie on its vessel mask"
        )
    assert gt.epipolar_error_px().max() < 1e-3
