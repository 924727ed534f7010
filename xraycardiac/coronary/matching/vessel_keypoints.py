"""A non-learned vessel keypoint detector and a patch-descriptor matcher (the issue's classical vessel baseline).

Detector (:func:`detect_vessel_keypoints`), for a (rows, cols) angiogram in [0, 1] with dark vessels:

1. **Vesselness**: Frangi's multi-scale Hessian filter (``skimage.filters.frangi``, ``black_ridges``)
   at ``sigmas_px`` (default 1, 2, 3, 4 px at 256 px, scaled with the image's larger side), divided
   by its maximum so that thresholds are image-independent. With ``log_intensity`` (default) the
   filter sees ``log(image)``: an X-ray image is Beer-Lambert, a vessel *multiplies* the background,
   so in log space its contrast does not depend on how bright the background behind it is.
2. **Segmentation**: hysteresis threshold. The high threshold is the ``percentile``-th percentile
   of the vesselness (``threshold="percentile"``, default 95: vessels cover ~3-5 % of a synthetic
   256 px view) or Otsu's threshold (``threshold="otsu"``); the low one is ``low_ratio`` x the
   high one. Hysteresis keeps weak pixels connected to strong ones, which bridges the dip of
   vesselness at bifurcations (the Hessian turns blob-like there). 8-connected components smaller
   than ``min_object_px`` pixels are dropped. On 8 synthetic 256 px views (seed 11) the default
   skeleton passes within 3 px of 76 % of the GT keypoints; Otsu on linear intensity, 62 %. Most
   detections still lie on the background's ridges (ribs, table): 23 % of them are on a vessel.
3. **Skeleton**: ``skimage.morphology.skeletonize``, then spurs shorter than ``prune_px`` (branches
   from a junction to a free end) are cut, up to three rounds.
4. **Keypoints**, in the kinds of the ground truth (:data:`xraycardiac.coronary.synth.correspondences.KINDS`):
   *bifurcations*: skeleton pixels with >= 3 of 8 neighbours, clustered within ``cluster_px``;
   a cluster counts when >= 3 branches leave it (staircase corners of a skeleton have 3
   neighbours but join only 2 branches); its centroid is the keypoint. *Endpoints*: skeleton
   pixels with 1 neighbour. *Centreline samples*: along each branch (skeleton minus junction
   clusters), every ``spacing_px`` of arc length (8-neighbour steps of 1 or sqrt 2 px) from the
   branch's end, stopping ``spacing_px / 2`` short of the other end.

Descriptor and matcher (:func:`describe_keypoints`, :func:`match_vessel_keypoints`): a
``(2 r + 1)^2`` patch of the image (Gaussian-smoothed with sigma 1 px, sampled bilinearly at the
keypoint, r = ``patch_radius_px``), zero-mean and unit-norm, so the dot product of two descriptors
is their normalised cross-correlation. Matches are mutual nearest neighbours with NCC >=
``min_similarity``; then the geometric filter of :mod:`xraycardiac.coronary.matching.baselines` ("ransac",
"epipolar" with the known geometry, or "none"). The patch is not rotation-invariant: C-arm views
keep the detector's up roughly up, and the vessel's own direction is what the patch describes.

Pixels are (u = column, v = row), pixel centres at integers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import scipy.ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from xraycardiac.coronary.matching.baselines import (
    MatcherConfig,
    MatchResult,
    check_projections,
    filter_matches,
)
from xraycardiac.geometry.skeleton_graph import PixelGraph, pixel_graph

__all__ = [
    "THRESHOLDS",
    "VesselKeypointConfig",
    "VesselKeypoints",
    "describe_keypoints",
    "detect_vessel_keypoints",
    "match_vessel_keypoints",
    "mutual_nearest_neighbours",
    "probability_keypoints",
    "ring_features",
]

THRESHOLDS = ("percentile", "otsu")
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class VesselKeypointConfig:
    """Settings of the vessel keypoint detector and its descriptor (module docstring for each step).

    Attributes:
        sigmas_px: Frangi scales in pixels; None = (1, 2, 3, 4) x max(rows, cols) / 256.
        log_intensity: run Frangi on log(image) (contrast independent of the background).
        threshold: "percentile" or "otsu": how the high hysteresis threshold is chosen.
        percentile: the percentile (0-100) of the vesselness used with ``threshold="percentile"``.
        low_ratio: low hysteresis threshold / high one, in (0, 1].
        min_object_px: smallest 8-connected vessel component kept, pixels (area).
        prune_px: spurs (junction to free end) shorter than this are cut, pixels of arc length.
        cluster_px: junction pixels closer than this form one bifurcation, pixels.
        spacing_px: arc length between centreline samples, pixels.
        patch_radius_px: descriptor patch radius r (patch (2 r + 1)^2 pixels).
        min_similarity: smallest NCC of a mutual-nearest-neighbour match, in [-1, 1].
    """

    sigmas_px: tuple[float, ...] | None = None
    log_intensity: bool = True
    threshold: str = "percentile"
    percentile: float = 95.0
    low_ratio: float = 0.5
    min_object_px: int = 30
    prune_px: float = 6.0
    cluster_px: float = 3.0
    spacing_px: float = 8.0
    patch_radius_px: int = 8
    min_similarity: float = 0.5

    def __post_init__(self) -> None:
        if self.sigmas_px is not None:
            s = tuple(float(v) for v in self.sigmas_px)
            if not s or not all(np.isfinite(v) and v > 0 for v in s):
                raise ValueError(
                    f"VesselKeypointConfig.sigmas_px: expected scales > 0 pixels, got {self.sigmas_px!r}"
                )
            object.__setattr__(self, "sigmas_px", s)
        if self.threshold not in THRESHOLDS:
            raise ValueError(
                f"VesselKeypointConfig.threshold: expected one of {THRESHOLDS}, got {self.threshold!r}"
            )
        if not 0.0 < self.percentile < 100.0:
            raise ValueError(
                f"VesselKeypointConfig.percentile: expected a value in (0, 100), got {self.percentile!r}"
            )
        if not 0.0 < self.low_ratio <= 1.0:
            raise ValueError(
                f"VesselKeypointConfig.low_ratio: expected a value in (0, 1], got {self.low_ratio!r}"
            )
        for name in ("prune_px", "cluster_px", "spacing_px"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"VesselKeypointConfig.{name}: expected a distance > 0 pixels, got {v!r}")
        for name in ("min_object_px", "patch_radius_px"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"VesselKeypointConfig.{name}: expected an integer >= 1, got {v!r}")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(
                f"VesselKeypointConfig.min_similarity: expected an NCC in [-1, 1], got {self.min_similarity!r}"
            )

    def for_shape(self, shape: tuple[int, int]) -> VesselKeypointConfig:
        """These settings, tuned at 256 px, for an image of ``shape`` (rows, cols): the distances scaled
        by max(rows, cols) / 256, ``min_object_px`` (an area) by its square."""
        s = max(shape) / 256.0
        return replace(
            self, prune_px=self.prune_px * s, cluster_px=self.cluster_px * s, spacing_px=self.spacing_px * s,
            min_object_px=max(1, round(self.min_object_px * s * s)),
        )  # fmt: skip

    def sigmas_for(self, shape: tuple[int, int]) -> tuple[float, ...]:
        """Frangi scales in pixels for an image of ``shape`` (rows, cols)."""
        if self.sigmas_px is not None:
            return self.sigmas_px
        s = max(shape) / 256.0
        return tuple(max(0.75, k * s) for k in (1.0, 2.0, 3.0, 4.0))


@dataclass
class VesselKeypoints:
    """Keypoints found on the vessels of one image.

    Attributes:
        keypoints: (N, 2) float64 pixels (u = column, v = row).
        kind: (N,) str, "bifurcation", "endpoint", "centreline" (or "curvature": probability keypoints).
        vesselness: (rows, cols) float64 Frangi vesselness scaled to max 1 (or the vessel probability).
        mask: (rows, cols) bool vessel segmentation.
        skeleton: (rows, cols) bool pruned skeleton.
        degree: (N,) int64 branches leaving each keypoint (:func:`ring_features`).
        directions: (N, 4) float64 their directions, radians (NaN where fewer than four).
    """

    keypoints: np.ndarray
    kind: np.ndarray
    vesselness: np.ndarray
    mask: np.ndarray
    skeleton: np.ndarray
    degree: np.ndarray | None = None
    directions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keypoints)


def _image(image: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 8:
        raise ValueError(
            f"{name}: expected a (rows, cols) grey image of at least 8 x 8 pixels, got shape {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def _segment(vesselness: np.ndarray, config: VesselKeypointConfig) -> np.ndarray:
    """Hysteresis-thresholded vessel mask without components smaller than ``min_object_px``."""
    from skimage.filters import apply_hysteresis_threshold, threshold_otsu

    if config.threshold == "otsu":
        high = float(threshold_otsu(vesselness))
    else:
        high = float(np.percentile(vesselness, config.percentile))
    if not high > 0:
        return np.zeros(vesselness.shape, dtype=bool)
    mask = apply_hysteresis_threshold(vesselness, config.low_ratio * high, high)
    labels, _ = ndi.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return sizes[labels] >= config.min_object_px


def _split(
    skeleton: np.ndarray, px: PixelGraph, cluster_px: float
) -> tuple[np.ndarray, int, np.ndarray, int]:
    """Junction clusters and branches of a skeleton (``px``: its pixel graph): (cluster labels, count,
    branch labels, count), 8-connected."""
    junction = px.degree_image(skeleton.shape) >= 3
    # junction pixels within cluster_px of each other touch once each is dilated by cluster_px / 2
    r = max(1, int(np.ceil(cluster_px / 2)))
    grown = ndi.binary_dilation(junction, structure=_EIGHT, iterations=r)
    clusters, n_clusters = ndi.label(grown, structure=_EIGHT)
    clusters = np.where(junction, clusters, 0)
    branches, n_branches = ndi.label(skeleton & ~junction, structure=_EIGHT)
    return clusters, n_clusters, branches, n_branches


def _touching(px: PixelGraph, clusters: np.ndarray, branches: np.ndarray, n_branches: int) -> list[set[int]]:
    """For each branch label 1..n, the junction cluster labels 8-adjacent to it."""
    out: list[set[int]] = [set() for _ in range(n_branches + 1)]
    at = tuple(px.coords.T)
    branch_of, cluster_of = branches[at], clusters[at]
    for p, q in (px.pairs.T, px.pairs.T[::-1]):
        ok = (branch_of[p] > 0) & (cluster_of[q] > 0)
        for b, c in zip(branch_of[p][ok], cluster_of[q][ok], strict=True):
            out[b].add(int(c))
    return out


def _prune(skeleton: np.ndarray, config: VesselKeypointConfig, rounds: int = 3) -> np.ndarray:
    """Cut spurs: branches with a free end that touch a junction and are shorter than ``prune_px``."""
    sk = skeleton.copy()
    for _ in range(rounds):
        px = pixel_graph(sk)
        clusters, _, branches, n_branches = _split(sk, px, config.cluster_px)
        if n_branches == 0 or not clusters.any():
            break
        touch = _touching(px, clusters, branches, n_branches)
        ends = np.bincount(
            branches[(px.degree_image(sk.shape) == 1) & (branches > 0)], minlength=n_branches + 1
        )
        # pixel count: a lower bound on the arc length
        length = np.bincount(branches.ravel(), minlength=n_branches + 1)
        spur = np.zeros(n_branches + 1, dtype=bool)
        spur[1:] = (ends[1:] > 0) & (length[1:] < config.prune_px) & np.array([bool(t) for t in touch[1:]])
        if not spur.any():
            break
        sk &= ~spur[branches]
    from skimage.morphology import skeletonize

    return skeletonize(sk)  # re-thin where cutting left a corner


def _centreline_samples(branches: np.ndarray, spacing_px: float) -> np.ndarray:
    """(S, 2) (row, col) pixels every ``spacing_px`` of arc length along each labelled branch."""
    mask = branches > 0
    if not mask.any():
        return np.zeros((0, 2), dtype=np.int64)
    px = pixel_graph(mask)
    rc, degree = px.coords, px.degree
    lengths = np.array([float(np.hypot(*off)) for off in px.offsets])  # 8-neighbour steps, pixels
    graph = coo_matrix((lengths[px.offset], (px.pairs[:, 0], px.pairs[:, 1])), shape=(len(rc), len(rc)))
    label = branches[rc[:, 0], rc[:, 1]]
    starts = []
    for b in np.unique(label):
        members = np.flatnonzero(label == b)
        ends = members[degree[members] <= 1]
        starts.append(ends[0] if len(ends) else members[0])  # a closed loop starts anywhere
    dist = dijkstra(graph, directed=False, indices=np.asarray(starts), min_only=True)
    out = []
    for b in np.unique(label):
        members = np.flatnonzero(label == b)
        d = dist[members]
        length = float(d.max())
        for target in np.arange(spacing_px, length - 0.5 * spacing_px + 1e-9, spacing_px):
            out.append(rc[members[np.argmin(np.abs(d - target))]])
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def detect_vessel_keypoints(image: np.ndarray, config: VesselKeypointConfig | None = None) -> VesselKeypoints:
    """Bifurcations, endpoints and centreline samples on the vessels of one angiogram.

    Args:
        image: (rows, cols) float image in [0, 1], vessels dark.
        config: :class:`VesselKeypointConfig` (None = defaults, tuned at 256 px).

    Returns:
        :class:`VesselKeypoints`: keypoints (N, 2) in pixels (u = column, v = row), bifurcations
        first, then endpoints, then centreline samples, with their kinds and the intermediate maps.
    """
    from skimage.filters import frangi

    config = config or VesselKeypointConfig()
    img = _image(image, "image")
    if config.log_intensity:
        img = np.log(np.clip(img, 1.0 / 255.0, None))  # the 8-bit floor keeps log finite
    vessel = frangi(img, sigmas=config.sigmas_for(img.shape), black_ridges=True)
    vessel = np.nan_to_num(vessel, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(vessel.max())
    vessel = vessel / top if top > 0 else vessel
    return _tree_keypoints(vessel, _segment(vessel, config), config)


def probability_keypoints(
    probability: np.ndarray, threshold: float = 0.5, config: VesselKeypointConfig | None = None
) -> VesselKeypoints:
    """Keypoints on the skeleton of a vessel probability map (the segmentation network's output).

    The same tree keypoints as :func:`detect_vessel_keypoints` (bifurcations, endpoints, centreline
    samples every ``spacing_px``) plus **curvature points** (skeleton pixels where the centreline turns
    by more than ``curvature_deg`` over ``ring_px``, at least ``spacing_px / 2`` from every other
    keypoint), found on the thresholded probability instead of Frangi's vesselness of the raw
    intensity: the network has seen many looks, so the keypoints stay on vessels where the
    background's ridges would fool Frangi. The mask is a hysteresis threshold (high = ``threshold``,
    low = ``config.low_ratio`` x it) without components smaller than ``config.min_object_px``; skeleton
    pieces shorter than 3 ``spacing_px`` (the speckle of a noisy map) are dropped.

    Args:
        probability: (rows, cols) vessel probability in [0, 1].
        threshold: the high hysteresis threshold, in (0, 1).
        config: skeleton and sampling settings (:class:`VesselKeypointConfig`; the Frangi and
            percentile fields are not used); None = the defaults for the map's size
            (:meth:`VesselKeypointConfig.for_shape`).

    Returns:
        :class:`VesselKeypoints` (``vesselness`` = the probability), with ``degree`` and
        ``directions`` (:func:`ring_features`).

    Raises:
        ValueError: a probability map outside [0, 1] or not 2D, or a threshold outside (0, 1).
    """
    prob = _image(probability, "probability")
    config = config or VesselKeypointConfig().for_shape(prob.shape)
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError(f"probability: expected values in [0, 1], got [{prob.min():.3g}, {prob.max():.3g}]")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: expected a probability in (0, 1), got {threshold!r}")
    from skimage.filters import apply_hysteresis_threshold

    mask = apply_hysteresis_threshold(prob, config.low_ratio * threshold, threshold)
    labels, _ = ndi.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return _tree_keypoints(prob, sizes[labels] >= config.min_object_px, config, curvature=True)


def ring_features(
    skeleton: np.ndarray, keypoints: np.ndarray, ring_px: float = 6.0, n_angles: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Local tree structure at each keypoint: how many branches leave it and in which directions.

    The skeleton (dilated by one pixel, so that a diagonal branch cannot slip between two samples)
    is sampled on a circle of radius ``ring_px`` about the keypoint; each run of consecutive
    vessel samples is one branch leaving it, its mean angle the branch's direction.

    Args:
        skeleton: (rows, cols) bool centreline skeleton.
        keypoints: (N, 2) pixels (u, v).
        ring_px: circle radius, pixels.
        n_angles: samples on the circle.

    Returns:
        ``degree`` (N,) int64: branches crossing the circle (1 endpoint, 2 centreline, >= 3
        bifurcation, 0 isolated); ``directions`` (N, 4) float64: the angles (radians, image axes:
        0 = +u, pi / 2 = +v) of up to four branches, largest runs first, NaN where there are fewer.
    """
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    grown = ndi.binary_dilation(skeleton, structure=_EIGHT)
    angles = np.linspace(0.0, 2.0 * np.pi, n_angles, endpoint=False)
    cols = np.round(kp[:, 0, None] + ring_px * np.cos(angles)[None]).astype(int)
    rows = np.round(kp[:, 1, None] + ring_px * np.sin(angles)[None]).astype(int)
    inside = (rows >= 0) & (rows < skeleton.shape[0]) & (cols >= 0) & (cols < skeleton.shape[1])
    on = np.zeros(rows.shape, dtype=bool)
    on[inside] = grown[rows[inside], cols[inside]]
    # roll each ring so that it starts on a background sample: no run wraps around (full rings: none)
    start = np.argmin(on, axis=1)
    idx = (np.arange(n_angles)[None] + start[:, None]) % n_angles
    r = np.take_along_axis(on, idx, axis=1) & ~on.all(axis=1, keepdims=True)
    rising = r & ~np.concatenate([np.zeros((len(kp), 1), dtype=bool), r[:, :-1]], axis=1)
    run = np.cumsum(rising, axis=1) * r  # 1, 2, ... per run, 0 off the vessel
    degree = rising.sum(axis=1).astype(np.int64)
    directions = np.full((len(kp), 4), np.nan)
    if len(kp) == 0 or degree.max() == 0:
        return degree, directions
    k = np.arange(1, degree.max() + 1)
    member = run[:, None, :] == k[None, :, None]  # (N, K, n_angles)
    a = angles[idx][:, None, :]
    length = member.sum(axis=2)
    angle = np.arctan2((np.sin(a) * member).sum(axis=2), (np.cos(a) * member).sum(axis=2))
    order = np.argsort(-length, axis=1, kind="stable")[:, :4]  # largest runs first
    picked = np.take_along_axis(angle, order, axis=1)
    valid = np.take_along_axis(length, order, axis=1) > 0
    directions[:, : picked.shape[1]] = np.where(valid, picked, np.nan)
    return degree, directions


