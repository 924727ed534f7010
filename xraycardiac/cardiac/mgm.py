"""Training-free deformable Mask Generation Module (MGM): new cardiac label maps from one template.

FCaS's MGM turns a template label map into many anatomically varied, topologically valid label
maps without training. The paper gives no recipe; ours is a smooth random diffeomorphism:

1. A stationary velocity field (SVF) v, in RAS mm on the template grid, is the sum of
   - a random field: white noise per RAS component, Gaussian-smoothed with ``smoothness_sigma_mm``
     and rescaled so that its largest magnitude is ``strength_mm``;
   - one scaling field per structure group (``scale_groups``, default LV (blood pool + myocardium),
     RV, LA, RA; with ``scale_other_structures`` every other structure present that is not a
     coronary tree is a group of its own: the undivided heart, the aorta, the pulmonary artery,
     the great veins, so that a template of any granularity varies):
     ``-ln(s) w(x) (x - c)`` with s drawn from ``scale_range``, c the group's
     centroid and w a weight that is 1 on the group and falls smoothly to 0 within
     ``scale_falloff_mm`` (a smoothstep of the distance to the group). Integrated, it scales the
     group by s about its centroid (exactly, where w = 1) and blends into the surroundings;
   - a global scaling field of the same form over all labelled structures together (scale drawn
     from ``global_scale_range``): the whole heart grows or shrinks as one;
   - if ``coronary_variation``, a finer random field (``coronary_sigma_mm``, largest magnitude
     ``coronary_strength_mm``) weighted the same way around the coronary trees: the vessels'
     course wiggles while the chambers barely move.
2. v is integrated by scaling and squaring (``integration_steps`` = N: u = v / 2^N, then N times
   u <- u + u o (id + u)) with ``monai.networks.blocks.DVF2DDF``, which gives a diffeomorphism
   for a smooth enough v (checked: a sample whose Jacobian determinant is <= 0 anywhere is rejected
   as ``folding``).
3. The template labels are resampled with ``monai.networks.blocks.Warp`` (border padding, so
   structures cut by the field of view stay attached to it). ``label_interpolation="nearest"``
   warps the label map itself with nearest neighbour; the default ``"linear"`` warps each label's
   indicator trilinearly, gives each voxel the most likely bulk label (arg-max) and paints the
   coronaries over them where their own indicator reaches ``coronary_threshold`` (0.4). At coarse
   demo spacing (2.5 mm, vessels 2 voxels wide, thin chamber walls) nearest neighbour often breaks
   a vessel or pinches a wall: on the default 64^3 phantom 20 samples needed 60 attempts (67 %
   rejected) with nearest, and 20-21 attempts (0-5 %, phantom seeds 0-2) with linear.
4. Each sample is checked: every label's (β0, β1, β2) (26/6 connectivity) must equal the template's
   (``topology_reference="template"``) or the label table's expectation (``"table"``; labels
   without one fall back to the template). Rejections are counted per reason: ``folding``,
   ``label_lost`` (a structure vanished, e.g. pushed out of the grid), ``coronary_disconnected``
   (a coronary tree in more than one piece) and ``topology`` (any other Betti change); the labels
   at fault are counted too (``MGMReport.rejected_labels``).

Displacement convention (the one ITK, MONAI and Slicer's resampling use): the DDF u lives on the
template's grid, which is also the target's, and the target label at position x is the template
label at x + u(x). So u maps each target point to its template point, and resampling the template
with it (``warp_image``, ``warp_labels``) brings the template into the target frame. Samples store
u as ``ddf_ras_mm``: (3, K, J, I) float32, the x, y, z RAS components in mm;
``ddf_ras_to_voxel`` gives MONAI's (3, K, J, I) voxel displacements (channels along K, J, I).

Defaults were tuned on the 64^3 x 2.5 mm phantom: a random field of 4 mm peak (mean displacement
~1 mm) at 16 mm smoothness, group scales 0.92-1.08 blended over 20 mm (a 12 mm blend squeezes the
epicardial coronaries radially and broke them in most samples at scale 1.15), coronary wiggle of
2 mm at 6 mm. The smallest Jacobian determinant stays ~0.45-0.5 (no folding).

Determinism: attempt n (over all requested samples) draws from ``numpy.random.default_rng([seed,
n])``; the same template, config and seed give the same samples. torch and MONAI are imported on
first use (MONAI's import takes ~5-10 s). A 64^3 attempt takes ~0.4-0.5 s on one CPU thread.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from xraycardiac.cardiac.labels import (
    CORONARY_LABELS,
    LABEL_TABLE,
    expected_betti,
    label_info,
    structure_betti,
)
from xraycardiac.jsonutil import is_number
from xraycardiac.volume import Volume

__all__ = [
    "REJECTION_REASONS",
    "MGMConfig",
    "MGMReport",
    "MGMSample",
    "ddf_ras_to_voxel",
    "ddf_voxel_to_ras",
    "generate_masks",
    "jacobian_determinant",
    "topology_violations",
    "warp_image",
    "warp_labels",
]

REJECTION_REASONS = ("folding", "label_lost", "coronary_disconnected", "topology")
"""Why a sample is rejected, in the order they are checked (a sample counts under its first)."""

_TOPOLOGY_REFERENCES = ("template", "table")
_LABEL_INTERPOLATIONS = ("linear", "nearest")


@dataclass(frozen=True)
class MGMConfig:
    """Deformation, scaling and checking settings of the Mask Generation Module.

    Attributes:
        strength_mm: largest magnitude of the random velocity field, mm (0 = none).
        smoothness_sigma_mm: Gaussian sigma of the random velocity field, mm (> 0).
        integration_steps: scaling-and-squaring steps N (the velocity is divided by 2^N), 1-12.
        scale_range: (lo, hi) range of the per-group scale factor (1, 1 = no scaling).
        scale_groups: label groups scaled together about their joint centroid.
        scale_other_structures: also scale each present structure outside ``scale_groups`` and
            ``coronary_labels`` (the undivided heart, the aorta, the great vessels) on its own.
        global_scale_range: (lo, hi) range of the scale of all structures together about their
            joint centroid (1, 1 = none).
        scale_falloff_mm: the scaling blends into the surroundings over this distance, mm (> 0).
        coronary_variation: add the local coronary field (see the module docstring).
        coronary_strength_mm: largest magnitude of the coronary field, mm.
        coronary_sigma_mm: Gaussian sigma of the coronary field, mm (> 0).
        coronary_falloff_mm: the coronary field fades out over this distance from the trees, mm.
        coronary_labels: the labels that must stay one connected component each (and the thin
            labels of ``"linear"`` interpolation).
        label_interpolation: ``"linear"`` (default: trilinear one-hot, arg-max for the bulk labels,
            coronaries kept where their own indicator >= ``coronary_threshold``) or ``"nearest"``
            (MONAI Warp nearest neighbour); see ``warp_labels``.
        coronary_threshold: indicator level for the coronaries under ``"linear"`` (0.05-0.95).
        topology_reference: ``"template"`` (Betti numbers of the template) or ``"table"`` (the
            label table's expectations).
        max_tries: attempts per requested sample before ``generate_masks`` stops (>= 1).
    """

    strength_mm: float = 4.0
    smoothness_sigma_mm: float = 16.0
    integration_steps: int = 7
    scale_range: tuple[float, float] = (0.92, 1.08)
    scale_groups: tuple[tuple[int, ...], ...] = ((1, 5), (2,), (3,), (4,))
    scale_other_structures: bool = True
    global_scale_range: tuple[float, float] = (0.95, 1.05)
    scale_falloff_mm: float = 20.0
    coronary_variation: bool = True
    coronary_strength_mm: float = 2.0
    coronary_sigma_mm: float = 6.0
    coronary_falloff_mm: float = 8.0
    coronary_labels: tuple[int, ...] = CORONARY_LABELS
    label_interpolation: str = "linear"
    coronary_threshold: float = 0.4
    topology_reference: str = "template"
    max_tries: int = 10

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> ValueError:
            return ValueError(f"MGMConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name, lo, hi in (
            ("strength_mm", 0.0, 100.0),
            ("coronary_strength_mm", 0.0, 50.0),
        ):
            if not (is_number(getattr(self, name)) and lo <= getattr(self, name) <= hi):
                raise fail(name, f"a number in [{lo}, {hi}] mm")
        for name in ("smoothness_sigma_mm", "scale_falloff_mm", "coronary_sigma_mm", "coronary_falloff_mm"):
            if not (is_number(getattr(self, name)) and 0.0 < getattr(self, name) <= 500.0):
                raise fail(name, "a number in (0, 500] mm")
        if not (isinstance(self.integration_steps, int) and 1 <= self.integration_steps <= 12):
            raise fail("integration_steps", "an integer in [1, 12]")
        for name in ("scale_range", "global_scale_range"):
            r = getattr(self, name)
            if not (
                isinstance(r, tuple)
                and len(r) == 2
                and all(is_number(v) for v in r)
                and 0.5 <= r[0] <= r[1] <= 2.0
            ):
                raise fail(name, "a pair (lo, hi) with 0.5 <= lo <= hi <= 2")
        if not isinstance(self.scale_other_structures, bool):
            raise fail("scale_other_structures", "True or False")
        known = {e.value for e in LABEL_TABLE}
        groups = self.scale_groups
        if not (
            isinstance(groups, tuple)
            and all(isinstance(g, tuple) and g and all(v in known for v in g) for g in groups)
        ):
            raise fail("scale_groups", f"a tuple of non-empty tuples of table labels {sorted(known)}")
        if not (isinstance(self.coronary_labels, tuple) and all(v in known for v in self.coronary_labels)):
            raise fail("coronary_labels", f"a tuple of table labels {sorted(known)}")
        if not isinstance(self.coronary_variation, bool):
            raise fail("coronary_variation", "True or False")
        if self.label_interpolation not in _LABEL_INTERPOLATIONS:
            raise fail("label_interpolation", f"one of {_LABEL_INTERPOLATIONS}")
        if not (is_number(self.coronary_threshold) and 0.05 <= self.coronary_threshold <= 0.95):
            raise fail("coronary_threshold", "a number in [0.05, 0.95]")
        if self.topology_reference not in _TOPOLOGY_REFERENCES:
            raise fail("topology_reference", f"one of {_TOPOLOGY_REFERENCES}")
        if not (isinstance(self.max_tries, int) and 1 <= self.max_tries <= 1000):
            raise fail("max_tries", "an integer in [1, 1000]")


@dataclass(eq=False)
class MGMSample:
    """One accepted deformed label map.

    Attributes:
        labels: the deformed label map, uint8 (K, J, I), on the template's grid.
        ddf_ras_mm: (3, K, J, I) float32 displacement (x, y, z RAS components, mm) on that grid:
            target label at x = template label at x + ddf(x).
        meta: seed, attempt, the drawn group scales, the config, the smallest Jacobian
            determinant and the sample's Betti numbers.
    """

    labels: Volume
    ddf_ras_mm: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def ddf_voxel(self) -> np.ndarray:
        """The DDF in MONAI's voxel convention, (3, K, J, I) float32 (see ``ddf_ras_to_voxel``)."""
        return ddf_ras_to_voxel(self.ddf_ras_mm, self.labels.ijk_to_ras)


@dataclass
class MGMReport:
    """What ``generate_masks`` did.

    Attributes:
        requested: samples asked for.
        accepted: samples returned.
        attempts: deformations drawn (accepted + rejected).
        rejected: count per reason of ``REJECTION_REASONS``.
        rejected_labels: count per label key (``"myo"``, ``"lca"``, ...) of the labels whose check
            failed (a sample can count several labels).
        reference_betti: label -> the (β0, β1, β2) samples were checked against.
        seconds: wall time.
    """

    requested: int
    accepted: int = 0
    attempts: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))
    rejected_labels: dict[str, int] = field(default_factory=dict)
    reference_betti: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rejection_rate(self) -> float:
        """Rejected / attempts (0 when nothing was attempted)."""
        return (self.attempts - self.accepted) / self.attempts if self.attempts else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        out = asdict(self)
        out["reference_betti"] = {str(k): list(v) for k, v in self.reference_betti.items()}
        out["rejection_rate"] = self.rejection_rate
        return out


