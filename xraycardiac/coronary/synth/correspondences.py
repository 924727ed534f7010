"""Ground-truth keypoint correspondences between two projections of one coronary tree.

Keypoints are taken on the 3D tree (bifurcations, endpoints, and centreline samples every
``spacing_mm`` of arc length), projected into both views with the stored projection matrices, and
flagged per view when they fall off the detector or when another vessel (a part of the tree
more than ``2 * spacing_mm`` away along the tree, or the other tree) passes within
``overlap_px`` of them in that view: there the image cannot tell which vessel the pixel belongs
to (crossings, foreshortened segments). The match matrix has the dustbin row and column of
SuperGlue / LightGlue, so it is the target of their assignment loss directly.

Frames and units: 3D points in patient RAS mm; pixels (u = column, v = row), origin top-left,
pixel centres at integers, as :meth:`CArmGeometry.projection_matrix` maps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from xraycardiac.geometry import CArmGeometry, epipolar_distance, fundamental_matrix, project_points

if TYPE_CHECKING:
    from xraycardiac.anatomy.coronary_tree import CoronaryTree
    from xraycardiac.coronary.synth.projection import VesselProjection

KINDS = ("bifurcation", "endpoint", "centreline")


@dataclass
class Keypoints3D:
    """K keypoints on a coronary tree.

    Attributes:
        points: (K, 3) float64 RAS mm.
        kind: (K,) str, one of ``KINDS``: "bifurcation" (>= 2 children), "endpoint" (a node of
            degree 1: a distal end or an ostium), "centreline" (a uniform arc-length sample).
        point_index: (K,) int64 index into ``tree.points``.
        tree_id: (K,) int64, 0 = left coronary tree, 1 = right.
        branch: (K,) str, the branch name of each keypoint.
        spacing_mm: arc-length spacing of the centreline samples.
        tree: the tree the keypoints were sampled on (used for the overlap flags).
        trees: the opacified tree ids the keypoints were taken from; only those vessels are
            visible, so only they make a keypoint ambiguous.
    """

    points: np.ndarray
    kind: np.ndarray
    point_index: np.ndarray
    tree_id: np.ndarray
    branch: np.ndarray
    spacing_mm: float
    tree: CoronaryTree = field(repr=False)
    trees: tuple[int, ...] = (0, 1)

    def __len__(self) -> int:
        return len(self.points)


def sample_keypoints(
    tree: CoronaryTree, spacing_mm: float = 5.0, trees: tuple[int, ...] = (0, 1)
) -> Keypoints3D:
    """Keypoints at every bifurcation and endpoint, and every ``spacing_mm`` of arc length between.

    Walking each vessel from its ostium, a tree point becomes a centreline keypoint once the arc
    length since the last keypoint on its path reaches ``spacing_mm``; keypoints are tree points
    (no interpolation), so the spacing is rounded up to the tree's point spacing.

    Args:
        tree: the coronary tree (RAS mm); points are ordered parents first.
        spacing_mm: arc-length spacing in mm of the centreline keypoints (> 0).
        trees: tree ids to take keypoints from (0 = left, 1 = right): the opacified ones, as
            passed to :func:`~xraycardiac.coronary.synth.projection.project_vessels`.

    Returns:
        :class:`Keypoints3D` in tree-point order.
    """
    if not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm: expected an arc-length spacing > 0 mm, got {spacing_mm}")
    trees = tuple(int(t) for t in trees)
    if not trees or not set(trees) <= {0, 1}:
        raise ValueError(f"trees: expected tree ids from (0 = left, 1 = right), got {trees!r}")
    pts = np.asarray(tree.points, dtype=np.float64)
    parents = np.asarray(tree.parents, dtype=np.int64)
    n_children = np.bincount(parents[parents >= 0], minlength=len(pts))
    degree = n_children + (parents >= 0)
    kind = np.full(len(pts), "", dtype=object)
    kind[n_children >= 2] = "bifurcation"
    kind[(degree <= 1) & (kind == "")] = "endpoint"
    since = np.zeros(len(pts))  # arc length since the last keypoint on the path from the ostium
    for i in range(len(pts)):  # parents come first
        p = parents[i]
        if p < 0 or kind[i]:
            continue
        since[i] = since[p] + np.linalg.norm(pts[i] - pts[p])
        if since[i] >= spacing_mm - 1e-9:
            kind[i], since[i] = "centreline", 0.0
    idx = np.flatnonzero((kind != "") & np.isin(np.asarray(tree.tree), trees))
    names = np.asarray(tree.branch_names, dtype=object)
    return Keypoints3D(
        points=pts[idx].copy(),
        kind=kind[idx].astype(str),
        point_index=idx.astype(np.int64),
        tree_id=np.asarray(tree.tree, dtype=np.int64)[idx],
        branch=names[np.asarray(tree.branch, dtype=np.int64)[idx]].astype(str),
        spacing_mm=float(spacing_mm),
        tree=tree,
        trees=trees,
    )


@dataclass
class GTMatches:
    """Ground-truth projections and matches of K keypoints in two views.

    The per-view keypoint lists are the keypoints in that view's field, in keypoint order:
    ``index1 = flatnonzero(in_field1)`` (K1 of them), likewise ``index2`` (K2).

    Attributes:
        keypoints: the 3D keypoints (K).
        uv1, uv2: (K, 2) float64 pixel coordinates (u, v) in view 1 / view 2.
        in_field1, in_field2: (K,) bool, the keypoint projects onto that detector.
        ambiguous1, ambiguous2: (K,) bool, another vessel passes within ``overlap_px`` of it in that view.
        p1, p2: (3, 4) projection matrices used.
        matches: (M, 2) int64 pairs (i, j): ``index1[i]`` and ``index2[j]`` are the same keypoint,
            for every keypoint in the field of both views.
        overlap_px: the overlap radius used for the ambiguity flags.
    """

    keypoints: Keypoints3D
    uv1: np.ndarray
    uv2: np.ndarray
    in_field1: np.ndarray
    in_field2: np.ndarray
    ambiguous1: np.ndarray
    ambiguous2: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    matches: np.ndarray
    overlap_px: float

    @property
    def index1(self) -> np.ndarray:
        """(K1,) keypoint indices of view 1's list."""
        return np.flatnonzero(self.in_field1)

    @property
    def index2(self) -> np.ndarray:
        """(K2,) keypoint indices of view 2's list."""
        return np.flatnonzero(self.in_field2)

    def match_matrix(self) -> np.ndarray:
        """(K1 + 1, K2 + 1) float32 assignment with dustbins (SuperGlue / LightGlue targets).

        1 at each match; an unmatched keypoint of view 1 (row i) has 1 in the last column, an
        unmatched keypoint of view 2 (column j) has 1 in the last row; the corner is 0.
        """
        k1, k2 = len(self.index1), len(self.index2)
        m = np.zeros((k1 + 1, k2 + 1), dtype=np.float32)
        m[self.matches[:, 0], self.matches[:, 1]] = 1.0
        m[np.setdiff1d(np.arange(k1), self.matches[:, 0]), k2] = 1.0
        m[k1, np.setdiff1d(np.arange(k2), self.matches[:, 1])] = 1.0
        return m

    def matched_uv(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, 2) pixels of the matched keypoints in view 1 and in view 2."""
        return self.uv1[self.index1[self.matches[:, 0]]], self.uv2[self.index2[self.matches[:, 1]]]

    def epipolar_error_px(self) -> np.ndarray:
        """(M,) the larger of the two point-to-epipolar-line distances (pixels) of each match."""
        x1, x2 = self.matched_uv()
        if len(x1) == 0:
            return np.zeros(0)
        d21 = epipolar_distance(fundamental_matrix(self.p1, self.p2), x1, x2)
        d12 = epipolar_distance(fundamental_matrix(self.p2, self.p1), x2, x1)
        return np.maximum(d21, d12)


def _project(
    geometry: CArmGeometry, points: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) pixels of (K, 3) RAS points and (K,) bool: in front of the source and on the detector."""
    uv = project_points(geometry.projection_matrix(), points)
    depth = (points - geometry.source_position) @ geometry.beam_direction
    rows, cols = shape
    ok = (
        (depth > 0)
        & (uv[:, 0] >= -0.5)
        & (uv[:, 0] <= cols - 0.5)
        & (uv[:, 1] >= -0.5)
        & (uv[:, 1] <= rows - 0.5)
    )
    return uv, ok


