"""Procedural cardiac CT phantom: a seeded label map of the nine CardiacSynth structures and a CT-like image.

Frame: patient RAS mm as the chest phantom (``xraycardiac.phantoms.chest``): midsagittal plane
x = 0, average heart = the chest phantom's ellipsoid (centre (-30.8, 25.5, -45) mm). The grid has
identity directions (I -> +x, J -> +y, K -> +z), isotropic ``spacing_mm``, its centre at
``grid_center_ras_mm``; the default 64^3 x 2.5 mm box holds the heart, the aortic arch and the
pulmonary bifurcation. Arrays are (K, J, I).

Anatomy hangs on the epicardial ellipsoid ``HeartEllipsoid`` drawn per seed (scale, tilt, shift):
long axis ``u`` from the base (right-posterior-superior) to the apex (left-anterior-inferior),
azimuths phi around ``u`` as in ``xraycardiac.phantoms.heart`` (0 heart-anterior, +90 RV side, -90
LV side); the AV plane is at polar angle 115 deg from the apex (the coronary AV groove). Labels:

- 1 LV blood pool: a superquadric on the LV side (phi ~ -115), apical of the AV plane, kept
  ``min_wall_mm`` inside the epicardium; 5 LV myocardium: the same superquadric grown by the wall
  thickness (so it contains the cavity), inside the epicardium, minus the cavity: a cup open at
  the base.
- 2 RV blood pool: a superquadric on the RV side (phi ~ +50) wrapped round the LV plus an
  infundibulum lobe rising past the AV plane, minus the LV (the septum); the RV free wall is
  unlabelled myocardium (``BACKGROUND_HU``).
- 3 LA / 4 RA: superquadrics beyond the AV plane, posterior-left (phi ~ -150) and right (~ +110);
  an overlap goes to the smaller normalised superquadric value (a flat interatrial septum).
- 6 aorta: a tube from just above the LV base, ascending to the right, arching back and left over
  the pulmonary bifurcation, descending behind the LA to the bottom of the grid. 7 pulmonary
  artery: from the infundibulum up, back and left, with a left branch and a right branch behind the
  ascending aorta.
- 8 / 9 LCA / RCA: ``make_coronary_tree`` on the same ellipsoid, ``coronary_surface_offset_mm``
  outside it, voxelised with ``CoronaryTree.voxelize``.

Chamber surfaces carry a smooth random perturbation (``shape_jitter``: f(x) + g(x) <= 1, g smoothed
noise); sizes vary per seed. Later structures overwrite earlier ones: atria, RV, myocardium, LV,
pulmonary artery, aorta, coronaries.

Coronary topology at coarse spacing. Distal coronaries are ~1 mm wide, far below a 2.5 mm voxel, so
their tubes would break into pieces, and close branches merge into loops at voxel scale. Two steps
make each tree one 26-connected component without loops or cavities, (β0, β1, β2) = (1, 0, 0), by
construction: (1) every radius is raised to at least ``h sqrt(3) / 2 (1 + 1e-3)`` (h the voxel
side) before voxelising, so the voxel containing any centreline point is inside the tube and the
tube is 26-connected (a continuous centreline passes through face/edge/corner neighbours); (2)
the tube voxels are then taken by homotopic region growing from the ostium in arc-length order,
adding only simple points (``xraycardiac.cardiac.labels.grow_contractible``): the few voxels that
would close a loop are left out (``meta`` ``coronary_voxel_coverage``, typically 97-100 % kept).
The LCA is grown first; the RCA does not take its voxels. A draw in which any structure's Betti
numbers still differ from the table's (e.g. a chamber cut in two by a vessel) is regrown from the
next draw (``max_attempts``; the attempt used is in ``meta["attempt"]``; none of seeds 0-39 at
the default config needed a second draw).

CT-like image: each label's ``hu_mean`` (blood-pool enhancement jittered per seed by
``enhancement_jitter_hu``) plus its ``hu_std`` times a smooth unit texture, over a background of
lung, mediastinal soft tissue, epicardial fat, unlabelled RV/atrial walls and a vertebral body;
then a Gaussian blur (``smoothing_sigma_mm``, partial volume), white noise (``noise_std_hu``) and
clipping to [-1024, 3071] HU. The label map is exact (not blurred).

Determinism: attempt ``n`` draws everything from ``numpy.random.default_rng([seed, n])`` in a fixed
order; the same config gives bit-identical volumes. A 64^3 phantom takes ~0.5 s on one CPU core.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.cardiac import labels as _table
from xraycardiac.jsonutil import is_int, is_number
from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree
from xraycardiac.phantoms.heart import HeartEllipsoid, tilted_axis
from xraycardiac.volume import Volume

__all__ = ["CardiacPhantom", "CardiacPhantomConfig", "build_cardiac_phantom", "make_cardiac_phantom"]

LV, RV, LA, RA, MYO, AORTA, PA, LCA, RCA = _table.FINE_LABELS
_THETA_AV_DEG = 115.0  # polar angle of the AV plane from the apex (the coronary generator's AV groove)
_AV_GAP_MM = 1.5  # half-gap between the ventricles and the atria at the AV plane
_EPI_MARGIN_MM = 1.5  # chambers stay this far inside the epicardial ellipsoid (coronaries run outside)
_RV_WALL_MM = 3.5
_ATRIAL_WALL_MM = 2.0
_ATRIAL_BULGE_MM = 6.0  # the atria may reach this far outside the epicardial ellipsoid
_TEXTURE_SIGMA_MM = 3.0
_SHAPE_SIGMA_MM = 12.0
_MEDIASTINUM_MM = 14.0  # soft tissue around the heart and great vessels; lung beyond
_EPICARDIAL_FAT_MM = 4.0
_HU_RANGE = (-1024.0, 3071.0)
_CORONARY_LENGTHS = ("lad_length_mm", "lcx_length_mm", "rca_length_mm", "diagonal_length_mm")
_CORONARY_LENGTHS += ("obtuse_marginal_length_mm", "acute_marginal_length_mm", "pda_length_mm")


_NUMBER_BOUNDS = {
    "spacing_mm": (0.3, 6.0),
    "heart_tilt_deg": (0.0, 30.0),
    "heart_shift_mm": (0.0, 30.0),
    "shape_jitter": (0.0, 0.2),
    "min_wall_mm": (1.0, 10.0),
    "coronary_surface_offset_mm": (0.0, 10.0),
    "enhancement_jitter_hu": (0.0, 200.0),
    "smoothing_sigma_mm": (0.0, 10.0),
    "noise_std_hu": (0.0, 200.0),
}
_PAIR_BOUNDS = {
    "heart_scale": (0.5, 1.5),
    "chamber_scale": (0.7, 1.3),
    "myocardium_thickness_mm": (3.0, 20.0),
    "aorta_diameter_mm": (10.0, 50.0),
    "pa_diameter_mm": (10.0, 45.0),
}


@dataclass(frozen=True)
class CardiacPhantomConfig:
    """Grid, seed and anatomical variation ranges of the cardiac phantom (ranges are (lo, hi), uniform).

    Attributes:
        seed: random seed (non-negative); same config -> bit-identical phantom.
        shape_ijk: voxels along I (x), J (y), K (z); each >= 16.
        spacing_mm: isotropic voxel size, mm (0.3-6).
        grid_center_ras_mm: RAS mm of the grid centre.
        heart_center_ras_mm: centre of the average epicardial ellipsoid, RAS mm.
        heart_long_axis_ras: base -> apex direction of the average heart (normalised here).
        heart_semi_axes_mm: average semi-axes (long, v, w), mm.
        heart_scale: range of the factor on the semi-axes (and on every chamber and vessel size).
        heart_tilt_deg: the long axis is tilted by up to this angle, degrees.
        heart_shift_mm: the centre moves by up to this much along each RAS axis, mm.
        chamber_scale: range of an extra per-chamber factor on the LV, RV, LA and RA sizes.
        shape_jitter: standard deviation of the smooth surface perturbation of the chambers
            (fraction of the chamber size; 0 = exact superquadrics).
        myocardium_thickness_mm: range of the LV wall thickness, mm.
        min_wall_mm: the LV cavity stays at least this far inside the epicardium, mm.
        aorta_diameter_mm: range of the ascending aorta's diameter, mm (the arch and the descending
            aorta are 0.85 and 0.75 of it).
        pa_diameter_mm: range of the main pulmonary artery's diameter, mm (branches 0.7 of it).
        coronary: draw the coronary trees (labels 8, 9).
        coronary_surface_offset_mm: coronary centrelines run this far outside the epicardium, mm.
        enhancement_jitter_hu: the blood-pool HU of the image vary by up to this much per seed, HU.
        smoothing_sigma_mm: Gaussian blur of the image (partial volume), mm; 0 disables it.
        noise_std_hu: white noise added to the image, HU; 0 disables it.
        max_attempts: draws tried before giving up when a draw fails the topology checks.
    """

    seed: int = 0
    shape_ijk: tuple[int, int, int] = (64, 64, 64)
    spacing_mm: float = 2.5
    grid_center_ras_mm: tuple[float, float, float] = (-25.0, 10.0, -25.0)
    heart_center_ras_mm: tuple[float, float, float] = (-30.8, 25.5, -45.0)
    heart_long_axis_ras: tuple[float, float, float] = (-0.62, 0.51, -0.59)
    heart_semi_axes_mm: tuple[float, float, float] = (58.0, 46.5, 40.5)
    heart_scale: tuple[float, float] = (0.82, 0.92)
    heart_tilt_deg: float = 6.0
    heart_shift_mm: float = 4.0
    chamber_scale: tuple[float, float] = (0.9, 1.1)
    shape_jitter: float = 0.05
    myocardium_thickness_mm: tuple[float, float] = (8.0, 12.0)
    min_wall_mm: float = 5.0
    aorta_diameter_mm: tuple[float, float] = (26.0, 32.0)
    pa_diameter_mm: tuple[float, float] = (22.0, 28.0)
    coronary: bool = True
    coronary_surface_offset_mm: float = 2.5
    enhancement_jitter_hu: float = 40.0
    smoothing_sigma_mm: float = 1.0
    noise_std_hu: float = 15.0
    max_attempts: int = 20

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> ValueError:
            return ValueError(
                f"CardiacPhantomConfig.{name}: expected {expected}, got {getattr(self, name)!r}"
            )

        if not (is_int(self.seed, numpy=True) and self.seed >= 0):
            raise fail("seed", "a non-negative integer")
        shape = self.shape_ijk
        if not (
            isinstance(shape, tuple)
            and len(shape) == 3
            and all(is_int(n, numpy=True) and n >= 16 for n in shape)
        ):
            raise fail("shape_ijk", "three integers >= 16")
        for name in (
            "grid_center_ras_mm",
            "heart_center_ras_mm",
            "heart_long_axis_ras",
            "heart_semi_axes_mm",
        ):
            value = getattr(self, name)
            if not (
                isinstance(value, tuple) and len(value) == 3 and all(is_number(v, numpy=True) for v in value)
            ):
                raise fail(name, "three finite numbers")
        if np.linalg.norm(self.heart_long_axis_ras) == 0:
            raise fail("heart_long_axis_ras", "a non-zero direction")
        if min(self.heart_semi_axes_mm) < 20.0 or max(self.heart_semi_axes_mm) > 150.0:
            raise fail("heart_semi_axes_mm", "semi-axes between 20 and 150 mm")
        for name, (lo, hi) in _NUMBER_BOUNDS.items():
            if not (is_number(getattr(self, name), numpy=True) and lo <= getattr(self, name) <= hi):
                raise fail(name, f"a number in [{lo}, {hi}]")
        for name, (lo, hi) in _PAIR_BOUNDS.items():
            value = getattr(self, name)
            if not (
                isinstance(value, tuple) and len(value) == 2 and all(is_number(v, numpy=True) for v in value)
            ):
                raise fail(name, f"a pair (lo, hi) with {lo} <= lo <= hi <= {hi}")
            if not lo <= value[0] <= value[1] <= hi:
                raise fail(name, f"a pair (lo, hi) with {lo} <= lo <= hi <= {hi}")
        if not isinstance(self.coronary, bool):
            raise fail("coronary", "True or False")
        if not (is_int(self.max_attempts, numpy=True) and 1 <= self.max_attempts <= 1000):
            raise fail("max_attempts", "an integer in [1, 1000]")


@dataclass(eq=False)
class CardiacPhantom:
    """A generated phantom with its ground truth.

    Attributes:
        image: CT-like volume, float32 (K, J, I) HU.
        labels: label map on the same grid, uint8 (K, J, I), values of ``xraycardiac.cardiac.labels``.
        coronary_tree: the coronary centreline tree (RAS mm, true radii), None if ``coronary=False``.
        heart: the epicardial ellipsoid of this draw.
        landmarks: RAS mm points and unit directions (``lv_apex_ras``, ``lv_base_ras``,
            ``lv_long_axis_ras`` (base -> apex), ``aortic_root_ras``, ``pa_root_ras``).
        attempt: the draw that passed the topology checks (0 = the first).
        rejected: per failed draw, the keys of the labels whose topology was wrong.
    """

    image: Volume
    labels: Volume
    coronary_tree: CoronaryTree | None
    heart: HeartEllipsoid
    landmarks: dict[str, list[float]]
    attempt: int
    rejected: list[list[str]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


class _Frame:
    """Voxel-centre coordinates in the heart frame: s along u, and the (anterior, right) components."""

    def __init__(self, ras: tuple[np.ndarray, np.ndarray, np.ndarray], heart: HeartEllipsoid) -> None:
        self.heart = heart
        c = heart.center_ras_mm
        self.u, self.a, self.r = heart.axes_ras[0], heart.anterior_ras, heart.right_ras
        self.d = [ras[i] - np.float32(c[i]) for i in range(3)]  # broadcastable (K,1,1), (1,J,1), (1,1,I)

    def dot(self, vec: np.ndarray) -> np.ndarray:
        """(X - centre) . vec on the grid, float32 (K, J, I)."""
        v = np.asarray(vec, dtype=np.float32)
        return self.d[0] * v[0] + self.d[1] * v[1] + self.d[2] * v[2]

    def azimuth(self, phi_deg: float) -> np.ndarray:
        """Unit direction perpendicular to u at azimuth phi (0 = heart anterior, +90 = heart right)."""
        p = math.radians(phi_deg)
        return math.cos(p) * self.a + math.sin(p) * self.r

    def point(self, s: float, phi_deg: float, radial: float) -> np.ndarray:
        """RAS mm of the point at s along u and ``radial`` mm towards azimuth phi."""
        return self.heart.center_ras_mm + s * self.u + radial * self.azimuth(phi_deg)

    def inside_epicardium(self, margin_mm: float) -> np.ndarray:
        """Voxels inside the epicardial ellipsoid with its semi-axes shrunk by margin_mm."""
        e = self.heart.semi_axes_mm - margin_mm
        q = sum((self.dot(ax) / np.float32(ei)) ** 2 for ax, ei in zip(self.heart.axes_ras, e, strict=True))
        return q <= 1.0


def _superquadric(
    frame: _Frame, centre: np.ndarray, axes: np.ndarray, semi: np.ndarray, exponent: float
) -> np.ndarray:
    """Normalised superquadric value (<= 1 inside), float32 (K, J, I); ``axes`` rows are unit vectors."""
    off = (np.asarray(centre) - frame.heart.center_ras_mm).astype(np.float32)
    total = 0.0
    for ax, half in zip(axes, semi, strict=True):
        t = np.abs((frame.dot(ax) - np.float32(off @ ax)) / np.float32(half))
        total = total + t**exponent
    return total ** np.float32(1.0 / exponent)


def _chamber_axes(frame: _Frame, phi_deg: float) -> np.ndarray:
    """Rows u, the azimuth direction, and their cross product."""
    d = frame.azimuth(phi_deg)
    return np.stack([frame.u, d, np.cross(frame.u, d)])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation, float32."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    return ((field_ - field_.mean()) / max(float(field_.std()), 1e-12)).astype(np.float32)


def _spline_path(knots: np.ndarray, radii: np.ndarray, step_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Points every ~step_mm along a chord-length cubic spline through knots, with interpolated radii."""
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(knots, axis=0), axis=1))])
    spline = CubicSpline(chord, knots, bc_type="natural")
    t = np.linspace(0.0, chord[-1], max(2, int(math.ceil(chord[-1] / step_mm)) + 1))
    return spline(t), np.interp(t, chord, radii)