# --------------------------------------------------------------------------------------------------
# Displacement fields: units, Jacobian, warping
# --------------------------------------------------------------------------------------------------


def _check_ddf(ddf: np.ndarray, shape_kji: tuple[int, ...], name: str) -> np.ndarray:
    d = np.asarray(ddf)
    if d.shape != (3, *shape_kji):
        raise ValueError(f"{name}: expected shape (3, {', '.join(map(str, shape_kji))}), got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name}: contains NaN or infinite displacements")
    return d


def ddf_ras_to_voxel(ddf_ras_mm: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """RAS mm displacements (3, K, J, I) -> MONAI voxel displacements (3, K, J, I) (channels dk, dj, di)."""
    inv = np.linalg.inv(np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3])
    d_ijk = np.einsum("ab,b...->a...", inv, np.asarray(ddf_ras_mm, dtype=np.float64))
    return d_ijk[::-1].astype(np.float32)


def ddf_voxel_to_ras(ddf_voxel: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Inverse of ``ddf_ras_to_voxel``: (3, K, J, I) channels (dk, dj, di) -> RAS mm (dx, dy, dz)."""
    a = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    return np.einsum("ab,b...->a...", a, np.asarray(ddf_voxel, dtype=np.float64)[::-1]).astype(np.float32)


def jacobian_determinant(ddf_ras_mm: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Jacobian determinant of x -> x + ddf(x), (K, J, I) float32 (central differences, one-sided at edges).

    > 0 everywhere means the map is locally invertible (no folding); the value is the local volume
    ratio target -> template (the same in voxel and RAS coordinates).
    """
    return _jacobian_voxel(ddf_ras_to_voxel(ddf_ras_mm, ijk_to_ras))


def _jacobian_voxel(ddf_voxel: np.ndarray) -> np.ndarray:
    """Jacobian determinant of a MONAI voxel DDF (3, K, J, I), float32 (K, J, I)."""
    u = np.asarray(ddf_voxel, dtype=np.float64)
    g = [np.gradient(u[c]) for c in range(3)]  # g[c][a] = d u_c / d x_a, axes (k, j, i)
    j = [[g[c][a] + (1.0 if a == c else 0.0) for a in range(3)] for c in range(3)]
    det = (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )
    return det.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _warp_module(mode: str, padding_mode: str) -> Any:
    """A cached ``monai.networks.blocks.Warp`` (its 'native grid_sample' warning silenced once)."""
    from monai.networks.blocks import Warp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*PyTorch native grid_sample.*")
        return Warp(mode=mode, padding_mode=padding_mode)


@functools.lru_cache(maxsize=4)
def _dvf2ddf_module(num_steps: int) -> Any:
    """A cached ``monai.networks.blocks.DVF2DDF`` (bilinear = trilinear in 3D, zero padding)."""
    from monai.networks.blocks import DVF2DDF

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*PyTorch native grid_sample.*")
        return DVF2DDF(num_steps=num_steps, mode="bilinear", padding_mode="zeros")


def _warp_array(array: np.ndarray, ddf_voxel: np.ndarray, mode: str) -> np.ndarray:
    import torch

    with torch.no_grad():
        img = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        ddf = torch.from_numpy(np.ascontiguousarray(ddf_voxel, dtype=np.float32))[None]
        return _warp_module(mode, "border")(img, ddf)[0, 0].numpy()


def warp_image(image: Volume, ddf_ras_mm: np.ndarray) -> Volume:
    """Resample an image with a DDF (trilinear, border padding): output(x) = image(x + ddf(x)).

    Args:
        image: (K, J, I) volume, e.g. the template CT in HU.
        ddf_ras_mm: (3, K, J, I) RAS mm displacement on the image's grid (``MGMSample.ddf_ras_mm``).

    Returns:
        float32 volume on the same grid (the template image brought into the sample's frame).
    """
    ddf = _check_ddf(ddf_ras_mm, image.array.shape, "warp_image: ddf_ras_mm")
    out = _warp_array(image.array, ddf_ras_to_voxel(ddf, image.ijk_to_ras), "bilinear")
    return Volume(out.astype(np.float32), image.ijk_to_ras.copy(), {**image.meta, "warped": True})


def _warp_label_array(
    labels: np.ndarray,
    ddf_voxel: np.ndarray,
    interpolation: str,
    thin_labels: tuple[int, ...],
    threshold: float,
) -> np.ndarray:
    """Resample a label array (see ``warp_labels``); ``ddf_voxel`` in MONAI's voxel convention."""
    if interpolation == "nearest":
        return np.rint(_warp_array(labels, ddf_voxel, "nearest")).astype(labels.dtype)
    import torch

    values = [int(v) for v in np.unique(labels) if v != 0]
    thin = [v for v in values if v in thin_labels]
    bulk = [v for v in values if v not in thin_labels]
    channels = [~np.isin(labels, bulk)] + [labels == v for v in bulk] + [labels == v for v in thin]
    onehot = np.stack(channels).astype(np.float32)
    with torch.no_grad():
        p = _warp_module("bilinear", "border")(
            torch.from_numpy(onehot)[None], torch.from_numpy(ddf_voxel)[None]
        )
    p = p[0].numpy()
    out = np.asarray([0, *bulk], dtype=labels.dtype)[p[: 1 + len(bulk)].argmax(axis=0)]
    if thin:
        q = p[1 + len(bulk) :]
        best = q.argmax(axis=0)
        keep = np.take_along_axis(q, best[None], axis=0)[0] >= threshold
        out[keep] = np.asarray(thin, dtype=labels.dtype)[best[keep]]
    return out


def warp_labels(
    labels: Volume,
    ddf_ras_mm: np.ndarray,
    interpolation: str = "linear",
    thin_labels: tuple[int, ...] = CORONARY_LABELS,
    thin_threshold: float = 0.4,
) -> Volume:
    """Resample a label map with a DDF: output(x) = labels(x + ddf(x)), border padding.

    Args:
        labels: (K, J, I) integer label map.
        ddf_ras_mm: (3, K, J, I) RAS mm displacement on its grid.
        interpolation: ``"nearest"`` (MONAI Warp, nearest neighbour) or ``"linear"``: every label's
            indicator is warped trilinearly; the bulk labels take the arg-max (with background = not
            any bulk label), then each thin label (vessels) is painted over them where its own
            interpolated indicator reaches ``thin_threshold``. Linear interpolation keeps thin
            walls and 1-2 voxel vessels connected far more often than nearest neighbour (see
            ``MGMConfig.label_interpolation``).
        thin_labels: the labels treated as thin structures by ``"linear"``.
        thin_threshold: indicator level (0-1) above which a thin label is kept.

    Returns:
        Label volume on the same grid and dtype.
    """
    if interpolation not in _LABEL_INTERPOLATIONS:
        raise ValueError(
            f"warp_labels: interpolation must be one of {_LABEL_INTERPOLATIONS}, got {interpolation!r}"
        )
    ddf = _check_ddf(ddf_ras_mm, labels.array.shape, "warp_labels: ddf_ras_mm")
    vox = ddf_ras_to_voxel(ddf, labels.ijk_to_ras)
    out = _warp_label_array(labels.array, vox, interpolation, tuple(thin_labels), float(thin_threshold))
    return Volume(out, labels.ijk_to_ras.copy(), dict(labels.meta))


# --------------------------------------------------------------------------------------------------
# Topology checks
# --------------------------------------------------------------------------------------------------


def topology_violations(
    label_map: np.ndarray,
    reference_betti: dict[int, tuple[int, int, int]],
    coronary_labels: tuple[int, ...] = CORONARY_LABELS,
) -> tuple[str | None, list[int]]:
    """Check a label map's per-label Betti numbers against a reference.

    Args:
        label_map: (K, J, I) integer labels.
        reference_betti: label -> expected (β0, β1, β2) (26/6 connectivity).
        coronary_labels: labels whose splitting is reported as ``coronary_disconnected``.

    Returns:
        (reason, labels): reason is None when every label matches, else the first of
        ``label_lost`` (an expected label is absent), ``coronary_disconnected`` (a coronary label has
        more components than expected), ``topology`` (any other difference); labels lists every
        label that differs.
    """
    found = structure_betti(label_map, reference_betti)
    bad = [v for v, b in reference_betti.items() if found[v] != tuple(b)]
    if not bad:
        return None, []
    if any(found[v][0] == 0 < reference_betti[v][0] for v in bad):
        return "label_lost", bad
    if any(v in coronary_labels and found[v][0] > reference_betti[v][0] for v in bad):
        return "coronary_disconnected", bad
    return "topology", bad


def _reference_betti(
    labels: np.ndarray, present: list[int], reference: str
) -> dict[int, tuple[int, int, int]]:
    measured = structure_betti(labels, present)
    if reference == "template":
        return measured
    return {v: expected_betti(v) or measured[v] for v in present}


# --------------------------------------------------------------------------------------------------
# Velocity fields
# --------------------------------------------------------------------------------------------------


def _ras_grid(volume: Volume) -> list[np.ndarray]:
    """RAS coordinates of the voxel centres as three broadcastable float32 arrays."""
    k, j, i = volume.array.shape
    a = volume.ijk_to_ras
    ii = np.arange(i, dtype=np.float32)[None, None, :]
    jj = np.arange(j, dtype=np.float32)[None, :, None]
    kk = np.arange(k, dtype=np.float32)[:, None, None]
    return [
        np.float32(a[c, 0]) * ii + np.float32(a[c, 1]) * jj + np.float32(a[c, 2]) * kk + np.float32(a[c, 3])
        for c in range(3)
    ]


def _random_field(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray, peak: float
) -> np.ndarray:
    """(3, K, J, I) smoothed white noise whose largest vector magnitude is ``peak`` (mm).

    The noise is drawn and smoothed on a grid coarser by f = max(1, floor(min sigma / 2)) voxels
    and brought back by trilinear interpolation: a Gaussian of sigma >= 2 coarse voxels is smooth
    at that scale, and the cost no longer grows with sigma (256^3 grids stay fast).
    """
    import torch

    if peak <= 0:
        return np.zeros((3, *shape), dtype=np.float32)
    f = max(1, int(float(np.min(sigma_vox)) // 2))
    coarse = tuple(int(math.ceil((n - 1) / f)) + 1 for n in shape)
    v = np.stack(
        [
            ndimage.gaussian_filter(
                rng.standard_normal(coarse).astype(np.float32), sigma_vox / f, mode="reflect"
            )
            for _ in range(3)
        ]
    )
    if f > 1:
        # Coarse node n sits at fine voxel n * f; crop to the fine grid after interpolating.
        full = tuple((c - 1) * f + 1 for c in coarse)
        with torch.no_grad():
            t = torch.nn.functional.interpolate(
                torch.from_numpy(v)[None], size=full, mode="trilinear", align_corners=True
            )
        v = t[0, :, : shape[0], : shape[1], : shape[2]].numpy()
    norm = float(np.sqrt((v**2).sum(axis=0)).max())
    return (v * np.float32(peak / norm)).astype(np.float32) if norm > 0 else np.zeros_like(v)


def _falloff_weight(mask: np.ndarray, spacing_kji: np.ndarray, falloff_mm: float) -> np.ndarray:
    """1 on the mask, smoothstep down to 0 at ``falloff_mm`` from it, float32."""
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing_kji)
    x = np.clip(1.0 - dist / falloff_mm, 0.0, 1.0)
    return (x * x * (3.0 - 2.0 * x)).astype(np.float32)


@dataclass
class _Weights:
    """Per-template parts of the velocity field, computed once per ``generate_masks`` call."""

    groups: list[tuple[str, np.ndarray | None, np.ndarray | None, tuple[float, float]]]
    # (name, weight, centroid RAS, scale range)
    coronary: np.ndarray | None
    grid: list[np.ndarray]


def _scale_groups(
    present: list[int], cfg: MGMConfig
) -> list[tuple[str, tuple[int, ...], tuple[float, float]]]:
    """(name, labels, scale range) of every scaling group: ``scale_groups``, other structures, global."""
    groups = [
        ("+".join(label_info(g).key for g in group), group, cfg.scale_range) for group in cfg.scale_groups
    ]
    if cfg.scale_other_structures:
        grouped = {v for group in cfg.scale_groups for v in group} | set(cfg.coronary_labels)
        groups += [(label_info(v).key, (v,), cfg.scale_range) for v in present if v not in grouped]
    groups.append(("global", tuple(present), cfg.global_scale_range))
    return groups


def _template_weights(labels: np.ndarray, volume: Volume, cfg: MGMConfig) -> _Weights:
    spacing_kji = volume.spacing[::-1]
    present = [int(v) for v in np.unique(labels) if v != 0]
    groups: list[tuple[str, np.ndarray | None, np.ndarray | None, tuple[float, float]]] = []
    for name, group, scale_range in _scale_groups(present, cfg):
        mask = np.isin(labels, group)
        if not mask.any() or scale_range == (1.0, 1.0):
            groups.append((name, None, None, scale_range))
            continue
        kji = np.argwhere(mask)
        centroid = volume.ijk_to_ras_points(kji[:, ::-1].astype(np.float64)).mean(axis=0)
        weight = _falloff_weight(mask, spacing_kji, cfg.scale_falloff_mm)
        groups.append((name, weight, centroid, scale_range))
    coronary = None
    if cfg.coronary_variation:
        mask = np.isin(labels, cfg.coronary_labels)
        if mask.any():
            coronary = _falloff_weight(mask, spacing_kji, cfg.coronary_falloff_mm)
    return _Weights(groups=groups, coronary=coronary, grid=_ras_grid(volume))


def _velocity(
    shape: tuple[int, ...],
    spacing_kji: np.ndarray,
    weights: _Weights,
    cfg: MGMConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, float]]:
    """The SVF (3, K, J, I) RAS mm and the drawn group scales (see the module docstring)."""
    v = _random_field(rng, shape, cfg.smoothness_sigma_mm / spacing_kji, cfg.strength_mm)
    scales: dict[str, float] = {}
    for name, w, centroid, scale_range in weights.groups:
        s = float(rng.uniform(*scale_range))
        scales[name] = s if w is not None else 1.0
        if w is None or s == 1.0:
            continue
        ws = w * np.float32(-math.log(s))
        for c in range(3):
            v[c] += ws * (weights.grid[c] - np.float32(centroid[c]))
    if cfg.coronary_variation:
        field_ = _random_field(rng, shape, cfg.coronary_sigma_mm / spacing_kji, cfg.coronary_strength_mm)
        if weights.coronary is not None:
            v += weights.coronary[None] * field_
    return v, scales


def _integrate(velocity_ras: np.ndarray, ijk_to_ras: np.ndarray, steps: int) -> np.ndarray:
    """Scaling and squaring with MONAI's DVF2DDF; returns the voxel DDF (3, K, J, I) float32."""
    import torch

    v_vox = ddf_ras_to_voxel(velocity_ras, ijk_to_ras)
    if not np.any(v_vox):
        return np.zeros_like(v_vox)
    with torch.no_grad():
        ddf = _dvf2ddf_module(steps)(torch.from_numpy(np.ascontiguousarray(v_vox))[None])
    return ddf[0].numpy()


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def _check_template(template_labels: Volume) -> list[int]:
    if not isinstance(template_labels, Volume):
        raise ValueError(f"template_labels: expected a Volume, got {type(template_labels).__name__}")
    arr = template_labels.array
    if arr.dtype.kind not in "iu":
        raise ValueError(f"template_labels: expected an integer label map, got dtype {arr.dtype}")
    present = [int(v) for v in np.unique(arr) if v != 0]
    known = {e.value for e in LABEL_TABLE}
    unknown = [v for v in present if v not in known]
    if unknown:
        raise ValueError(
            f"template_labels: labels {unknown} are not in the cardiac label table {sorted(known)}; "
            "map them first (xraycardiac.cardiac.templates.load_template(label_mapping=...))"
        )
    if not present:
        raise ValueError("template_labels: the label map is empty (no label other than 0)")
    return present


def generate_masks(
    template_labels: Volume, n: int, config: MGMConfig | None = None, seed: int = 0
) -> tuple[list[MGMSample], MGMReport]:
    """Draw ``n`` deformed, topology-checked label maps from a template (see the module docstring).

    Args:
        template_labels: (K, J, I) integer label map with values of the cardiac label table.
        n: number of samples wanted (>= 1).
        config: deformation and checking settings; ``MGMConfig()`` if None.
        seed: non-negative random seed.

    Returns:
        (samples, report): up to ``n`` accepted samples (fewer only if ``n * max_tries`` attempts
        were not enough; the report says why) and the ``MGMReport`` with rejection counts.
    """
    cfg = config if config is not None else MGMConfig()
    if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"generate_masks: n must be an integer >= 1, got {n!r}")
    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"generate_masks: seed must be a non-negative integer, got {seed!r}")
    present = _check_template(template_labels)
    t0 = time.perf_counter()
    labels = template_labels.array
    reference = _reference_betti(labels, present, cfg.topology_reference)
    report = MGMReport(requested=int(n), reference_betti=reference)
    samples: list[MGMSample] = []
    a = template_labels.ijk_to_ras
    weights = _template_weights(labels, template_labels, cfg)
    spacing_kji = template_labels.spacing[::-1]
    while len(samples) < n and report.attempts < n * cfg.max_tries:
        attempt = report.attempts
        report.attempts += 1
        rng = np.random.default_rng([int(seed), attempt])
        velocity, scales = _velocity(labels.shape, spacing_kji, weights, cfg, rng)
        ddf_vox = _integrate(velocity, a, cfg.integration_steps)
        ddf_ras = ddf_voxel_to_ras(ddf_vox, a)
        min_jac = float(_jacobian_voxel(ddf_vox).min())
        bad: list[int] = []
        if min_jac <= 0.0:
            reason: str | None = "folding"
            warped = labels
        else:
            warped = _warp_label_array(
                labels, ddf_vox, cfg.label_interpolation, cfg.coronary_labels, cfg.coronary_threshold
            )
            reason, bad = topology_violations(warped, reference, cfg.coronary_labels)
        if reason is not None:
            report.rejected[reason] += 1
            for v in bad:
                key = label_info(v).key
                report.rejected_labels[key] = report.rejected_labels.get(key, 0) + 1
            continue
        meta = {
            "generator": "xraycardiac.cardiac.mgm",
            "seed": int(seed),
            "attempt": attempt,
            "scales": scales,
            "min_jacobian": min_jac,
            "config": asdict(cfg),
            "betti": {str(k): list(v) for k, v in reference.items()},
        }
        out = Volume(
            warped, a.copy(), {**template_labels.meta, "mgm_seed": int(seed), "mgm_attempt": attempt}
        )
        samples.append(MGMSample(labels=out, ddf_ras_mm=ddf_ras, meta=meta))
        report.accepted += 1
    report.seconds = time.perf_counter() - t0
    return samples, report