def _geodesic_mm(tree: CoronaryTree, sources: np.ndarray) -> np.ndarray:
    """(len(sources), N) arc length in mm along the tree from each source point (inf: other tree)."""
    pts = np.asarray(tree.points, dtype=np.float64)
    parents = np.asarray(tree.parents, dtype=np.int64)
    child = np.flatnonzero(parents >= 0)
    w = np.linalg.norm(pts[child] - pts[parents[child]], axis=1) + 1e-12  # 0 would drop the edge
    graph = coo_matrix((w, (parents[child], child)), shape=(len(pts), len(pts))).tocsr()
    return dijkstra(graph, directed=False, indices=sources)


def _overlap_flags(
    keypoints: Keypoints3D, geometry: CArmGeometry, uv: np.ndarray, overlap_px: float
) -> np.ndarray:
    """(K,) bool: a tree segment far along the tree from the keypoint comes within overlap_px in this view."""
    tree = keypoints.tree
    parents = np.asarray(tree.parents, dtype=np.int64)
    child = np.flatnonzero((parents >= 0) & np.isin(np.asarray(tree.tree), keypoints.trees))
    flags = np.zeros(len(keypoints), dtype=bool)
    if len(child) == 0:
        return flags
    seg_uv = project_points(geometry.projection_matrix(), np.asarray(tree.points, dtype=np.float64))
    a, b = seg_uv[parents[child]], seg_uv[child]  # (S, 2) segment ends in pixels
    ab = b - a
    ab2 = np.maximum((ab**2).sum(axis=1), 1e-12)
    far_mm = 2.0 * keypoints.spacing_mm
    for start in range(0, len(keypoints), 256):  # bounded (256, S) work arrays
        sl = slice(start, start + 256)
        q = uv[sl, None, :]  # (k, 1, 2)
        t = np.clip(((q - a[None]) * ab[None]).sum(-1) / ab2[None], 0.0, 1.0)
        d_px = np.linalg.norm(a[None] + t[..., None] * ab[None] - q, axis=-1)  # (k, S)
        geo = _geodesic_mm(tree, keypoints.point_index[sl])  # (k, N)
        far = np.minimum(geo[:, parents[child]], geo[:, child]) > far_mm
        flags[sl] = np.any(far & (d_px <= overlap_px), axis=1)
    return flags


