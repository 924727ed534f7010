"""VTK polydata I/O of :class:`~xraycardiac.anatomy.coronary_tree.CoronaryTree` (``.vtp``, Slicer models).

Points are RAS mm; the field ``SPACE=RAS`` tells Slicer's model reader not to flip them to LPS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xraycardiac.jsonutil import json_default
from xraycardiac.outputs import require_file, require_parent_dir

if TYPE_CHECKING:  # the tree imports this module when it saves or loads itself: no import back
    from xraycardiac.anatomy.coronary_tree import CoronaryTree


def tree_to_polydata(tree: CoronaryTree) -> Any:
    """A ``vtkPolyData``: RAS points, one polyline per run, arrays ``Radius``, ``Branch``, ``Tree``."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints, vtkStringArray
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    poly = vtkPolyData()
    pts = vtkPoints()
    pts.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(tree.points), deep=True))
    poly.SetPoints(pts)
    lines = vtkCellArray()
    for run in tree._runs():
        lines.InsertNextCell(len(run))
        for i in run:
            lines.InsertCellPoint(int(i))
    poly.SetLines(lines)
    for name, values in (("Radius", tree.radii), ("Branch", tree.branch), ("Tree", tree.tree)):
        arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(values), deep=True)
        arr.SetName(name)
        poly.GetPointData().AddArray(arr)
    for name, strings in (
        ("BranchNames", tree.branch_names),
        ("Meta", [json.dumps(tree.meta, default=json_default, allow_nan=False)]),
        ("SPACE", ["RAS"]),
    ):
        sarr = vtkStringArray()
        sarr.SetName(name)
        for s in strings:
            sarr.InsertNextValue(s)
        poly.GetFieldData().AddArray(sarr)
    return poly


def save_tree_vtp(tree: CoronaryTree, path: str | os.PathLike[str]) -> Path:
    """Write a VTK XML polydata file (binary, zlib), atomically; returns the path.

    Raises:
        FileNotFoundError: the destination directory does not exist.
        ValueError: ``meta`` holds a value JSON cannot represent, or VTK failed to write.
    """

    path = Path(path)
    require_parent_dir(path, "CoronaryTree.save_vtp")
    try:
        poly = tree_to_polydata(tree)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"CoronaryTree.save_vtp: cannot write {path}: meta is not JSON-serialisable ({exc})"
        ) from None
    return write_polydata(poly, path, "CoronaryTree.save_vtp")


def write_polydata(poly: Any, path: Path, who: str) -> Path:
    """Write ``poly`` as binary ``.vtp`` to a temporary sibling, then rename it to ``path`` (atomic).

    VTK encodes to memory and Python writes the file: VTK's own file writer does not report a full
    disk (it aborts the process or leaves a short file), Python's file objects raise.

    Raises:
        ValueError: VTK failed to encode (named by ``who``, the caller).
        OSError: the file could not be written whole (full disk, file size limit).
    """
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

    from xraycardiac.io import write_bytes_atomic

    writer = vtkXMLPolyDataWriter()
    writer.WriteToOutputStringOn()
    writer.SetInputData(poly)
    writer.SetDataModeToBinary()  # inline base64: the XML is ASCII text
    if writer.Write() != 1:
        raise ValueError(f"{who}: VTK could not encode {path}")
    return write_bytes_atomic(writer.GetOutputString().encode("ascii"), path)


