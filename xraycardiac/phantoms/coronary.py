"""Procedural coronary arteries on an ellipsoidal heart: a seeded ``CoronaryTree`` with exact ground truth.

Geometry. The heart is the ellipsoid of the chest phantom (``xraycardiac.phantoms.chest``): centre
left-anterior-inferior of mid-chest, long axis ``u`` from the base (right-posterior-superior) to the
apex (left-anterior-inferior), short axes ``v = unit(u x z)`` and ``w = u x v`` with semi-axes
(a, b, c) = about (58, 46.5, 40.5) mm. Vessel centrelines run ON the epicardial surface, at
``surface_offset_mm`` outside it (on the ellipsoid of semi-axes (a, b, c) + offset). A surface
point is addressed by (theta, phi) in degrees: theta is the polar angle from the apex (0 = apex,
180 = base; theta < 0 continues over the apex to the other side), phi the azimuth around ``u``
from the heart's anterior direction (the patient's anterior projected perpendicular to ``u``):
+90 is the heart's right (acute margin, right ventricle), -90 its left (obtuse margin, left
ventricle), +-180 its posterior/diaphragmatic side.

Anatomy (landmarks jittered per seed): the atrioventricular (AV) groove is the ring theta ~ 115 deg;
the anterior interventricular groove (AIVG) runs at phi ~ -35 deg, the posterior one (PIVG) at
phi ~ 155 deg; the ostia sit on the aortic root just above the base, where the vessels reach the
surface, near phi ~ 0 (the aortic root itself is not modelled: the vessels start on the surface).

- LCA (tree 0): the left main (LM) runs from the left ostium to the top of the AIVG and splits into
  the LAD (down the AIVG, round the apex) and the LCx (leftwards and posteriorly along the left AV
  groove, then onto the posterolateral wall); diagonals (D1..) leave the proximal-mid LAD onto the
  anterolateral LV free wall, obtuse marginals (OM1..) leave the LCx towards the apex.
- RCA (tree 1): from the right ostium along the right AV groove, round the acute margin to the crux
  (where the PIVG meets the AV groove) and a little beyond; acute marginals (AM1..) leave it over
  the RV free wall, the posterior descending artery (PDA) leaves at the crux down the PIVG
  (right-dominant circulation).

Each branch is a cubic spline through jittered knots in (theta, phi), mapped onto the surface and
cut at a sampled length, with points every ~``step_mm`` of arc length.

Literature values (approximate; the defaults of ``CoronaryPhantomConfig``):

- Lengths: LM 8-12 mm, LAD 100-130 mm, LCx 80-100 mm, RCA 120-140 mm (anatomy texts and CCTA
  series); side branches, chosen to fit the ellipsoid: diagonals 30-60 mm, obtuse marginals
  30-60 mm, acute marginals 20-50 mm, PDA 40-70 mm (a side branch's length is drawn from its range
  but not beyond the room its path has on the surface, so distal diagonals come out shorter).
- Proximal lumen diameters after Dodge et al., Circulation 1992;86:232-246 (normal angiograms, right
  dominant): LM ~4.5 mm, proximal LAD ~3.6 mm, proximal LCx ~3.4 mm, proximal RCA ~3.5-4 mm; first
  diagonal / obtuse marginal / PDA ~2 mm; vessels taper to ~1 mm distally.
- Murray's law at every bifurcation: r_parent^k = r_child1^k + r_child2^k with k =
  ``murray_exponent`` = 3 (Murray 1926; coronary measurements suggest exponents of ~2.3-3).
  The LAD takes a fraction ``lad_flow_fraction`` of r_LM^k (0.5-0.62 gives LAD/LCx ~3.7/3.4 mm from
  a 4.5 mm LM); a side branch leaves with ``side_branch_ratio`` times the parent radius (its
  diameter kept >= the smallest distal diameter) and the parent continues with (r^k - r_side^k)^(1/k).
  Between bifurcations the log-radius of a branch falls as (s / L)^p towards its distal diameter
  (p = 2 for LAD and LCx, 4 for the RCA, which keeps its calibre to the crux, 1 for side
  branches), so radii never increase from an ostium to an endpoint.
- Stenoses (optional, ``stenosis_count``): focal Gaussian narrowings on LM/LAD/LCx/RCA where the
  lumen is >= 2 mm wide, r(s) *= 1 - severity * exp(-(s - s0)^2 / (2 sigma^2)) within +-3 sigma,
  sigma = FWHM / 2.355, severity a fraction of the diameter; placed more than 3 sigma from any
  bifurcation (Murray's law stays exact) and recorded in ``meta["stenoses"]``. They are drawn last
  from the generator, so the same seed gives the same anatomy with and without stenoses.

Determinism: everything is drawn from ``numpy.random.default_rng(seed)`` in a fixed order; same
config -> identical tree. Generation takes a few tens of milliseconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.jsonutil import is_number
from xraycardiac.phantoms.heart import HeartEllipsoid, tilted_axis

__all__ = ["CoronaryPhantomConfig", "HeartEllipsoid", "make_coronary_tree"]

# Landmarks of the heart surface (degrees, see the module docstring): nominal value, jitter half-width.
_THETA_AV = (115.0, 3.0)
_PHI_AIVG = (-35.0, 5.0)
_PHI_PIVG = (155.0, 5.0)
_PHI_RCA_OSTIUM = (5.0, 5.0)
_KNOT_JITTER_DEG = 2.5
# Side-branch knots as (theta, phi) offsets from the origin, degrees: diagonals run onto the
# anterolateral wall (turning lateral near the apex, hence the theta floor), marginals towards the
# apex over the LV (OM) / RV (AM) free walls, the PDA down the posterior interventricular groove.
_SIDE_KNOTS_DEG = {
    "D": ((-10, -20), (-25, -42), (-42, -68), (-52, -110)),
    "OM": ((-15, -5), (-40, -10), (-80, -12)),
    "AM": ((-15, 3), (-40, 6), (-80, 8)),
    "PDA": ((-12, -2), (-40, -4), (-90, -5)),
}
_SIDE_THETA_FLOOR_DEG = {"D": 16.0}
_SIDE_SEPARATION_MM = 12.0  # minimum distance along a parent between two side branches
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_STENOSIS_MIN_RADIUS_MM = 1.0  # lesions are placed where the lumen is >= 2 mm wide
_STENOSIS_REACH_SIGMA = 3.0  # narrowing applied within +-3 sigma (<= 1 % left at the edge)
# Shape p of the taper: the log-radius falls as (s / L)^p; the RCA keeps its calibre to the crux.
_TAPER_SHAPE = {"LAD": 2.0, "LCx": 2.0, "RCA": 4.0, "side": 1.0}


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _check_range(name: str, value: Any, lo_min: float, hi_max: float, integer: bool = False) -> None:
    """ValueError unless value is a (lo, hi) pair with lo_min <= lo <= hi <= hi_max (> 0 if lo_min > 0)."""
    kind = (int, np.integer) if integer else None
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(is_number(v, numpy=True) and (kind is None or isinstance(v, kind)) for v in value)
        and lo_min <= value[0] <= value[1] <= hi_max
    )
    if not ok:
        what = "integers" if integer else "numbers"
        raise ValueError(
            f"CoronaryPhantomConfig.{name}: expected a pair (lo, hi) of {what} with "
            f"{lo_min} <= lo <= hi <= {hi_max}, got {value!r}"
        )


@dataclass(frozen=True)
class CoronaryPhantomConfig:
    """Heart geometry, sampling and anatomical variation ranges of the procedural coronary tree.

    Ranges are (lo, hi) pairs sampled uniformly per seed. Diameters are lumen diameters.

    Attributes:
        seed: random seed (non-negative); same config -> identical tree.
        heart_center_ras_mm: centre of the heart ellipsoid, RAS mm (the chest phantom's average heart).
        heart_long_axis_ras: base -> apex direction in RAS (normalised here); not along RAS y or z.
        heart_semi_axes_mm: semi-axes along the long axis, v = unit(u x z), w = u x v, mm.
        heart_scale: range of the factor on the semi-axes.
        heart_tilt_deg: the long axis is tilted by up to this angle, degrees (0 keeps it).
        surface_offset_mm: centrelines lie this far outside the ellipsoid (epicardial fat), mm.
        step_mm: spacing of the centreline points along the arc, mm.
        lm_length_mm, lad_length_mm, lcx_length_mm, rca_length_mm: main-branch lengths, mm.
        diagonal_length_mm, obtuse_marginal_length_mm, acute_marginal_length_mm, pda_length_mm:
            side-branch lengths (from their bifurcation), mm.
        n_diagonals, n_obtuse_marginals, n_acute_marginals: ranges of the side-branch counts.
        lm_diameter_mm, rca_diameter_mm: proximal diameters, mm.
        lad_flow_fraction: share of r_LM^k that goes to the LAD (the rest to the LCx).
        side_branch_ratio: side-branch radius / parent radius at its bifurcation.
        distal_diameter_mm: diameter each branch tapers to at its end, mm.
        murray_exponent: k in r_parent^k = sum r_child^k (3 = Murray's law).
        stenosis_count: number of focal stenoses on LM/LAD/LCx/RCA, 0..4 (0 = none).
        stenosis_severity: range of the diameter reduction, fraction of the local diameter.
        stenosis_length_mm: range of the lesion length (full width at half maximum), mm.
    """

    seed: int = 0
    heart_center_ras_mm: tuple[float, float, float] = (-30.8, 25.5, -45.0)
    heart_long_axis_ras: tuple[float, float, float] = (-0.62, 0.51, -0.59)
    heart_semi_axes_mm: tuple[float, float, float] = (58.0, 46.5, 40.5)
    heart_scale: tuple[float, float] = (0.95, 1.05)
    heart_tilt_deg: float = 5.0
    surface_offset_mm: float = 2.0
    step_mm: float = 1.0
    lm_length_mm: tuple[float, float] = (8.0, 12.0)
    lad_length_mm: tuple[float, float] = (100.0, 130.0)
    lcx_length_mm: tuple[float, float] = (80.0, 100.0)
    rca_length_mm: tuple[float, float] = (120.0, 140.0)
    diagonal_length_mm: tuple[float, float] = (30.0, 60.0)
    obtuse_marginal_length_mm: tuple[float, float] = (30.0, 60.0)
    acute_marginal_length_mm: tuple[float, float] = (20.0, 50.0)
    pda_length_mm: tuple[float, float] = (40.0, 70.0)
    n_diagonals: tuple[int, int] = (1, 3)
    n_obtuse_marginals: tuple[int, int] = (1, 3)
    n_acute_marginals: tuple[int, int] = (1, 2)
    lm_diameter_mm: tuple[float, float] = (4.2, 4.8)
    rca_diameter_mm: tuple[float, float] = (3.5, 4.0)
    lad_flow_fraction: tuple[float, float] = (0.5, 0.62)
    side_branch_ratio: tuple[float, float] = (0.5, 0.75)
    distal_diameter_mm: tuple[float, float] = (0.9, 1.2)
    murray_exponent: float = 3.0
    stenosis_count: int = 0
    stenosis_severity: tuple[float, float] = (0.3, 0.7)
    stenosis_length_mm: tuple[float, float] = (6.0, 12.0)

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> ValueError:
            return ValueError(
                f"CoronaryPhantomConfig.{name}: expected {expected}, got {getattr(self, name)!r}"
            )

        if not (
            isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool) and self.seed >= 0
        ):
            raise fail("seed", "a non-negative integer")
        for name in ("heart_center_ras_mm", "heart_long_axis_ras", "heart_semi_axes_mm"):
            value = getattr(self, name)
            if not (
                isinstance(value, tuple) and len(value) == 3 and all(is_number(v, numpy=True) for v in value)
            ):
                raise fail(name, "three finite numbers")
        u = np.asarray(self.heart_long_axis_ras, dtype=np.float64)
        norm = float(np.linalg.norm(u))
        if norm == 0 or abs(u[1]) / norm > 0.95 or abs(u[2]) / norm > 0.95:
            raise fail("heart_long_axis_ras", "a non-zero direction not within ~18 deg of RAS y or z")
        if min(self.heart_semi_axes_mm) < 20.0 or max(self.heart_semi_axes_mm) > 150.0:
            raise fail("heart_semi_axes_mm", "semi-axes between 20 and 150 mm")
        _check_range("heart_scale", self.heart_scale, 0.5, 2.0)
        for name, lo, hi in (
            ("heart_tilt_deg", 0.0, 30.0),
            ("surface_offset_mm", 0.0, 10.0),
            ("step_mm", 0.05, 5.0),
            ("murray_exponent", 2.0, 4.0),
        ):
            value = getattr(self, name)
            if not (is_number(value, numpy=True) and lo <= value <= hi and (name != "step_mm" or value > 0)):
                raise fail(name, f"a number in [{lo}, {hi}]")
        for name in (
            "lm_length_mm",
            "lad_length_mm",
            "lcx_length_mm",
            "rca_length_mm",
            "diagonal_length_mm",
            "obtuse_marginal_length_mm",
            "acute_marginal_length_mm",
            "pda_length_mm",
        ):
            _check_range(name, getattr(self, name), 2.0, 300.0)
        for name, hi in (("n_diagonals", 4), ("n_obtuse_marginals", 4), ("n_acute_marginals", 3)):
            _check_range(name, getattr(self, name), 0, hi, integer=True)
        for name in ("lm_diameter_mm", "rca_diameter_mm", "distal_diameter_mm"):
            _check_range(name, getattr(self, name), 0.2, 10.0)
        _check_range("lad_flow_fraction", self.lad_flow_fraction, 0.05, 0.95)
        _check_range("side_branch_ratio", self.side_branch_ratio, 0.1, 0.9)
        if self.distal_diameter_mm[1] > min(self.lm_diameter_mm[0], self.rca_diameter_mm[0]) / 2:
            raise fail("distal_diameter_mm", "at most half the smallest proximal (LM, RCA) diameter")
        count = self.stenosis_count
        if not (isinstance(count, (int, np.integer)) and not isinstance(count, bool) and 0 <= count <= 4):
            raise fail("stenosis_count", "an integer in [0, 4]")
        _check_range("stenosis_severity", self.stenosis_severity, 0.01, 0.9)
        _check_range("stenosis_length_mm", self.stenosis_length_mm, 1.0, 30.0)


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------


@dataclass
class _Branch:
    """A branch during generation: its own points (the first one hangs from ``parent``)."""

    name: str
    tree: int
    parent: tuple[str, int] | None  # (parent branch name, local index of the bifurcation point)
    points: np.ndarray  # (n, 3) RAS mm
    params: np.ndarray  # (n, 2) theta, phi (deg)
    arc: np.ndarray  # (n,) mm from the branch's bifurcation point (or from its ostium)
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sides: list[tuple[int, float, float]] = field(default_factory=list)  # (local index, ratio, side radius)


def _surface_path(
    heart: HeartEllipsoid,
    knots: np.ndarray,
    length_mm: float | tuple[float, float],
    step_mm: float,
    offset_mm: float,
    what: str,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth surface curve through (theta, phi) knots, cut at a length and sampled every ~step_mm.

    ``length_mm`` is a length, or a (lo, hi) range from which the length is drawn with ``rng``
    within what the path offers (so a side branch starting near the apex is not longer than the room
    it has, and still within the range).

    Returns points (n + 1, 3) RAS mm starting at the first knot, params (n + 1, 2), arc (n + 1,) mm.
    """
    knot_xyz = heart.surface_points(knots[:, 0], knots[:, 1], offset_mm)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(knot_xyz, axis=0), axis=1))])
    spline = CubicSpline(chord, knots, axis=0, bc_type="natural")
    dense_u = np.linspace(0.0, chord[-1], max(200, int(chord[-1] / 0.05)))
    dense = spline(dense_u)
    xyz = heart.surface_points(dense[:, 0], dense[:, 1], offset_mm)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))])
    shortest = length_mm[0] if isinstance(length_mm, tuple) else length_mm
    if cum[-1] < shortest:
        raise ValueError(
            f"CoronaryPhantomConfig.heart_semi_axes_mm: the heart is too small for a {shortest:.1f} mm "
            f"{what} (its path is {cum[-1]:.1f} mm); enlarge the heart or shorten {what}"
        )
    if isinstance(length_mm, tuple):
        assert rng is not None
        length_mm = float(rng.uniform(length_mm[0], min(length_mm[1], cum[-1])))
    n = max(1, round(length_mm / step_mm))
    s = length_mm * np.arange(n + 1) / n
    params = np.stack([np.interp(s, cum, dense[:, 0]), np.interp(s, cum, dense[:, 1])], axis=1)
    points = heart.surface_points(params[:, 0], params[:, 1], offset_mm)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    return points, params, arc


