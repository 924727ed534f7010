"""Build a :class:`CArmGeometry` from a DICOM X-ray angiography (XA) or radio-fluoroscopy (RF) header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from xraycardiac.geometry.carm import CArmGeometry

_LETTERS = {"R": np.array([1.0, 0, 0]), "L": np.array([-1.0, 0, 0]), "A": np.array([0, 1.0, 0]),
            "P": np.array([0, -1.0, 0]), "H": np.array([0, 0, 1.0]), "F": np.array([0, 0, -1.0])}  # fmt: skip


def _orientation_vector(code: str) -> np.ndarray:
    """RAS direction of a DICOM Patient Orientation code such as 'L', 'F' or 'LF' (oblique)."""
    v = sum((_LETTERS[c] for c in code.upper() if c in _LETTERS), np.zeros(3))
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def geometry_from_dicom(source: str | Path | pydicom.Dataset, frame_name: str = "") -> CArmGeometry:
    """Read the C-arm pose of an XA/RF image.

    Uses PositionerPrimaryAngle (0018,1510), PositionerSecondaryAngle (0018,1511),
    DistanceSourceToDetector (0018,1110), DistanceSourceToPatient (0018,1111),
    ImagerPixelSpacing (0018,1164), Rows, Columns and, when present, Patient Orientation
    (0020,0020) to fix the in-plane image axes. The isocentre is placed at RAS (0, 0, 0); the
    table positions, when present, are kept in ``extra`` (their origin is vendor specific).

    Args:
        source: a file path or an already read pydicom Dataset.
        frame_name: name given to the view; defaults to the file stem.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a DICOM file, not XA/RF, a required tag is missing, or an angle is outside
            its DICOM range (primary [-180, 180], secondary [-90, 90] degrees); the message names the tag.
    """
    if isinstance(source, pydicom.Dataset):
        ds, label = source, frame_name or "dataset"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"DICOM file not found: {path}")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError as e:
            raise ValueError(f"{path}: not a DICOM file ({e})") from e
        label = str(path)
        frame_name = frame_name or path.stem
    modality = str(getattr(ds, "Modality", ""))
    if modality not in ("XA", "RF"):
        raise ValueError(
            f"{label}: C-arm geometry needs an X-ray angiography (XA) or fluoroscopy (RF) image; "
            f"this file has Modality {modality or 'missing'!r}"
        )

    def need(keyword: str, tag: str) -> Any:
        value = getattr(ds, keyword, None)
        if value is None or value == "":
            raise ValueError(f"{label}: required C-arm tag {keyword} {tag} is missing")
        return value

    def angle(keyword: str, tag: str, limit: float) -> float:
        value = float(need(keyword, tag))
        if not -limit <= value <= limit:  # also refuses NaN
            raise ValueError(
                f"{label}: C-arm tag {keyword} {tag} = {value:g} degrees is outside [-{limit:g}, {limit:g}] "
                "(DICOM PS3.3 C.8.7.5); the header is damaged or not in DICOM's convention"
            )
        return value

    spacing = need("ImagerPixelSpacing", "(0018,1164)")
    geometry = CArmGeometry(
        primary_angle_deg=angle("PositionerPrimaryAngle", "(0018,1510)", 180.0),
        secondary_angle_deg=angle("PositionerSecondaryAngle", "(0018,1511)", 90.0),
        sid_mm=float(need("DistanceSourceToDetector", "(0018,1110)")),
        sod_mm=float(need("DistanceSourceToPatient", "(0018,1111)")),
        detector_rows=int(need("Rows", "(0028,0010)")),
        detector_cols=int(need("Columns", "(0028,0011)")),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        name=frame_name,
        extra={
            "source": label,
            "table_top_mm": [
                float(getattr(ds, k)) if getattr(ds, k, None) not in (None, "") else None
                for k in (
                    "TableTopLateralPosition",
                    "TableTopLongitudinalPosition",
                    "TableTopVerticalPosition",
                )
            ],
        },
    )
    orientation = getattr(ds, "PatientOrientation", None)
    if orientation and len(orientation) == 2:
        u_ax, v_ax = geometry.detector_axes
        flip_u = float(_orientation_vector(str(orientation[0])) @ u_ax) < 0
        flip_v = float(_orientation_vector(str(orientation[1])) @ v_ax) < 0
        geometry = geometry.with_(flip_columns=flip_u, flip_rows=flip_v)
    return geometry