def _tube(reference: Volume, paths: list[tuple[np.ndarray, np.ndarray, int]]) -> np.ndarray:
    """Boolean mask of tubes: paths of (points (n, 3), radii (n,), index of the parent point or -1)."""
    pts, rad, par = [], [], []
    offset = 0
    for points, radii, attach in paths:
        n = len(points)
        parents = np.arange(-1, n - 1) + offset
        parents[0] = attach
        pts.append(points)
        rad.append(radii)
        par.append(parents)
        offset += n
    tree = CoronaryTree(
        points=np.concatenate(pts),
        radii=np.concatenate(rad),
        parents=np.concatenate(par).astype(np.int64),
        branch=np.zeros(offset, dtype=np.int64),
        branch_names=["tube"],
        tree=np.zeros(offset, dtype=np.int64),
    )
    return tree.voxelize(reference, 1, 1).array > 0


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------


def _draw(cfg: CardiacPhantomConfig, attempt: int) -> CardiacPhantom:
    """One draw of the phantom (not yet checked)."""
    rng = np.random.default_rng([int(cfg.seed), int(attempt)])
    h = float(cfg.spacing_mm)
    nx, ny, nz = cfg.shape_ijk
    origin = np.asarray(cfg.grid_center_ras_mm) - (np.asarray(cfg.shape_ijk, dtype=np.float64) - 1) / 2 * h
    reference = Volume.from_geometry(np.zeros((nz, ny, nx), np.uint8), (h, h, h), tuple(origin))
    ras = (
        (origin[0] + h * np.arange(nx, dtype=np.float32))[None, None, :],
        (origin[1] + h * np.arange(ny, dtype=np.float32))[None, :, None],
        (origin[2] + h * np.arange(nz, dtype=np.float32))[:, None, None],
    )
    shape = (nz, ny, nx)

    def uni(pair: tuple[float, float]) -> float:
        return float(rng.uniform(*pair))

    def jit(half: float) -> float:
        return float(rng.uniform(-half, half))

    # ---- heart (draw order fixed: part of the determinism contract) ----
    scale = uni(cfg.heart_scale)
    u = tilted_axis(rng, cfg.heart_long_axis_ras, cfg.heart_tilt_deg)
    centre = np.asarray(cfg.heart_center_ras_mm) + rng.uniform(-cfg.heart_shift_mm, cfg.heart_shift_mm, 3)
    heart = HeartEllipsoid.from_long_axis(centre, u, scale * np.asarray(cfg.heart_semi_axes_mm))
    fr = _Frame(ras, heart)
    a_u = float(heart.semi_axes_mm[0])
    b_m = float(np.mean(heart.semi_axes_mm[1:]))
    s_av = a_u * math.cos(math.radians(_THETA_AV_DEG))
    k_lv, k_rv, k_la, k_ra = (uni(cfg.chamber_scale) for _ in range(4))
    wall = uni(cfg.myocardium_thickness_mm) * math.sqrt(scale)
    phi_lv, phi_rv, phi_la, phi_ra = -115.0 + jit(8), 50.0 + jit(8), -150.0 + jit(8), 110.0 + jit(8)
    r_ao = uni(cfg.aorta_diameter_mm) / 2 * scale / 0.87
    r_pa = uni(cfg.pa_diameter_mm) / 2 * scale / 0.87
    sigma_shape = _SHAPE_SIGMA_MM / h
    g = {key: cfg.shape_jitter * _smooth_noise(rng, shape, sigma_shape) for key in ("lv", "rv", "la", "ra")}
    s = fr.dot(fr.u)
    ventricular = s >= s_av + _AV_GAP_MM
    atrial = s <= s_av - _AV_GAP_MM

    # ---- LV cavity and myocardium ----
    lv_c = fr.point(0.10 * a_u, phi_lv, 0.26 * b_m)
    lv_axes = _chamber_axes(fr, phi_lv)
    lv_semi = np.array([0.66 * a_u, 0.47 * b_m, 0.45 * b_m]) * k_lv
    f_cav = _superquadric(fr, lv_c, lv_axes, lv_semi, 2.2) + g["lv"]
    f_out = _superquadric(fr, lv_c, lv_axes, lv_semi + wall, 2.2) + g["lv"]
    lv_outer = (f_out <= 1.0) & fr.inside_epicardium(_EPI_MARGIN_MM) & ventricular
    lv_cav = (f_cav <= 1.0) & fr.inside_epicardium(_EPI_MARGIN_MM + cfg.min_wall_mm) & ventricular
    myo = lv_outer & ~lv_cav

    def sq(centre: np.ndarray, phi: float, semi: np.ndarray, key: str, exponent: float = 2.0) -> np.ndarray:
        return _superquadric(fr, centre, _chamber_axes(fr, phi), semi, exponent) + g[key]

    # ---- RV (body + infundibulum), septum = the LV's outer surface ----
    rv_c = fr.point(-0.02 * a_u, phi_rv, 0.46 * b_m)
    f_rv = sq(rv_c, phi_rv, np.array([0.62 * a_u, 0.48 * b_m, 0.80 * b_m]) * k_rv, "rv")
    inf_c = fr.point(s_av + 0.04 * a_u, -10.0, 0.52 * b_m)
    f_inf = sq(inf_c, -10.0, np.array([0.24 * a_u, 0.22 * b_m, 0.26 * b_m]) * k_rv, "rv")
    epi_rv = fr.inside_epicardium(_EPI_MARGIN_MM + _RV_WALL_MM)
    rv = (((f_rv <= 1.0) & ventricular) | (f_inf <= 1.0)) & epi_rv & ~lv_outer

    # ---- atria: base side of the AV plane, may bulge past the epicardial ellipsoid; competition
    # where they overlap ----
    la_c = fr.point(-0.80 * a_u, phi_la, 0.42 * b_m)
    ra_c = fr.point(-0.74 * a_u, phi_ra, 0.50 * b_m)
    la_semi = np.array([0.36 * a_u, 0.48 * b_m, 0.52 * b_m]) * k_la
    f_la = sq(la_c, phi_la, la_semi, "la")
    f_ra = sq(ra_c, phi_ra, np.array([0.36 * a_u, 0.48 * b_m, 0.48 * b_m]) * k_ra, "ra")
    epi_atria = fr.inside_epicardium(-_ATRIAL_BULGE_MM) & atrial
    la = (f_la <= 1.0) & epi_atria & (f_la <= f_ra)
    ra = (f_ra <= 1.0) & epi_atria & (f_ra < f_la)

    # ---- aorta: LV outflow, ascending, arch, descending behind the LA ----
    superior = np.array([0.0, 0.0, 1.0])
    ao0 = fr.point(s_av - 0.5 * r_ao, -40.0 + jit(10), 0.10 * b_m)
    lvot = -fr.u + 0.35 * superior
    ao1 = ao0 + 0.9 * r_ao * lvot / np.linalg.norm(lvot)
    asc = np.array([0.22 + jit(0.1), 0.18 + jit(0.1), 1.0])
    asc_top = ao1 + (1.8 * r_ao + 0.2 * a_u) * asc / np.linalg.norm(asc)
    la_back = la_c - (float(la_semi[1:].max()) + 0.85 * r_ao + 6.0) * np.array([0.0, 1.0, 0.0])
    desc_x, desc_y = la_back[0] - 0.15 * b_m, la_back[1]
    arch_top = np.array([0.5 * (asc_top[0] + desc_x), 0.5 * (asc_top[1] + desc_y), asc_top[2] + 0.7 * r_ao])
    desc0 = np.array([desc_x, desc_y, asc_top[2] - 0.2 * r_ao])
    desc1 = np.array([desc_x, desc_y, desc0[2] - 3.0 * r_ao])
    bottom = float(origin[2]) - 4.0 * h
    desc2 = np.array([desc_x, desc_y, min(bottom, desc1[2] - 10.0)])
    knots = np.stack([ao0, ao1, asc_top, arch_top, desc0, desc1, desc2])
    radii = r_ao * np.array([0.95, 1.0, 1.0, 0.85, 0.78, 0.75, 0.75])
    ao_pts, ao_rad = _spline_path(knots, radii)
    aorta = _tube(reference, [(ao_pts, ao_rad, -1)])

    # ---- pulmonary artery: from the infundibulum, up-back-left, bifurcating under the arch ----
    pa0 = inf_c - 0.6 * 0.24 * a_u * k_rv * fr.u
    main_dir = np.array([-0.35 + jit(0.1), -0.45 + jit(0.1), 1.0])
    main_dir /= np.linalg.norm(main_dir)
    z_under_arch = arch_top[2] - 0.85 * r_ao - 0.7 * r_pa - 3.0
    length = max(2.0 * r_pa, min(1.6 * r_pa + 0.15 * a_u, (z_under_arch - pa0[2]) / main_dir[2]))
    pa_bif = pa0 + length * main_dir
    rpa_mid = np.array([asc_top[0], asc_top[1] - r_ao - 0.7 * r_pa - 4.0, pa_bif[2] - 0.3 * r_pa])
    rpa_end = rpa_mid + np.array([0.8 * r_pa, -0.3 * r_pa, -0.3 * r_pa])
    lpa_end = pa_bif + 1.5 * r_pa * np.array([-0.75, -0.6, 0.1])
    pa_pts, pa_rad = _spline_path(
        np.stack([pa0, pa0 + 0.5 * (pa_bif - pa0), pa_bif]), r_pa * np.array([1, 1, 1])
    )
    n_main = len(pa_pts)
    rp_pts, rp_rad = _spline_path(
        np.stack([pa_bif, 0.5 * (pa_bif + rpa_mid), rpa_mid, rpa_end]), r_pa * np.array([0.8, 0.7, 0.7, 0.7])
    )
    lp_pts, lp_rad = _spline_path(np.stack([pa_bif, lpa_end]), r_pa * np.array([0.8, 0.7]))
    pulm = _tube(
        reference,
        [(pa_pts, pa_rad, -1), (rp_pts[1:], rp_rad[1:], n_main - 1), (lp_pts[1:], lp_rad[1:], n_main - 1)],
    )

    # ---- label map (later structures overwrite earlier ones) ----
    labels = np.zeros(shape, dtype=np.uint8)
    for value, mask in ((RA, ra), (LA, la), (RV, rv), (MYO, myo), (LV, lv_cav), (PA, pulm), (AORTA, aorta)):
        labels[mask] = value

    # ---- coronaries ----
    tree = None
    if cfg.coronary:
        tree = _coronary_tree(cfg, heart, scale, int(rng.integers(0, 2**31 - 1)))
        r_min = 0.5 * math.sqrt(3.0) * h * (1.0 + 1e-3)
        coverage = _paint_coronaries(labels, reference, replace(tree, radii=np.maximum(tree.radii, r_min)))
    else:
        coverage = {}

    # ---- image ----
    image = _render_image(cfg, rng, labels, fr, shape, h, origin, desc_x, desc_y)
    apex_dir = lv_axes[0]
    lv_apex = lv_c + lv_semi[0] * apex_dir
    landmarks = {
        "lv_apex_ras": lv_apex.tolist(),
        "lv_base_ras": (lv_c + (s_av - float((lv_c - heart.center_ras_mm) @ fr.u)) * fr.u).tolist(),
        "lv_long_axis_ras": apex_dir.tolist(),
        "aortic_root_ras": ao0.tolist(),
        "pa_root_ras": pa0.tolist(),
    }
    params = {
        "heart_scale": scale,
        "chamber_scale": {"lv": k_lv, "rv": k_rv, "la": k_la, "ra": k_ra},
        "myocardium_thickness_mm": wall,
        "aorta_radius_mm": r_ao,
        "pa_radius_mm": r_pa,
        "phi_deg": {"lv": phi_lv, "rv": phi_rv, "la": phi_la, "ra": phi_ra},
        "coronary_voxel_coverage": coverage,
    }
    meta = {
        "generator": "xraycardiac.phantoms.cardiac",
        "seed": int(cfg.seed),
        "attempt": int(attempt),
        "config_json": json.dumps(asdict(cfg)),
        "parameters_json": json.dumps(params),
        "heart_json": json.dumps(heart.to_dict()),
        "landmarks_json": json.dumps(landmarks),
    }
    ijk = reference.ijk_to_ras.copy()
    names = json.dumps({v: _table.label_info(v).name for v in _table.FINE_LABELS})
    labels_meta = {**meta, "quantity": "label", "labels_json": names}
    return CardiacPhantom(
        image=Volume(image, ijk.copy(), {**meta, "quantity": "HU"}),
        labels=Volume(labels, ijk, labels_meta),
        coronary_tree=tree,
        heart=heart,
        landmarks=landmarks,
        attempt=attempt,
    )