def _pick_positions(
    rng: np.random.Generator, arc: np.ndarray, count: int, lo_mm: float, hi_mm: float, taken: list[float]
) -> list[int]:
    """Local indices of ``count`` side-branch origins with arc in [lo, hi], >= _SIDE_SEPARATION_MM apart."""
    chosen: list[int] = []
    candidates = np.flatnonzero((arc >= lo_mm) & (arc <= hi_mm) & (np.arange(len(arc)) < len(arc) - 2))
    for _ in range(count):
        ok = [i for i in candidates if all(abs(arc[i] - t) >= _SIDE_SEPARATION_MM for t in taken)]
        if not ok:
            break
        i = int(ok[int(rng.integers(len(ok)))])
        chosen.append(i)
        taken.append(float(arc[i]))
    return sorted(chosen)


def _taper(
    branch: _Branch, first_radius: float, end_radius: float, k: float, shape: float, floor: float
) -> None:
    """Radii along a branch (sets ``branch.radii`` and the side radii in ``branch.sides``).

    The log-radius falls as (s / L)^shape between bifurcations (shape > 1 keeps the proximal calibre
    and tapers distally), re-planned at each step so the branch ends at ``end_radius`` after the
    Murray drops still ahead. At a side-branch origin i the side takes ratio * r[i] (kept >= floor,
    and small enough that the parent keeps >= floor when it can) and the parent continues with
    (r[i]^k - r_side^k)^(1/k): Murray's law is exact. Radii never increase.
    """
    n = len(branch.points)
    arc = branch.arc  # from the bifurcation point (or the ostium)
    g = (arc / arc[-1]) ** shape if arc[-1] > 0 else np.zeros(n)
    nominal = {i: (1.0 - f**k) ** (1.0 / k) for i, f, _ in branch.sides}
    ratio = {i: f for i, f, _ in branch.sides}
    side_radius: dict[int, float] = {}
    r = np.empty(n)
    r[0] = first_radius
    for i in range(n - 1):
        if i in ratio:
            lo = min(floor, r[i] * 2.0 ** (-1.0 / k))
            hi = max(lo, (r[i] ** k - floor**k) ** (1.0 / k)) if r[i] > floor * 2.0 ** (1.0 / k) else lo
            side = float(np.clip(ratio[i] * r[i], lo, hi))
            side_radius[i] = side
            r[i + 1] = (r[i] ** k - side**k) ** (1.0 / k)
            continue
        ahead = float(np.prod([d for j, d in nominal.items() if j > i])) if nominal else 1.0
        budget = math.log(r[i] * ahead / end_radius)
        rate = max(0.0, budget) / (1.0 - g[i]) if g[i] < 1.0 else 0.0
        r[i + 1] = r[i] * math.exp(-rate * (g[i + 1] - g[i]))
    branch.radii = r
    branch.sides = [(i, f, side_radius[i]) for i, f, _ in branch.sides]


