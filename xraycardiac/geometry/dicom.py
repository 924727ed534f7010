"""Build a :class:`CArmGeometry` from a DICOM X-ray header: angiography (XA), radio-fluoroscopy (RF),
digital radiography (DX) or computed radiography (CR).

XA/RF carry the C-arm angles. DX/CR carry a view position instead (ViewPosition (0018,5101): PA, AP,
LL, RL), which sets the primary angle: PA 0 (source posterior, detector anterior), AP 180, LL +90
(detector at the patient's left), RL -90; the secondary angle is 0. Distances: SID =
DistanceSourceToDetector (0018,1110); SOD = DistanceSourceToPatient (0018,1111), which DICOM defines
as the source to isocentre (centre of the field of view) distance, or else SID /
EstimatedRadiographicMagnificationFactor (0018,1114). Detector pixel: ImagerPixelSpacing (0018,1164)
(at the detector), or else PixelSpacing (0028,0030) taken as measured at the isocentre and scaled by
SID / SOD. What the header lacks (or what the user wants otherwise) comes from ``overrides``; the
geometry's ``extra["sources"]`` says where each value came from.
"""

from __future__ import annotations

import warnings
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


_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float / Double Float Pixel Data
_LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


def _read_header(path: Path) -> tuple[pydicom.Dataset, bool]:
    """``_parse_header``, keeping pydicom's warnings (e.g. about a cut UID) only for a file it accepts."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _parse_header(path)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _parse_header(path: Path) -> tuple[pydicom.Dataset, bool]:
    """(the data set of a DICOM file up to its pixel data, whether pixel data follows).

    pydicom stops quietly where a file ends, so a cut file would read as a header that merely lacks
    its later tags. The cut shows as: file meta shorter than its group length, a value shorter than
    its declared length, a partial element header left over, or pixel data shorter than declared.

    Raises:
        ValueError: not a DICOM file, or truncated / damaged (naming the file).
    """
    with path.open("rb") as fh:
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError as e:
            raise ValueError(f"{path}: not a DICOM file ({e})") from e
        except OSError:
            raise
        except Exception as e:  # pydicom meets the cut inside an element: EOFError, ValueError, ...
            raise ValueError(
                f"{path}: the DICOM file is truncated or damaged ({type(e).__name__}: {e})"
            ) from e
        left = path.stat().st_size - fh.tell()
        head = fh.read(12)

    def damaged(where: str) -> ValueError:
        return ValueError(
            f"{path}: the DICOM file is truncated or damaged ({where}); copy it again from its source"
        )

    for dataset in (ds.file_meta, ds):
        for tag in dataset.keys():
            if _value_cut(dataset.get_item(tag)):
                raise damaged(f"the value of element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is cut off")
    size = path.stat().st_size
    meta_length = ds.file_meta.get("FileMetaInformationGroupLength")
    if isinstance(meta_length, int) and size < 132 + 12 + meta_length:
        raise damaged("it ends inside its file meta information")
    raw = [e for e in map(ds.get_item, ds.keys()) if isinstance(getattr(e, "value_tell", None), int)]
    last = max(raw, key=lambda e: e.value_tell, default=None)
    if left == 0 and last is not None and last.length != 0xFFFFFFFF and size > last.value_tell + last.length:
        left = size - last.value_tell - last.length  # pydicom read a partial element header and stopped
    if 0 < left < 8:
        raise damaged(f"it ends {left} byte(s) into an element header")
    pixels = False
    if left >= 8:
        little = ds.is_little_endian is not False
        tag = int.from_bytes(head[0:2], "little" if little else "big") << 16
        tag |= int.from_bytes(head[2:4], "little" if little else "big")
        pixels = tag in _PIXEL_TAGS
        if pixels:
            order = "little" if little else "big"
            if ds.is_implicit_VR is False and head[4:6] in _LONG_VRS:
                header, length = 12, int.from_bytes(head[8:12], order) if len(head) == 12 else None
            elif ds.is_implicit_VR is False:
                header, length = 8, int.from_bytes(head[6:8], order)
            else:
                header, length = 8, int.from_bytes(head[4:8], order)
            if length is None or (length != 0xFFFFFFFF and left < header + length):
                raise damaged(f"its pixel data is cut off: {left} of {header + (length or 0)} bytes")
    return ds, pixels


def _value_cut(element: Any) -> bool:
    """True for a raw (not yet decoded) element whose value is shorter than its declared length."""
    length, value = getattr(element, "length", None), getattr(element, "value", None)
    return (
        isinstance(length, int) and length != 0xFFFFFFFF and isinstance(value, bytes) and len(value) < length
    )


VIEW_POSITIONS = {"PA": 0.0, "AP": 180.0, "LL": 90.0, "RL": -90.0}
"""Primary angle (degrees) of each DX/CR ViewPosition (0018,5101) this library understands."""
OVERRIDE_FIELDS = ("view", "sid_mm", "sod_mm", "pixel_spacing_mm")
"""Geometry fields a user may give for a DX/CR (or PNG) radiograph, over or instead of its header."""


def geometry_from_dicom(
    source: str | Path | pydicom.Dataset, frame_name: str = "", overrides: dict[str, Any] | None = None
) -> CArmGeometry:
    """Read the C-arm pose of an XA/RF image, or the projection geometry of a DX/CR radiograph.

    Uses PositionerPrimaryAngle (0018,1510), PositionerSecondaryAngle (0018,1511),
    DistanceSourceToDetector (0018,1110), DistanceSourceToPatient (0018,1111),
    ImagerPixelSpacing (0018,1164), Rows, Columns and, when present, Patient Orientation
    (0020,0020) to fix the in-plane image axes. The isocentre is placed at RAS (0, 0, 0); the
    table positions, when present, are kept in ``extra`` (their origin is vendor specific).

    Args:
        source: a file path or an already read pydicom Dataset.
        frame_name: name given to the view; defaults to the file stem.
        overrides: DX/CR only: values given by the user, which win over the header's
            (``OVERRIDE_FIELDS``: ``view`` "PA"/"AP"/"LL"/"RL", ``sid_mm``, ``sod_mm``,
            ``pixel_spacing_mm`` (row, column) at the detector); None values are ignored.

    Raises:
        FileNotFoundError: the file does not exist. IsADirectoryError: it is a folder.
        ValueError: not a DICOM file, a truncated one, not XA/RF/DX/CR, a required tag is missing (and
            not given in ``overrides``), an unknown view position, or an angle
            is outside its DICOM range (primary [-180, 180], secondary [-90, 90] degrees); the message
            names the tag.
    """
    if isinstance(source, pydicom.Dataset):
        ds, label, pixels = source, frame_name or "dataset", True
    else:
        path = Path(source)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; expected one DICOM XA/RF file")
        if not path.is_file():
            raise FileNotFoundError(f"DICOM file not found: {path}")
        ds, pixels = _read_header(path)
        label = str(path)
        frame_name = frame_name or path.stem
    # a file that ends at an element boundary before any pixel data may be a cut one
    cut = "" if pixels else " (or the file is cut short: it ends before any pixel data)"
    modality = str(getattr(ds, "Modality", ""))
    if modality in ("DX", "CR"):
        return _radiograph_geometry(ds, label, frame_name, cut, dict(overrides or {}))
    if modality not in ("XA", "RF"):
        found = f"Modality {modality!r}" if modality else f"no Modality (0008,0060) tag{cut}"
        raise ValueError(
            f"{label}: projection geometry needs an X-ray angiography (XA), fluoroscopy (RF), digital "
            f"(DX) or computed (CR) radiography image; this file has {found}"
        )

    def need(keyword: str, tag: str) -> Any:
        value = getattr(ds, keyword, None)
        if value is None or value == "":
            raise ValueError(f"{label}: required C-arm tag {keyword} {tag} is missing{cut}")
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
    return _oriented(ds, geometry)


def _tag(ds: pydicom.Dataset, keyword: str) -> Any:
    """The value of ``keyword``, None when absent or empty."""
    value = getattr(ds, keyword, None)
    return None if value is None or value == "" else value


def _radiograph_geometry(
    ds: pydicom.Dataset, label: str, frame_name: str, cut: str, given: dict[str, Any]
) -> CArmGeometry:
    """DX/CR: view position, distances and pixel spacing from the header or ``given`` (module docstring)."""
    unknown = sorted(set(given) - set(OVERRIDE_FIELDS))
    if unknown:
        raise ValueError(f"overrides: unknown field(s) {unknown}; allowed: {list(OVERRIDE_FIELDS)}")
    given = {k: v for k, v in given.items() if v is not None}
    sources: dict[str, str] = {}

    def value(name: str, keyword: str, tag: str, flag: str) -> Any:
        if name in given:
            sources[name] = "given"
            return given[name]
        v = _tag(ds, keyword)
        if v is None:
            raise ValueError(
                f"{label}: the radiograph's header has no {keyword} {tag}{cut}; give it ({flag})"
            )
        sources[name] = f"{keyword} {tag}"
        return v

    view = str(value("view", "ViewPosition", "(0018,5101)", "--view-pa / --view-lateral")).strip().upper()
    if view not in VIEW_POSITIONS:
        raise ValueError(
            f"{label}: view position {view!r} is not one this library can place; allowed: "
            f"{sorted(VIEW_POSITIONS)} (PA/AP frontal, LL/RL lateral)"
        )
    sid = float(value("sid_mm", "DistanceSourceToDetector", "(0018,1110)", "--sid-mm"))
    factor = _tag(ds, "EstimatedRadiographicMagnificationFactor")
    if "sod_mm" not in given and _tag(ds, "DistanceSourceToPatient") is None and factor is not None:
        sod = sid / float(factor)
        sources["sod_mm"] = "SID / EstimatedRadiographicMagnificationFactor (0018,1114)"
    else:
        sod = float(value("sod_mm", "DistanceSourceToPatient", "(0018,1111)", "--sod-mm"))
    at_iso = _tag(ds, "PixelSpacing")
    if "pixel_spacing_mm" not in given and _tag(ds, "ImagerPixelSpacing") is None and at_iso is not None:
        spacing = [float(x) * sid / sod for x in at_iso]
        sources["pixel_spacing_mm"] = "PixelSpacing (0028,0030) x SID / SOD (taken as at the isocentre)"
    else:
        spacing = value("pixel_spacing_mm", "ImagerPixelSpacing", "(0018,1164)", "--pixel-mm")
    if isinstance(spacing, int | float):
        spacing = (spacing, spacing)
    rows, cols = _tag(ds, "Rows"), _tag(ds, "Columns")
    if rows is None or cols is None:
        raise ValueError(f"{label}: the radiograph's header has no Rows / Columns (0028,0010/0011){cut}")
    try:
        geometry = CArmGeometry(
            primary_angle_deg=VIEW_POSITIONS[view],
            sid_mm=sid,
            sod_mm=sod,
            detector_rows=int(rows),
            detector_cols=int(cols),
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
            name=frame_name,
            extra={"source": label, "view_position": view, "sources": sources},
        )
    except ValueError as exc:
        raise ValueError(f"{label}: {exc} (values from: {sources})") from None
    oriented = _oriented(ds, geometry)
    sources["image_axes"] = (
        "PatientOrientation (0020,0020)" if oriented is not geometry
        else "default (no PatientOrientation (0020,0020))"
    )  # fmt: skip
    return oriented


def _oriented(ds: pydicom.Dataset, geometry: CArmGeometry) -> CArmGeometry:
    """``geometry`` with its image axes flipped where Patient Orientation (0020,0020) says; itself without it."""
    orientation = getattr(ds, "PatientOrientation", None)
    if not (orientation and len(orientation) == 2):
        return geometry
    u_ax, v_ax = geometry.detector_axes
    flip_u = float(_orientation_vector(str(orientation[0])) @ u_ax) < 0
    flip_v = float(_orientation_vector(str(orientation[1])) @ v_ax) < 0
    return geometry.with_(flip_columns=flip_u, flip_rows=flip_v)