def _curvature_points(
    skeleton: np.ndarray, taken: np.ndarray, config: VesselKeypointConfig, turn_deg: float = 35.0
) -> np.ndarray:
    """(C, 2) (row, col) skeleton pixels where the centreline turns by more than ``turn_deg``, kept
    greedily (sharpest first) at least ``spacing_px / 2`` from ``taken`` and from each other."""
    rc = np.argwhere(skeleton)
    if len(rc) == 0:
        return np.zeros((0, 2))
    ring = max(3.0, config.spacing_px * 0.75)
    degree, directions = ring_features(skeleton, rc[:, ::-1].astype(np.float64), ring)
    two = degree == 2
    d = np.abs(np.angle(np.exp(1j * (directions[:, 0] - directions[:, 1]))))  # angle between branches
    turn = np.where(two, np.pi - np.nan_to_num(d, nan=np.pi), 0.0)
    order = np.argsort(-turn)
    order = order[turn[order] > np.deg2rad(turn_deg)]
    # greedy suppression, sharpest first: a kept point blocks a disc of spacing_px / 2 around it
    near = config.spacing_px / 2
    r = int(np.ceil(near))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = np.hypot(yy, xx) < near
    blocked = np.zeros((skeleton.shape[0] + 2 * r, skeleton.shape[1] + 2 * r), dtype=bool)
    for p in np.round(np.asarray(taken, dtype=np.float64).reshape(-1, 2)).astype(int):
        blocked[p[0] : p[0] + 2 * r + 1, p[1] : p[1] + 2 * r + 1] |= disc
    keep = []
    for i in order:
        y, x = rc[i]
        if blocked[y + r, x + r]:
            continue
        keep.append(rc[i])
        blocked[y : y + 2 * r + 1, x : x + 2 * r + 1] |= disc
    return np.asarray(keep, dtype=np.float64).reshape(-1, 2)


