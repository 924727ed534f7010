"""Centreline trees and surfaces from coronary label maps (xraycardiac.coronary.from_labelmap).

The ground truth is a procedural tree voxelised with ``CoronaryTree.voxelize``: the recovered
centrelines must lie within one voxel of the true ones, with the same topology (one root per tree,
the same bifurcation count) and radii close to the true ones. One case uses an oblique, mirrored,
anisotropic grid so that an IJK/RAS mix-up cannot pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.coronary.from_labelmap import labelmap_surface, tree_from_labelmap
from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree
from xraycardiac.volume import Volume


def _distance_to_tree(query: np.ndarray, tree: CoronaryTree) -> np.ndarray:
    """(M,) distance (mm) from each query point to the nearest segment of ``tree``."""
    seg = tree.segments()
    a, b = tree.points[seg[:, 0]], tree.points[seg[:, 1]]
    ab = b - a
    len2 = np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12)
    out = np.empty(len(query))
    for s in range(0, len(query), 256):
        q = query[s : s + 256, None, :]
        t = np.clip(np.einsum("mni,ni->mn", q - a, ab) / len2, 0.0, 1.0)
        out[s : s + 256] = np.linalg.norm(q - (a + t[..., None] * ab), axis=2).min(axis=1)
    return out


def _grid_around(
    tree: CoronaryTree, spacing_mm: tuple[float, float, float], directions: np.ndarray
) -> Volume:
    """Empty grid with the given spacing and direction columns covering ``tree`` with a 4 mm margin."""
    local = tree.points @ directions  # coordinates along the grid's I, J, K axes
    lo, hi = local.min(axis=0) - 4.0, local.max(axis=0) + 4.0
    shape_ijk = np.ceil((hi - lo) / np.asarray(spacing_mm)).astype(int) + 1
    return Volume.from_geometry(
        np.zeros(shape_ijk[::-1], dtype=np.uint8), spacing_mm, directions @ lo, directions
    )


@dataclass
class _Case:
    truth: CoronaryTree
    labels: Volume
    recovered: CoronaryTree
    voxel_mm: float


def _case(seed: int, spacing_mm: tuple[float, float, float], directions: np.ndarray) -> _Case:
    truth = make_coronary_tree(CoronaryPhantomConfig(seed=seed))
    labels = truth.voxelize(_grid_around(truth, spacing_mm, directions))
    recovered = tree_from_labelmap(labels, left_label=1, right_label=2)
    return _Case(truth, labels, recovered, float(np.mean(spacing_mm)))


@pytest.fixture(scope="module")
def axis_case() -> _Case:
    return _case(3, (0.5, 0.5, 0.5), np.eye(3))


@pytest.fixture(scope="module")
def oblique_case() -> _Case:
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    directions = Rotation.from_rotvec(np.radians(35.0) * axis).as_matrix() @ np.diag([-1.0, -1.0, 1.0])
    directions[:, 2] *= -1.0  # mirrored (det < 0), like an LPS-stored grid
    assert np.linalg.det(directions) < 0
    return _case(8, (0.45, 0.4, 0.5), directions)


@pytest.fixture(params=["axis_case", "oblique_case"])
def case(request: pytest.FixtureRequest) -> _Case:
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------------------------------
# Procedural tree -> label map -> tree
# --------------------------------------------------------------------------------------------------


def test_recovered_centrelines_lie_within_one_voxel_of_the_truth(case: _Case) -> None:
    d = _distance_to_tree(case.recovered.points, case.truth)
    print(f"recovered -> true centreline: max {d.max():.3f} mm, p95 {np.percentile(d, 95):.3f} mm")
    assert d.max() <= case.voxel_mm, (
        f"a recovered point lies {d.max():.3f} mm from the true centreline (voxel {case.voxel_mm} mm)"
    )


def test_true_centrelines_are_covered_by_the_recovered_ones(case: _Case) -> None:
    truth = case.truth
    ends = np.concatenate([truth.endpoints(), truth.roots()])
    to_end = np.linalg.norm(truth.points[:, None] - truth.points[ends][None], axis=2).min(axis=1)
    inner = to_end > 2.0
    d = _distance_to_tree(truth.points[inner], case.recovered)
    excess = d - (case.voxel_mm + truth.radii[inner])
    print(f"true -> recovered (> 2 mm from ends): max {d.max():.3f} mm, p95 {np.percentile(d, 95):.3f} mm")
    assert excess.max() <= 0, f"a true point lies {d[np.argmax(excess)]:.3f} mm from the recovered tree"
    assert np.percentile(d, 95) <= 0.5 * case.voxel_mm, f"p95 {np.percentile(d, 95):.3f} mm"


def test_topology_matches_the_truth(case: _Case) -> None:
    truth, rec = case.truth, case.recovered
    for t, prefix in ((0, "L"), (1, "R")):
        roots = rec.roots()[rec.tree[rec.roots()] == t]
        assert len(roots) == 1, f"tree {t}: beta0 = {len(roots)} roots, expected 1"
        assert np.all(rec.root_of()[rec.tree == t] == roots[0])
        n_true = int(np.sum(truth.tree[truth.bifurcations()] == t))
        n_rec = int(np.sum(rec.tree[rec.bifurcations()] == t))
        assert n_rec == n_true, f"tree {t}: {n_rec} bifurcations recovered, {n_true} true"
        n_true_ends = int(np.sum(truth.tree[truth.endpoints()] == t))
        n_rec_ends = int(np.sum(rec.tree[rec.endpoints()] == t))
        assert n_rec_ends == n_true_ends, f"tree {t}: {n_rec_ends} endpoints, {n_true_ends} true"
        names = {rec.branch_names[b] for b in np.unique(rec.branch[rec.tree == t])}
        assert all(n.startswith(prefix) for n in names), names
        assert len(names) == 2 * n_true + 1, f"tree {t}: {len(names)} branches for {n_true} bifurcations"
        # The ostium is the widest end: the root must sit at the true ostium of the same tree.
        true_root = truth.points[truth.roots()[truth.tree[truth.roots()] == t][0]]
        gap = float(np.linalg.norm(rec.points[roots[0]] - true_root))
        assert gap <= 1.0, f"tree {t}: recovered root {gap:.2f} mm from the true ostium"


def test_radii_match_the_truth(case: _Case) -> None:
    truth, rec = case.truth, case.recovered
    seg = truth.segments()
    a, b = truth.points[seg[:, 0]], truth.points[seg[:, 1]]
    # True radius at the closest point of the closest segment.
    ab = b - a
    t = np.clip(np.einsum("mni,ni->mn", rec.points[:, None] - a, ab) / np.einsum("ij,ij->i", ab, ab), 0, 1)
    dist = np.linalg.norm(rec.points[:, None] - (a + t[..., None] * ab), axis=2)
    k = np.argmin(dist, axis=1)
    r_true = truth.radii[seg[k, 0]] + t[np.arange(len(k)), k] * (
        truth.radii[seg[k, 1]] - truth.radii[seg[k, 0]]
    )
    err = rec.radii - r_true
    print(f"radius error: median {np.median(err):.3f} mm, median |err| {np.median(np.abs(err)):.3f} mm")
    assert np.median(np.abs(err)) <= 0.2, f"median |radius error| {np.median(np.abs(err)):.3f} mm"


def test_output_is_resampled_and_serialisable(axis_case: _Case, tmp_path: Path) -> None:
    rec = axis_case.recovered
    spacing = np.median(rec.segment_lengths()[rec.parents >= 0])
    assert abs(spacing - 1.0) < 0.1, f"median point spacing {spacing:.3f} mm for step_mm = 1"
    meta = rec.meta["trees"]
    assert meta["left"]["label"] == 1 and meta["right"]["label"] == 2
    assert meta["left"]["voxels_dropped"] == 0
    assert rec.meta["missing_labels"] == []
    loaded = CoronaryTree.load_json(rec.save_json(tmp_path / "tree.json"))
    np.testing.assert_array_equal(loaded.parents, rec.parents)


def test_one_label_for_both_trees_splits_them_left_and_right(axis_case: _Case) -> None:
    single = Volume(
        (axis_case.labels.array > 0).astype(np.uint8),
        axis_case.labels.ijk_to_ras,
        dict(axis_case.labels.meta),
    )
    rec = tree_from_labelmap(single, left_label=1, right_label=1)
    truth = axis_case.truth
    for t in (0, 1):
        root = rec.points[rec.roots()[rec.tree[rec.roots()] == t][0]]
        true_root = truth.points[truth.roots()[truth.tree[truth.roots()] == t][0]]
        gap = float(np.linalg.norm(root - true_root))
        assert gap <= 1.0, f"tree {t} of the single-label map starts {gap:.2f} mm from its true ostium"


# --------------------------------------------------------------------------------------------------
# Small synthetic shapes: pruning, cycles, extra components, missing labels, bad input
# --------------------------------------------------------------------------------------------------


def _tube_tree(side_lengths_mm: list[float]) -> CoronaryTree:
    """A straight vessel along S (r 1.5 mm, 40 mm) with side branches (r 1 mm) along R at z = 12, 28 mm."""
    z = np.arange(0.0, 40.5, 1.0)
    pts = [np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1)]
    radii, parents, branch = [np.full(len(z), 1.5)], [np.arange(-1, len(z) - 1)], [np.zeros(len(z), int)]
    n = len(z)
    for b, (z0, length) in enumerate(zip((12.0, 28.0), side_lengths_mm, strict=False), start=1):
        s = np.arange(1.0, length + 0.01, 1.0)
        pts.append(np.stack([s, np.zeros_like(s), np.full_like(s, z0)], axis=1))
        radii.append(np.full(len(s), 1.0))
        parents.append(np.concatenate([[int(z0)], n + np.arange(len(s) - 1)]))
        branch.append(np.full(len(s), b))
        n += len(s)
    return CoronaryTree(
        points=np.concatenate(pts),
        radii=np.concatenate(radii),
        parents=np.concatenate(parents),
        branch=np.concatenate(branch),
        branch_names=["main", "side1", "side2"][: 1 + len(side_lengths_mm)],
        tree=np.zeros(n, dtype=np.int64),
    )


def _small_grid(spacing_mm: float = 0.4) -> Volume:
    lo = np.array([-4.0, -4.0, -4.0])
    shape_ijk = np.ceil((np.array([20.0, 4.0, 44.0]) - lo) / spacing_mm).astype(int) + 1
    return Volume.from_geometry(np.zeros(shape_ijk[::-1], np.uint8), (spacing_mm,) * 3, lo)


def test_short_spurs_are_pruned_and_real_branches_kept() -> None:
    # side1 is a real branch (12 mm); side2 sticks out 1.5 mm past the main vessel's wall (3 mm long).
    labels = _tube_tree([12.0, 3.0]).voxelize(_small_grid())
    pruned = tree_from_labelmap(labels, 1, None, min_branch_mm=3.0)
    assert len(pruned.bifurcations()) == 1, f"{len(pruned.bifurcations())} bifurcations, expected 1"
    assert pruned.meta["trees"]["left"]["spurs_pruned"] >= 1
    kept = tree_from_labelmap(labels, 1, None, min_branch_mm=0.5)
    assert len(kept.bifurcations()) == 2, f"{len(kept.bifurcations())} bifurcations with min_branch_mm=0.5"


def test_cycles_are_broken_into_a_tree() -> None:
    # A closed ring (torus, centreline radius 10 mm, lumen 1.5 mm) has a cyclic skeleton.
    z, y, x = (np.mgrid[:20, :70, :70] - np.array([9.5, 34.5, 34.5])[:, None, None, None]) * 0.4
    ring = (np.hypot(x, y) - 10.0) ** 2 + z**2 <= 1.5**2
    labels = Volume.from_geometry(ring.astype(np.uint8) * 2, (0.4, 0.4, 0.4))
    tree = tree_from_labelmap(labels, None, 2)
    assert len(tree.roots()) == 1 and np.all(tree.tree == 1)
    assert len(tree.bifurcations()) == 0 and len(tree.endpoints()) == 1
    length = float(tree.segment_lengths().sum())
    assert 2 * np.pi * 10.0 - 5.0 < length <= 2 * np.pi * 10.0 + 1.0, f"ring centreline {length:.1f} mm"
    assert tree.meta["trees"]["right"]["graph_edges_dropped_by_spanning_tree"] >= 1


def test_only_the_largest_component_is_kept_and_missing_labels_are_reported() -> None:
    labels = _tube_tree([12.0]).voxelize(_small_grid())
    clean = tree_from_labelmap(labels, 1, 2)
    arr = labels.array.copy()
    arr[-8:-4, 4:8, -8:-4] = 1  # a 64-voxel speck away from the vessel
    noisy = tree_from_labelmap(Volume(arr, labels.ijk_to_ras), 1, 2)
    info = noisy.meta["trees"]["left"]
    assert info["components"] == 2 and info["voxels_dropped"] == 64, info
    np.testing.assert_allclose(noisy.points, clean.points)
    assert noisy.meta["missing_labels"] == [2] and "right" not in noisy.meta["trees"]


@pytest.mark.parametrize("labels_present", [[], [5]])
def test_a_map_without_the_requested_labels_raises(labels_present: list[int]) -> None:
    arr = np.zeros((20, 20, 20), dtype=np.uint8)
    for v in labels_present:
        arr[5:15, 5:15, 5:15] = v
    with pytest.raises(ValueError, match="labels .* has no voxel of the requested labels"):
        tree_from_labelmap(Volume.from_geometry(arr, (0.5, 0.5, 0.5)))


@pytest.mark.parametrize("shape", ["ball", "slab", "thick slab", "ellipsoid"])
def test_a_label_without_tubular_structure_raises(shape: str) -> None:
    z, y, x = np.mgrid[:60, :60, :60] * 0.5 - 15.0
    masks = {
        "ball": x**2 + y**2 + z**2 <= 8.0**2,
        "slab": (np.abs(z) <= 2.0) & (np.abs(x) <= 12.0) & (np.abs(y) <= 12.0),
        "thick slab": (np.abs(z) <= 4.0) & (np.abs(x) <= 12.0) & (np.abs(y) <= 12.0),
        "ellipsoid": (z / 12.0) ** 2 + (y / 6.0) ** 2 + (x / 6.0) ** 2 <= 1.0,
    }
    labels = Volume.from_geometry(masks[shape].astype(np.uint8), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="label 1 .* has no tubular structure"):
        tree_from_labelmap(labels, 1, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_mm": 0.0}, "step_mm"),
        ({"min_branch_mm": -1.0}, "min_branch_mm"),
        ({"left_label": None, "right_label": None}, "both None"),
        ({"left_label": 1.5}, "left_label"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    labels = Volume.from_geometry(np.ones((4, 4, 4), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=match):
        tree_from_labelmap(labels, **kwargs)


# --------------------------------------------------------------------------------------------------
# Surface
# --------------------------------------------------------------------------------------------------


def test_labelmap_surface_is_closed_outward_and_in_ras() -> None:
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkFiltersCore import vtkFeatureEdges

    directions = Rotation.from_rotvec([0.3, 0.5, -0.2]).as_matrix() @ np.diag([-1.0, 1.0, 1.0])
    z, y, x = np.mgrid[:40, :30, :30]
    tube = ((y - 15) ** 2 + (x - 15) ** 2 < 25) & (z > 3) & (z < 36)
    tube[20:24, 13:17, 15:] = True  # a side arm that runs into the grid's border
    labels = Volume.from_geometry(tube.astype(np.uint8) * 3, (0.5, 0.6, 0.7), (10.0, -20.0, 5.0), directions)
    poly = labelmap_surface(labels, 3)

    edges = vtkFeatureEdges()
    edges.SetInputData(poly)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    assert edges.GetOutput().GetNumberOfCells() == 0, "the surface has boundary or non-manifold edges"

    ras = labels.ijk_to_ras_points(np.argwhere(tube)[:, ::-1])
    bounds = np.asarray(poly.GetBounds()).reshape(3, 2)
    voxel = float(labels.spacing.max())
    np.testing.assert_allclose(bounds[:, 0], ras.min(axis=0), atol=voxel)
    np.testing.assert_allclose(bounds[:, 1], ras.max(axis=0), atol=voxel)

    pts = numpy_support.vtk_to_numpy(poly.GetPoints().GetData())
    tri = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    signed = np.einsum("ij,ij->i", pts[tri[:, 0]], np.cross(pts[tri[:, 1]], pts[tri[:, 2]])).sum() / 6.0
    voxels_mm3 = tube.sum() * abs(np.linalg.det(labels.ijk_to_ras[:3, :3]))
    assert abs(signed / voxels_mm3 - 1.0) < 0.05, (
        f"enclosed volume {signed:.1f} mm^3 vs voxels {voxels_mm3:.1f}"
    )

    with pytest.raises(ValueError, match="no voxel with label 4"):
        labelmap_surface(labels, 4)
