"""Refinement of the second C-arm view's pose from matched points: a MAP estimate with a robust loss.

Problem. Two views of the same coronary tree, view 1 taken as the reference (its geometry is not
changed) and view 2 with a recorded geometry that may be off by a few degrees and millimetres (the
angles of a C-arm are read from encoders, the patient and table move between acquisitions). Given
M matched pixels ``x1[i] <-> x2[i]``, :func:`refine_second_view` estimates the corrections of view 2:

* ``primary_offset_deg``, ``secondary_offset_deg``: added to the C-arm angles (DICOM C.8.7.5 signs);
* ``isocenter_shift_r_mm``, ``_a_mm``, ``_s_mm``: added to the isocentre (RAS mm); a table shift
  between the two acquisitions is the same thing seen from the patient;
* ``sid_change_mm`` (optional, off by default): added to the source-to-detector distance.

It minimises the matches' Sampson distance (the first-order approximation of the smallest image
displacement in both views that makes a match exact, i.e. of the reprojection error of a bundle
adjustment whose 3D points are optimal) with ``scipy.optimize.least_squares`` (trust-region
reflective, bounds on the corrections, a robust loss): the 3D points drop out of the unknowns, so
a refinement costs a few dozen evaluations of 4-6 unknowns (a fraction of a second), which makes
cross-validating it affordable (:mod:`xraycardiac.coronary.recon.acceptance`). The points are
triangulated afterwards.

What two views can observe. With view 1 fixed, the 3D points free and the intrinsics known, the
images fix the *relative* pose of view 2 up to the scale of the scene (below). An isocentre shift
moves the source with it, so the isocentre component along the baseline ``s2 - s1``
(``gauge_direction_ras`` of the result) is not observable at all; a shift of ``t`` mm along it moves the 3D points by about
``t * |X - s1| / |s2 - s1|`` mm (about 0.85 t at 70 deg separation). The angles (a C-arm cannot
roll, so the relative rotation has 2 degrees of freedom) and the two isocentre components across
the baseline are observable, but one combination of them only weakly: the field of view is narrow
(~10 deg), the views are nearly affine, and affine views trade the angle between the beams against
depth (the bas-relief ambiguity), which only perspective breaks. Exact matches still pin it (the
angles come back to 0.03 deg with 0.3 px noise); wrong matches push along it first. The SID of
view 2 (its focal length) is observable in principle but so weakly that exact matches recover
only part of a 30 mm change, hence off by default.

Gauge and priors: a MAP estimate. SID, SOD and pixel spacing come from the DICOM header and are
exact unless the user frees the SID (``refine_sid``). The angle offsets and the three isocentre
(table) shift components get zero-mean Gaussian priors of standard deviation ``prior_sigma_deg`` /
``prior_sigma_mm``; the pixel residuals are divided by ``pixel_sigma_px``, so the cost is
``sum rho((r / pixel_sigma)^2) + sum (delta / sigma)^2``: the negative log posterior with a robust
likelihood. The robust loss acts on the pixel residuals only (a callable loss: scipy would
otherwise robustify the prior's residuals too and let the pose wander past a few sigma). The prior
fixes the gauge two views cannot observe: the isocentre component along the baseline gets no
pull from the images and stays at its recorded value. The defaults are the "realistic" model of
issue 20 (angles within about +-2 deg, isocentre within about +-3 mm): the recorded gantry angles
of non-simultaneous views do not define the relative pose exactly (Chen & Metz, Med. Phys. 24(5)
633-654, 1997; the self-calibration review of Int. J. CARS 17, 2022, doi:10.1007/s11548-022-02580-9)
while the gantry itself repeats its motion to about 0.1 mm (Fahrig & Holdsworth, Med. Phys. 27(1)
30-38, 2000): the error is the angle read-out and the patient / table moving between runs, a few
mm. Users with a looser C-arm widen the sigmas.

The scale (the gauge freedom of bundle adjustment, Triggs et al. 2000, sec. 9, that fixing view 1
leaves): moving the sources of views 2..N to ``s1 + k (s_j - s1)``, orientations unchanged, scales the
points about ``s1`` by ``k`` and changes no image, for any N. Only the isocentre prior holds ``k``, where
the corrections are smallest (two views: none along the recorded baseline): ``k - 1 = sum_j e_j . b_j /
sum_j |b_j|^2`` for isocentre errors ``e_j``, baselines ``b_j``; ``info["scale"]`` has its 1 sigma. On
tuning trees 60000-60019 (256 px, true matches, 2-4 views) the refined keypoints are off by that scale
alone (rest 0.03 mm) and the solver's ``k`` is the prior's (no drift); the recorded errors sometimes
cancel the scale error, so a refinement can be worse in 3D than the recorded pose, which no image shows
(keeping the recorded mean baseline length instead: 6.3 vs 1.1 mm). Compare points with a reference
after removing it (:func:`scale_about_source`); a known length fixes it (Chen & Metz).

Robustness. A wrong pose gives every match a structured error of many pixels, so the solver first
runs soft-L1 at decreasing scales from about the median initial error down to ``f_scale_px``
(graduated non-convexity), then the configured ``loss`` at ``f_scale_px``. A bounded-influence
loss still lets 20 % of wrong matches drag the pose along the weak direction (7 deg in the tests,
with sub-pixel inlier residuals), so the matches with an RMS error below ``inlier_threshold_px``
are then refit by plain least squares, up to ``reject_rounds`` times until the set is stable;
they are reported as ``inliers``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from xraycardiac.coronary.recon.robust import f_scale_schedule, robust_on_first
from xraycardiac.geometry import CArmGeometry, project_points, triangulate

__all__ = [
    "LOSSES",
    "PARAMETERS",
    "PIXEL_SIGMA_FLOOR_PX",
    "CalibrationConfig",
    "CalibrationResult",
    "apply_corrections",
    "epipolar_band_px",
    "prior_chi2",
    "match_table",
    "refine_second_view",
    "refine_views",
    "scale_about_source",
    "triangulate_matches",
    "view_parameters",
]

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")
PIXEL_SIGMA_FLOOR_PX = 0.05
"""Smallest estimated match noise (pixels): exact matches would otherwise make the prior vanish."""
PARAMETERS = (
    "primary_offset_deg",
    "secondary_offset_deg",
    "isocenter_shift_r_mm",
    "isocenter_shift_a_mm",
    "isocenter_shift_s_mm",
    "sid_change_mm",
)


def _positive(name: str, value: Any) -> None:
    if not (
        isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value) and value > 0
    ):
        raise ValueError(f"CalibrationConfig.{name}: expected a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class CalibrationConfig:
    """What :func:`refine_second_view` refines and how.

    Attributes:
        refine_angles: refine the primary and secondary angle offsets of view 2 (degrees).
        refine_isocenter: refine the isocentre (table) shift of view 2 across the baseline (2 unknowns
            with the Gaussian prior, reported as 3 RAS mm components; the component along the
            baseline is the gauge: the prior keeps it at its recorded value).
        refine_sid: refine the SID of view 2 (mm); poorly conditioned, off by default.
        loss: robust loss of ``scipy.optimize.least_squares``: "linear" (plain least squares),
            "soft_l1", "huber", "cauchy" or "arctan".
        f_scale_px: residual (pixels) where the robust loss turns from quadratic to robust.
        max_angle_deg: bound on each angle offset, degrees.
        max_shift_mm: bound on each of the two isocentre shift unknowns, mm.
        max_sid_change_mm: bound on the SID change, mm.
        prior_sigma_deg: standard deviation of the Gaussian prior of each angle offset, degrees
            (module docstring for the default and its source).
        prior_sigma_mm: standard deviation of the Gaussian prior of each isocentre shift component, mm.
        prior_sigma_sid_mm: standard deviation of the prior of the SID change, mm.
        pixel_sigma_px: standard deviation of a correct match's localisation error, pixels: weighs the
            matches against the prior (the robust loss's scale ``f_scale_px`` stays in pixels). None =
            estimated from the inliers' residuals (1.4826 x their median absolute Sampson distance,
            at least ``PIXEL_SIGMA_FLOOR_PX``), starting from 1 px: exact matches then outweigh the
            prior on the weakly observed direction (on 16 held-out pairs with the true matches, a
            fixed 1 px left up to 4.5 of 5.4 deg there), noisy ones (a few px) do not.
        inlier_threshold_px: a match is an inlier when its RMS reprojection error over the two views
            after refinement is below this, pixels.
        reject_rounds: after the robust solve, up to this many plain least-squares refits on the
            matches whose error is below ``inlier_threshold_px`` (0 = none: the robust loss alone).
        min_matches: fewest matches accepted, >= 6 (each match adds 4 equations and 3 unknowns, the
            pose up to 5: 4 matches are the bare minimum, 6 leave a little redundancy).
        max_nfev: most residual evaluations of the solver (None = scipy's default).
    """

    refine_angles: bool = True
    refine_isocenter: bool = True
    refine_sid: bool = False
    loss: str = "soft_l1"
    f_scale_px: float = 1.0
    max_angle_deg: float = 10.0
    max_shift_mm: float = 30.0
    max_sid_change_mm: float = 100.0
    prior_sigma_deg: float = 1.5
    prior_sigma_mm: float = 3.0
    prior_sigma_sid_mm: float = 50.0
    pixel_sigma_px: float | None = None
    inlier_threshold_px: float = 2.0
    reject_rounds: int = 3
    min_matches: int = 6
    max_nfev: int | None = 200

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"CalibrationConfig.loss: expected one of {LOSSES}, got {self.loss!r}")
        for name in ("f_scale_px", "max_angle_deg", "max_shift_mm", "max_sid_change_mm", "prior_sigma_deg",
                     "prior_sigma_mm", "prior_sigma_sid_mm", "inlier_threshold_px"):  # fmt: skip
            _positive(name, getattr(self, name))
        if self.pixel_sigma_px is not None:
            _positive("pixel_sigma_px", self.pixel_sigma_px)
        if not (isinstance(self.min_matches, int) and self.min_matches >= 6):
            raise ValueError(
                f"CalibrationConfig.min_matches: expected an integer >= 6, got {self.min_matches!r}"
            )
        if not (isinstance(self.reject_rounds, int) and self.reject_rounds >= 0):
            raise ValueError(
                f"CalibrationConfig.reject_rounds: expected an integer >= 0, got {self.reject_rounds!r}"
            )
        if self.max_nfev is not None and not (isinstance(self.max_nfev, int) and self.max_nfev >= 1):
            raise ValueError(
                f"CalibrationConfig.max_nfev: expected None or an integer >= 1, got {self.max_nfev!r}"
            )
        if not (self.refine_angles or self.refine_isocenter or self.refine_sid):
            raise ValueError(
                "CalibrationConfig: refine_angles, refine_isocenter and refine_sid are all False; nothing to refine"
            )

    def active(self) -> tuple[str, ...]:
        """Names of the solver's unknowns, in vector order: angle offsets, the two isocentre shift
        components across the baseline (module docstring: the gauge), SID change."""
        names = []
        if self.refine_angles:
            names += list(PARAMETERS[:2])
        if self.refine_isocenter:
            names += ["isocenter_across_1_mm", "isocenter_across_2_mm"]
        if self.refine_sid:
            names.append(PARAMETERS[5])
        return tuple(names)

    def bounds_and_sigmas(self, names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(bound, prior sigma) per correction of ``names`` (default :meth:`active`), in its unit."""
        table = {
            "deg": (self.max_angle_deg, self.prior_sigma_deg),
            "mm": (self.max_shift_mm, self.prior_sigma_mm),
        }
        rows = [
            (self.max_sid_change_mm, self.prior_sigma_sid_mm)
            if n == "sid_change_mm"
            else table[n.rsplit("_", 1)[1]]
            for n in (self.active() if names is None else names)
        ]
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]


