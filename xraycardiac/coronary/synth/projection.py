"""Projection of a 3D coronary tube to one C-arm view: path-length (thickness) map, mask, tree labels.

The tube is what :meth:`CoronaryTree.voxelize` rasterises (capsules around the centreline
segments with linearly interpolated radius) on a grid just covering the opacified tree(s), with
axes along the detector and the beam (:func:`beam_grid_axes`), and the rays are those of
:func:`xraycardiac.projection.project_labels`: one ray per detector pixel from the source to the
pixel centre, built from the same :class:`CArmGeometry` as the projection matrix, so the mask
agrees with ``geometry.project`` to within the voxel size. The path length of each ray through
each tree's voxels is what Beer-Lambert needs for the iodine contrast (Zhao et al. 2025 render
their training angiograms from such masks).

Accuracy and cost, measured on this 2-core CPU (defaults: 0.25 mm voxels, one nearest-voxel ray
sample per voxel, so a path length is counted in voxels):

* a cylinder of radius 1.5 / 0.75 mm perpendicular to the beam, random views, sub-voxel offsets
  and in-plane tilts: central thickness +0.02 / +0.05 mm on average (worst pixel 0.2 mm),
  silhouette width within 0.5 px of ``2 r SID / SOD`` (0.3 mm pixels, mean -0.05 px); with
  0.35 / 0.5 mm voxels the mean thickness is off by up to 0.34 / 0.17 mm;
* the procedural phantom (``xraycardiac.phantoms.coronary``), one tree at 512 x 512: 2-4 s per
  view (5-6.5 s while another process shares the two cores; both trees together ~1.3x one);
  against a 0.1 mm reference the mask IoU is 0.95 (0.93 / 0.90 at 0.35 / 0.5 mm voxels) and the
  per-pixel thickness rms 0.22 mm, unbiased (+0.02 mm), mostly one-voxel steps at vessel edges.

The cost is the dense ray marcher's: detector pixels x (longest chord through the grid / step),
however little of the grid the tube fills (3-6 % of the pixels are vessel): a ray subset in
``project_labels`` would be the next speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from xraycardiac.geometry import CArmGeometry
from xraycardiac.projection import DRRConfig, project_labels
from xraycardiac.volume import Volume

if TYPE_CHECKING:
    from xraycardiac.anatomy.coronary_tree import CoronaryTree

DEFAULT_MASK_THRESHOLD_MM = 0.05
TREE_NAMES = ("left", "right")  # tree id 0 = LCA, 1 = RCA (CoronaryTree.tree)


class OutsideFieldOfViewError(ValueError):
    """The tree projects entirely outside the detector (catch it to skip a view pair)."""


@dataclass
class VesselProjection:
    """A coronary tree seen in one view. Images are (rows, cols) = (detector_rows, detector_cols).

    Attributes:
        thickness_mm: (rows, cols) float32 path length in mm of each pixel's ray through the tube
            (both trees added).
        thickness_per_tree_mm: (2, rows, cols) float32, the same for the left (0) and right (1) tree.
        mask: (rows, cols) bool, ``thickness_mm > threshold_mm``.
        label: (rows, cols) int8: 0 = left tree, 1 = right tree, -1 = no vessel; where both trees
            overlap, the one with the larger path length (the left one on a tie).
        geometry: the view.
        threshold_mm: the mask threshold used.
        voxel_mm: the voxel size of the rasterised tube.
    """

    thickness_mm: np.ndarray
    thickness_per_tree_mm: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    geometry: CArmGeometry
    threshold_mm: float = DEFAULT_MASK_THRESHOLD_MM
    voxel_mm: float = 0.25
    meta: dict = field(default_factory=dict)

    def projection_matrix(self) -> np.ndarray:
        """(3, 4) matrix mapping homogeneous RAS mm to pixels (u = column, v = row) of these images."""
        return self.geometry.projection_matrix()

    def in_field(self, uv: np.ndarray) -> np.ndarray:
        """(N,) bool: which (N, 2) pixel positions (u, v) lie on the detector (pixel edges included)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        rows, cols = self.mask.shape
        return (uv[:, 0] >= -0.5) & (uv[:, 0] <= cols - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= rows - 0.5)


