"""Refinement of the second C-arm view's pose from matched points: a small robust bundle adjustment.

Problem. Two views of the same coronary tree, view 1 taken as the reference (its geometry is not
changed) and view 2 with a recorded geometry that may be off by a few degrees and millimetres (the
angles of a C-arm are read from encoders, the patient and table move between acquisitions). Given
M matched pixels ``x1[i] <-> x2[i]``, :func:`refine_second_view` jointly estimates the M 3D points
(RAS mm, initialised by triangulation with the recorded geometry) and the corrections of view 2:

* ``primary_offset_deg``, ``secondary_offset_deg``: added to the C-arm angles (DICOM C.8.7.5 signs);
* ``isocenter_shift_r_mm``, ``_a_mm``, ``_s_mm``: added to the isocentre (RAS mm); a table shift
  between the two acquisitions is the same thing seen from the patient;
* ``sid_change_mm`` (optional, off by default): added to the source-to-detector distance.

It minimises the pixel reprojection error in both views with ``scipy.optimize.least_squares``
(trust-region reflective, bounds on the corrections, a robust loss, and the sparse Jacobian
structure given by ``jac_sparsity``: each point touches only its own four residuals, so a few
hundred points cost a few finite-difference evaluations per iteration).

What two views can observe. With view 1 fixed, the 3D points free and the intrinsics known, the
images fix the *relative* pose of view 2 up to one number: the scale of the scene. Scaling every
point about view 1's source by ``k`` and moving view 2's source to ``s1 + k (s2 - s1)`` (its
orientation unchanged) leaves both images exactly as they were. An isocentre shift moves the
source with it, so the isocentre component along the baseline ``s2 - s1`` (``gauge_direction_ras``
of the result) is not observable at all; a shift of ``t`` mm along it moves the 3D points by about
``t * |X - s1| / |s2 - s1|`` mm (about 0.85 t at 70 deg separation). The angles (a C-arm cannot
roll, so the relative rotation has 2 degrees of freedom) and the two isocentre components across
the baseline are observable, but one combination of them only weakly: the field of view is narrow
(~10 deg), the views are nearly affine, and affine views trade the angle between the beams against
depth (the bas-relief ambiguity), which only perspective breaks. Exact matches still pin it (the
angles come back to 0.03 deg with 0.3 px noise); wrong matches push along it first. The SID of
view 2 (its focal length) is observable in principle but so weakly that exact matches recover
only part of a 30 mm change, hence off by default.

Gauge and priors. The isocentre shift is solved in the plane across the *recorded* baseline (two
unknowns); its component along the baseline keeps its recorded value. Each correction ``delta``
also gets a soft prior residual ``delta / sigma`` (``prior_sigma_*``), i.e. one sigma costs as much
as one pixel on one image coordinate: against 4 M pixel residuals a small pull that keeps the
weak direction stable when the matches are few or noisy. The 3D points are therefore known up to
the scale: compare them with a reference after removing it (:func:`scale_about_source`) when the
isocentre itself may be off.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix

from xraycardiac.geometry import CArmGeometry, project_points, triangulate

__all__ = [
    "LOSSES",
    "PARAMETERS",
    "CalibrationConfig",
    "CalibrationResult",
    "apply_corrections",
    "refine_second_view",
    "scale_about_source",
    "triangulate_matches",
]

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")
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
        refine_isocenter: refine the isocentre (table) shift of view 2 across the baseline (2 unknowns;
            reported as 3 RAS mm components; the component along the baseline is the gauge).
        refine_sid: refine the SID of view 2 (mm); poorly conditioned, off by default.
        loss: robust loss of ``scipy.optimize.least_squares``: "linear" (plain least squares),
            "soft_l1", "huber", "cauchy" or "arctan".
        f_scale_px: residual (pixels) where the robust loss turns from quadratic to robust.
        max_angle_deg: bound on each angle offset, degrees.
        max_shift_mm: bound on each of the two isocentre shift unknowns, mm.
        max_sid_change_mm: bound on the SID change, mm.
        prior_sigma_deg: soft prior on each angle offset: the offset / sigma is one residual (degrees).
        prior_sigma_mm: soft prior on each isocentre shift component across the baseline, mm.
        prior_sigma_sid_mm: soft prior on the SID change, mm.
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
    prior_sigma_deg: float = 10.0
    prior_sigma_mm: float = 30.0
    prior_sigma_sid_mm: float = 50.0
    inlier_threshold_px: float = 2.0
    reject_rounds: int = 3
    min_matches: int = 6
    max_nfev: int | None = 200

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"CalibrationConfig.loss: expected one of {LOSSES}, got {self.loss!r}")
        for name in (
            "f_scale_px",
            "max_angle_deg",
            "max_shift_mm",
            "max_sid_change_mm",
            "prior_sigma_deg",
            "prior_sigma_mm",
            "prior_sigma_sid_mm",
            "inlier_threshold_px",
        ):
            _positive(name, getattr(self, name))
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
        components across the baseline, SID change."""
        names = []
        if self.refine_angles:
            names += list(PARAMETERS[:2])
        if self.refine_isocenter:
            names += ["isocenter_across_1_mm", "isocenter_across_2_mm"]
        if self.refine_sid:
            names.append(PARAMETERS[5])
        return tuple(names)

    def bounds_and_sigmas(self) -> tuple[np.ndarray, np.ndarray]:
        """(bound, prior sigma) per active correction, in its unit."""
        table = {
            "deg": (self.max_angle_deg, self.prior_sigma_deg),
            "mm": (self.max_shift_mm, self.prior_sigma_mm),
        }
        rows = [
            (self.max_sid_change_mm, self.prior_sigma_sid_mm)
            if n == "sid_change_mm"
            else table[n.rsplit("_", 1)[1]]
            for n in self.active()
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


def _f_scale_schedule(config: CalibrationConfig, error_px: np.ndarray) -> list[float]:
    """Scales (pixels, decreasing, all > ``f_scale_px``) of the graduated soft-L1 solves before the final one.

    A wrong recorded pose gives every match a structured error of many pixels. scipy's robust
    losses use the exact second-order (Triggs) correction, which gives a Huber or Cauchy residual
    beyond ``f_scale`` zero curvature: started with every residual there, the solver crawls.
    So the scale starts at about the median initial error and is divided by 4 per stage
    (graduated non-convexity) with soft-L1, whose curvature never vanishes; the configured loss
    then runs at ``f_scale_px`` from a nearly right pose. None for plain least squares.
    """
    if config.loss == "linear":
        return []
    scales = [config.f_scale_px]
    while scales[-1] < float(np.median(error_px)):
        scales.append(scales[-1] * 4.0)
    return scales[:0:-1]


def _sparsity(m: int, n_g: int) -> coo_matrix:
    """Jacobian structure: rows (view-1 (2M), view-2 (2M), priors (n_g)) x cols (corrections, 3M points)."""
    pt_rows = np.repeat(np.arange(2 * m), 3)
    pt_cols = n_g + 3 * np.repeat(np.arange(m), 2)[:, None] + np.arange(3)[None, :]
    pt_cols = pt_cols.ravel()
    rows = [pt_rows, 2 * m + pt_rows, np.repeat(2 * m + np.arange(2 * m), n_g), 4 * m + np.arange(n_g)]
    cols = [pt_cols, pt_cols, np.tile(np.arange(n_g), 2 * m), np.arange(n_g)]
    r, c = np.concatenate(rows), np.concatenate(cols)
    return coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(4 * m + n_g, n_g + 3 * m))