def _coronary_tree(cfg: CardiacPhantomConfig, heart: HeartEllipsoid, scale: float, seed: int) -> CoronaryTree:
    """The coronary generator on exactly this heart (no extra scale or tilt), lengths scaled with it."""
    base = CoronaryPhantomConfig()
    lengths = {
        name: (getattr(base, name)[0] * scale, getattr(base, name)[1] * scale) for name in _CORONARY_LENGTHS
    }
    ccfg = replace(
        base,
        seed=seed,
        heart_center_ras_mm=tuple(float(v) for v in heart.center_ras_mm),
        heart_long_axis_ras=tuple(float(v) for v in heart.axes_ras[0]),
        heart_semi_axes_mm=tuple(float(v) for v in heart.semi_axes_mm),
        heart_scale=(1.0, 1.0),
        heart_tilt_deg=0.0,
        surface_offset_mm=float(cfg.coronary_surface_offset_mm),
        **lengths,
    )
    return make_coronary_tree(ccfg)


# --------------------------------------------------------------------------------------------------
# Coronary trees without loops: homotopic region growing
# --------------------------------------------------------------------------------------------------


def _subtree(tree: CoronaryTree, tree_id: int) -> CoronaryTree:
    """The points of one tree (0 = left, 1 = right) as a CoronaryTree of their own."""
    idx = np.flatnonzero(tree.tree == tree_id)
    new_index = np.full(tree.num_points, -1, dtype=np.int64)
    new_index[idx] = np.arange(len(idx))
    parents = tree.parents[idx]
    return CoronaryTree(
        points=tree.points[idx],
        radii=tree.radii[idx],
        parents=np.where(parents >= 0, new_index[np.maximum(parents, 0)], -1),
        branch=tree.branch[idx],
        branch_names=list(tree.branch_names),
        tree=tree.tree[idx],
    )


