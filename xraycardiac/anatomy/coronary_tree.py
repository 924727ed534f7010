"""Coronary centreline tree: points with lumen radii in patient RAS, their parent links and branch names.

A ``CoronaryTree`` is a forest of rooted trees stored point-wise: point ``i`` is joined to
``parents[i]`` by a straight segment, roots (ostia) have parent -1, and every parent comes before its
children (``parents[i] < i``), so one pass in index order visits a tree from its root outwards. A
segment belongs to the branch of its child point: the first segment of a side branch starts at the
bifurcation point on the parent branch.

The tube model used by ``voxelize`` (and by the projections built on this type) is the union of
capsules, one per segment, whose radius varies linearly from ``radii[parent]`` to ``radii[child]``:
a position belongs to the tube when its distance to the segment is at most the radius interpolated
at its closest point on the segment.

Files: JSON (every field, exact round trip) and VTK XML polydata (``.vtp``; one polyline per run of
segments between roots, bifurcations and endpoints, point arrays ``Radius`` (mm), ``Branch``,
``Tree``, field data ``BranchNames``, ``Meta`` (JSON) and ``SPACE`` = ``RAS``, the field Slicer's
model reader looks for: without it Slicer would take the points as LPS). Both are written
atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.jsonutil import json_default
from xraycardiac.outputs import atomic_path, require_file, require_parent_dir
from xraycardiac.volume import Volume

__all__ = ["CoronaryTree"]

_JSON_FORMAT = "xraycardiac.coronary_tree"
_JSON_VERSION = 1


def _int_array(value: Any, name: str, n: int) -> np.ndarray:
    """``value`` as an (n,) int64 array, or a ValueError naming the field."""
    arr = np.asarray(value)
    if arr.shape != (n,):
        raise ValueError(f"CoronaryTree.{name}: expected shape ({n},), got {arr.shape}")
    if n and arr.dtype.kind not in "iu":
        raise ValueError(f"CoronaryTree.{name}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclass(eq=False)
class CoronaryTree:
    """Coronary centreline graph in patient RAS (mm); points are ordered so parents come before children.

    Attributes:
        points: (N, 3) float64 centreline samples, RAS mm.
        radii: (N,) float64 lumen radius at each point, mm, > 0.
        parents: (N,) int64 index of the parent point, -1 for a root (an ostium); ``parents[i] < i``.
        branch: (N,) int64 index into ``branch_names`` of the branch each point lies on.
        branch_names: unique branch names, e.g. ``["LM", "LAD", "LCx", "D1", "OM1", "RCA", "PDA"]``.
        tree: (N,) int64, 0 = left coronary tree (LCA), 1 = right (RCA); constant along each tree.
        meta: provenance (generator, seed, parameters); JSON-serialisable values only.

    Raises:
        ValueError: a field has the wrong shape or type, non-finite values, a radius <= 0, a parent
            that is not -1 or an earlier index, a branch index out of range, duplicate branch names,
            a tree label other than 0/1 or one that differs from the parent's.
    """

    points: np.ndarray
    radii: np.ndarray
    parents: np.ndarray
    branch: np.ndarray
    branch_names: list[str]
    tree: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] < 1:
            raise ValueError(f"CoronaryTree.points: expected shape (N, 3) with N >= 1, got {points.shape}")
        if not np.all(np.isfinite(points)):
            raise ValueError("CoronaryTree.points: contains NaN or infinite coordinates")
        n = points.shape[0]
        radii = np.asarray(self.radii, dtype=np.float64)
        if radii.shape != (n,):
            raise ValueError(f"CoronaryTree.radii: expected shape ({n},), got {radii.shape}")
        if not np.all(np.isfinite(radii)) or np.any(radii <= 0):
            bad = int(np.flatnonzero(~(np.isfinite(radii) & (radii > 0)))[0])
            raise ValueError(
                f"CoronaryTree.radii: every radius must be finite and > 0 mm, got {radii[bad]} at point {bad}"
            )
        parents = _int_array(self.parents, "parents", n)
        idx = np.arange(n)
        bad = np.flatnonzero((parents != -1) & ((parents < 0) | (parents >= idx)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"CoronaryTree.parents: parents[{i}] = {parents[i]}; expected -1 (root) or an index in "
                f"[0, {i}) (points must be in topological order, parents first)"
            )
        names = list(self.branch_names)
        if not all(isinstance(s, str) and s for s in names):
            raise ValueError(f"CoronaryTree.branch_names: expected non-empty strings, got {names!r}")
        if len(set(names)) != len(names):
            dup = sorted({s for s in names if names.count(s) > 1})
            raise ValueError(f"CoronaryTree.branch_names: names must be unique, duplicated: {dup}")
        branch = _int_array(self.branch, "branch", n)
        if np.any((branch < 0) | (branch >= len(names))):
            i = int(np.flatnonzero((branch < 0) | (branch >= len(names)))[0])
            raise ValueError(
                f"CoronaryTree.branch: branch[{i}] = {branch[i]} is not an index into branch_names "
                f"(0..{len(names) - 1})"
            )
        tree = _int_array(self.tree, "tree", n)
        if np.any((tree != 0) & (tree != 1)):
            raise ValueError(f"CoronaryTree.tree: expected 0 (left) or 1 (right), got {np.unique(tree)}")
        child = np.flatnonzero(parents >= 0)
        mixed = child[tree[child] != tree[parents[child]]]
        if mixed.size:
            i = int(mixed[0])
            raise ValueError(
                f"CoronaryTree.tree: point {i} has tree {tree[i]} but its parent {parents[i]} has "
                f"{tree[parents[i]]}; a tree label is constant from root to endpoints"
            )
        if not isinstance(self.meta, dict):
            raise ValueError(f"CoronaryTree.meta: expected a dict, got {type(self.meta).__name__}")
        self.points, self.radii, self.parents = points, radii, parents
        self.branch, self.branch_names, self.tree = branch, names, tree

    # ------------------------------------------------------------------------------------------
    # Graph queries
    # ------------------------------------------------------------------------------------------

    @property
    def num_points(self) -> int:
        """N, the number of centreline points."""
        return int(self.points.shape[0])

    def children_count(self) -> np.ndarray:
        """(N,) int64 number of children of each point."""
        return np.bincount(self.parents[self.parents >= 0], minlength=self.num_points).astype(np.int64)

    def bifurcations(self) -> np.ndarray:
        """Indices of points with >= 2 children (ascending)."""
        return np.flatnonzero(self.children_count() >= 2)

    def endpoints(self) -> np.ndarray:
        """Indices of points with no child (ascending)."""
        return np.flatnonzero(self.children_count() == 0)

    def roots(self) -> np.ndarray:
        """Indices of points with parent -1, the ostia (ascending)."""
        return np.flatnonzero(self.parents < 0)

    def segments(self) -> np.ndarray:
        """(N - n_roots, 2) int64 (parent, child) index pairs, ordered by child index."""
        child = np.flatnonzero(self.parents >= 0)
        return np.stack([self.parents[child], child], axis=1)

    def segment_lengths(self) -> np.ndarray:
        """(N,) float64 length in mm of the segment from each point's parent to it (0 at roots)."""
        out = np.zeros(self.num_points)
        child = np.flatnonzero(self.parents >= 0)
        out[child] = np.linalg.norm(self.points[child] - self.points[self.parents[child]], axis=1)
        return out

    def arc_length(self) -> np.ndarray:
        """(N,) float64 distance in mm from each point's root along the tree (0 at roots)."""
        # Pointer jumping: after round r, dist[i] sums the 2^r segments above i; O(N log depth).
        dist = self.segment_lengths()
        anc = self.parents.copy()
        while np.any(anc >= 0):
            has = anc >= 0
            safe = np.where(has, anc, 0)
            dist, anc = np.where(has, dist + dist[safe], dist), np.where(has, anc[safe], -1)
        return dist

    def root_of(self) -> np.ndarray:
        """(N,) int64 index of the root each point hangs from."""
        up = np.where(
            self.parents >= 0, self.parents, np.arange(self.num_points)
        )  # roots point to themselves
        while True:
            nxt = up[up]
            if np.array_equal(nxt, up):
                return up
            up = nxt

    def branch_id(self, name: str) -> int:
        """Index of branch ``name`` in ``branch_names``; ValueError if absent."""
        try:
            return self.branch_names.index(name)
        except ValueError:
            raise ValueError(
                f"CoronaryTree: no branch named {name!r}; branches are {self.branch_names}"
            ) from None

    def branch_points(self, name: str) -> np.ndarray:
        """Indices of the points on branch ``name`` (ascending, i.e. from its start to its end)."""
        return np.flatnonzero(self.branch == self.branch_id(name))

    def branch_length_mm(self, name: str) -> float:
        """Centreline length of branch ``name`` in mm: the sum of the segments whose child lies on it.

        A side branch's length therefore starts at its bifurcation point on the parent branch.
        """
        return float(self.segment_lengths()[self.branch_points(name)].sum())

    def _runs(self) -> list[np.ndarray]:
        """Maximal chains [start, ..., end] of segments between roots, bifurcations and endpoints."""
        counts = self.children_count()
        children: list[list[int]] = [[] for _ in range(self.num_points)]
        for c in np.flatnonzero(self.parents >= 0):
            children[int(self.parents[c])].append(int(c))
        runs = []
        for start in range(self.num_points):
            if not (self.parents[start] < 0 or counts[start] >= 2):
                continue
            for first in children[start]:
                run = [start, first]
                while counts[run[-1]] == 1:
                    run.append(children[run[-1]][0])
                runs.append(np.asarray(run, dtype=np.int64))
        return runs

    # ------------------------------------------------------------------------------------------
    # Derived trees
    # ------------------------------------------------------------------------------------------

    def resampled(self, step_mm: float) -> CoronaryTree:
        """Resample every run between roots, bifurcations and endpoints at uniform arc length.

        Roots, bifurcations and endpoints are kept exactly (same coordinates, radii, branch); each run
        of length L between two of them is cut into ``max(1, round(L / step_mm))`` equal arcs, so the
        spacing is ``step_mm`` up to the rounding of each run (within ``step_mm / (2 L)`` relatively).
        New points are linearly interpolated along the old polyline (radii too); a new point takes the
        branch of the old segment it falls on.

        Args:
            step_mm: target spacing along the centreline, mm, > 0.

        Returns:
            A new tree (same roots, bifurcation count and endpoints), ``meta["resampled_step_mm"]`` set.
        """
        if not (isinstance(step_mm, (int, float)) and math.isfinite(step_mm) and step_mm > 0):
            raise ValueError(
                f"CoronaryTree.resampled: step_mm must be a finite value > 0 mm, got {step_mm!r}"
            )
        counts = self.children_count()
        key = (self.parents < 0) | (counts != 1)
        new_index = np.full(self.num_points, -1, dtype=np.int64)
        pts: list[np.ndarray] = []
        rad: list[np.ndarray] = []
        par: list[np.ndarray] = []
        br: list[np.ndarray] = []
        tr: list[np.ndarray] = []
        n_new = 0
        for end in np.flatnonzero(key):
            if self.parents[end] < 0:
                pts.append(self.points[end][None])
                rad.append(self.radii[end : end + 1])
                par.append(np.array([-1]))
                br.append(self.branch[end : end + 1])
                tr.append(self.tree[end : end + 1])
                new_index[end] = n_new
                n_new += 1
                continue
            chain = [int(end)]
            p = int(self.parents[end])
            while not key[p]:
                chain.append(p)
                p = int(self.parents[p])
            chain.append(p)
            chain.reverse()
            cp = self.points[chain]
            cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(cp, axis=0), axis=1))])
            length = cum[-1]
            m = max(1, round(length / step_mm))
            s = length * np.arange(1, m) / m  # interior samples; the run's end point is kept as is
            seg = np.clip(np.searchsorted(cum, s, side="left"), 1, len(chain) - 1)
            new_pts = np.stack([np.interp(s, cum, cp[:, a]) for a in range(3)], axis=1)
            pts.append(np.concatenate([new_pts, self.points[end][None]]))
            rad.append(np.concatenate([np.interp(s, cum, self.radii[chain]), self.radii[end : end + 1]]))
            br.append(np.concatenate([self.branch[np.asarray(chain)[seg]], self.branch[end : end + 1]]))
            tr.append(np.full(m, self.tree[end]))
            first = new_index[chain[0]]
            par.append(np.concatenate([[first], n_new + np.arange(m - 1)]))
            new_index[end] = n_new + m - 1
            n_new += m
        meta = dict(self.meta)
        meta["resampled_step_mm"] = float(step_mm)
        return CoronaryTree(
            points=np.concatenate(pts),
            radii=np.concatenate(rad),
            parents=np.concatenate(par).astype(np.int64),
            branch=np.concatenate(br).astype(np.int64),
            branch_names=list(self.branch_names),
            tree=np.concatenate(tr).astype(np.int64),
            meta=meta,
        )

    def transformed(self, matrix4x4: np.ndarray) -> CoronaryTree:
        """Apply an affine RAS -> RAS transform (4x4, last row 0 0 0 1) to the points.

        Radii are multiplied by ``|det(A)|^(1/3)`` of the linear part A (1 for a rigid transform).
        The matrix is appended to ``meta["transforms"]`` (a list of 4x4 nested lists).
        """
        m = np.asarray(matrix4x4, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise ValueError(
                f"CoronaryTree.transformed: matrix4x4 must be a finite 4x4 matrix, got shape {m.shape}"
            )
        if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-12):
            raise ValueError(
                f"CoronaryTree.transformed: matrix4x4 must be affine (last row 0 0 0 1), got {m[3]}"
            )
        det = float(np.linalg.det(m[:3, :3]))
        if abs(det) < 1e-12:
            raise ValueError("CoronaryTree.transformed: matrix4x4 is singular (det of its 3x3 part is 0)")
        meta = dict(self.meta)
        meta["transforms"] = [*list(self.meta.get("transforms", [])), m.tolist()]
        return CoronaryTree(
            points=self.points @ m[:3, :3].T + m[:3, 3],
            radii=self.radii * abs(det) ** (1.0 / 3.0),
            parents=self.parents.copy(),
            branch=self.branch.copy(),
            branch_names=list(self.branch_names),
            tree=self.tree.copy(),
            meta=meta,
        )

    # ------------------------------------------------------------------------------------------
    # JSON
    # ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready Python lists (floats round-trip exactly through ``json``)."""
        return {
            "format": _JSON_FORMAT,
            "version": _JSON_VERSION,
            "points": self.points.tolist(),
            "radii": self.radii.tolist(),
            "parents": self.parents.tolist(),
            "branch": self.branch.tolist(),
            "branch_names": list(self.branch_names),
            "tree": self.tree.tolist(),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoronaryTree:
        """Inverse of ``to_dict``; ValueError on a missing field or one that fails validation."""
        if not isinstance(data, dict) or data.get("format") != _JSON_FORMAT:
            raise ValueError(f'not a coronary tree (expected "format": "{_JSON_FORMAT}")')
        missing = [
            k for k in ("points", "radii", "parents", "branch", "branch_names", "tree") if k not in data
        ]
        if missing:
            raise ValueError(f"coronary tree is missing fields {missing}")
        return cls(
            points=np.asarray(data["points"], dtype=np.float64),
            radii=np.asarray(data["radii"], dtype=np.float64),
            parents=np.asarray(data["parents"]),  # integer check in __post_init__ (no silent truncation)
            branch=np.asarray(data["branch"]),
            branch_names=list(data["branch_names"]),
            tree=np.asarray(data["tree"]),
            meta=dict(data.get("meta") or {}),
        )

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write every field to a JSON file, atomically; returns the path.

        Raises:
            FileNotFoundError: the destination directory does not exist.
            ValueError: ``meta`` holds a value JSON cannot represent.
        """
        path = Path(path)
        require_parent_dir(path, "CoronaryTree.save_json")
        try:
            text = json.dumps(self.to_dict(), default=json_default, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"CoronaryTree.save_json: cannot write {path}: meta is not JSON-serialisable ({exc})"
            ) from None
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> CoronaryTree:
        """Read a tree written by ``save_json``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not valid JSON or not a valid coronary tree (the message names it).
        """
        path = Path(path)
        require_file(path, "CoronaryTree.load_json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"CoronaryTree.load_json: {path} is not a valid coronary tree file: {exc}"
            ) from None

    # ------------------------------------------------------------------------------------------
    # VTP
    # ------------------------------------------------------------------------------------------

    def to_polydata(self) -> Any:
        """A ``vtkPolyData``: RAS points, one polyline per run, arrays ``Radius``, ``Branch``, ``Tree``."""
        from xraycardiac.anatomy.coronary_tree_vtk import tree_to_polydata

        return tree_to_polydata(self)

    def save_vtp(self, path: str | os.PathLike[str]) -> Path:
        """Write a VTK XML polydata file (binary, zlib), atomically; see ``coronary_tree_vtk.save_tree_vtp``."""
        from xraycardiac.anatomy.coronary_tree_vtk import save_tree_vtp

        return save_tree_vtp(self, path)

    @classmethod
    def load_vtp(cls, path: str | os.PathLike[str]) -> CoronaryTree:
        """Read a ``.vtp`` written by ``save_vtp`` (or any polyline tree); see ``coronary_tree_vtk.load_tree_vtp``."""
        from xraycardiac.anatomy.coronary_tree_vtk import load_tree_vtp

        return load_tree_vtp(path, cls)

    # ------------------------------------------------------------------------------------------
    # Rasterisation
    # ------------------------------------------------------------------------------------------

    def voxelize(self, reference: Volume, label_left: int = 1, label_right: int = 2) -> Volume:
        """Tube label map on the grid of ``reference``.

        A voxel is inside when its centre lies within the radius of a segment's capsule (radius
        linearly interpolated between the segment's end points, taken at the closest point); a
        root without children is a sphere. Each segment only visits the voxels of its bounding box.
        Where the two trees overlap the right tree's label wins.

        Args:
            reference: any Volume; only its shape and ``ijk_to_ras`` are used (any directions/spacing).
            label_left: value for the left tree (``tree == 0``), 1..65535.
            label_right: value for the right tree (``tree == 1``), 1..65535 (may equal label_left).

        Returns:
            Volume with the reference geometry, (K, J, I) uint8 (uint16 if a label > 255), 0 outside.
        """
        for name, value in (("label_left", label_left), ("label_right", label_right)):
            if not (isinstance(value, (int, np.integer)) and 1 <= value <= 65535):
                raise ValueError(
                    f"CoronaryTree.voxelize: {name} must be an integer in 1..65535, got {value!r}"
                )
        dtype = np.uint8 if max(label_left, label_right) <= 255 else np.uint16
        shape_kji = reference.array.shape
        out = np.zeros(shape_kji, dtype=dtype)
        a = reference.ijk_to_ras
        inv = np.linalg.inv(a)
        # A sphere of radius r in RAS spans r * |row i of inv(A)| voxels along index axis i.
        reach_per_mm = np.linalg.norm(inv[:3, :3], axis=1)
        ijk = self.points @ inv[:3, :3].T + inv[:3, 3]
        upper = np.asarray(shape_kji[::-1]) - 1
        segs = self.segments()
        lone = np.setdiff1d(self.roots(), segs[:, 0]) if len(segs) else self.roots()
        pairs = np.concatenate([segs, np.stack([lone, lone], axis=1)]) if lone.size else segs
        for tree_label, value in ((0, label_left), (1, label_right)):
            for p, c in pairs[self.tree[pairs[:, 1]] == tree_label]:
                r0, r1 = self.radii[p], self.radii[c]
                reach = max(r0, r1) * reach_per_mm
                lo = np.maximum(np.floor(np.minimum(ijk[p], ijk[c]) - reach), 0).astype(np.int64)
                hi = np.minimum(np.ceil(np.maximum(ijk[p], ijk[c]) + reach), upper).astype(np.int64)
                if np.any(hi < lo):
                    continue
                i = np.arange(lo[0], hi[0] + 1, dtype=np.float64)
                j = np.arange(lo[1], hi[1] + 1, dtype=np.float64)
                k = np.arange(lo[2], hi[2] + 1, dtype=np.float64)
                # RAS of the box's voxel centres minus p0, as (3, K, J, I) by broadcasting.
                d = (
                    (a[:3, 0, None] * i)[:, None, None, :]
                    + (a[:3, 1, None] * j)[:, None, :, None]
                    + (a[:3, 2, None] * k)[:, :, None, None]
                    + (a[:3, 3] - self.points[p])[:, None, None, None]
                )
                axis = self.points[c] - self.points[p]
                len2 = float(axis @ axis)
                if len2 > 0:
                    t = np.clip(np.tensordot(axis, d, axes=1) / len2, 0.0, 1.0)
                    d -= axis[:, None, None, None] * t
                    radius = r0 + t * (r1 - r0)
                else:
                    radius = r0
                inside = np.einsum("a...,a...->...", d, d) <= radius * radius
                box = out[lo[2] : hi[2] + 1, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1]
                box[inside] = value
        meta = {
            "quantity": "label",
            "generator": "xraycardiac.coronary.tree.CoronaryTree.voxelize",
            "labels_json": json.dumps({"left": int(label_left), "right": int(label_right)}),
        }
        return Volume(array=out, ijk_to_ras=a.copy(), meta=meta)
