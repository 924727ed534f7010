"""Procedural chest CT phantom with an exact label map, seeded and fast (numpy + scipy only).

The phantom is a simplified adult thorax built from analytic shapes in patient **RAS** millimetres
(x = patient Right, y = Anterior, z = Superior), rasterised on a grid with identity directions whose
centre is RAS (0, 0, 0): the I axis points to +x (Right), J to +y (Anterior), K to +z (Superior).
Arrays are (K, J, I) as everywhere in the library.

Anatomy (label, nominal HU before smoothing and noise; see ``LABELS`` and ``HU``):

- 0 air outside the body (-1000).
- 1 body: elliptic torso with a subcutaneous fat layer (-100), chest-wall and back muscle (40),
  mediastinal soft tissue (15), pericardial fat (-70), upper abdomen left of the liver (30) with a
  gastric gas bubble under the left dome, spinal cord (30).
- 2 lungs: two lungs (-850) between the apices and two diaphragm domes (the right one higher),
  wrapping the spine posteriorly, with a low-amplitude smoothed random texture and seeded branching
  vessel trees grown from each hilum (blood, 40 HU, partial-volume weighted: -600..0 HU once blurred).
- 3 heart: an ellipsoid (myocardium 40 HU, inner blood pool ``blood_pool_hu``) whose long axis runs
  from the base (right-posterior-superior) to the apex (left-anterior-inferior), centred left of the
  midline (x < 0) and anterior of the spine.
- 4 aorta: a tube (blood, ``blood_pool_hu``) from the heart base: ascending, arch over the left main
  bronchus, descending left-anterolateral of the spine to the bottom of the volume.
- 5 spine: vertebral bodies (cancellous 280 HU, cortical shell 800 HU) with intervertebral discs
  (90 HU, included in the label so the column is one piece) and posterior elements (lamina ring,
  transverse and spinous processes, 650 HU, kept inside the back muscles) along the whole z range,
  posterior midline.
- 6 ribs: twelve pairs of curved bony bands (900 HU) just outside the pleural cavity, sloping down
  anteriorly, the upper three tighter, the last two floating; the sternum (500 HU) is included.
- 7 liver: the diaphragm/liver region (55 HU) below the right dome.
- 8 airways: trachea and main bronchi lumen (-1000 HU), which a radiograph shows; an addition after
  the seven tissue labels, so that those keep their numbers.

The CT is then blurred with a Gaussian (``smoothing_sigma_mm``, partial volume) and given white
Gaussian noise (``noise_std_hu``), and clipped to [-1024, 3071] HU. The label map is not blurred.

The anatomy is defined in millimetres and does not scale with the grid: ``shape_ijk`` times
``spacing_mm`` should be at least ~ 380 mm (e.g. 96 x 4 mm, 64 x 6 mm, 128 x 3 mm) to hold the
whole torso; a smaller field of view simply crops it.

Seeded variation (uniform within the config ranges): torso half-width and half-depth, subcutaneous
fat thickness, heart scale and shift, lung height, rib spacing; vessel-tree branching, lung texture
and noise are drawn from the same generator. Same config and seed -> bit-identical output.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from xraycardiac.volume import Volume

__all__ = ["HU", "LABELS", "ChestPhantomConfig", "make_chest_phantom", "write_phantom_pair"]

LABELS: dict[str, int] = {
    "air": 0,
    "body": 1,
    "lungs": 2,
    "heart": 3,
    "aorta": 4,
    "spine": 5,
    "ribs": 6,
    "liver": 7,
    "airways": 8,
}
"""Label map values by structure name (uint8 label map)."""

HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "pericardial_fat": -70.0,
    "muscle": 40.0,
    "mediastinum": 15.0,
    "abdomen": 30.0,
    "lung": -850.0,
    "vessel": 40.0,
    "myocardium": 40.0,
    "liver": 55.0,
    "cancellous_bone": 280.0,
    "cortical_bone": 800.0,
    "posterior_elements": 650.0,
    "disc": 90.0,
    "rib": 900.0,
    "sternum": 500.0,
}
"""Nominal tissue HU before smoothing and noise (blood pool and aorta use ``blood_pool_hu``)."""

_LUNG_TEXTURE_STD_HU = 25.0
_Z_LUNG_APEX_MM = 125.0  # lung apices; everything else in z hangs from this and the lung height
_LUNG_HEIGHT_MM = 195.0  # apex to right diaphragm dome at lung_height_scale = 1
_LEFT_DOME_DROP_MM = 15.0  # the left dome sits lower than the right one (liver under the right)
_WALL_MM = 12.0  # chest-wall muscle inside the fat layer (anterior/lateral)
_POSTERIOR_WALL_EXTRA_MM = 20.0  # back muscles are thicker: the cavity centre is shifted anteriorly
_VERTEBRA_PERIOD_MM = 27.0  # body + disc
_DISC_MM = 6.0
_RIB_HALF_HEIGHT_MM = 5.0
_RIB_DROP_MM = 60.0  # how far a rib descends from its posterior end to its anterior end


def _check_range(name: str, value: tuple[float, float], positive: bool = True) -> None:
    """Raise ValueError unless value is a finite (lo, hi) pair with lo <= hi (and lo > 0 if positive)."""
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        and value[0] <= value[1]
        and (not positive or value[0] > 0)
    )
    if not ok:
        need = "0 < lo <= hi" if positive else "lo <= hi"
        raise ValueError(
            f"ChestPhantomConfig.{name}: expected a finite (lo, hi) pair with {need}, got {value!r}"
        )


@dataclass(frozen=True)
class ChestPhantomConfig:
    """Grid, seed and anatomical variation ranges of the chest phantom.

    Attributes:
        shape_ijk: voxels along I (x, Right), J (y, Anterior), K (z, Superior); each >= 16.
        spacing_mm: isotropic voxel size in mm; shape * spacing ~ 380 mm holds the whole chest.
        seed: random seed (non-negative); same seed -> identical phantom.
        torso_half_width_mm: range of the torso's lateral semi-axis (x), mm.
        torso_half_depth_mm: range of the torso's antero-posterior semi-axis (y), mm.
        fat_thickness_mm: range of the subcutaneous fat layer thickness, mm.
        heart_scale: range of the factor on the heart's semi-axes, (60, 48, 42) mm for an average
            chest and scaled with the size of the chest cavity.
        heart_shift_mm: range of the heart's shift along each of x, y, z, mm.
        lung_height_scale: range of the factor on the apex-to-dome lung height (195 mm).
        rib_spacing_mm: range of the z distance between consecutive ribs, mm.
        blood_pool_hu: HU of blood in the heart chambers and the aorta (45: no contrast; ~300: CTA).
        smoothing_sigma_mm: Gaussian blur (partial volume) applied to the CT, mm; 0 disables it.
        noise_std_hu: standard deviation of the additive Gaussian noise, HU; 0 disables it.
    """

    shape_ijk: tuple[int, int, int] = (96, 96, 96)
    spacing_mm: float = 4.0
    seed: int = 0
    torso_half_width_mm: tuple[float, float] = (150.0, 180.0)
    torso_half_depth_mm: tuple[float, float] = (100.0, 125.0)
    fat_thickness_mm: tuple[float, float] = (6.0, 20.0)
    heart_scale: tuple[float, float] = (0.9, 1.1)
    heart_shift_mm: tuple[float, float] = (-10.0, 10.0)
    lung_height_scale: tuple[float, float] = (0.9, 1.1)
    rib_spacing_mm: tuple[float, float] = (22.0, 28.0)
    blood_pool_hu: float = 45.0
    smoothing_sigma_mm: float = 2.0
    noise_std_hu: float = 10.0

    def __post_init__(self) -> None:
        shape = self.shape_ijk
        if not (
            isinstance(shape, tuple)
            and len(shape) == 3
            and all(isinstance(n, (int, np.integer)) and n >= 16 for n in shape)
        ):
            raise ValueError(f"ChestPhantomConfig.shape_ijk: expected three integers >= 16, got {shape!r}")
        if not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(
                f"ChestPhantomConfig.spacing_mm: expected a finite value > 0 mm, got {self.spacing_mm}"
            )
        if not (isinstance(self.seed, (int, np.integer)) and self.seed >= 0):
            raise ValueError(f"ChestPhantomConfig.seed: expected a non-negative integer, got {self.seed!r}")
        for name in ("torso_half_width_mm", "torso_half_depth_mm", "heart_scale", "lung_height_scale"):
            _check_range(name, getattr(self, name))
        _check_range("rib_spacing_mm", self.rib_spacing_mm)
        _check_range("fat_thickness_mm", self.fat_thickness_mm, positive=False)
        _check_range("heart_shift_mm", self.heart_shift_mm, positive=False)
        if self.fat_thickness_mm[0] < 0:
            raise ValueError(
                f"ChestPhantomConfig.fat_thickness_mm: expected lo >= 0, got {self.fat_thickness_mm!r}"
            )
        if (
            self.torso_half_depth_mm[0] - self.fat_thickness_mm[1] - _WALL_MM - _POSTERIOR_WALL_EXTRA_MM / 2
            < 40
        ):
            raise ValueError(
                "ChestPhantomConfig: torso_half_depth_mm minus fat_thickness_mm leaves no room for the "
                f"chest cavity (need lo(depth) - hi(fat) >= 62 mm, got {self.torso_half_depth_mm!r}, "
                f"{self.fat_thickness_mm!r})"
            )
        for name in ("blood_pool_hu", "smoothing_sigma_mm", "noise_std_hu"):
            value = getattr(self, name)
            if not math.isfinite(value) or (name != "blood_pool_hu" and value < 0):
                raise ValueError(f"ChestPhantomConfig.{name}: expected a finite value >= 0, got {value}")


# --------------------------------------------------------------------------------------------------
# Rasterisation helpers
# --------------------------------------------------------------------------------------------------


class _Grid:
    """RAS coordinates of the voxel centres of an identity-direction grid centred on the origin."""

    def __init__(self, shape_ijk: tuple[int, int, int], spacing_mm: float) -> None:
        self.shape_kji = (shape_ijk[2], shape_ijk[1], shape_ijk[0])
        self.spacing = float(spacing_mm)
        self.origin = -(np.asarray(shape_ijk, dtype=np.float64) - 1.0) / 2.0 * self.spacing
        self.x, self.y, self.z = (
            (self.origin[a] + self.spacing * np.arange(shape_ijk[a])).astype(np.float32) for a in range(3)
        )
        self.X = self.x[None, None, :]
        self.Y = self.y[None, :, None]
        self.Z = self.z[:, None, None]

    def index_of(self, p: np.ndarray) -> tuple[int, int, int] | None:
        """(k, j, i) of the voxel nearest to RAS point p, or None outside the grid."""
        ijk = np.rint((np.asarray(p) - self.origin) / self.spacing).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.asarray(self.shape_kji[::-1])):
            return None
        return int(ijk[2]), int(ijk[1]), int(ijk[0])

    def segment(
        self, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
        """Distance (mm) to segment p0-p1 and the local radius, on the sub-block that can be within reach.

        Returns (slices (K, J, I), distance, radius) or None when the block misses the grid.
        """
        reach = max(r0, r1) + self.spacing
        lo = np.minimum(p0, p1) - reach
        hi = np.maximum(p0, p1) + reach
        sl = []
        for axis, coords in zip((2, 1, 0), (self.z, self.y, self.x), strict=True):
            a = int(np.searchsorted(coords, lo[axis]))
            b = int(np.searchsorted(coords, hi[axis], side="right"))
            if a >= b:
                return None
            sl.append(slice(a, b))
        dz = self.z[sl[0]][:, None, None] - np.float32(p0[2])
        dy = self.y[sl[1]][None, :, None] - np.float32(p0[1])
        dx = self.x[sl[2]][None, None, :] - np.float32(p0[0])
        d = (p1 - p0).astype(np.float32)
        length2 = float(d @ d)
        if length2 > 0:
            t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / length2, 0.0, 1.0)
        else:
            t = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
        dist = np.sqrt((dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dz - t * d[2]) ** 2)
        return (sl[0], sl[1], sl[2]), dist, r0 + t * (r1 - r0)

    def paint_tube(self, mask: np.ndarray, points: np.ndarray, radii: np.ndarray) -> None:
        """Set mask True inside the tube along polyline points (N, 3) RAS mm with radii (N,) mm."""
        for n in range(len(points) - 1):
            hit = self.segment(points[n], points[n + 1], float(radii[n]), float(radii[n + 1]))
            if hit is not None:
                sl, dist, radius = hit
                mask[sl] |= dist <= radius


def _smooth_polyline(
    points: np.ndarray, radii: np.ndarray, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Chaikin corner cutting of a polyline (and its radii), keeping both end points."""
    pr = np.concatenate([points, radii[:, None]], axis=1)
    for _ in range(iterations):
        q = 0.75 * pr[:-1] + 0.25 * pr[1:]
        r = 0.25 * pr[:-1] + 0.75 * pr[1:]
        mid = np.stack([q, r], axis=1).reshape(-1, pr.shape[1])
        pr = np.concatenate([pr[:1], mid, pr[-1:]], axis=0)
    return pr[:, :3], pr[:, 3]