def _selected(tree: CoronaryTree, trees: tuple[int, ...]) -> np.ndarray:
    """(N,) bool: the tree points that belong to the selected trees (ids 0 = left, 1 = right)."""
    if not trees or not set(trees) <= {0, 1} or len(set(trees)) != len(trees):
        raise ValueError(f"trees: expected distinct tree ids from (0 = left, 1 = right), got {trees!r}")
    sel = np.isin(np.asarray(tree.tree), trees)
    if not sel.any():
        raise ValueError(
            f"trees: the tree has no point of tree(s) {[TREE_NAMES[t] for t in trees]} "
            f"(it has {sorted(TREE_NAMES[t] for t in np.unique(tree.tree))})"
        )
    return sel


def tube_grid(
    tree: CoronaryTree,
    voxel_mm: float,
    margin_voxels: int = 2,
    trees: tuple[int, ...] = (0, 1),
    directions_ras: np.ndarray | None = None,
) -> Volume:
    """Empty (uint8 zeros) grid of ``voxel_mm`` covering the tube of ``trees`` plus a margin.

    Args:
        tree: the coronary tree (RAS mm).
        voxel_mm: isotropic voxel size in mm.
        margin_voxels: empty voxels around the tube.
        trees: the tree ids (0 = left, 1 = right) whose points the grid covers.
        directions_ras: (3, 3) orthonormal columns = the grid's I, J, K axes in RAS; identity if None.

    Returns:
        A Volume whose voxel centres lie on the lattice ``directions_ras @ (n * voxel_mm)``, n
        integer, so a tree translated by lattice steps is rasterised the same way.
    """
    sel = _selected(tree, trees)
    d = np.eye(3) if directions_ras is None else np.asarray(directions_ras, dtype=np.float64)
    pts = np.asarray(tree.points, dtype=np.float64)[sel] @ d  # coordinates along the grid axes
    r = np.asarray(tree.radii, dtype=np.float64)[sel, None]
    pad = margin_voxels * voxel_mm
    lo = np.floor(((pts - r).min(axis=0) - pad) / voxel_mm) * voxel_mm
    hi = (pts + r).max(axis=0) + pad
    n_ijk = np.ceil((hi - lo) / voxel_mm).astype(int) + 1
    arr = np.zeros((n_ijk[2], n_ijk[1], n_ijk[0]), dtype=np.uint8)
    return Volume.from_geometry(arr, (voxel_mm,) * 3, tuple(d @ lo), d, meta={"kind": "coronary tube grid"})


def beam_grid_axes(geometry: CArmGeometry) -> np.ndarray:
    """(3, 3) orthonormal columns in RAS: the detector u axis, v axis and the beam direction.

    The tube is rasterised on these axes for the view. The ray marcher samples every ray over
    the longest chord through the grid's box, and a box whose depth runs along the beam keeps
    the rays short (the RAS-aligned box of an oblique view has chords up to ~1.7x longer). With
    rays (nearly) parallel to a grid axis, a voxel's shadow is its face, so the silhouette is
    unbiased; a grid tilted off the beam widens every vessel by about a quarter voxel per side
    (+0.5 to +0.8 px in the cylinder test), at the price of path lengths counted in whole voxel
    columns (per-pixel rms 0.22 mm instead of 0.18 mm against a 0.1 mm reference, unbiased).
    """
    u, v = geometry.detector_axes
    return np.stack([u, v, geometry.beam_direction], axis=1)


def _check_in_field(tree: CoronaryTree, geometry: CArmGeometry, sel: np.ndarray) -> None:
    """Raise :class:`OutsideFieldOfViewError` if no part of the selected tube can reach the detector."""
    pts = np.asarray(tree.points, dtype=np.float64)[sel]
    depth = (pts - geometry.source_position) @ geometry.beam_direction  # mm along the beam
    front = depth > 0  # points behind the source do not project
    uv = geometry.project(pts)
    scale = geometry.sid_mm / np.maximum(depth, 1e-9) / min(geometry.pixel_spacing_mm)  # px per mm
    m = np.asarray(tree.radii)[sel] * scale + 1.0
    ok = (
        front
        & (uv[:, 0] >= -0.5 - m)
        & (uv[:, 0] <= geometry.detector_cols - 0.5 + m)
        & (uv[:, 1] >= -0.5 - m)
        & (uv[:, 1] <= geometry.detector_rows - 0.5 + m)
    )
    if not ok.any():
        centre = pts.mean(axis=0).round(1).tolist()
        raise OutsideFieldOfViewError(
            f"tree outside the field of view of view {geometry.name or ''!r} (primary "
            f"{geometry.primary_angle_deg:.1f}, secondary {geometry.secondary_angle_deg:.1f} deg, isocentre "
            f"{list(np.round(geometry.isocenter, 1))} RAS mm): none of its {len(pts)} centreline points "
            f"(mean {centre} RAS mm) projects onto the {geometry.detector_rows} x {geometry.detector_cols} "
            "detector; centre the C-arm on the tree"
        )


