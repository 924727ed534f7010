"""CoronaryTree: validation, graph queries, resampling, transforms, JSON/VTP files, voxelisation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from xraycardiac.coronary import CoronaryTree
from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree
from xraycardiac.volume import Volume


def _small_tree(**changes: Any) -> CoronaryTree:
    """Left tree: 0-1-2-3-4 along x (branch A) with 2-5-6 along y (B); right tree: 7-8-9 along z (C)."""
    fields: dict[str, Any] = {
        "points": np.array(
            [
                [0, 0, 0],
                [1, 0, 0],
                [2, 0, 0],
                [3, 0, 0],
                [4, 0, 0],
                [2, 1, 0],
                [2, 2, 0],
                [10, 0, 0],
                [10, 0, 3],
                [10, 0, 7],
            ],
            dtype=float,
        ),
        "radii": np.array([2.0, 1.9, 1.8, 1.5, 1.4, 1.0, 0.9, 2.0, 1.5, 1.0]),
        "parents": np.array([-1, 0, 1, 2, 3, 2, 5, -1, 7, 8]),
        "branch": np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2]),
        "branch_names": ["A", "B", "C"],
        "tree": np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1]),
        "meta": {"generator": "hand", "nested": {"values": [1.5, 2]}},
    }
    fields.update(changes)
    return CoronaryTree(**fields)


@pytest.fixture(scope="module")
def phantom_tree() -> CoronaryTree:
    return make_coronary_tree(CoronaryPhantomConfig(seed=3, stenosis_count=2))


def _assert_same_tree(a: CoronaryTree, b: CoronaryTree) -> None:
    for name in ("points", "radii", "parents", "branch", "tree"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, f"{name}: dtype {x.dtype} != {y.dtype}"
        assert np.array_equal(x, y), (
            f"{name}: max difference {np.max(np.abs(x - y)) if x.shape == y.shape else x.shape}"
        )
    assert a.branch_names == b.branch_names
    assert a.meta == b.meta


# --------------------------------------------------------------------------------------------------
# Validation and graph queries
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("points", np.zeros((10, 2))),
        ("points", np.full((10, 3), np.nan)),
        ("radii", np.zeros(10)),
        ("radii", np.ones(9)),
        ("parents", np.array([-1, 0, 1, 2, 3, 2, 9, -1, 7, 8])),  # a parent after its child
        ("parents", np.array([-1, 0, 1, 2, 3, 2, 5, -1, 7, 8], dtype=float)),
        ("branch", np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 3])),
        ("branch_names", ["A", "B", "A"]),
        ("tree", np.array([0, 0, 0, 0, 0, 0, 0, 2, 2, 2])),
        ("tree", np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])),  # point 6 differs from its parent 5
    ],
)
def test_invalid_fields_are_rejected_by_name(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"CoronaryTree.{field}"):
        _small_tree(**{field: value})


def test_graph_queries_on_a_hand_made_tree() -> None:
    t = _small_tree()
    np.testing.assert_array_equal(t.children_count(), [1, 1, 2, 1, 0, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(t.bifurcations(), [2])
    np.testing.assert_array_equal(t.endpoints(), [4, 6, 9])
    np.testing.assert_array_equal(t.roots(), [0, 7])
    segs = t.segments()
    assert segs.shape == (t.num_points - 2, 2), f"segments shape {segs.shape}"
    np.testing.assert_array_equal(segs[:3], [[0, 1], [1, 2], [2, 3]])
    np.testing.assert_allclose(t.arc_length(), [0, 1, 2, 3, 4, 3, 4, 0, 3, 7])
    np.testing.assert_array_equal(t.root_of(), [0, 0, 0, 0, 0, 0, 0, 7, 7, 7])
    lengths = {name: t.branch_length_mm(name) for name in t.branch_names}
    assert lengths == pytest.approx({"A": 4.0, "B": 2.0, "C": 7.0}), lengths
    np.testing.assert_array_equal(t.branch_points("B"), [5, 6])
    with pytest.raises(ValueError, match="no branch named 'LAD'"):
        t.branch_length_mm("LAD")


def test_arc_length_matches_a_plain_walk(phantom_tree: CoronaryTree) -> None:
    t = phantom_tree
    expected = np.zeros(t.num_points)
    for i in range(t.num_points):
        p = t.parents[i]
        if p >= 0:
            expected[i] = expected[p] + np.linalg.norm(t.points[i] - t.points[p])
    np.testing.assert_allclose(t.arc_length(), expected, rtol=1e-12, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Resampling and transforms
# --------------------------------------------------------------------------------------------------


def test_resampled_hand_made_tree_has_the_expected_points() -> None:
    t = _small_tree().resampled(0.5)
    # Runs 0->2, 2->4, 2->6 (2 mm each) and 7->9 (7 mm): 4 + 4 + 4 + 14 new points + 2 roots.
    assert t.num_points == 28, f"got {t.num_points} points"
    assert len(t.bifurcations()) == 1 and len(t.endpoints()) == 3
    np.testing.assert_allclose(t.segment_lengths()[t.parents >= 0], 0.5, atol=1e-12)
    np.testing.assert_allclose(np.sort(t.arc_length()[t.endpoints()]), [4.0, 4.0, 7.0], atol=1e-12)
    assert t.meta["resampled_step_mm"] == 0.5
    # Radii are interpolated along the run: half-way between points 7 (2.0) and 8 (1.5) at z = 1.5.
    i = int(np.flatnonzero(np.all(np.isclose(t.points, [10, 0, 1.5]), axis=1))[0])
    assert t.radii[i] == pytest.approx(1.75)
    assert t.branch_names[t.branch[i]] == "C"


@pytest.mark.parametrize("step", [0.5, 2.0])
def test_resampled_keeps_topology_and_spacing(phantom_tree: CoronaryTree, step: float) -> None:
    t0, t = phantom_tree, phantom_tree.resampled(step)
    assert len(t.bifurcations()) == len(t0.bifurcations())
    assert len(t.roots()) == len(t0.roots())
    np.testing.assert_array_equal(t.points[t.roots()], t0.points[t0.roots()])

    def key_set(tree: CoronaryTree, idx: np.ndarray) -> np.ndarray:
        return np.unique(np.round(tree.points[idx], 9), axis=0)

    np.testing.assert_array_equal(key_set(t, t.endpoints()), key_set(t0, t0.endpoints()))
    np.testing.assert_array_equal(key_set(t, t.bifurcations()), key_set(t0, t0.bifurcations()))
    seg = t.segment_lengths()[t.parents >= 0]
    mean = seg.sum() / seg.size
    assert abs(mean / step - 1) < 0.01, f"mean spacing {mean:.4f} mm for step {step} mm"
    assert seg.max() < 1.5 * step, f"longest segment {seg.max():.3f} mm for step {step} mm"
    # Every segment of a run at least 50 steps long is within 1 % of the step.
    long_runs = [run for run in t._runs() if t.arc_length()[run[-1]] - t.arc_length()[run[0]] >= 50 * step]
    assert long_runs or step > 1.0, "expected runs of >= 50 steps in a phantom tree"
    for run in long_runs:
        d = np.linalg.norm(np.diff(t.points[run], axis=0), axis=1)
        assert np.all(np.abs(d / step - 1) < 0.01), f"spacing {d.min():.4f}..{d.max():.4f} mm, step {step}"
    for name in t0.branch_names:
        a, b = t0.branch_length_mm(name), t.branch_length_mm(name)
        assert abs(b / a - 1) < 0.01, f"{name}: length {a:.2f} -> {b:.2f} mm after resampling at {step} mm"


def test_resampled_rejects_a_bad_step() -> None:
    with pytest.raises(ValueError, match="step_mm"):
        _small_tree().resampled(0.0)


def test_transformed_rigid_and_scaling() -> None:
    t = _small_tree()
    a = math.radians(30)
    m = np.eye(4)
    m[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    m[:3, 3] = [5, -2, 7]
    r = t.transformed(m)
    np.testing.assert_allclose(r.points, t.points @ m[:3, :3].T + m[:3, 3])
    np.testing.assert_allclose(r.radii, t.radii)
    np.testing.assert_allclose(r.arc_length(), t.arc_length(), atol=1e-12)
    assert r.meta["transforms"] == [m.tolist()]
    s = t.transformed(np.diag([2.0, 2.0, 2.0, 1.0]))
    np.testing.assert_allclose(s.radii, 2 * t.radii)
    assert s.branch_length_mm("C") == pytest.approx(14.0)
    bad = np.eye(4)
    bad[3, 0] = 1.0
    with pytest.raises(ValueError, match="affine"):
        t.transformed(bad)
    with pytest.raises(ValueError, match="singular"):
        t.transformed(np.diag([1.0, 0.0, 1.0, 1.0]))


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["json", "vtp"])
def test_round_trip_is_exact(phantom_tree: CoronaryTree, tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"tree.{ext}"
    out = getattr(phantom_tree, f"save_{ext}")(path)
    assert out == path
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "temporary files left behind"
    loaded = getattr(CoronaryTree, f"load_{ext}")(path)
    _assert_same_tree(phantom_tree, loaded)
    assert loaded.meta["stenoses"], "meta (with nested stenosis records) must survive"


def test_vtp_holds_one_polyline_per_run_and_the_named_arrays(
    phantom_tree: CoronaryTree, tmp_path: Path
) -> None:
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    path = phantom_tree.save_vtp(tmp_path / "tree.vtp")
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    counts = phantom_tree.children_count()
    starts = (phantom_tree.parents < 0) | (counts >= 2)  # every child of a root or bifurcation opens a run
    n_runs = int(counts[starts].sum())
    assert poly.GetNumberOfLines() == n_runs, f"{poly.GetNumberOfLines()} polylines, expected {n_runs}"
    for name in ("Radius", "Branch", "Tree"):
        assert poly.GetPointData().GetArray(name) is not None, f"missing point array {name}"
    names = poly.GetFieldData().GetAbstractArray("BranchNames")
    assert [names.GetValue(i) for i in range(names.GetNumberOfValues())] == phantom_tree.branch_names


def test_slicer_reads_the_vtp_in_ras(phantom_tree: CoronaryTree, tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer")
    from vtkmodules.util import numpy_support

    path = phantom_tree.save_vtp(tmp_path / "tree.vtp")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLModelNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLModelStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    points = numpy_support.vtk_to_numpy(node.GetPolyData().GetPoints().GetData())
    assert np.allclose(points, phantom_tree.points), "Slicer must read the points as RAS (SPACE field)"
    radius = numpy_support.vtk_to_numpy(node.GetPolyData().GetPointData().GetArray("Radius"))
    np.testing.assert_array_equal(radius, phantom_tree.radii)


def test_vtp_from_another_tool_with_points_out_of_order_is_reordered(tmp_path: Path) -> None:
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

    t = _small_tree()
    perm = np.arange(t.num_points)[::-1]  # new point j is old point perm[j]
    new_of_old = np.argsort(perm)
    poly = vtkPolyData()
    pts = vtkPoints()
    pts.SetData(numpy_support.numpy_to_vtk(t.points[perm].copy(), deep=True))
    poly.SetPoints(pts)
    lines = vtkCellArray()
    for run in t._runs():
        lines.InsertNextCell(len(run))
        for i in run:
            lines.InsertCellPoint(int(new_of_old[i]))
    poly.SetLines(lines)
    radius = numpy_support.numpy_to_vtk(t.radii[perm].copy(), deep=True)
    radius.SetName("Radius")
    poly.GetPointData().AddArray(radius)
    writer = vtkXMLPolyDataWriter()
    writer.SetFileName(str(tmp_path / "foreign.vtp"))
    writer.SetInputData(poly)
    assert writer.Write() == 1
    loaded = CoronaryTree.load_vtp(tmp_path / "foreign.vtp")

    def segment_set(tree: CoronaryTree) -> set[tuple[float, ...]]:
        return {(*tree.points[p], *tree.points[c], tree.radii[c]) for p, c in tree.segments()}

    assert segment_set(loaded) == segment_set(t)
    assert loaded.branch_names == ["vessel"]


@pytest.mark.parametrize("ext", ["json", "vtp"])
def test_missing_and_corrupt_files_name_the_file(
    phantom_tree: CoronaryTree, tmp_path: Path, ext: str
) -> None:
    load = getattr(CoronaryTree, f"load_{ext}")
    missing = tmp_path / f"missing.{ext}"
    with pytest.raises(FileNotFoundError, match=f"missing.{ext}"):
        load(missing)
    garbage = tmp_path / f"garbage.{ext}"
    garbage.write_bytes(b"\x00\x01 not a tree {")
    with pytest.raises(ValueError, match=f"garbage.{ext}"):
        load(garbage)
    good = getattr(phantom_tree, f"save_{ext}")(tmp_path / f"good.{ext}")
    data = good.read_bytes()
    truncated = tmp_path / f"truncated.{ext}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"truncated.{ext}"):
        load(truncated)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        getattr(phantom_tree, f"save_{ext}")(tmp_path / "no_such_dir" / f"t.{ext}")


@pytest.mark.parametrize(("field", "index", "value"), [("radii", 3, -1.0), ("parents", 2, 1.5)])
def test_json_with_an_invalid_tree_names_file_and_field(
    tmp_path: Path, field: str, index: int, value: float
) -> None:
    import json

    data = _small_tree().to_dict()
    data[field][index] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"bad\.json.*CoronaryTree\.{field}"):
        CoronaryTree.load_json(path)


def test_save_json_rejects_meta_that_json_cannot_hold(tmp_path: Path) -> None:
    t = _small_tree(meta={"bad": object()})
    with pytest.raises(ValueError, match="meta"):
        t.save_json(tmp_path / "t.json")
    assert not list(tmp_path.iterdir()), "nothing may be left behind"


# --------------------------------------------------------------------------------------------------
# Voxelisation
# --------------------------------------------------------------------------------------------------


def _line_tree(
    p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, n: int = 31, tree: int = 0
) -> CoronaryTree:
    t = np.linspace(0.0, 1.0, n)
    return CoronaryTree(
        points=p0 + t[:, None] * (p1 - p0),
        radii=r0 + t * (r1 - r0),
        parents=np.arange(-1, n - 1),
        branch=np.zeros(n, dtype=np.int64),
        branch_names=["tube"],
        tree=np.full(n, tree),
    )


def _grid_around(
    points: np.ndarray, margin: float, spacing: tuple[float, float, float], rot: np.ndarray
) -> Volume:
    """A grid with directions ``rot`` (columns) covering points +- margin."""
    local = points @ rot  # coordinates along the grid axes
    lo, hi = local.min(axis=0) - margin, local.max(axis=0) + margin
    shape = np.ceil((hi - lo) / np.asarray(spacing)).astype(int) + 1
    return Volume.from_geometry(
        np.zeros(shape[::-1], dtype=np.uint8), spacing, tuple(rot @ lo), directions_ras=rot
    )


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(angle_deg)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


@pytest.mark.parametrize(
    ("r0", "r1", "n_points", "spacing", "rot_deg"),
    [
        (2.5, 2.5, 31, (0.4, 0.4, 0.4), 0.0),  # a cylinder of 30 capsules
        (2.5, 2.5, 31, (0.3, 0.4, 0.5), 35.0),  # rotated, anisotropic grid
        (3.0, 1.5, 2, (0.35, 0.35, 0.35), 20.0),  # one segment: the radius is interpolated along it
        (1.0, 3.0, 4, (0.35, 0.35, 0.35), 0.0),
    ],
)
def test_voxelized_tube_has_the_analytic_volume(
    r0: float, r1: float, n_points: int, spacing: tuple, rot_deg: float
) -> None:
    p0, direction, length = np.array([3.0, -7.0, 11.0]), np.array([1.0, 2.0, 3.0]), 30.0
    p1 = p0 + length * direction / np.linalg.norm(direction)
    tube = _line_tree(p0, p1, r0, r1, n=n_points)
    rot = _rotation(np.array([0.3, -0.5, 0.8]), rot_deg)
    ref = _grid_around(tube.points, max(r0, r1) + 2.0, spacing, rot)
    label = tube.voxelize(ref, label_left=5)
    assert label.array.shape == ref.array.shape and label.array.dtype == np.uint8
    np.testing.assert_array_equal(label.ijk_to_ras, ref.ijk_to_ras)
    assert set(np.unique(label.array).tolist()) == {0, 5}
    measured = float((label.array == 5).sum()) * float(np.prod(spacing))
    # Frustum plus a hemispherical cap at each end (the capsule's ends).
    expected = math.pi * length / 3 * (r0**2 + r0 * r1 + r1**2) + 2 / 3 * math.pi * (r0**3 + r1**3)
    assert abs(measured / expected - 1) < 0.05, f"volume {measured:.1f} mm^3, analytic {expected:.1f} mm^3"


def test_voxelize_labels_trees_and_connects_each(phantom_tree: CoronaryTree) -> None:
    ref = _grid_around(phantom_tree.points, 4.0, (0.5, 0.5, 0.5), np.eye(3))
    label = phantom_tree.voxelize(ref)
    for value in (1, 2):
        _, n = ndimage.label(label.array == value, structure=np.ones((3, 3, 3)))
        assert n == 1, f"label {value}: {n} connected components (26-connectivity), expected 1"
    # Every centreline point lies in a voxel of its tree's label.
    ijk = np.rint(ref.ras_to_ijk_points(phantom_tree.points)).astype(int)
    values = label.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    expected = np.where(phantom_tree.tree == 0, 1, 2)
    wrong = np.flatnonzero(values != expected)
    assert wrong.size == 0, f"{wrong.size} centreline points not labelled with their tree, e.g. {wrong[:5]}"


def test_voxelize_labels_values_dtype_and_outside_grid() -> None:
    tube = _line_tree(np.zeros(3), np.array([10.0, 0, 0]), 1.0, 1.0, tree=1)
    ref = _grid_around(tube.points, 3.0, (0.5, 0.5, 0.5), np.eye(3))
    big = tube.voxelize(ref, label_left=1, label_right=300)
    assert big.array.dtype == np.uint16 and set(np.unique(big.array).tolist()) == {0, 300}
    far = tube.transformed(np.array([[1, 0, 0, 500.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert not far.voxelize(ref).array.any(), "a tree outside the grid must give an empty label map"
    with pytest.raises(ValueError, match="label_left"):
        tube.voxelize(ref, label_left=0)