def _inside_ellipse(X: np.ndarray, Y: np.ndarray, cy: float, ax: float, ay: float) -> np.ndarray:
    """Points inside the axis-aligned ellipse centred at (0, cy) with semi-axes (ax, ay)."""
    return (X / ax) ** 2 + ((Y - cy) / ay) ** 2 <= 1.0


def _drop_specks(mask: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """Keep the connected components of mask holding at least min_fraction of the largest one.

    Used for masks that are remainders of other shapes (lungs, aorta, liver): at coarse spacing thin
    pockets between structures would otherwise survive as specks of a few voxels.
    """
    comps, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    keep = sizes >= min_fraction * sizes.max()
    keep[0] = False
    return keep[comps]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------


def _grow_vessel_trees(
    grid: _Grid,
    lung: np.ndarray,
    hilum: np.ndarray,
    side: float,
    rng: np.random.Generator,
    out: np.ndarray,
) -> None:
    """Paint partial-volume vessel fractions (max-combined into out) of branching trees from a hilum.

    A segment whose end leaves the lung stops branching; fractions are later masked by the lung.
    """
    h = grid.spacing
    roots = [
        (0.3, 0.0, 1.0),
        (0.6, 0.5, 0.8),
        (1.0, 0.0, 0.5),
        (1.0, 0.3, -0.2),
        (0.4, 1.0, -0.6),
        (0.5, -0.8, -0.8),
        (0.7, -0.5, 0.3),
        (0.3, 0.0, -1.0),
    ]
    stack = []
    for rx, ry, rz in roots:
        d = _unit(np.array([side * rx, ry, rz]) + rng.normal(0.0, 0.15, 3))
        stack.append((hilum.copy(), d, 45.0 * rng.uniform(0.85, 1.15), 4.5, 0))
    while stack:
        p0, d, length, radius, depth = stack.pop()
        p1 = p0 + length * d
        r1 = radius * 0.85
        hit = grid.segment(p0, p1, radius, r1)
        if hit is not None:
            sl, dist, r = hit
            frac = np.clip((r - dist) / h + 0.5, 0.0, 1.0) * np.minimum(1.0, 2.0 * r / h)
            np.maximum(out[sl], frac.astype(np.float32), out=out[sl])
        idx = grid.index_of(p1)
        if depth >= 5 or idx is None or not lung[idx]:
            continue
        # Two children leaving at 20-40 degrees on opposite sides of a random perpendicular.
        perp = _unit(np.cross(d, rng.normal(size=3)))
        for sign in (1.0, -1.0):
            angle = math.radians(rng.uniform(20.0, 40.0))
            child = _unit(math.cos(angle) * d + sign * math.sin(angle) * perp)
            stack.append((p1, child, length * rng.uniform(0.65, 0.85), radius * 0.78, depth + 1))


def make_chest_phantom(config: ChestPhantomConfig | None = None) -> tuple[Volume, Volume]:
    """Generate a chest CT in HU and its label map.

    Args:
        config: grid, seed and variation ranges; ``ChestPhantomConfig()`` if None.

    Returns:
        (ct, labels) on the same grid: identity directions (I -> +x Right, J -> +y Anterior,
        K -> +z Superior in RAS), isotropic ``spacing_mm``, origin chosen so the grid centre is
        RAS (0, 0, 0). ``ct.array`` is float32 (K, J, I) HU; ``labels.array`` is uint8 (K, J, I)
        with the values of ``LABELS``. Both carry the seed and the sampled anatomical parameters in
        ``meta`` (``parameters_json``); ``labels.meta["labels_json"]`` holds ``LABELS``.
    """
    cfg = config if config is not None else ChestPhantomConfig()
    grid = _Grid(cfg.shape_ijk, cfg.spacing_mm)
    X, Y, Z = grid.X, grid.Y, grid.Z
    rng = np.random.default_rng(cfg.seed)

    # ---- sampled anatomy (fixed draw order: part of the determinism contract) ----
    a = float(rng.uniform(*cfg.torso_half_width_mm))
    b = float(rng.uniform(*cfg.torso_half_depth_mm))
    fat = float(rng.uniform(*cfg.fat_thickness_mm))
    heart_scale = float(rng.uniform(*cfg.heart_scale))
    heart_shift = rng.uniform(*cfg.heart_shift_mm, size=3)
    lung_scale = float(rng.uniform(*cfg.lung_height_scale))
    rib_spacing = float(rng.uniform(*cfg.rib_spacing_mm))
    params = {
        "torso_half_width_mm": a,
        "torso_half_depth_mm": b,
        "fat_thickness_mm": fat,
        "heart_scale": heart_scale,
        "heart_shift_mm": [float(v) for v in heart_shift],
        "lung_height_scale": lung_scale,
        "rib_spacing_mm": rib_spacing,
    }

    # Pleural cavity: an ellipse shifted anteriorly (back muscles are thicker than the chest wall).
    cy = _POSTERIOR_WALL_EXTRA_MM / 2.0
    ac = a - fat - _WALL_MM
    bc = b - fat - _WALL_MM - _POSTERIOR_WALL_EXTRA_MM / 2.0
    lung_height = _LUNG_HEIGHT_MM * lung_scale
    z_apex = _Z_LUNG_APEX_MM
    z_dome_r = z_apex - lung_height
    z_dome_l = z_dome_r - _LEFT_DOME_DROP_MM
    z_carina = z_apex - 0.4 * lung_height
    z_arch = z_carina + 22.0

    # Spine: vertebral body centre projects into the cavity posteriorly; mild thoracic kyphosis.
    vb_rx, vb_ry = 20.0, 16.0
    y_vb0 = cy - bc + 10.0
    y_vb = y_vb0 - 5.0 * np.exp(-(((grid.z - z_carina) / 150.0) ** 2))  # (K,)
    y_tr = y_vb0 + vb_ry + 10.0  # trachea centre, anterior of the oesophagus

    # ---- body, fat, muscle ----
    body2d = _inside_ellipse(X[0], Y[0], 0.0, a, b)  # (J, I)
    muscle2d = _inside_ellipse(X[0], Y[0], 0.0, a - fat, b - fat)
    cavity2d = _inside_ellipse(X[0], Y[0], cy, ac, bc)
    shape = grid.shape_kji
    labels = np.zeros(shape, dtype=np.uint8)
    hu = np.full(shape, HU["air"], dtype=np.float32)
    labels[:, body2d] = LABELS["body"]
    hu[:, body2d] = HU["fat"]
    hu[:, muscle2d] = HU["muscle"]
    cavity = np.broadcast_to(cavity2d, shape)

    # Diaphragm: one dome per side, highest antero-centrally, deepest in the posterior recess.
    side_r = X >= 0
    xs = 0.45 * ac
    y_dome = cy + 0.15 * bc
    z_diaph = np.where(
        side_r,
        z_dome_r - 0.006 * ((X - xs) ** 2 + (Y - y_dome) ** 2),
        z_dome_l - 0.006 * ((X + xs) ** 2 + (Y - y_dome) ** 2),
    )  # (1, J, I)
    z_top = z_apex - 0.012 * ((np.abs(X) - xs) ** 2 + (Y - (cy - 0.2 * bc)) ** 2)
    above = Z > z_diaph
    hu[cavity & above] = HU["mediastinum"]
    hu[cavity & ~above] = HU["abdomen"]

    # ---- heart ----
    u = _unit(np.array([-0.62, 0.51, -0.59]))  # long axis, base -> apex (left, anterior, inferior)
    v = _unit(np.cross(u, [0.0, 0.0, 1.0]))
    w = np.cross(u, v)
    # The heart follows the size of the chest (semi-axes quoted for a 140 x 82 mm cavity) times heart_scale.
    cavity_factor = min(max(math.sqrt(ac * bc / (140.0 * 82.0)), 0.85), 1.1)
    semi = heart_scale * cavity_factor * np.array([60.0, 48.0, 42.0])
    hc = np.array([-0.22 * ac, cy + 0.2 * bc, z_dome_l + 40.0]) + heart_shift
    dx, dy, dz = X - hc[0], Y - hc[1], Z - hc[2]
    q = sum(((e[0] * dx + e[1] * dy + e[2] * dz) / s) ** 2 for e, s in zip((u, v, w), semi, strict=True))
    heart = (q <= 1.0) & cavity
    blood = (q <= 0.72**2) & cavity
    pericardium = (q <= 1.12**2) & cavity
    del dx, dy, dz

    # ---- aorta: root at the heart base, ascending, arch, descending left of the spine ----
    base = hc - 0.6 * semi[0] * u
    x_desc, y_desc = -(vb_rx + 12.0), y_vb0 + 8.0
    ctrl = np.array(
        [
            base,
            base + [12.0, 10.0, 25.0],
            [base[0] + 10.0, base[1] + 8.0, z_arch - 12.0],
            [-8.0, y_tr + 14.0, z_arch],
            [x_desc, y_desc + 6.0, z_arch - 12.0],
            [x_desc, y_desc, z_arch - 45.0],
            [x_desc, y_desc, float(grid.z[0]) - 20.0],
        ]
    )
    ctrl_r = np.array([14.0, 14.0, 13.5, 13.0, 12.0, 11.0, 10.0])
    aorta_pts, aorta_r = _smooth_polyline(ctrl, ctrl_r)
    aorta = np.zeros(shape, dtype=bool)
    grid.paint_tube(aorta, aorta_pts, aorta_r)
    aorta_margin = np.zeros(shape, dtype=bool)
    grid.paint_tube(aorta_margin, aorta_pts, aorta_r + 6.0)
    aorta &= ~heart

    # ---- airways: trachea from the top down to the carina, two main bronchi to the hila ----
    hila = {side: np.array([side * 0.3 * ac, y_tr - 2.0, z_carina - 28.0]) for side in (1.0, -1.0)}
    carina = np.array([0.0, y_tr, z_carina])
    airways = np.zeros(shape, dtype=bool)
    airway_margin = np.zeros(shape, dtype=bool)
    trachea = np.array([[0.0, y_tr, float(grid.z[-1]) + 20.0], carina])
    for pts, r in (
        (trachea, [9.0, 9.0]),
        (np.array([carina, hila[1.0]]), [7.0, 6.0]),
        (np.array([carina, hila[-1.0]]), [6.5, 5.5]),
    ):
        grid.paint_tube(airways, pts, np.array(r))
        grid.paint_tube(airway_margin, pts, np.array(r) + 4.0)
    airways &= ~heart & ~aorta

    # ---- spine ----
    phase = np.mod(grid.z - z_carina, _VERTEBRA_PERIOD_MM)[:, None, None]  # mm within a level
    body_h = _VERTEBRA_PERIOD_MM - _DISC_MM
    yv = Y - y_vb[:, None, None]  # (K, J, 1)
    qv = (X / vb_rx) ** 2 + (yv / vb_ry) ** 2
    column = qv <= 1.0  # bodies + discs: continuous along z
    is_body = column & (phase < body_h)
    shell = is_body & ((qv > (1.0 - 3.0 / vb_ry) ** 2) | (phase < 2.0) | (phase > body_h - 2.0))
    yc = yv + vb_ry + 7.0  # y relative to the spinal canal centre
    rc = np.sqrt(X**2 + yc**2)
    level = (phase >= 3.0) & (phase <= body_h - 2.0)
    ring = level & (rc <= 15.0) & (rc > 7.0)
    transverse = level & (phase <= body_h - 6.0) & (np.abs(X) <= 30.0) & (np.abs(yc) <= 5.0)
    spinous = level & (np.abs(X) <= 5.0) & (yc <= -12.0) & (yc >= -32.0)
    # Posterior elements stay inside the back muscles (a thin patient gets shorter processes).
    in_muscle = _inside_ellipse(X[0], Y[0], 0.0, a - fat - 4.0, b - fat - 4.0)
    posterior = (ring | transverse | spinous) & ~column & in_muscle
    spine = column | posterior
    cord = (rc <= 7.0) & ~column
    spine_margin = (np.abs(X) <= vb_rx + 10.0) & (yv <= vb_ry + 8.0)

    # ---- ribs and sternum ----
    theta = np.abs(np.arctan2(X[0], -(Y[0] - cy)))  # (J, I): 0 posterior midline, pi anterior
    t_dir = np.sign(X[0])
    ribs = np.zeros(shape, dtype=bool)
    z_rib1 = z_apex + 5.0
    for n in range(12):
        s = (0.62, 0.8, 0.92)[n] if n < 3 else 1.0
        th0, th1 = 0.35, {10: 1.7, 11: 1.3}.get(n, 2.5)
        band = ~_inside_ellipse(X[0], Y[0], cy, s * ac + 2.0, s * bc + 2.0)
        band &= _inside_ellipse(X[0], Y[0], cy, s * ac + 10.0, s * bc + 10.0)
        band &= (theta >= th0) & (theta <= th1) & (t_dir != 0)
        frac = np.clip((theta - th0) / (th1 - th0), 0.0, 1.0)
        z_rib = z_rib1 - n * rib_spacing - _RIB_DROP_MM * frac**1.2  # (J, I)
        ribs |= band[None] & (np.abs(Z - z_rib[None]) <= _RIB_HALF_HEIGHT_MM)
    sternum = (
        (np.abs(X) <= 16.0)
        & ~_inside_ellipse(X, Y, cy, ac + 1.0, bc + 1.0)
        & _inside_ellipse(X, Y, cy, ac + 11.0, bc + 11.0)
        & (Y > cy)
        & (Z <= z_rib1 - 10.0)
        & (Z >= z_rib1 - 180.0)
    )

    # ---- lungs: what is left of the thoracic cavity between apex and diaphragm ----
    half_med = np.where(Z > z_carina, 22.0, 10.0)
    exclusion = (np.abs(X) <= half_med) | pericardium | aorta_margin | airway_margin | spine_margin | ribs
    lung = _drop_specks(cavity & above & (Z < z_top) & ~exclusion)
    hu[pericardium & ~lung] = HU["pericardial_fat"]

    # ---- liver (diaphragm/liver region) and gastric bubble on the left ----
    liver = cavity & ~above & (X > -0.3 * ac) & (Z > z_dome_r - 170.0)
    bubble = ((X + 0.45 * ac) / 30.0) ** 2 + ((Y - cy) / 25.0) ** 2 + (
        (Z - (z_dome_l - 30.0)) / 14.0
    ) ** 2 <= 1
    bubble &= cavity & ~above & ~liver

    # ---- compose labels and HU (later structures win) ----
    labels[lung] = LABELS["lungs"]
    hu[lung] = HU["lung"]
    labels[liver] = LABELS["liver"]
    hu[liver] = HU["liver"]
    hu[bubble] = HU["air"]
    labels[heart] = LABELS["heart"]
    hu[heart] = HU["myocardium"]
    hu[blood] = cfg.blood_pool_hu
    labels[aorta] = LABELS["aorta"]
    hu[aorta] = cfg.blood_pool_hu
    labels[airways] = LABELS["airways"]
    hu[airways] = HU["air"]
    hu[cord] = HU["muscle"] - 10.0
    labels[spine] = LABELS["spine"]
    hu[column] = HU["disc"]
    hu[is_body] = HU["cancellous_bone"]
    hu[shell] = HU["cortical_bone"]
    hu[posterior] = HU["posterior_elements"]
    labels[ribs] = LABELS["ribs"]
    hu[ribs] = HU["rib"]
    labels[sternum] = LABELS["ribs"]
    hu[sternum] = HU["sternum"]
    # Rasterised remainders (aorta cut by the heart, liver cut by the spine) can leave specks of a few
    # voxels; they become body soft tissue (their HU is soft tissue already).
    for name in ("aorta", "liver"):
        mask = labels == LABELS[name]
        labels[mask & ~_drop_specks(mask)] = LABELS["body"]
    del q, qv, rc, yc, yv, exclusion, column, is_body, shell, posterior

    # ---- lung vessels and texture ----
    vessels = np.zeros(shape, dtype=np.float32)
    lung_now = labels == LABELS["lungs"]
    for side in (1.0, -1.0):
        _grow_vessel_trees(grid, lung_now, hila[side], side, rng, vessels)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
    texture *= _LUNG_TEXTURE_STD_HU / max(float(texture.std()), 1e-6)
    hu[lung_now] += texture[lung_now] + vessels[lung_now] * (HU["vessel"] - HU["lung"])

    # ---- partial volume, noise ----
    if cfg.smoothing_sigma_mm > 0:
        hu = ndimage.gaussian_filter(hu, cfg.smoothing_sigma_mm / grid.spacing, mode="nearest")
    if cfg.noise_std_hu > 0:
        hu += rng.normal(0.0, cfg.noise_std_hu, shape).astype(np.float32)
    np.clip(hu, -1024.0, 3071.0, out=hu)

    meta = {
        "generator": "xraycardiac.phantoms.chest",
        "seed": int(cfg.seed),
        "parameters_json": json.dumps(params),
        "config_json": json.dumps(asdict(cfg)),
    }
    spacing = (grid.spacing,) * 3
    origin = tuple(float(v) for v in grid.origin)
    ct = Volume.from_geometry(
        hu.astype(np.float32, copy=False), spacing, origin, meta={**meta, "quantity": "HU"}
    )
    label_vol = Volume.from_geometry(
        labels, spacing, origin, meta={**meta, "quantity": "label", "labels_json": json.dumps(LABELS)}
    )
    return ct, label_vol


def write_phantom_pair(out_dir: str | Path, config: ChestPhantomConfig | None = None) -> tuple[Path, Path]:
    """Generate a phantom and write ``chest_ct.nrrd`` and ``chest_labels.nrrd`` into an existing out_dir."""
    from xraycardiac.io import write_volume

    ct, labels = make_chest_phantom(config)
    return write_volume(ct, Path(out_dir) / "chest_ct.nrrd"), write_volume(
        labels, Path(out_dir) / "chest_labels.nrrd"
    )
