"""Projection of the 3D coronary tube: thickness, silhouette width, agreement with the projection matrix."""

from __future__ import annotations

import numpy as np
import pytest
from coronary_helpers import make_tree

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.coronary.synth.projection import OutsideFieldOfViewError, project_vessels
from xraycardiac.geometry import CArmGeometry


def curved_two_trees() -> CoronaryTree:
    """A left tree (curved LAD with a diagonal) and a right tree (an arc), 0.5 mm point spacing."""
    s = np.arange(0.0, 60.0, 0.5)
    lad = np.stack([10 + 0.3 * s, 20 + 15 * np.sin(s / 25), 30 - 0.8 * s], axis=1)
    d1_s = np.arange(0.5, 30.0, 0.5)
    d1 = lad[40] + np.stack([0.6 * d1_s, 0.3 * d1_s, -0.5 * d1_s], axis=1)
    a = np.linspace(0.0, 2.0, 120)
    rca = np.stack([-20 - 25 * np.sin(a), 10 + 10 * np.cos(a), 20 - 25 * (1 - np.cos(a))], axis=1)
    return make_tree(
        [
            ("LAD", 0, -1, lad, np.linspace(2.0, 0.8, len(lad))),
            ("D1", 0, 40, d1, np.linspace(1.2, 0.6, len(d1))),
            ("RCA", 1, -1, rca, np.linspace(1.8, 0.9, len(rca))),
        ]
    )


def test_cylinder_thickness_width_and_position():
    """A 1.5 mm radius cylinder at the isocentre, perpendicular to the beam: 3 mm thick, 3 * SID / SOD mm wide."""
    iso = np.array([0.37, -0.21, 0.13])
    tilt = np.deg2rad(3.0)  # in the detector plane, so the voxel phase varies along the cylinder
    axis = np.array([np.cos(tilt), 0.0, np.sin(tilt)])
    s = np.arange(-25.0, 25.01, 0.5)
    tree = make_tree([("LAD", 0, -1, iso + s[:, None] * axis, 1.5)])
    g = CArmGeometry(0.0, 0.0, sid_mm=1200.0, sod_mm=800.0, detector_rows=65, detector_cols=161,
                     pixel_spacing_mm=(0.3, 0.3), isocenter_ras_mm=tuple(iso))  # fmt: skip
    proj = project_vessels(tree, g)
    assert proj.thickness_mm.shape == (65, 161) and proj.thickness_mm.dtype == np.float32
    cols = np.arange(30, 131)
    # the projected axis: v at each column, from the projection matrix
    axis_uv = g.project(iso + np.linspace(-15, 15, 301)[:, None] * axis)
    v_axis = np.interp(cols, np.sort(axis_uv[:, 0]), axis_uv[np.argsort(axis_uv[:, 0]), 1])
    central = proj.thickness_mm[np.round(v_axis).astype(int), cols]
    assert abs(central.mean() - 3.0) < 0.15, f"mean central thickness {central.mean():.3f} mm, expected 3.0"
    assert np.abs(central - 3.0).max() < 0.3, (
        f"worst central thickness {central.min():.3f}..{central.max():.3f}"
    )
    # silhouette width at the detector, perpendicular to the projected axis
    slope = np.polyfit(axis_uv[:, 0], axis_uv[:, 1], 1)[0]
    width_px = proj.mask[:, cols].sum(axis=0).mean() / np.sqrt(1 + slope**2)
    expected_px = 3.0 * g.magnification / 0.3
    assert abs(width_px - expected_px) <= 1.0, f"width {width_px:.2f} px, expected {expected_px:.2f} px"
    # the thickness-weighted centre of each column sits on the projected axis (sub-pixel agreement with
    # the projection matrix; the binary mask's own centroid is quantised to half pixels)
    t = proj.thickness_mm[:, cols]
    centroid = (t * np.arange(65)[:, None]).sum(axis=0) / t.sum(axis=0)
    bias, spread = (centroid - v_axis).mean(), np.abs(centroid - v_axis).mean()
    assert abs(bias) < 0.2 and spread < 0.3, (
        f"column centres {bias:+.3f} px (mean |.| {spread:.3f}) off the axis"
    )
    assert set(np.unique(proj.label)) == {-1, 0}, f"labels {np.unique(proj.label)}"


