"""The epicardial heart ellipsoid in patient RAS millimetres, with surface coordinates and distances.

The heart is the ellipsoid of the chest phantom (``xraycardiac.phantoms.chest``): centre
left-anterior-inferior of mid-chest, long axis ``u`` from the base (right-posterior-superior) to the
apex (left-anterior-inferior), short axes ``v = unit(u x z)`` and ``w = u x v`` (RAS), semi-axes
(a, b, c) along (u, v, w) in mm. A surface point is addressed by (theta, phi) in degrees: theta is
the polar angle from the apex (0 = apex, 180 = base; theta < 0 continues over the apex to the other
side), phi the azimuth around ``u`` from the heart's anterior direction (the patient's anterior
projected perpendicular to ``u``): +90 is the heart's right (acute margin, right ventricle), -90 its
left (obtuse margin, left ventricle), +-180 its posterior/diaphragmatic side.

Used by the procedural coronary trees (``xraycardiac.phantoms.coronary``), which run on this
surface, and by the analytic thorax (``xraycardiac.phantoms.thorax_analytic``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["HeartEllipsoid", "tilted_axis"]


@dataclass(frozen=True, eq=False)
class HeartEllipsoid:
    """The epicardial ellipsoid in patient RAS.

    Attributes:
        center_ras_mm: (3,) centre, RAS mm.
        axes_ras: (3, 3) unit rows u (long axis, base -> apex), v = unit(u x z), w = u x v.
        semi_axes_mm: (3,) semi-axes along u, v, w, mm.
    """

    center_ras_mm: np.ndarray
    axes_ras: np.ndarray
    semi_axes_mm: np.ndarray

    @classmethod
    def from_long_axis(cls, center_ras_mm: Any, long_axis_ras: Any, semi_axes_mm: Any) -> HeartEllipsoid:
        """Build from a centre, a base -> apex direction (any length) and semi-axes (long, v, w)."""
        u = np.asarray(long_axis_ras, dtype=np.float64)
        u = u / np.linalg.norm(u)
        v = np.cross(u, [0.0, 0.0, 1.0])
        v /= np.linalg.norm(v)
        return cls(
            center_ras_mm=np.asarray(center_ras_mm, dtype=np.float64),
            axes_ras=np.stack([u, v, np.cross(u, v)]),
            semi_axes_mm=np.asarray(semi_axes_mm, dtype=np.float64),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeartEllipsoid:
        """Inverse of ``to_dict`` (e.g. ``HeartEllipsoid.from_dict(tree.meta["heart"])``)."""
        return cls(
            center_ras_mm=np.asarray(data["center_ras_mm"], dtype=np.float64),
            axes_ras=np.asarray(data["axes_ras"], dtype=np.float64),
            semi_axes_mm=np.asarray(data["semi_axes_mm"], dtype=np.float64),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "center_ras_mm": self.center_ras_mm.tolist(),
            "axes_ras": self.axes_ras.tolist(),
            "semi_axes_mm": self.semi_axes_mm.tolist(),
        }

    @property
    def apex_ras(self) -> np.ndarray:
        """(3,) RAS mm of the apex (long-axis end towards left-anterior-inferior)."""
        return self.center_ras_mm + self.semi_axes_mm[0] * self.axes_ras[0]

    @property
    def base_ras(self) -> np.ndarray:
        """(3,) RAS mm of the base pole (opposite the apex)."""
        return self.center_ras_mm - self.semi_axes_mm[0] * self.axes_ras[0]

    @property
    def anterior_ras(self) -> np.ndarray:
        """(3,) unit heart-anterior direction (azimuth 0): RAS +y made perpendicular to the long axis."""
        u = self.axes_ras[0]
        e0 = np.array([0.0, 1.0, 0.0]) - u[1] * u
        return e0 / np.linalg.norm(e0)

    @property
    def right_ras(self) -> np.ndarray:
        """(3,) unit heart-right direction (azimuth +90 deg): u x anterior."""
        return np.cross(self.axes_ras[0], self.anterior_ras)

    def surface_points(self, theta_deg: Any, phi_deg: Any, offset_mm: float = 0.0) -> np.ndarray:
        """RAS mm of surface points (theta from the apex, phi azimuth from anterior; degrees).

        Args:
            theta_deg, phi_deg: broadcastable arrays of angles, degrees (see the module docstring).
            offset_mm: the points lie on the ellipsoid with semi-axes grown by this much.

        Returns:
            (..., 3) RAS mm.
        """
        th = np.radians(np.asarray(theta_deg, dtype=np.float64))
        ph = np.radians(np.asarray(phi_deg, dtype=np.float64))
        a, b, c = self.semi_axes_mm + offset_mm
        u, v, w = self.axes_ras
        d = np.cos(ph)[..., None] * self.anterior_ras + np.sin(ph)[..., None] * self.right_ras
        rho = 1.0 / np.sqrt((d @ v / b) ** 2 + (d @ w / c) ** 2)  # cross-section radius along d
        return self.center_ras_mm + (a * np.cos(th))[..., None] * u + (np.sin(th) * rho)[..., None] * d

    def signed_distance_mm(self, points: Any, offset_mm: float = 0.0) -> np.ndarray:
        """Euclidean distance (mm) of (N, 3) RAS points to the surface, > 0 outside.

        Exact (closest point by bisection on the Lagrange multiplier, Eberly's method) for points
        outside or near the surface; ``offset_mm`` grows the semi-axes as in ``surface_points``.
        """
        p = np.atleast_2d(np.asarray(points, dtype=np.float64))
        e = self.semi_axes_mm + offset_mm
        y = np.maximum(np.abs((p - self.center_ras_mm) @ self.axes_ras.T), 1e-12)
        e2 = e**2
        k = int(np.argmin(e))
        lo = -e2[k] + e[k] * y[:, k]
        hi = -e2[k] + np.linalg.norm(e * y, axis=1)
        for _ in range(100):
            t = 0.5 * (lo + hi)
            f = np.sum((e * y / (t[:, None] + e2)) ** 2, axis=1) - 1.0
            lo, hi = np.where(f > 0, t, lo), np.where(f > 0, hi, t)
        t = 0.5 * (lo + hi)
        closest = e2 * y / (t[:, None] + e2)
        dist = np.linalg.norm(y - closest, axis=1)
        return np.where(np.sum((y / e) ** 2, axis=1) >= 1.0, dist, -dist)


def tilted_axis(rng: np.random.Generator, axis_ras: Any, max_tilt_deg: float) -> np.ndarray:
    """``axis_ras`` (normalised) tilted by a uniform angle in [0, max_tilt_deg] towards a random direction.

    The random draws (one uniform, then three normals) are in a fixed order: the procedural phantoms
    that call it keep their seeded output.
    """
    u = np.asarray(axis_ras, dtype=np.float64)
    u = u / np.linalg.norm(u)
    tilt = math.radians(float(rng.uniform(0.0, max_tilt_deg)))
    perp = np.cross(u, rng.normal(size=3))
    perp /= np.linalg.norm(perp)
    return math.cos(tilt) * u + math.sin(tilt) * perp