def make_coronary_tree(config: CoronaryPhantomConfig | None = None) -> CoronaryTree:
    """Generate the left and right coronary trees on the heart ellipsoid (see the module docstring).

    Args:
        config: geometry and variation ranges; ``CoronaryPhantomConfig()`` if None.

    Returns:
        A ``CoronaryTree`` in RAS mm: LCA (tree 0, root = left ostium) then RCA (tree 1, root = right
        ostium); branches "LM", "LAD", "LCx", "D1".., "OM1".., "RCA", "AM1".., "PDA". ``meta`` holds
        the generator, seed, config, the heart (``HeartEllipsoid.to_dict()`` plus
        ``surface_offset_mm``), the sampled parameters and ``stenoses`` (list of dicts: branch,
        point_index, arc_length_mm from the ostium, branch_arc_length_mm, severity, length_mm,
        sigma_mm).

    Raises:
        ValueError: the heart is too small for the requested branch lengths, or no room is left
            for the requested stenoses.
    """
    cfg = config if config is not None else CoronaryPhantomConfig()
    rng = np.random.default_rng(cfg.seed)
    step, off, k = float(cfg.step_mm), float(cfg.surface_offset_mm), float(cfg.murray_exponent)

    def uni(rng_range: tuple[float, float]) -> float:
        return float(rng.uniform(*rng_range))

    def jit(half: float = _KNOT_JITTER_DEG) -> float:
        return float(rng.uniform(-half, half))

    # ---- heart (fixed draw order from here on: part of the determinism contract) ----
    scale = uni(cfg.heart_scale)
    u = tilted_axis(rng, cfg.heart_long_axis_ras, cfg.heart_tilt_deg)
    heart = HeartEllipsoid.from_long_axis(
        cfg.heart_center_ras_mm, u, scale * np.asarray(cfg.heart_semi_axes_mm)
    )
    th_av = _THETA_AV[0] + jit(_THETA_AV[1])
    ph_a = _PHI_AIVG[0] + jit(_PHI_AIVG[1])
    ph_p = _PHI_PIVG[0] + jit(_PHI_PIVG[1])
    ph_ro = _PHI_RCA_OSTIUM[0] + jit(_PHI_RCA_OSTIUM[1])

    lengths = {
        "LM": uni(cfg.lm_length_mm),
        "LAD": uni(cfg.lad_length_mm),
        "LCx": uni(cfg.lcx_length_mm),
        "RCA": uni(cfg.rca_length_mm),
    }
    n_d = int(rng.integers(cfg.n_diagonals[0], cfg.n_diagonals[1] + 1))
    n_om = int(rng.integers(cfg.n_obtuse_marginals[0], cfg.n_obtuse_marginals[1] + 1))
    n_am = int(rng.integers(cfg.n_acute_marginals[0], cfg.n_acute_marginals[1] + 1))

    def path(
        knots: list[tuple[float, float]], length: float | tuple[float, float], what: str
    ) -> tuple[np.ndarray, ...]:
        return _surface_path(heart, np.asarray(knots, dtype=np.float64), length, step, off, what, rng)

    # ---- main branches ----
    bif = (th_av, ph_a - 5.0)
    lm_pts, lm_par, _ = path(
        [bif, (th_av + 8 + jit(), ph_a + 15 + jit()), (th_av + 18, ph_a + 32)], lengths["LM"], "LM"
    )
    lm_pts, lm_par = lm_pts[::-1].copy(), lm_par[::-1].copy()  # ostium -> bifurcation
    lm_arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(lm_pts, axis=0), axis=1))])
    lad_knots = [bif, (th_av - 20, ph_a + jit()), (75, ph_a + jit()), (40, ph_a + jit())]
    lad_knots += [(10, ph_a + jit()), (-20, ph_a + jit()), (-70, ph_a + jit())]
    lcx_knots = [
        bif,
        (th_av + 1, ph_a - 35 + jit()),
        (th_av + jit(), -100 + jit()),
        (th_av - 12, -135 + jit()),
    ]
    lcx_knots += [(th_av - 35, -160 + jit()), (th_av - 80, -175 + jit())]
    rca_knots = [(th_av + 10 + jit(), ph_ro), (th_av + 3, 30 + jit()), (th_av + jit(), 70 + jit())]
    rca_knots += [(th_av + jit(), 110 + jit()), (th_av, ph_p), (th_av + 2, ph_p + 45), (th_av + 2, ph_p + 90)]
    branches: dict[str, _Branch] = {"LM": _Branch("LM", 0, None, lm_pts, lm_par, lm_arc)}
    for name, knots, parent in (
        ("LAD", lad_knots, ("LM", len(lm_pts) - 1)),
        ("LCx", lcx_knots, ("LM", len(lm_pts) - 1)),
    ):
        pts, par, arc = path(knots, lengths[name], name)
        branches[name] = _Branch(name, 0, parent, pts[1:], par[1:], arc[1:])
    pts, par, arc = path(rca_knots, lengths["RCA"], "RCA")
    branches["RCA"] = _Branch("RCA", 1, None, pts, par, arc)

    # ---- side-branch origins (local indices on the parent) and radius ratios ----
    lad, lcx, rca = branches["LAD"], branches["LCx"], branches["RCA"]
    d_idx = _pick_positions(rng, lad.arc, n_d, 0.1 * lad.arc[-1], 0.42 * lad.arc[-1], [])
    om_idx = _pick_positions(rng, lcx.arc, n_om, 0.4 * lcx.arc[-1], 0.9 * lcx.arc[-1], [])
    crux = np.flatnonzero(rca.params[:, 1] >= ph_p)
    last_ok = int(np.searchsorted(rca.arc, rca.arc[-1] - 8.0))  # the RCA goes on >= 8 mm past the PDA
    pda_i = min(int(crux[0]) if crux.size else last_ok, last_ok)
    margin = np.flatnonzero((rca.params[:, 1] >= 45.0) & (rca.params[:, 1] <= 120.0))
    am_lo, am_hi = (rca.arc[margin[0]], rca.arc[margin[-1]]) if margin.size else (0.0, -1.0)
    am_idx = _pick_positions(rng, rca.arc, n_am, am_lo, am_hi, [float(rca.arc[pda_i])])
    # (name, parent branch, local index of the origin on the parent, length range)
    side_specs: list[tuple[str, str, int, tuple[float, float]]] = []
    side_specs += [(f"D{n + 1}", "LAD", i, cfg.diagonal_length_mm) for n, i in enumerate(d_idx)]
    side_specs += [(f"OM{n + 1}", "LCx", i, cfg.obtuse_marginal_length_mm) for n, i in enumerate(om_idx)]
    side_specs += [(f"AM{n + 1}", "RCA", i, cfg.acute_marginal_length_mm) for n, i in enumerate(am_idx)]
    side_specs += [("PDA", "RCA", pda_i, cfg.pda_length_mm)]
    ratios = [uni(cfg.side_branch_ratio) for _ in side_specs]
    for (_, parent, i, _), f in zip(side_specs, ratios, strict=True):
        branches[parent].sides.append((i, f, 0.0))

    # ---- radii of the main branches: Murray at LM -> LAD + LCx, taper, drops at side branches ----
    r_lm = uni(cfg.lm_diameter_mm) / 2.0
    alpha = uni(cfg.lad_flow_fraction)
    r_rca = uni(cfg.rca_diameter_mm) / 2.0
    end_radius = {name: uni(cfg.distal_diameter_mm) / 2.0 for name in ("LAD", "LCx", "RCA")}
    branches["LM"].radii = np.full(len(lm_pts), r_lm)
    floor = cfg.distal_diameter_mm[0] / 2.0
    _taper(lad, r_lm * alpha ** (1.0 / k), end_radius["LAD"], k, _TAPER_SHAPE["LAD"], floor)
    _taper(lcx, r_lm * (1.0 - alpha) ** (1.0 / k), end_radius["LCx"], k, _TAPER_SHAPE["LCx"], floor)
    _taper(rca, r_rca, end_radius["RCA"], k, _TAPER_SHAPE["RCA"], floor)

    # ---- side branches ----
    for name, parent_name, i, length in side_specs:
        parent = branches[parent_name]
        t0, p0 = parent.params[i]
        kind = name.rstrip("0123456789")
        floor_deg = _SIDE_THETA_FLOOR_DEG.get(kind, -90.0)
        knots = [(t0, p0)] + [(max(t0 + dt, floor_deg), p0 + dp + jit()) for dt, dp in _SIDE_KNOTS_DEG[kind]]
        pts, par, arc = path(knots, length, name)
        side = _Branch(name, parent.tree, (parent_name, i), pts[1:], par[1:], arc[1:])
        first = next(r for j, _, r in parent.sides if j == i)
        _taper(side, first, min(uni(cfg.distal_diameter_mm) / 2.0, first), k, _TAPER_SHAPE["side"], floor)
        branches[name] = side

    # ---- assemble: parents before children ----
    order = ["LM", "LAD", "LCx"] + [s[0] for s in side_specs if s[1] in ("LAD", "LCx")]
    order += ["RCA"] + [s[0] for s in side_specs if s[1] == "RCA"]
    start: dict[str, int] = {}
    parents: list[np.ndarray] = []
    n_total = 0
    for name in order:
        b = branches[name]
        start[name] = n_total
        first_parent = -1 if b.parent is None else start[b.parent[0]] + b.parent[1]
        parents.append(np.concatenate([[first_parent], n_total + np.arange(len(b.points) - 1)]))
        n_total += len(b.points)
    radii = np.concatenate([branches[n].radii for n in order])

    stenoses = _place_stenoses(rng, cfg, branches, start, radii)
    tree = CoronaryTree(
        points=np.concatenate([branches[n].points for n in order]),
        radii=radii,
        parents=np.concatenate(parents).astype(np.int64),
        branch=np.concatenate([np.full(len(branches[n].points), j) for j, n in enumerate(order)]).astype(
            np.int64
        ),
        branch_names=order,
        tree=np.concatenate([np.full(len(branches[n].points), branches[n].tree) for n in order]).astype(
            np.int64
        ),
    )
    arc_total = tree.arc_length()
    for s in stenoses:
        s["arc_length_mm"] = float(arc_total[s["point_index"]])
    tree.meta = {
        "generator": "xraycardiac.phantoms.coronary",
        "seed": int(cfg.seed),
        "config_json": json.dumps(asdict(cfg)),
        "murray_exponent": k,
        "step_mm": step,
        "heart": {**heart.to_dict(), "surface_offset_mm": off},
        "parameters": {
            "heart_scale": scale,
            "theta_av_deg": th_av,
            "phi_aivg_deg": ph_a,
            "phi_pivg_deg": ph_p,
            "lengths_mm": {n: tree.branch_length_mm(n) for n in order},
            "lm_radius_mm": r_lm,
            "rca_radius_mm": r_rca,
            "lad_flow_fraction": alpha,
            "side_branch_ratios": {s[0]: f for s, f in zip(side_specs, ratios, strict=True)},
            "side_branch_radii_mm": {s[0]: float(branches[s[0]].radii[0]) for s in side_specs},
        },
        "stenoses": stenoses,
    }
    return tree