@dataclass
class CalibrationResult:
    """Outcome of :func:`refine_second_view`.

    Attributes:
        geometry: the refined view-2 geometry (view 1 is unchanged).
        params: every correction of :data:`PARAMETERS` (0 for those not refined), degrees / mm.
        points_ras_mm: (M, 3) points triangulated with view 1 and the refined view 2, RAS mm.
        error_before_px: (M,) RMS over the two views of each match's reprojection error with the
            recorded geometry (points triangulated with it), pixels.
        error_after_px: (M,) the same with the refined geometry, pixels.
        inliers: (M,) bool, ``error_after_px < inlier_threshold_px``.
        n_iterations: solver iterations (Jacobian evaluations).
        gauge_direction_ras: (3,) unit RAS vector along the baseline (source 1 -> refined source 2):
            the isocentre component along it is not observable (module docstring).
        info: solver status, message, residual evaluations, cost, seconds.
        geometries, view_params: every view as refined (view 1 unchanged) and its corrections
            (:func:`refine_views`); ``geometry`` / ``params`` are view 2's.
        pairs, pair_index: the view pairs (0-based) and the pair of each match of the per-match arrays.
    """

    geometry: CArmGeometry
    params: dict[str, float]
    points_ras_mm: np.ndarray
    error_before_px: np.ndarray
    error_after_px: np.ndarray
    inliers: np.ndarray
    n_iterations: int
    gauge_direction_ras: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    geometries: tuple[CArmGeometry, ...] = ()
    view_params: tuple[dict[str, float], ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()
    pair_index: np.ndarray | None = None

    def summary(self) -> dict[str, float]:
        """Mean / median reprojection error before and after (all matches, and inliers after), pixels."""
        inl = self.error_after_px[self.inliers]
        return {
            "mean_before_px": float(np.mean(self.error_before_px)),
            "median_before_px": float(np.median(self.error_before_px)),
            "mean_after_px": float(np.mean(self.error_after_px)),
            "median_after_px": float(np.median(self.error_after_px)),
            "mean_after_inliers_px": float(np.mean(inl)) if inl.size else float("nan"),
            "inlier_fraction": float(np.mean(self.inliers)),
        }


def apply_corrections(g2: CArmGeometry, params: dict[str, float]) -> CArmGeometry:
    """View 2 with corrections added (keys of :data:`PARAMETERS`, missing ones = 0), degrees / mm."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"apply_corrections: unknown parameter(s) {unknown}; allowed: {list(PARAMETERS)}")
    p = {n: float(params.get(n, 0.0)) for n in PARAMETERS}
    shift = np.array([p["isocenter_shift_r_mm"], p["isocenter_shift_a_mm"], p["isocenter_shift_s_mm"]])
    return g2.with_(
        primary_angle_deg=g2.primary_angle_deg + p["primary_offset_deg"],
        secondary_angle_deg=g2.secondary_angle_deg + p["secondary_offset_deg"],
        isocenter_ras_mm=tuple(float(v) for v in np.asarray(g2.isocenter_ras_mm) + shift),
        sid_mm=g2.sid_mm + p["sid_change_mm"],
    )


def scale_about_source(points: np.ndarray, reference: np.ndarray, source_ras_mm: np.ndarray) -> float:
    """Least-squares scale k with ``source + k (points - source) ~ reference`` (the two-view gauge).

    Args:
        points, reference: (N, 3) RAS mm, matched row by row.
        source_ras_mm: (3,) view 1's source position, RAS mm.

    Returns:
        k (dimensionless); apply it as ``source + k * (points - source)``.
    """
    a = np.asarray(points, dtype=np.float64).reshape(-1, 3) - source_ras_mm
    b = np.asarray(reference, dtype=np.float64).reshape(-1, 3) - source_ras_mm
    return float(np.sum(a * b) / np.sum(a * a))


def _pixels(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"refine_second_view: {name} must be (M, 2) pixels (u, v), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"refine_second_view: {name} contains NaN or infinite pixels")
    return a


def triangulate_matches(
    g1: CArmGeometry, g2: CArmGeometry, x1: np.ndarray, x2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate matched pixels (DLT + Gauss-Newton of :func:`xraycardiac.geometry.triangulate`).

    Args:
        g1, g2: the two views.
        x1, x2: (M, 2) matched pixels (u, v).

    Returns:
        ((M, 3) RAS mm points, (M,) RMS over the two views of their reprojection error, pixels).
    """
    p1, p2 = g1.projection_matrix(), g2.projection_matrix()
    x1 = np.asarray(x1, dtype=np.float64).reshape(-1, 2)
    x2 = np.asarray(x2, dtype=np.float64).reshape(-1, 2)
    points = triangulate(p1, p2, x1, x2)
    e1 = np.sum((project_points(p1, points) - x1) ** 2, axis=1)
    e2 = np.sum((project_points(p2, points) - x2) ** 2, axis=1)
    return points, np.sqrt((e1 + e2) / 2.0)


def _homogeneous(x: np.ndarray) -> np.ndarray:
    """(M, 2) pixels -> (M, 3) homogeneous pixels."""
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _sampson_px(
    p1_pinv: np.ndarray, c1: np.ndarray, p2: np.ndarray, h1: np.ndarray, h2: np.ndarray
) -> np.ndarray:
    """(M,) signed Sampson distance (pixels) of matches ``h1 <-> h2`` (homogeneous) under view 1 and ``p2``.

    The first-order approximation of the smallest total image displacement (both views) that makes
    a match exact (Hartley & Zisserman, eq. 11.9), from ``F = [P2 C1]_x P2 P1^+`` (``c1``: view 1's
    homogeneous source position). It depends on the relative pose only, so the 3D points need not
    be unknowns: a refinement costs a few evaluations of 4-6 unknowns instead of 3 M + 6.
    """
    e2 = p2 @ c1
    skew = np.array([[0.0, -e2[2], e2[1]], [e2[2], 0.0, -e2[0]], [-e2[1], e2[0], 0.0]])
    f = skew @ p2 @ p1_pinv
    fx1, ftx2 = h1 @ f.T, h2 @ f
    num = np.sum(h2 * fx1, axis=1)
    den = np.sqrt(fx1[:, 0] ** 2 + fx1[:, 1] ** 2 + ftx2[:, 0] ** 2 + ftx2[:, 1] ** 2)
    return num / np.maximum(den, 1e-12)


def match_table(
    matches: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    n_views: int,
    caller: str,
    connected: bool = True,
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Checked matches of N views: ``{(i, j): (xi, xj)}`` with ``0 <= i < j < n_views``, (M, 2) finite pixels;
    with ``connected`` every view but view 1 must have a match.

    Raises:
        ValueError: a pair outside the views, ``i >= j``, arrays not (M, 2), or different lengths (the pair
            and both counts named), or a view other than view 1 without any match.
    """
    out = {}
    for key in sorted(matches):
        i, j = (int(v) for v in key)
        if not (0 <= i < j < n_views):
            raise ValueError(
                f"{caller}: matches key {key!r} must be (i, j) with 0 <= i < j < {n_views} views"
            )
        xi, xj = (
            _pixels(f"matches[{key!r}] view {v + 1}", x) for v, x in zip(key, matches[key], strict=True)
        )
        if len(xi) != len(xj):
            raise ValueError(
                f"{caller}: matches[{key!r}] has {len(xi)} points in view {i + 1} but {len(xj)} in view {j + 1}"
            )
        out[(i, j)] = (xi, xj)
    seen = {v for (i, j), (xi, _) in out.items() if len(xi) for v in (i, j)}
    missing = [v + 1 for v in range(1, n_views) if v not in seen]
    if missing and connected:
        raise ValueError(f"{caller}: view(s) {missing} have no match with any other view; cannot refine them")
    return out


def view_parameters(config: CalibrationConfig, n_views: int) -> tuple[str, ...]:
    """Unknowns of one refined view: with 2 views :meth:`CalibrationConfig.active` (the isocentre across the
    baseline), with 3 or more the angle offsets, all 3 isocentre components and the SID change as refined."""
    if n_views == 2:
        return config.active()
    iso = PARAMETERS[2:5] if config.refine_isocenter else ()
    return (
        tuple(PARAMETERS[:2] if config.refine_angles else ())
        + iso
        + (PARAMETERS[5:] if config.refine_sid else ())
    )


def refine_second_view(
    g1: CArmGeometry,
    g2: CArmGeometry,
    x1: np.ndarray,
    x2: np.ndarray,
    config: CalibrationConfig | None = None,
) -> CalibrationResult:
    """Refine view 2's angles, isocentre (and optionally SID) from matched pixels, view 1 fixed.

    :func:`refine_views` with two views (the same solver).

    Args:
        g1: view 1 geometry (the reference, unchanged).
        g2: recorded view 2 geometry (the starting point and the prior's centre).
        x1, x2: (M, 2) matched pixels (u = column, v = row) in view 1 and view 2; may contain
            wrong matches (the robust loss and ``inliers`` deal with them).
        config: :class:`CalibrationConfig` (None = defaults).

    Returns:
        :class:`CalibrationResult` with the refined view 2, the corrections, per-match reprojection
        errors before / after and the inlier mask.

    Raises:
        ValueError: x1 / x2 are not (M, 2) finite pixels of the same length, or M < ``min_matches``.
    """
    x1, x2 = _pixels("x1", x1), _pixels("x2", x2)
    if len(x1) != len(x2):
        raise ValueError(f"refine_second_view: x1 has {len(x1)} matches but x2 has {len(x2)}")
    return refine_views([g1, g2], {(0, 1): (x1, x2)}, config)


def refine_views(
    geometries: Sequence[CArmGeometry],
    matches: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    config: CalibrationConfig | None = None,
) -> CalibrationResult:
    """Bundle adjustment of N >= 2 views from the matches of any view pairs: a MAP estimate, view 1 fixed.

    Gauge: view 1 (index 0) is the reference and is not changed; each other view gets its own
    corrections (:func:`view_parameters`) with the Gaussian prior of ``config``. The cost is the sum
    over all pairs' matches of the robust Sampson distance (module docstring) plus the prior. Two views:
    the isocentre along the baseline is not an unknown. Three or more: the along-baseline shifts are
    observable relative to one another, the one common scale (module docstring) is the prior's.

    Args:
        geometries: recorded geometries of the views (the starting point and the priors' centres).
        matches: ``{(i, j): (xi, xj)}``, 0-based view indices ``i < j``, (M_ij, 2) matched pixels (u, v).
        config: :class:`CalibrationConfig` (None = defaults).

    Returns:
        :class:`CalibrationResult`: ``geometries`` all views (view 1 unchanged), ``view_params`` the
        corrections per view; ``geometry`` / ``params`` those of view 2; per-match arrays concatenated
        over the pairs in sorted order (``pair_index`` gives each match's pair in ``pairs``).

    Raises:
        ValueError: fewer than 2 views, bad matches (:func:`match_table`), or fewer than ``min_matches``.
    """
    config = config or CalibrationConfig()
    views = list(geometries)
    if len(views) < 2:
        raise ValueError(f"refine_views: {len(views)} view(s) given; at least 2 are needed")
    table = match_table(matches, len(views), "refine_views")
    pairs = list(table)
    m = sum(len(a) for a, _ in table.values())
    if m < config.min_matches:
        raise ValueError(
            f"refine_views: {m} matches given; at least {config.min_matches} are needed "
            "(CalibrationConfig.min_matches) to refine the views"
        )
    t0 = time.perf_counter()
    names = view_parameters(config, len(views))
    n_v = len(views) - 1
    bound, sigma = (np.tile(a, n_v) for a in config.bounds_and_sigmas(names))
    g1, g2 = views[0], views[1]

    # With two views the isocentre shift lives in the plane across the recorded baseline (basis e1, e2):
    # the images carry no information along it, so its MAP value is the prior's mean (the recorded
    # isocentre); leaving it out of the unknowns keeps the solver well conditioned (a free gauge costs
    # 10x the iterations).
    b0 = g2.source_position - g1.source_position
    b0 = b0 / np.linalg.norm(b0)
    e1 = np.cross(b0, [0.0, 0.0, 1.0] if abs(b0[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    basis = np.stack([e1, np.cross(b0, e1)])  # (2, 3)

    def corrections(theta: np.ndarray) -> list[dict[str, float]]:
        out = [dict.fromkeys(PARAMETERS, 0.0)]
        for block in np.split(theta, n_v):
            d = dict(zip(names, block.tolist(), strict=True))
            if "isocenter_across_1_mm" in d:
                shift = np.array([d.pop("isocenter_across_1_mm"), d.pop("isocenter_across_2_mm")]) @ basis
                d.update(zip(PARAMETERS[2:5], shift.tolist(), strict=True))
            out.append(d)
        return out

    def posed(theta: np.ndarray) -> list[CArmGeometry]:
        return [views[0]] + [
            apply_corrections(g, d) for g, d in zip(views[1:], corrections(theta)[1:], strict=True)
        ]

    lower, upper = -bound, bound.copy()
    if PARAMETERS[5] in names:  # keep SID > SOD + 1 mm
        for k, g in enumerate(views[1:]):
            j = k * len(names) + names.index(PARAMETERS[5])
            lower[j] = max(-bound[j], g.sod_mm + 1.0 - g.sid_mm)
    counts: dict[str, Any] = {"nfev": 0, "njev": 0}
    hom = {key: (_homogeneous(a), _homogeneous(b)) for key, (a, b) in table.items()}
    pair_index = np.concatenate([np.full(len(table[key][0]), n) for n, key in enumerate(pairs)])

    p1_pinv, c1 = np.linalg.pinv(g1.projection_matrix()), np.append(g1.source_position, 1.0)
    in_pair = [pair_index == n for n in range(len(pairs))]

    def sampson(theta: np.ndarray, use: np.ndarray) -> np.ndarray:
        gs = posed(theta)
        ps = [g.projection_matrix() for g in gs]
        out = []
        for n, (i, j) in enumerate(pairs):
            sel = use[in_pair[n]]
            if sel.any():  # view 1 is fixed: its pseudo-inverse is computed once
                pinv, c = (
                    (p1_pinv, c1) if i == 0 else (np.linalg.pinv(ps[i]), np.append(gs[i].source_position, 1))
                )
                out.append(_sampson_px(pinv, c, ps[j], hom[(i, j)][0][sel], hom[(i, j)][1][sel]))
        return np.concatenate(out) / np.sqrt(2.0)

    def solve(theta0: np.ndarray, use: np.ndarray, f_scale: float, loss: str) -> np.ndarray:
        """MAP solve over the corrections with the matches ``use``, from ``theta0``."""

        def residuals(theta: np.ndarray) -> np.ndarray:
            return np.concatenate([sampson(theta, use) / px, theta / sigma])

        sol = least_squares(
            residuals,
            theta0,
            bounds=(lower, upper),
            method="trf",
            loss=robust_on_first(loss, int(use.sum())),
            f_scale=f_scale / px,
            max_nfev=config.max_nfev,
        )
        counts["nfev"] += int(sol.nfev)
        counts["status"], counts["message"] = int(sol.status), str(sol.message)
        counts["njev"] += int(sol.njev if sol.njev is not None else sol.nfev)
        return sol.x

    def errors(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gs = posed(theta)
        done = [triangulate_matches(gs[i], gs[j], *table[(i, j)]) for i, j in pairs]
        return np.concatenate([p for p, _ in done]), np.concatenate([e for _, e in done])

    px = config.pixel_sigma_px or 1.0
    error_before = errors(np.zeros(len(bound)))[1]
    everything = np.ones(m, dtype=bool)
    theta = np.zeros(len(bound))
    for f_scale in f_scale_schedule(config.loss, config.f_scale_px, error_before):
        theta = solve(theta, everything, f_scale, "soft_l1")
    theta = solve(theta, everything, config.f_scale_px, config.loss)
    # A loss with bounded influence still lets many wrong matches lean on the weakly observed
    # direction (module docstring): refit the inliers by plain least squares until they stop changing.
    keep = errors(theta)[1] < config.inlier_threshold_px
    for _ in range(config.reject_rounds):
        if keep.sum() < config.min_matches or keep.all():
            break
        theta = solve(theta, keep, config.f_scale_px, "linear")
        new_keep = errors(theta)[1] < config.inlier_threshold_px
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if config.pixel_sigma_px is None and keep.sum() >= config.min_matches:
        for _ in range(4):  # the noise level of the inliers, and the MAP solve that uses it
            estimate = max(PIXEL_SIGMA_FLOOR_PX, 1.4826 * float(np.median(np.abs(sampson(theta, keep)))))
            if abs(estimate - px) < 0.1 * px:
                break
            px = estimate
            theta = solve(theta, keep, config.f_scale_px, "linear")
    view_params = []
    for d in corrections(theta):
        params = dict.fromkeys(PARAMETERS, 0.0)
        params.update({n: float(v) for n, v in d.items()})
        view_params.append(params)
    refined = [views[0]] + [apply_corrections(g, p) for g, p in zip(views[1:], view_params[1:], strict=True)]
    x_new, error_after = errors(theta)
    baseline = refined[1].source_position - g1.source_position
    reach = np.sqrt(sum(float(np.sum((g.source_position - g1.source_position) ** 2)) for g in refined[1:]))
    depth = float(np.mean(np.linalg.norm(x_new - g1.source_position, axis=1)))
    scale = {"held_by": "isocentre prior", "sd_fraction": config.prior_sigma_mm / reach}
    scale["sd_mm"] = scale["sd_fraction"] * depth
    return CalibrationResult(
        geometry=refined[1],
        params=view_params[1],
        points_ras_mm=x_new,
        error_before_px=error_before,
        error_after_px=error_after,
        inliers=error_after < config.inlier_threshold_px,
        n_iterations=counts["njev"],
        gauge_direction_ras=baseline / np.linalg.norm(baseline),
        info={
            "status": counts["status"],
            "message": counts["message"],
            "nfev": counts["nfev"],
            "seconds": time.perf_counter() - t0,
            "loss": config.loss,
            "pixel_sigma_px": px,
            "refined": list(names),
            "scale": scale,
        },
        geometries=tuple(refined),
        view_params=tuple(view_params),
        pairs=tuple(pairs),
        pair_index=pair_index,
    )


def prior_chi2(params: dict[str, float], config: CalibrationConfig) -> float:
    """Squared Mahalanobis distance of corrections from the recorded pose under the prior.

    Args:
        params: corrections (keys of :data:`PARAMETERS`, degrees / mm); those not refined count 0.
        config: the sigmas (``prior_sigma_deg``, ``prior_sigma_mm``, ``prior_sigma_sid_mm``).

    Returns:
        ``sum (delta / sigma)^2`` over the refined corrections (the isocentre shift as refined: across
        the baseline), chi-square with ``len(config.active())`` degrees of freedom when the true
        error follows the prior.
    """
    total = 0.0
    if config.refine_angles:
        total += sum((float(params.get(n, 0.0)) / config.prior_sigma_deg) ** 2 for n in PARAMETERS[:2])
    if config.refine_isocenter:
        total += sum((float(params.get(n, 0.0)) / config.prior_sigma_mm) ** 2 for n in PARAMETERS[2:5])
    if config.refine_sid:
        total += (float(params.get(PARAMETERS[5], 0.0)) / config.prior_sigma_sid_mm) ** 2
    return float(total)


def epipolar_band_px(
    g1: CArmGeometry,
    g2: CArmGeometry,
    config: CalibrationConfig | None = None,
    n_sigma: float = 3.0,
    half_extent_mm: float = 50.0,
    first_fixed: bool = True,
) -> float:
    """Epipolar distance (pixels) a correct match may have under the recorded geometry, given the prior.

    The prior on view 2's pose (``prior_sigma_*`` of the refined corrections) propagated to the
    symmetric epipolar distance of true correspondences: for points on a grid of ``+-half_extent_mm``
    about the midpoint of the two isocentres (where the heart is), each correction is moved by one
    sigma, the distances under the recorded pose are summed in quadrature per point, and the
    largest is scaled by ``n_sigma``. When ``g1`` is not the fixed view (a pair of views 2..N of an
    N-view calibration, where both poses carry the prior) its corrections are moved too and added in
    the same sum, which widens the band by about sqrt(2) for two views of similar geometry. A match filter with this tolerance keeps the correct matches
    of a pose that is off by what the prior allows (``+epipolar`` with the default 3 px keeps
    almost none once the angles are off by a few degrees); the calibration's robust loss then deals
    with the extra wrong ones, and the tight filter is applied again with the refined pose.

    Args:
        g1, g2: the two views as recorded.
        config: the prior (default :class:`CalibrationConfig`).
        n_sigma: how many prior sigmas the band covers.
        half_extent_mm: half size of the cube of test points, mm.
        first_fixed: ``g1`` is the gauge (view 1, never refined; True) or a refined view with the same
            prior as ``g2`` (False).

    Returns:
        The band, pixels (>= ``config.inlier_threshold_px``).
    """
    from xraycardiac.metrics.matching import symmetric_epipolar_error_px

    config = config or CalibrationConfig()
    if not (np.isfinite(n_sigma) and n_sigma > 0 and np.isfinite(half_extent_mm) and half_extent_mm > 0):
        raise ValueError(
            f"epipolar_band_px: n_sigma and half_extent_mm must be finite and > 0, got {n_sigma!r}, "
            f"{half_extent_mm!r}"
        )
    centre = (g1.isocenter + g2.isocenter) / 2.0
    axis = np.linspace(-half_extent_mm, half_extent_mm, 5)
    grid = centre + np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    x1 = g1.project(grid)
    p1, p2 = g1.projection_matrix(), g2.projection_matrix()
    total = np.zeros(len(grid))
    steps = {PARAMETERS[0]: config.prior_sigma_deg, PARAMETERS[1]: config.prior_sigma_deg}
    if config.refine_isocenter:
        steps |= dict.fromkeys(PARAMETERS[2:5], config.prior_sigma_mm)
    if config.refine_sid:
        steps[PARAMETERS[5]] = config.prior_sigma_sid_mm
    if not config.refine_angles:
        del steps[PARAMETERS[0]], steps[PARAMETERS[1]]
    x2 = g2.project(grid)
    for name, s in steps.items():
        moved = apply_corrections(g2, {name: float(s)}).project(grid)
        total += symmetric_epipolar_error_px(x1, moved, p1, p2) ** 2
        if not first_fixed:
            moved = apply_corrections(g1, {name: float(s)}).project(grid)
            total += symmetric_epipolar_error_px(moved, x2, p1, p2) ** 2
    return float(max(n_sigma * np.sqrt(total.max()), config.inlier_threshold_px))