def _paint_coronaries(labels: np.ndarray, reference: Volume, tree: CoronaryTree) -> dict[str, float]:
    """Paint the LCA then the RCA tube, each grown homotopically from its ostium, over ``labels``.

    The RCA does not take voxels of the LCA. Returns the fraction of each tree's tube voxels that
    were kept (loop-closing voxels and, for the RCA, voxels shared with the LCA are not).
    """
    from scipy.spatial import cKDTree

    taken = np.zeros(labels.shape, dtype=bool)
    coverage: dict[str, float] = {}
    for value, tree_id in ((LCA, 0), (RCA, 1)):
        key_name = _table.label_info(value).key
        if not np.any(tree.tree == tree_id):
            coverage[key_name] = 0.0
            continue
        sub_tree = _subtree(tree, tree_id)
        tube = sub_tree.voxelize(reference, 1, 1).array > 0
        mask = tube & ~taken
        if not mask.any():
            coverage[key_name] = 0.0
            continue
        found = ndimage.find_objects(mask.astype(np.uint8))[0]
        box = tuple(found)
        sub = np.pad(mask[box], 1)
        kji = np.argwhere(sub)
        offset = np.array([sl.start for sl in box]) - 1
        ras = reference.ijk_to_ras_points((kji + offset)[:, ::-1])
        arc = sub_tree.arc_length()
        dist, nearest = cKDTree(sub_tree.points).query(ras)
        key = np.full(sub.shape, np.inf)
        key[tuple(kji.T)] = arc[nearest] + 1e-3 * dist
        root = int(np.argmin(key[tuple(kji.T)]))  # the tube voxel nearest the ostium
        grown = _table.grow_contractible(sub, key, (int(kji[root, 0]), int(kji[root, 1]), int(kji[root, 2])))
        grown = grown[1:-1, 1:-1, 1:-1]
        labels[box][grown] = value
        taken[box] |= grown
        coverage[key_name] = float(grown.sum() / tube.sum())
    return coverage