def _tree_keypoints(
    vessel: np.ndarray, mask: np.ndarray, config: VesselKeypointConfig, curvature: bool = False
) -> VesselKeypoints:
    """Skeleton keypoints of ``mask`` (``vessel``: the map it came from, kept in the result)."""
    from skimage.morphology import skeletonize

    skeleton = _prune(skeletonize(mask), config)
    if curvature:  # a probability map's speckle: skeleton pieces shorter than 3 sample spacings
        labels, _ = ndi.label(skeleton, structure=_EIGHT)
        length = np.bincount(labels.ravel())
        length[0] = 0
        skeleton = length[labels] >= 3 * config.spacing_px
    px = pixel_graph(skeleton)
    clusters, n_clusters, branches, n_branches = _split(skeleton, px, config.cluster_px)
    touch = _touching(px, clusters, branches, n_branches)
    degree = np.zeros(n_clusters + 1, dtype=np.int64)
    for t in touch[1:]:
        for c in t:
            degree[c] += 1
    real = np.flatnonzero(degree >= 3)
    real = real[real > 0]
    bif_rc = np.asarray(ndi.center_of_mass(clusters > 0, clusters, real), dtype=np.float64).reshape(-1, 2)
    # a junction cluster joining fewer than 3 branches is a skeleton corner: its pixels are centreline
    fake = np.isin(clusters, np.flatnonzero(degree < 3)) & (clusters > 0)
    branches, _ = ndi.label((branches > 0) | fake, structure=_EIGHT)
    end_rc = np.argwhere(px.degree_image(skeleton.shape) == 1).astype(np.float64)
    line_rc = _centreline_samples(branches, config.spacing_px).astype(np.float64)
    parts = [("bifurcation", bif_rc), ("endpoint", end_rc)]
    if curvature:
        taken = np.concatenate([bif_rc, end_rc]).reshape(-1, 2)
        parts.append(("curvature", _curvature_points(skeleton, taken, config)))
        taken = np.concatenate([taken, parts[-1][1]])
        if len(taken) and len(line_rc):  # a centreline sample on top of another keypoint adds nothing
            near = np.min(np.hypot(*(line_rc[:, None] - taken[None]).transpose(2, 0, 1)), axis=1)
            line_rc = line_rc[near >= config.spacing_px / 2]
    parts.append(("centreline", line_rc))
    rc = np.concatenate([p for _, p in parts]).reshape(-1, 2)
    kind = np.array([k for k, p in parts for _ in range(len(p))], dtype=str)
    uv = rc[:, ::-1].copy()  # (row, col) -> (u, v)
    node_degree, directions = ring_features(skeleton, uv, max(3.0, config.spacing_px * 0.75))
    return VesselKeypoints(
        keypoints=uv, kind=kind, vesselness=vessel, mask=mask, skeleton=skeleton,
        degree=node_degree, directions=directions,
    )  # fmt: skip