def _place_stenoses(
    rng: np.random.Generator,
    cfg: CoronaryPhantomConfig,
    branches: dict[str, _Branch],
    start: dict[str, int],
    radii: np.ndarray,
) -> list[dict[str, Any]]:
    """Narrow ``radii`` (global array, in place) at cfg.stenosis_count focal lesions; return their records."""
    records: list[dict[str, Any]] = []
    placed: dict[str, list[tuple[float, float]]] = {}
    for n in range(cfg.stenosis_count):
        severity = float(rng.uniform(*cfg.stenosis_severity))
        fwhm = float(rng.uniform(*cfg.stenosis_length_mm))
        sigma = fwhm * _FWHM_TO_SIGMA
        reach = _STENOSIS_REACH_SIGMA * sigma
        candidates: list[tuple[str, int]] = []
        for name in ("LM", "LAD", "LCx", "RCA"):
            b = branches[name]
            s = b.arc
            # Murray's law holds on a bifurcation point and its children: the window (|s - centre| <=
            # reach) stays inside the branch and away from them, so their radii are untouched.
            ok = (s - reach > s[0] + cfg.step_mm) & (s + reach < s[-1] - cfg.step_mm)
            ok &= b.radii >= _STENOSIS_MIN_RADIUS_MM
            for i, _, _ in b.sides:
                ok &= (np.abs(s - s[i]) > reach + cfg.step_mm) & (np.abs(s - s[i + 1]) > reach + cfg.step_mm)
            for c, r in placed.get(name, []):
                ok &= np.abs(s - c) > reach + r
            candidates += [(name, int(i)) for i in np.flatnonzero(ok)]
        if not candidates:
            raise ValueError(
                f"CoronaryPhantomConfig.stenosis_count: no room for stenosis {n + 1} of {cfg.stenosis_count} "
                f"(length {fwhm:.1f} mm) away from bifurcations; ask for fewer or shorter stenoses"
            )
        name, i = candidates[int(rng.integers(len(candidates)))]
        b = branches[name]
        centre = float(b.arc[i])
        window = np.abs(b.arc - centre) <= reach
        factor = 1.0 - severity * np.exp(-0.5 * ((b.arc - centre) / sigma) ** 2)
        idx = start[name] + np.flatnonzero(window)
        radii[idx] *= factor[window]
        placed.setdefault(name, []).append((centre, reach))
        records.append(
            {
                "branch": name,
                "point_index": int(start[name] + i),
                "branch_arc_length_mm": centre,
                "severity": severity,
                "length_mm": fwhm,
                "sigma_mm": sigma,
            }
        )
    return records