def _render_image(
    cfg: CardiacPhantomConfig,
    rng: np.random.Generator,
    labels: np.ndarray,
    fr: _Frame,
    shape: tuple[int, int, int],
    h: float,
    origin: np.ndarray,
    desc_x: float,
    desc_y: float,
) -> np.ndarray:
    """CT-like HU image of a label map: background tissues, per-label HU and texture, blur, noise."""
    cardiac = labels > 0
    dist_out = ndimage.distance_transform_edt(~cardiac, sampling=h).astype(np.float32)
    mean = np.zeros(shape, np.float32)
    std = np.zeros(shape, np.float32)

    def put(mask: np.ndarray, key: str) -> None:
        m, sd = _table.BACKGROUND_HU[key]
        mean[mask], std[mask] = m, sd

    # Background: lung, mediastinum (soft tissue) around the heart and vessels, epicardial fat inside
    # the pericardium, unlabelled myocardium (RV free wall, atrial walls), a vertebral body.
    put(np.ones(shape, bool), "lung")
    put(dist_out <= _MEDIASTINUM_MM, "soft_tissue")
    put(fr.inside_epicardium(-_EPICARDIAL_FAT_MM) & ~cardiac, "epicardial_fat")
    rv_wall = (ndimage.distance_transform_edt(labels != RV, sampling=h) <= _RV_WALL_MM + 0.5) & ~cardiac
    atria = (labels == LA) | (labels == RA)
    atrial_wall = (ndimage.distance_transform_edt(~atria, sampling=h) <= _ATRIAL_WALL_MM + 0.5) & ~cardiac
    put(rv_wall | atrial_wall, "myocardium_unlabelled")
    xs = origin[0] + h * np.arange(shape[2], dtype=np.float32)
    ys = origin[1] + h * np.arange(shape[1], dtype=np.float32)
    spine_y = desc_y - 32.0
    spine = ((xs[None, None, :] - 0.0) ** 2 / 20.0**2 + (ys[None, :, None] - spine_y) ** 2 / 16.0**2) <= 1.0
    put(np.broadcast_to(spine, shape) & ~cardiac & (dist_out > 3.0), "bone")
    # Labels, with the blood pools' enhancement jittered per seed (one offset for all contrast blood).
    enhancement = float(rng.uniform(-cfg.enhancement_jitter_hu, cfg.enhancement_jitter_hu))
    for value in _table.FINE_LABELS:
        info = _table.label_info(value)
        mask = labels == value
        mean[mask] = info.hu_mean + (enhancement if info.hu_mean > 200 else 0.0)
        std[mask] = info.hu_std
    image = mean + std * _smooth_noise(rng, shape, _TEXTURE_SIGMA_MM / h)
    if cfg.smoothing_sigma_mm > 0:
        image = ndimage.gaussian_filter(image, cfg.smoothing_sigma_mm / h, mode="nearest")
    noise = rng.standard_normal(shape).astype(np.float32)
    image = image + np.float32(cfg.noise_std_hu) * noise
    return np.clip(image, *_HU_RANGE).astype(np.float32)