def describe_keypoints(image: np.ndarray, keypoints: np.ndarray, patch_radius_px: int = 8) -> np.ndarray:
    """Normalised intensity patches: (N, (2 r + 1)^2) float64, zero-mean, unit L2 norm.

    Args:
        image: (rows, cols) float image.
        keypoints: (N, 2) pixels (u, v); patches reaching past the border repeat the edge pixels.
        patch_radius_px: r, the patch half-size in pixels.

    Returns:
        Descriptors whose dot products are normalised cross-correlations (a flat patch gives zeros).
    """
    img = ndi.gaussian_filter(_image(image, "image"), 1.0)
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    r = int(patch_radius_px)
    off = np.arange(-r, r + 1, dtype=np.float64)
    dv, du = np.meshgrid(off, off, indexing="ij")
    rows = kp[:, 1, None] + dv.ravel()[None]
    cols = kp[:, 0, None] + du.ravel()[None]
    patches = ndi.map_coordinates(img, [rows.ravel(), cols.ravel()], order=1, mode="nearest").reshape(
        len(kp), -1
    )
    patches -= patches.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(patches, axis=1, keepdims=True)
    return np.divide(patches, norm, out=np.zeros_like(patches), where=norm > 1e-12)


def mutual_nearest_neighbours(
    desc1: np.ndarray, desc2: np.ndarray, min_similarity: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours by dot-product similarity.

    Args:
        desc1: (N, D) descriptors of image 1; desc2: (K, D) of image 2.
        min_similarity: smallest similarity kept.

    Returns:
        ((M, 2) int64 index pairs (i, j), (M,) float64 similarities).
    """
    if len(desc1) == 0 or len(desc2) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    sim = desc1 @ desc2.T
    best12 = sim.argmax(axis=1)
    best21 = sim.argmax(axis=0)
    i = np.flatnonzero(best21[best12] == np.arange(len(desc1)))
    j = best12[i]
    s = sim[i, j]
    keep = s >= min_similarity
    return np.stack([i[keep], j[keep]], axis=1).astype(np.int64).reshape(-1, 2), s[keep]


def match_vessel_keypoints(
    image1: np.ndarray,
    image2: np.ndarray,
    projection_matrices: np.ndarray | None = None,
    config: MatcherConfig | None = None,
    vessel_config: VesselKeypointConfig | None = None,
) -> MatchResult:
    """Vessel keypoints + normalised-patch descriptors + mutual nearest neighbours, then ``config.filter``.

    Args:
        image1, image2: (rows, cols) float images in [0, 1], vessels dark.
        projection_matrices: (2, 3, 4) RAS mm -> pixel matrices; needed by the "epipolar" filter only.
        config: :class:`MatcherConfig`; only its filter settings are used (the mutual-nearest-
            neighbour test replaces the ratio test; every detected keypoint is kept).
        vessel_config: detector and descriptor settings.

    Returns:
        :class:`~xraycardiac.coronary.matching.baselines.MatchResult`; scores are (NCC + 1) / 2, and
        ``info`` holds ``kind1``/``kind2``, the keypoint kinds.
    """
    config = config or MatcherConfig()
    vc = vessel_config or VesselKeypointConfig()
    if config.filter == "epipolar":
        check_projections(projection_matrices)  # fail before the work
    t0 = time.perf_counter()
    det1 = detect_vessel_keypoints(image1, vc)
    det2 = detect_vessel_keypoints(image2, vc)
    d1 = describe_keypoints(image1, det1.keypoints, vc.patch_radius_px)
    d2 = describe_keypoints(image2, det2.keypoints, vc.patch_radius_px)
    pairs, sim = mutual_nearest_neighbours(d1, d2, vc.min_similarity)
    x1, x2 = det1.keypoints[pairs[:, 0]], det2.keypoints[pairs[:, 1]]
    scores = (sim + 1.0) / 2.0
    keep, info = filter_matches(x1, x2, scores, config, projection_matrices)
    seconds = time.perf_counter() - t0
    info.update(num_mnn_matches=len(pairs), kind1=det1.kind, kind2=det2.kind)
    return MatchResult(
        keypoints1=det1.keypoints,
        keypoints2=det2.keypoints,
        x1=x1[keep],
        x2=x2[keep],
        scores=scores[keep],
        seconds=seconds,
        method=f"vessel-nn+{config.filter}",
        info=info,
    )
