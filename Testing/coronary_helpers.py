"""Helpers shared by the coronary tests (a plain module: pytest puts Testing/ on sys.path)."""

from __future__ import annotations

import numpy as np

from xraycardiac.coronary.tree import CoronaryTree


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