def refine_second_view(
    g1: CArmGeometry,
    g2: CArmGeometry,
    x1: np.ndarray,
    x2: np.ndarray,
    config: CalibrationConfig | None = None,
) -> CalibrationResult:
    """Refine view 2's angles, isocentre (and optionally SID) from matched pixels, view 1 fixed.

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
    config = config or CalibrationConfig()
    x1, x2 = _pixels("x1", x1), _pixels("x2", x2)
    if len(x1) != len(x2):
        raise ValueError(f"refine_second_view: x1 has {len(x1)} matches but x2 has {len(x2)}")
    m = len(x1)
    if m < config.min_matches:
        raise ValueError(
            f"refine_second_view: {m} matches given; at least {config.min_matches} are needed "
            "(CalibrationConfig.min_matches) to refine the second view"
        )
    t0 = time.perf_counter()
    names = config.active()
    n_g = len(names)
    bound, sigma = config.bounds_and_sigmas()
    p1 = g1.projection_matrix()
    # The isocentre shift lives in the plane across the recorded baseline (basis e1, e2): its
    # component along the baseline is the unobservable scale gauge and keeps its recorded value.
    b0 = g2.source_position - g1.source_position
    b0 = b0 / np.linalg.norm(b0)
    e1 = np.cross(b0, [0.0, 0.0, 1.0] if abs(b0[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    basis = np.stack([e1, np.cross(b0, e1)])  # (2, 3)

    def corrections(theta: np.ndarray) -> dict[str, float]:
        d = dict(zip(names, theta.tolist(), strict=True))
        if config.refine_isocenter:
            shift = np.array([d.pop("isocenter_across_1_mm"), d.pop("isocenter_across_2_mm")]) @ basis
            d.update(zip(PARAMETERS[2:5], shift.tolist(), strict=True))
        return d

    def projection(theta: np.ndarray) -> np.ndarray:
        return apply_corrections(g2, corrections(theta)).projection_matrix()

    lower, upper = -bound, bound.copy()
    if "sid_change_mm" in names:  # keep SID > SOD + 1 mm
        j = names.index("sid_change_mm")
        lower[j] = max(-bound[j], g2.sod_mm + 1.0 - g2.sid_mm)
    counts: dict[str, Any] = {"nfev": 0, "njev": 0}

    def solve(theta0: np.ndarray, use: np.ndarray, f_scale: float, loss: str) -> np.ndarray:
        """Joint solve over the corrections and the points of the matches ``use``, from ``theta0``."""
        a, b = x1[use], x2[use]
        k = len(a)
        xk = triangulate(p1, projection(theta0), a, b)

        def residuals(z: np.ndarray) -> np.ndarray:
            theta, x = z[:n_g], z[n_g:].reshape(k, 3)
            r1 = (project_points(p1, x) - a).ravel()
            r2 = (project_points(projection(theta), x) - b).ravel()
            return np.concatenate([r1, r2, theta / sigma])

        sol = least_squares(
            residuals,
            np.concatenate([theta0, xk.ravel()]),
            jac_sparsity=_sparsity(k, n_g),
            bounds=(
                np.concatenate([lower, np.full(3 * k, -np.inf)]),
                np.concatenate([upper, np.full(3 * k, np.inf)]),
            ),
            method="trf",
            loss=loss,
            f_scale=f_scale,
            x_scale="jac",
            max_nfev=config.max_nfev,
        )
        counts["nfev"] += int(sol.nfev)
        counts["status"], counts["message"] = int(sol.status), str(sol.message)
        counts["njev"] += int(sol.njev if sol.njev is not None else sol.nfev)
        return sol.x[:n_g]

    def errors(theta: np.ndarray) -> np.ndarray:
        return triangulate_matches(g1, apply_corrections(g2, corrections(theta)), x1, x2)[1]

    error_before = errors(np.zeros(n_g))
    everything = np.ones(m, dtype=bool)
    theta = np.zeros(n_g)
    for f_scale in _f_scale_schedule(config, error_before):
        theta = solve(theta, everything, f_scale, "soft_l1")
    theta = solve(theta, everything, config.f_scale_px, config.loss)
    # A loss with bounded influence still lets many wrong matches lean on the weakly observed
    # direction (module docstring): refit the inliers by plain least squares until they stop changing.
    keep = errors(theta) < config.inlier_threshold_px
    for _ in range(config.reject_rounds):
        if keep.sum() < config.min_matches or keep.all():
            break
        theta = solve(theta, keep, config.f_scale_px, "linear")
        new_keep = errors(theta) < config.inlier_threshold_px
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    params = dict.fromkeys(PARAMETERS, 0.0)
    params.update({n: float(v) for n, v in corrections(theta).items()})
    g2_new = apply_corrections(g2, params)
    x_new, error_after = triangulate_matches(g1, g2_new, x1, x2)
    baseline = g2_new.source_position - g1.source_position
    return CalibrationResult(
        geometry=g2_new,
        params=params,
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
            "refined": list(names),
        },
    )