def _detector_shape(
    geometry: CArmGeometry, projection: VesselProjection | None, which: str
) -> tuple[int, int]:
    shape = (geometry.detector_rows, geometry.detector_cols)
    if projection is not None:
        if projection.mask.shape != shape or not np.allclose(
            projection.projection_matrix(), geometry.projection_matrix(), rtol=1e-9, atol=1e-9
        ):
            raise ValueError(
                f"{which}: its geometry ({projection.geometry.name!r}, images {projection.mask.shape}) is not the "
                f"view passed with it ({geometry.name!r}, detector {shape}); pass the projection of that view"
            )
    return shape


def ground_truth_matches(
    keypoints: Keypoints3D,
    g1: CArmGeometry,
    g2: CArmGeometry,
    projection1: VesselProjection | None = None,
    projection2: VesselProjection | None = None,
    overlap_px: float = 3.0,
) -> GTMatches:
    """Project keypoints into two views and build the ground-truth matches.

    Args:
        keypoints: K keypoints of one tree (:func:`sample_keypoints`); only the vessels of
            ``keypoints.trees`` count for the ambiguity flags.
        g1, g2: the two views.
        projection1, projection2: the vessel projections of those views (optional; checked to be
            of the same geometry, so the keypoints and the images stay consistent).
        overlap_px: a keypoint is ambiguous in a view when a part of the tree more than
            ``2 * keypoints.spacing_mm`` away along the tree (or the other tree) passes within
            this many pixels of it there.

    Returns:
        :class:`GTMatches`; every keypoint in the field of both views is a match.
    """
    if not (np.isfinite(overlap_px) and overlap_px >= 0):
        raise ValueError(f"overlap_px: expected a distance >= 0 pixels, got {overlap_px}")
    shape1 = _detector_shape(g1, projection1, "projection1")
    shape2 = _detector_shape(g2, projection2, "projection2")
    pts = np.asarray(keypoints.points, dtype=np.float64)
    uv1, in1 = _project(g1, pts, shape1)
    uv2, in2 = _project(g2, pts, shape2)
    amb1 = _overlap_flags(keypoints, g1, uv1, overlap_px)
    amb2 = _overlap_flags(keypoints, g2, uv2, overlap_px)
    both = np.flatnonzero(in1 & in2)
    # position of each keypoint in its view's list = number of in-field keypoints before it
    rank1, rank2 = np.cumsum(in1) - 1, np.cumsum(in2) - 1
    matches = np.stack([rank1[both], rank2[both]], axis=1).astype(np.int64).reshape(-1, 2)
    return GTMatches(
        keypoints=keypoints,
        uv1=uv1,
        uv2=uv2,
        in_field1=in1,
        in_field2=in2,
        ambiguous1=amb1,
        ambiguous2=amb2,
        p1=g1.projection_matrix(),
        p2=g2.projection_matrix(),
        matches=matches,
        overlap_px=float(overlap_px),
    )