def _topology_failures(labels: np.ndarray, coronary: bool) -> list[str]:
    """Keys of the labels whose (β0, β1, β2) differ from the table (absent labels included)."""
    wanted = [v for v in _table.FINE_LABELS if coronary or not _table.label_info(v).tubular]
    found = _table.structure_betti(labels, wanted)
    return [_table.label_info(v).key for v in wanted if found[v] != _table.label_info(v).betti]


def build_cardiac_phantom(config: CardiacPhantomConfig | None = None) -> CardiacPhantom:
    """Generate a phantom whose every structure has the table's topology (see the module docstring).

    Args:
        config: grid, seed and variation ranges; ``CardiacPhantomConfig()`` if None.

    Returns:
        A ``CardiacPhantom``: image (HU) and labels on one grid, the coronary tree, the heart
        ellipsoid, landmarks, the attempt used and the failed structures of the rejected draws.

    Raises:
        RuntimeError: no draw among ``max_attempts`` passed the topology checks (lists the failures).
    """
    cfg = config if config is not None else CardiacPhantomConfig()
    rejected: list[list[str]] = []
    for attempt in range(cfg.max_attempts):
        phantom = _draw(cfg, attempt)
        failures = _topology_failures(phantom.labels.array, cfg.coronary)
        if not failures:
            phantom.rejected = rejected
            phantom.labels.meta["rejected_json"] = json.dumps(rejected)
            return phantom
        rejected.append(failures)
    raise RuntimeError(
        f"make_cardiac_phantom: seed {cfg.seed}: none of {cfg.max_attempts} draws had the expected topology; "
        f"failing structures per draw: {rejected}. Use a finer spacing_mm or another seed."
    )


def make_cardiac_phantom(config: CardiacPhantomConfig | None = None) -> tuple[Volume, Volume]:
    """Generate the cardiac CT-like image and its label map.

    Args:
        config: grid, seed and variation ranges; ``CardiacPhantomConfig()`` if None.

    Returns:
        (image, labels) on the same grid (identity directions, isotropic ``spacing_mm``, centre at
        ``grid_center_ras_mm``): ``image.array`` float32 (K, J, I) HU; ``labels.array`` uint8
        (K, J, I) with the values 1-9 of ``xraycardiac.cardiac.labels`` (each structure one
        component of the table's topology). ``meta`` holds the seed, the attempt, the config and
        the sampled parameters, the heart ellipsoid and landmarks (JSON strings).
    """
    phantom = build_cardiac_phantom(config)
    return phantom.image, phantom.labels