def project_vessels(
    tree: CoronaryTree,
    geometry: CArmGeometry,
    voxel_mm: float = 0.25,
    threshold_mm: float = DEFAULT_MASK_THRESHOLD_MM,
    step_mm: float | None = None,
    trees: tuple[int, ...] = (0, 1),
    device: str = "cpu",
) -> VesselProjection:
    """Thickness map, mask and tree labels of a coronary tree's 3D tube in one view.

    Args:
        tree: the coronary tree (RAS mm).
        geometry: the view.
        voxel_mm: voxel size (mm) of the rasterised tube; the mask edge is exact to about half of
            it (times the magnification) and vessels thinner than about one voxel get gaps.
        threshold_mm: a pixel is vessel when its path length exceeds this (mm). The default,
            0.05 mm, is below one ray sample, so the mask is "the ray crosses the
            rasterised tube"; raise it to drop grazing rays (0.05 mm of diluted iodine changes the
            transmitted intensity by well under 1 %, i.e. is invisible anyway).
        step_mm: ray sample spacing (mm); default ``voxel_mm`` (one nearest-voxel sample per voxel
            crossed: half the cost of half-voxel steps for the same mask, see the module docstring).
        trees: the opacified trees (0 = left, 1 = right): a selective injection fills one
            coronary tree, so a left view pair projects ``(0,)`` only; the other tree's images
            stay 0. Projecting one tree is also faster (a smaller grid, shorter rays).
        device: torch device of the ray marcher.

    Returns:
        A :class:`VesselProjection` of (detector_rows, detector_cols) images.

    Raises:
        OutsideFieldOfViewError (a ValueError): no part of the tree projects onto the detector.
        ValueError: ``voxel_mm``, ``threshold_mm`` or ``trees`` out of range.
    """
    if not (np.isfinite(voxel_mm) and 0.0 < voxel_mm <= 5.0):
        raise ValueError(f"voxel_mm: expected a voxel size in (0, 5] mm, got {voxel_mm}")
    if not (np.isfinite(threshold_mm) and threshold_mm >= 0.0):
        raise ValueError(f"threshold_mm: expected a path length >= 0 mm, got {threshold_mm}")
    trees = tuple(int(t) for t in trees)
    sel = _selected(tree, trees)
    _check_in_field(tree, geometry, sel)
    # voxelize labels both trees (1 = left, 2 = right; the right wins where they touch); the labels
    # of trees not selected count as background in project_labels
    grid = tube_grid(tree, voxel_mm, trees=trees, directions_ras=beam_grid_axes(geometry))
    labels = tree.voxelize(grid, label_left=1, label_right=2)
    ids = sorted(t + 1 for t in trees)
    config = DRRConfig(step_mm=voxel_mm if step_mm is None else step_mm)
    lengths, _ = project_labels(labels, geometry, label_ids=ids, config=config, device=device)
    per_tree = np.zeros((2, geometry.detector_rows, geometry.detector_cols), dtype=np.float32)
    per_tree[[i - 1 for i in ids]] = lengths
    total = per_tree.sum(axis=0)
    mask = total > threshold_mm
    if not mask.any():
        raise OutsideFieldOfViewError(
            f"tree outside the field of view of view {geometry.name or ''!r}: its tube covers no pixel of "
            f"the {geometry.detector_rows} x {geometry.detector_cols} detector (threshold {threshold_mm} mm)"
        )
    label = np.where(mask, np.argmax(per_tree, axis=0), -1).astype(np.int8)
    return VesselProjection(
        thickness_mm=total,
        thickness_per_tree_mm=per_tree,
        mask=mask,
        label=label,
        geometry=geometry,
        threshold_mm=float(threshold_mm),
        voxel_mm=float(voxel_mm),
        meta={
            "trees": [TREE_NAMES[t] for t in trees],
            "grid_shape_kji": list(labels.array.shape),
        },
    )
