"""C-arm projection geometry in patient RAS, following DICOM PS3.3 C.8.7.5.

Conventions (the ones docs/ARCHITECTURE.md says must never be guessed):

* World frame: patient RAS, millimetres. +x = patient right, +y = anterior, +z = superior.
* Primary angle (degrees): rotation of the detector about the patient's cranio-caudal axis;
  0 = detector anterior (beam posterior -> anterior, "AP" in angiography), +90 = detector at the
  patient's left (LAO 90: the source is on the patient's right), negative = RAO.
* Secondary angle (degrees): tilt of the detector toward the head (+ = cranial: the source moves
  caudal) or the feet (- = caudal), applied in the C-arm's own frame after the primary rotation.
  The detector direction (isocentre -> detector) is therefore
  ``d = (-sin(a) cos(b), cos(a) cos(b), sin(b))`` in RAS, i.e. ``R = Rz(a) @ Rx(b)`` applied to +y.
* SID = source to detector distance, SOD = source to isocentre distance (mm); the magnification
  of an object at the isocentre is SID / SOD.
* Pixel spacing (row, column) in mm at the detector, as DICOM ImagerPixelSpacing.
* Image axes: pixel (u = column, v = row), pixel centres at integers, origin top-left, principal
  point at the image centre. At 0/0 the image is shown radiologically: the patient's left is on
  the image's right (u grows toward -x) and the head is up (v grows toward -z); the primary and
  secondary rotations carry those detector axes. ``flip_columns`` / ``flip_rows`` apply what a
  DICOM Patient Orientation (0020,0020) says when it disagrees with that default.
* Table offset: a translation of the patient (with the table) in RAS mm; it moves the isocentre
  in patient coordinates by ``-table_offset_ras_mm``.

The 3x4 projection matrix ``P = K [R_cam | -R_cam s]`` maps homogeneous RAS mm to homogeneous pixel
coordinates, with ``R_cam`` rows = (u axis, v axis, beam direction) and
``K = [[SID/sc, 0, cu], [0, SID/sr, cv], [0, 0, 1]]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

# X2CT-GAN's radiograph geometry (Ying et al. 2019): source to detector 949 mm, source to patient 541 mm.
X2CT_SID_MM = 949.0
X2CT_SOD_MM = 541.0


def _rot_z(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(angle_deg: float) -> np.ndarray:
    b = math.radians(angle_deg)
    c, s = math.cos(b), math.sin(b)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _finite_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"CArmGeometry.{name}: expected a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class CArmGeometry:
    """One C-arm view. All lengths in mm, angles in degrees, world frame patient RAS."""

    primary_angle_deg: float = 0.0  # + LAO, - RAO
    secondary_angle_deg: float = 0.0  # + cranial, - caudal
    sid_mm: float = 1200.0  # source to detector
    sod_mm: float = 800.0  # source to isocentre
    detector_rows: int = 512
    detector_cols: int = 512
    pixel_spacing_mm: tuple[float, float] = (0.3, 0.3)  # (row, column) spacing at the detector
    isocenter_ras_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    table_offset_ras_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    flip_columns: bool = False  # mirror u (Patient Orientation disagrees with the default)
    flip_rows: bool = False  # mirror v
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. the DICOM source file

    def __post_init__(self) -> None:
        for name in ("primary_angle_deg", "secondary_angle_deg"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v)):
                raise ValueError(f"CArmGeometry.{name}: expected a finite angle in degrees, got {v!r}")
        _finite_positive("sid_mm", self.sid_mm)
        _finite_positive("sod_mm", self.sod_mm)
        if self.sod_mm >= self.sid_mm:
            raise ValueError(
                f"CArmGeometry: sod_mm ({self.sod_mm}) must be smaller than sid_mm ({self.sid_mm}): "
                "the isocentre lies between the source and the detector"
            )
        for name in ("detector_rows", "detector_cols"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"CArmGeometry.{name}: expected a positive integer, got {v!r}")
        ps = tuple(float(x) for x in self.pixel_spacing_mm)
        if len(ps) != 2:
            raise ValueError(f"CArmGeometry.pixel_spacing_mm: expected (row, column) in mm, got {ps}")
        for v in ps:
            _finite_positive("pixel_spacing_mm", v)
        object.__setattr__(self, "pixel_spacing_mm", ps)
        for name in ("isocenter_ras_mm", "table_offset_ras_mm"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise ValueError(f"CArmGeometry.{name}: expected three finite RAS mm values, got {v}")
            object.__setattr__(self, name, v)

    # ---- frames -------------------------------------------------------------------------------

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) C-arm rotation ``Rz(primary) @ Rx(secondary)`` acting on RAS vectors."""
        return _rot_z(self.primary_angle_deg) @ _rot_x(self.secondary_angle_deg)

    @property
    def beam_direction(self) -> np.ndarray:
        """Unit RAS vector from the source toward the detector, shape (3,)."""
        return self.rotation @ np.array([0.0, 1.0, 0.0])

    @property
    def detector_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit RAS vectors along increasing column (u) and increasing row (v)."""
        u = self.rotation @ np.array([-1.0, 0.0, 0.0])
        v = self.rotation @ np.array([0.0, 0.0, -1.0])
        return (-u if self.flip_columns else u), (-v if self.flip_rows else v)

    @property
    def isocenter(self) -> np.ndarray:
        """Isocentre in patient RAS mm, table offset included, shape (3,)."""
        return np.asarray(self.isocenter_ras_mm) - np.asarray(self.table_offset_ras_mm)

    @property
    def source_position(self) -> np.ndarray:
        """X-ray source (focal spot) in RAS mm, shape (3,)."""
        return self.isocenter - self.sod_mm * self.beam_direction

    @property
    def detector_center(self) -> np.ndarray:
        """RAS mm of the detector point hit by the central ray (the principal point), shape (3,)."""
        return self.source_position + self.sid_mm * self.beam_direction

    @property
    def principal_point(self) -> tuple[float, float]:
        """(u, v) pixel coordinates of the central ray: the image centre."""
        return (self.detector_cols - 1) / 2.0, (self.detector_rows - 1) / 2.0

    @property
    def magnification(self) -> float:
        """Geometric magnification SID / SOD of an object at the isocentre."""
        return self.sid_mm / self.sod_mm

    # ---- matrices -----------------------------------------------------------------------------

    def intrinsic_matrix(self) -> np.ndarray:
        """(3, 3) pinhole intrinsics in pixels."""
        cu, cv = self.principal_point
        sr, sc = self.pixel_spacing_mm
        return np.array([[self.sid_mm / sc, 0.0, cu], [0.0, self.sid_mm / sr, cv], [0.0, 0.0, 1.0]])

    def extrinsic_matrix(self) -> np.ndarray:
        """(3, 4) ``[R_cam | t]`` mapping RAS mm to camera mm (x along u, y along v, z along the beam)."""
        u, v = self.detector_axes
        r_cam = np.stack([u, v, self.beam_direction])
        return np.concatenate([r_cam, (-r_cam @ self.source_position)[:, None]], axis=1)

    def projection_matrix(self) -> np.ndarray:
        """(3, 4) float64 matrix mapping homogeneous RAS mm to homogeneous pixel (u, v, 1)."""
        return self.intrinsic_matrix() @ self.extrinsic_matrix()

    def project(self, points_ras: np.ndarray) -> np.ndarray:
        """Project (N, 3) RAS mm points to (N, 2) pixel coordinates (u = column, v = row)."""
        return project_points(self.projection_matrix(), points_ras)

    def pixel_to_detector_ras(self, uv: np.ndarray) -> np.ndarray:
        """RAS mm positions on the detector plane of (N, 2) pixel coordinates (u, v)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        cu, cv = self.principal_point
        sr, sc = self.pixel_spacing_mm
        u_ax, v_ax = self.detector_axes
        return (
            self.detector_center[None, :]
            + ((uv[:, 0] - cu) * sc)[:, None] * u_ax[None, :]
            + ((uv[:, 1] - cv) * sr)[:, None] * v_ax[None, :]
        )

    def detector_ijk_to_ras(self) -> np.ndarray:
        """(4, 4) matrix placing the image (I = column, J = row, K = 1 slice) on the detector plane in RAS."""
        u_ax, v_ax = self.detector_axes
        sr, sc = self.pixel_spacing_mm
        m = np.eye(4)
        m[:3, 0] = u_ax * sc
        m[:3, 1] = v_ax * sr
        m[:3, 2] = np.cross(u_ax, v_ax) * min(sr, sc)
        m[:3, 3] = self.pixel_to_detector_ras(np.zeros((1, 2)))[0]
        return m

    # ---- (de)serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields plus the derived projection matrix and source position (for readers)."""
        d = asdict(self)
        d["pixel_spacing_mm"] = list(self.pixel_spacing_mm)
        d["isocenter_ras_mm"] = list(self.isocenter_ras_mm)
        d["table_offset_ras_mm"] = list(self.table_offset_ras_mm)
        d["projection_matrix"] = self.projection_matrix().tolist()
        d["source_position_ras_mm"] = self.source_position.tolist()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CArmGeometry:
        """Inverse of :meth:`to_dict`; derived keys are ignored, unknown keys are an error."""
        data = dict(data)
        for derived in ("projection_matrix", "source_position_ras_mm"):
            data.pop(derived, None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CArmGeometry: unknown field(s) {unknown}; allowed: {sorted(known)}")
        for key in ("pixel_spacing_mm", "isocenter_ras_mm", "table_offset_ras_mm"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load_json(cls, path: str | Path) -> CArmGeometry:
        """Read a geometry JSON written by :meth:`save_json`."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"C-arm geometry file not found: {p}")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{p}: not a C-arm geometry JSON ({e})") from e

    def with_(self, **changes: Any) -> CArmGeometry:
        """Copy with some fields changed."""
        return replace(self, **changes)

    # ---- presets ------------------------------------------------------------------------------

    @classmethod
    def preset(cls, preset: str, **overrides: Any) -> CArmGeometry:
        """Chest radiograph presets with X2CT-GAN's distances (SID 949 mm, source-patient 541 mm).

        ``"pa"``: frontal, source posterior, detector anterior (primary 0).
        ``"lateral"``: left lateral, source on the patient's right, detector on the left (primary +90).
        Default detector 256 x 256 pixels of 2.8 mm, i.e. about 408 mm at the isocentre.
        """
        angles = {"pa": 0.0, "lateral": 90.0}
        if preset not in angles:
            raise ValueError(f"CArmGeometry.preset: unknown preset {preset!r}; allowed: {sorted(angles)}")
        base = dict(
            primary_angle_deg=angles[preset],
            secondary_angle_deg=0.0,
            sid_mm=X2CT_SID_MM,
            sod_mm=X2CT_SOD_MM,
            detector_rows=256,
            detector_cols=256,
            pixel_spacing_mm=(2.8, 2.8),
            name="PA" if preset == "pa" else "Lateral",
        )
        base.update(overrides)
        return cls.from_dict(base)


def project_points(p: np.ndarray, points_ras: np.ndarray) -> np.ndarray:
    """Apply a (3, 4) projection matrix to (N, 3) RAS points; returns (N, 2) pixels (u, v)."""
    x = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    h = x @ p[:, :3].T + p[:, 3]
    return h[:, :2] / h[:, 2:3]