def load_tree_vtp(path: str | os.PathLike[str], cls: type[CoronaryTree]) -> CoronaryTree:
    """Read a ``.vtp`` written by ``save_vtp`` (or any polyline tree with a ``Radius`` point array).

    Parents are rebuilt from the polylines (consecutive points of a line are parent -> child);
    points that start no segment are roots. Files from other tools whose points are not in
    topological order are reordered. ``Branch`` / ``Tree`` / ``BranchNames`` default to one
    branch "vessel" in tree 0 when absent.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, missing ``Radius``, a point with two parents, or a cycle.
    """
    path = Path(path)
    require_file(path, "CoronaryTree.load_vtp")
    poly, log = _read_vtp(path)

    def fail(reason: str) -> ValueError:
        return ValueError(f"CoronaryTree.load_vtp: {path} is not a valid coronary tree file: {reason}")

    if poly is None or poly.GetNumberOfPoints() == 0:
        lines = [s.strip() for s in log.splitlines() if s.strip() and not s.startswith("ERROR: In")]
        raise fail(f"VTK read no points ({lines[0]})" if lines else "no points")
    try:
        return _tree_from_polydata(cls, poly)
    except ValueError as exc:
        raise fail(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# VTP reading helpers
# --------------------------------------------------------------------------------------------------


def _read_vtp(path: Path) -> tuple[Any, str]:
    """Read a .vtp with VTK, capturing VTK's error messages instead of printing them."""
    from vtkmodules.vtkCommonCore import vtkLogger, vtkOutputWindow, vtkStringOutputWindow
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    previous_window = vtkOutputWindow.GetInstance()
    previous_verbosity = vtkLogger.GetCurrentVerbosityCutoff()
    capture = vtkStringOutputWindow()
    vtkOutputWindow.SetInstance(capture)
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_OFF)
    try:
        reader = vtkXMLPolyDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        poly = reader.GetOutput()
    finally:
        vtkOutputWindow.SetInstance(previous_window)
        vtkLogger.SetStderrVerbosity(previous_verbosity)
    return poly, capture.GetOutput()


def _topological_order(parents: np.ndarray) -> np.ndarray:
    """Order of the points such that parents precede children; ValueError on a cycle."""
    n = len(parents)
    children: list[list[int]] = [[] for _ in range(n)]
    for c in np.flatnonzero(parents >= 0):
        children[int(parents[c])].append(int(c))
    order: list[int] = []
    stack = [int(r) for r in np.flatnonzero(parents < 0)][::-1]
    while stack:
        i = stack.pop()
        order.append(i)
        stack.extend(reversed(children[i]))
    if len(order) != n:
        raise ValueError("the polylines contain a cycle")
    return np.asarray(order, dtype=np.int64)


def _tree_from_polydata(cls: type[CoronaryTree], poly: Any) -> CoronaryTree:
    """Build a tree from polydata (see ``CoronaryTree.load_vtp``)."""
    from vtkmodules.util import numpy_support

    n = poly.GetNumberOfPoints()
    points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64).reshape(n, 3)
    pd = poly.GetPointData()

    def point_array(name: str) -> np.ndarray | None:
        arr = pd.GetArray(name)
        if arr is None:
            return None
        values = numpy_support.vtk_to_numpy(arr)
        if values.shape != (n,):
            raise ValueError(f"point array {name!r} has shape {values.shape}, expected ({n},)")
        return values

    radii = point_array("Radius")
    if radii is None:
        raise ValueError("no 'Radius' point array")
    branch = point_array("Branch")
    tree = point_array("Tree")
    fd = poly.GetFieldData()
    names_arr = fd.GetAbstractArray("BranchNames")
    names = [names_arr.GetValue(i) for i in range(names_arr.GetNumberOfValues())] if names_arr else ["vessel"]
    meta_arr = fd.GetAbstractArray("Meta")
    meta = json.loads(meta_arr.GetValue(0)) if meta_arr is not None and meta_arr.GetNumberOfValues() else {}

    parents = np.full(n, -1, dtype=np.int64)
    lines = poly.GetLines()
    conn = numpy_support.vtk_to_numpy(lines.GetConnectivityArray()).astype(np.int64)
    offsets = numpy_support.vtk_to_numpy(lines.GetOffsetsArray()).astype(np.int64)
    for start, stop in zip(offsets[:-1], offsets[1:], strict=True):
        run = conn[start:stop]
        for p, c in zip(run[:-1], run[1:], strict=True):
            if parents[c] not in (-1, p):
                raise ValueError(f"point {c} has two parents ({parents[c]} and {p}); not a tree")
            parents[c] = p
    branch = np.zeros(n, dtype=np.int64) if branch is None else branch.astype(np.int64)
    tree = np.zeros(n, dtype=np.int64) if tree is None else tree.astype(np.int64)
    radii = radii.astype(np.float64)
    if np.any((parents >= 0) & (parents >= np.arange(n))):
        order = _topological_order(parents)
        new_of_old = np.empty(n, dtype=np.int64)
        new_of_old[order] = np.arange(n)
        parents = np.where(parents[order] >= 0, new_of_old[np.maximum(parents[order], 0)], -1)
        points, radii, branch, tree = points[order], radii[order], branch[order], tree[order]
    return cls(
        points=points, radii=radii, parents=parents, branch=branch, branch_names=names, tree=tree, meta=meta
    )
