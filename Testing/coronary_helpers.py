"""Helpers shared by the coronary tests (a plain module: pytest puts Testing/ on sys.path)."""

from __future__ import annotations

import numpy as np

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.volume import Volume


def make_tree(branches) -> CoronaryTree:
    """Tree from ``(name, tree_id, attach_point_index or -1, (n, 3) RAS mm points, (n,) radii mm)``."""
    pts, radii, parents, branch, tree_id, names = [], [], [], [], [], []
    for name, tid, attach, xyz, r in branches:
        names.append(name)
        prev = attach
        for p, rr in zip(
            np.asarray(xyz, float), np.broadcast_to(np.asarray(r, float), (len(xyz),)), strict=True
        ):
            pts.append(p)
            radii.append(rr)
            parents.append(prev)
            branch.append(len(names) - 1)
            tree_id.append(tid)
            prev = len(pts) - 1
    return CoronaryTree(
        points=np.array(pts, dtype=np.float64),
        radii=np.array(radii, dtype=np.float64),
        parents=np.array(parents, dtype=np.int64),
        branch=np.array(branch, dtype=np.int64),
        branch_names=names,
        tree=np.array(tree_id, dtype=np.int64),
        meta={"generator": "test"},
    )


def voxelised_tree(seed: int = 3, spacing_mm: float = 0.5) -> tuple[CoronaryTree, Volume]:
    """(procedural tree ``make_coronary_tree(seed)``, its label map: left tree 1, right tree 2).

    The grid is axis-aligned (RAS directions) with ``spacing_mm`` voxels and covers the tree with a
    4 mm margin (about 200^3 voxels at 0.5 mm).
    """
    from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree

    truth = make_coronary_tree(CoronaryPhantomConfig(seed=seed))
    lo, hi = truth.points.min(axis=0) - 4.0, truth.points.max(axis=0) + 4.0
    shape_ijk = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    grid = Volume.from_geometry(np.zeros(shape_ijk[::-1], np.uint8), (spacing_mm,) * 3, lo)
    return truth, truth.voxelize(grid)