def test_projected_centreline_lies_in_the_mask_and_labels_follow_the_tree():
    tree = curved_two_trees()
    centre = tuple((tree.points.min(0) + tree.points.max(0)) / 2)
    g = CArmGeometry(35.0, 20.0, sid_mm=1100.0, sod_mm=750.0, detector_rows=256, detector_cols=256,
                     pixel_spacing_mm=(0.6, 0.6), isocenter_ras_mm=centre)  # fmt: skip
    proj = project_vessels(tree, g)
    uv = g.project(tree.points)
    inside = proj.in_field(uv)
    assert inside.mean() > 0.9, f"only {inside.mean():.0%} of the tree in the field: bad test geometry"
    c, r = np.round(uv[inside]).astype(int).T
    hit = proj.mask[r, c].mean()
    assert hit >= 0.99, f"{hit:.2%} of in-field centreline points project into the mask"
    own = (proj.label[r, c] == tree.tree[inside]).mean()
    assert own >= 0.95, f"only {own:.2%} of centreline pixels carry their own tree's label"
    assert np.allclose(proj.thickness_mm, proj.thickness_per_tree_mm.sum(0))
    assert not proj.mask[proj.thickness_mm <= proj.threshold_mm].any()


def test_tree_outside_the_field_of_view_is_an_error():
    tree = curved_two_trees()
    g = CArmGeometry(0.0, 0.0, detector_rows=64, detector_cols=64, isocenter_ras_mm=(400.0, 0.0, 0.0))
    with pytest.raises(OutsideFieldOfViewError, match="tree outside the field of view"):
        project_vessels(tree, g)


def test_empty_tree_is_rejected_by_construction():
    with pytest.raises(ValueError):
        make_tree([("LAD", 0, -1, np.zeros((0, 3)), np.zeros(0))])


@pytest.mark.parametrize("kwargs", [{"voxel_mm": 0.0}, {"voxel_mm": float("nan")}, {"threshold_mm": -1.0}])
def test_bad_parameters_are_named(kwargs):
    tree = curved_two_trees()
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        project_vessels(tree, CArmGeometry(0.0, 0.0, detector_rows=32, detector_cols=32), **kwargs)


def test_selective_injection_projects_one_tree():
    tree = curved_two_trees()
    centre = tuple((tree.points.min(0) + tree.points.max(0)) / 2)
    g = CArmGeometry(-30.0, -20.0, detector_rows=128, detector_cols=128, pixel_spacing_mm=(1.2, 1.2),
                     isocenter_ras_mm=centre)  # fmt: skip
    both = project_vessels(tree, g, voxel_mm=0.4)
    left = project_vessels(tree, g, voxel_mm=0.4, trees=(0,))
    assert not left.thickness_per_tree_mm[1].any(), "the right tree shows in a left-only projection"
    assert set(np.unique(left.label)) == {-1, 0} and set(np.unique(both.label)) == {-1, 0, 1}
    # the left tree alone is the left tree of the full projection, up to ray-sample phase (another grid box)
    a, b = left.thickness_per_tree_mm[0], both.thickness_per_tree_mm[0]
    iou = ((a > 0) & (b > 0)).sum() / ((a > 0) | (b > 0)).sum()
    assert iou > 0.95 and abs(a.sum() / b.sum() - 1) < 0.02, (
        f"left alone vs in both: IoU {iou:.3f}, sums {a.sum():.1f} / {b.sum():.1f}"
    )
    with pytest.raises(ValueError, match="trees"):
        project_vessels(tree, g, trees=(2,))
