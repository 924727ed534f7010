"""Read a radiograph as it comes: stored pixel values, what they encode, and the view's geometry.

One reader (:func:`read_radiograph`) for the files a user has:

* **DICOM** DX / CR (and XA / RF frames), via pydicom: the modality LUT (RescaleSlope /
  RescaleIntercept) is applied; PhotometricInterpretation MONOCHROME1 (and, for LOG / LIN data,
  PixelIntensityRelationshipSign) set the polarity; PixelIntensityRelationship LOG / LIN sets the
  encoding (else "display"); a VOI window (WindowCenter / WindowWidth) is the display range of
  display data. Geometry from the header (:func:`xraycardiac.geometry.geometry_from_dicom`:
  ViewPosition, DistanceSourceToDetector / DistanceSourceToPatient, ImagerPixelSpacing / PixelSpacing),
  with what the user gives winning.
* **PNG / JPEG / TIFF / BMP** (8 or 16 bit): "display" values of full scale 2^bits - 1; a colour
  picture whose channels agree (within 2 levels: a grey picture saved as RGB) is read as grey and
  said so, a real colour picture is refused. No geometry in the file: the user gives it.
* **NRRD / NIfTI / MetaImage** one-slice volumes and ``.npy`` arrays: line integrals of mu (what
  ``xraycardiac drr`` writes). A DRR written by ``xraycardiac drr`` carries its view in the header
  (``xraycardiac_geometry``, checked against ``xraycardiac_projection_matrix``), which is used.

Polarity convention: ``inverted`` means that stored values fall as attenuation rises (MONOCHROME1,
or a LOG/LIN sign of +1: "lower values = less X-ray beam intensity").

Nothing here guesses silently: :attr:`Radiograph.geometry_source` says where the geometry came from (or
why there is none) and :attr:`Radiograph.notes` lists every conversion made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.geometry.carm import CArmGeometry

__all__ = [
    "ENCODINGS",
    "PICTURE_SUFFIXES",
    "Radiograph",
    "check_image",
    "load_view_geometry",
    "read_npy_image",
    "read_radiograph",
    "user_geometry",
]

ENCODINGS = ("line-integral", "log", "linear", "display")
"""What stored values are: line integrals of mu; a log of the beam intensity (unknown scale); the beam
intensity (transmission); display grey levels (unknown mapping)."""
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_GREY_SPREAD = 2.0  # grey levels by which an RGB picture's channels may differ and still be grey
_VIEW_OF_KEY = {"pa": "PA", "lateral": "LL"}


@dataclass(frozen=True)
class Radiograph:
    """One radiograph as read.

    Attributes:
        pixels: (rows, cols) float64 stored values (after the DICOM modality LUT).
        name: the file name.
        source_format: "dicom", "png", "jpeg", "tiff", "bmp", "nrrd", "nifti", "metaimage", "npy".
        encoding: one of :data:`ENCODINGS`.
        inverted: stored values fall as attenuation rises (MONOCHROME1 / sign).
        display_range: (low, high) stored values of the display range (VOI window, or 0 .. 2^bits - 1)
            for display data; None for other encodings.
        geometry: the view's C-arm geometry, or None.
        geometry_source: where ``geometry`` came from, or why there is none.
        notes: conversions made while reading (RGB -> grey, rescale applied, ...).
    """

    pixels: np.ndarray
    name: str
    source_format: str
    encoding: str
    inverted: bool = False
    display_range: tuple[float, float] | None = None
    geometry: CArmGeometry | None = None
    geometry_source: str = "none"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """The reading as JSON-able values (for reports)."""
        return {
            "file": self.name,
            "format": self.source_format,
            "shape": list(self.pixels.shape),
            "encoding": self.encoding,
            "inverted": self.inverted,
            "display_range": None if self.display_range is None else list(self.display_range),
            "geometry_source": self.geometry_source,
            "notes": list(self.notes),
        }


def user_geometry(
    key: str, shape: tuple[int, int], view: str | None, sid_mm: float | None, sod_mm: float | None,
    pixel_mm: float | tuple[float, float] | None,
) -> CArmGeometry | None:  # fmt: skip
    """The geometry a user gives for a picture: view (default from ``key``), SID, SOD, detector pixel.

    Returns None when none of SID, SOD and pixel is given.

    Raises:
        ValueError: some but not all of them given, or values a C-arm cannot have (naming the flags).
    """
    from xraycardiac.geometry.dicom import VIEW_POSITIONS

    given = {"--sid-mm": sid_mm, "--sod-mm": sod_mm, "--pixel-mm": pixel_mm}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"inputs.{key}: a picture carries no geometry; give all of --sid-mm, --sod-mm and --pixel-mm "
            f"(missing: {', '.join(missing)})"
        )
    view = (view or _VIEW_OF_KEY.get(key, "PA")).upper()
    if view not in VIEW_POSITIONS:
        raise ValueError(f"inputs.{key}: view {view!r}; allowed: {sorted(VIEW_POSITIONS)}")
    spacing = pixel_mm if isinstance(pixel_mm, tuple | list) else (pixel_mm, pixel_mm)
    try:
        return CArmGeometry(
            primary_angle_deg=VIEW_POSITIONS[view], sid_mm=float(sid_mm), sod_mm=float(sod_mm),
            detector_rows=int(shape[0]), detector_cols=int(shape[1]),
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])), name=key,
            extra={"view_position": view, "sources": {"all": "given"}},
        )  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"inputs.{key}: {exc}") from None


def load_view_geometry(
    path: str | os.PathLike[str], key: str, shape: tuple[int, int], image_key: str
) -> CArmGeometry:
    """A ``CArmGeometry`` JSON file (input ``key``), checked against its image's (rows, cols).

    Raises:
        FileNotFoundError / IsADirectoryError: no such file. ValueError: not a geometry JSON, or a
            detector unlike the image (naming ``inputs.<key>``).
    """
    import json

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"inputs.{key}: {path} is a folder; expected a C-arm geometry JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"inputs.{key}: {path} does not exist")
    try:
        geometry = CArmGeometry.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"inputs.{key}: {path.name} is not a C-arm geometry JSON ({exc})") from None
    detector = (geometry.detector_rows, geometry.detector_cols)
    if detector != tuple(shape):
        raise ValueError(
            f"inputs.{key}: its detector is {detector[0]} x {detector[1]} pixels (rows x cols) but "
            f"inputs.{image_key} is {shape[0]} x {shape[1]}; each image needs the geometry of its own frame"
        )
    return geometry


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def check_image(pixels: np.ndarray, key: str, name: str) -> None:
    """Raise a ValueError naming ``inputs.<key>`` (file ``name``) unless ``pixels`` is one finite 2D
    image of at least 8 x 8 pixels (the check of every radiograph and angiogram input)."""
    if pixels.ndim != 2:
        what = (
            f"a 3D volume of {pixels.shape[0]} slices"
            if pixels.ndim == 3
            else f"an array of {pixels.ndim} dims"
        )
        raise ValueError(
            f"inputs.{key}: {name} is {what} (shape {pixels.shape}), not a radiograph; expected one "
            "2D image (rows, cols) or a one-slice volume"
        )
    if min(pixels.shape) < 8:
        raise ValueError(
            f"inputs.{key}: {name} is {pixels.shape[0]} x {pixels.shape[1]} pixels; need >= 8 x 8"
        )
    if not np.all(np.isfinite(pixels)):
        raise ValueError(f"inputs.{key}: {name} holds non-finite values")


def read_radiograph(
    path: str | os.PathLike[str], key: str, geometry_overrides: dict[str, Any] | None = None
) -> Radiograph:
    """Read one radiograph file (module docstring).

    Args:
        path: DICOM, PNG/JPEG/TIFF/BMP, a one-slice NRRD/NIfTI/MetaImage volume or a ``.npy`` array.
        key: the input's name ("pa", "lateral"), for messages and the default view of a picture.
        geometry_overrides: what the user gives: ``view`` ("PA", "AP", "LL", "RL"), ``sid_mm``,
            ``sod_mm``, ``pixel_spacing_mm`` (mm at the detector); over the header's values.

    Returns:
        The :class:`Radiograph`; its pixels are finite, 2D and at least 8 x 8.

    Raises:
        FileNotFoundError / IsADirectoryError: no such file.
        ValueError: unreadable, not one 2D image, a colour picture, non-finite values, a multi-frame
            DICOM, or a header geometry unlike its image; the message names ``inputs.<key>``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"inputs.{key}: {path} is a folder; expected one radiograph file")
    if not path.is_file():
        raise FileNotFoundError(f"inputs.{key}: {path} does not exist")
    given = {k: v for k, v in (geometry_overrides or {}).items() if v is not None}
    if path.suffix.lower() == ".npy":
        r = _read_npy(path, key)
    elif _is_dicom(path):
        r = _read_dicom(path, key, given)
        given = {}  # applied by geometry_from_dicom
    else:
        r = _read_volume_file(path, key)
    check_image(r.pixels, key, path.name)
    if given:
        r = _with_given(r, key, given)
    return r


def _with_given(r: Radiograph, key: str, given: dict[str, Any]) -> Radiograph:
    """``r`` with the user's geometry values applied over its own (or making one for a picture)."""
    from dataclasses import replace

    if r.geometry is None:
        geometry = user_geometry(key, r.pixels.shape, given.get("view"), given.get("sid_mm"),
                                 given.get("sod_mm"), given.get("pixel_spacing_mm"))  # fmt: skip
        return replace(r, geometry=geometry, geometry_source=f"given by the user ({_flags(given)})")
    changes: dict[str, Any] = {}
    for name in ("sid_mm", "sod_mm"):
        if name in given:
            changes[name] = float(given[name])
    if "pixel_spacing_mm" in given:
        ps = given["pixel_spacing_mm"]
        changes["pixel_spacing_mm"] = tuple(ps) if isinstance(ps, tuple | list) else (ps, ps)
    if "view" in given:
        from xraycardiac.geometry.dicom import VIEW_POSITIONS

        changes["primary_angle_deg"] = VIEW_POSITIONS[str(given["view"]).upper()]
    try:
        geometry = r.geometry.with_(**changes)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"inputs.{key}: the given geometry values {given} do not fit ({exc})") from None
    return replace(
        r, geometry=geometry, geometry_source=f"{r.geometry_source}, with {_flags(given)} given by the user"
    )


def _flags(given: dict[str, Any]) -> str:
    names = {"view": "view", "sid_mm": "SID", "sod_mm": "SOD", "pixel_spacing_mm": "pixel spacing"}
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in given.items())


def read_npy_image(path: Path, key: str) -> np.ndarray:
    """A ``.npy`` image as float64 (a leading one-slice axis dropped); a ValueError naming ``inputs.<key>``
    when it is unreadable or not numbers (its shape is checked by :func:`check_image`)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"inputs.{key}: {path.name} is not a readable .npy array ({exc})") from None
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"inputs.{key}: {path.name} holds {array.dtype} values, expected numbers")
    array = np.asarray(array, dtype=np.float64)
    return array[0] if array.ndim == 3 and array.shape[0] == 1 else array


def _read_npy(path: Path, key: str) -> Radiograph:
    array = read_npy_image(path, key)
    return Radiograph(array, path.name, "npy", "line-integral", geometry_source="none (a .npy array carries no geometry)",
                      notes=("values taken as line integrals of mu (.npy)",))  # fmt: skip


def _read_volume_file(path: Path, key: str) -> Radiograph:
    """A picture or a one-slice volume via :func:`xraycardiac.io.read_volume`."""
    from xraycardiac.io import read_volume

    try:
        volume = read_volume(path)
    except ValueError as exc:
        raise ValueError(f"inputs.{key}: {exc}") from None
    array = np.asarray(volume.array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3:
        raise ValueError(
            f"inputs.{key}: {path.name} is a 3D volume of {array.shape[0]} slices (shape {array.shape}), not a "
            "radiograph; expected one 2D image (rows, cols) or a one-slice volume"
        )
    meta = volume.meta
    fmt = str(meta.get("source_format", "unknown"))
    if fmt in ("png", "jpeg", "tiff", "bmp"):
        notes: list[str] = []
        if "colour_components" in meta:
            spread = float(meta.get("colour_spread", 0.0))
            if spread > _GREY_SPREAD:
                raise ValueError(
                    f"inputs.{key}: {path.name} is a colour picture (its channels differ by up to {spread:g} "
                    "grey levels); a radiograph is grey: export it as a greyscale (8 or 16 bit) image"
                )
            notes.append(f"RGB picture read as grey (its channels differ by at most {spread:g} levels)")
            bits = int(meta.get("colour_bits", 8))
        else:
            bits = 8 * np.dtype(array.dtype).itemsize if np.issubdtype(array.dtype, np.integer) else 0
        if bits not in (8, 16):
            raise ValueError(
                f"inputs.{key}: {path.name} holds {array.dtype} values; expected an 8- or 16-bit greyscale picture"
            )
        notes.append(f"{bits}-bit display values, full scale 0..{2**bits - 1}")
        return Radiograph(
            array.astype(np.float64), path.name, fmt, "display", display_range=(0.0, float(2**bits - 1)),
            geometry_source=f"none (a {fmt.upper()} carries no geometry)", notes=tuple(notes),
        )  # fmt: skip
    geometry, source = _header_geometry(meta, array.shape, path.name, key)
    drr = meta.get("kind") == "drr" or str(meta.get("quantity", "")).startswith("line integral")
    note = "line integrals of mu (xraycardiac drr header)" if drr else (
        "values taken as line integrals of mu (no xraycardiac_quantity in the header)")  # fmt: skip
    return Radiograph(array.astype(np.float64), path.name, fmt, "line-integral", geometry=geometry,
                      geometry_source=source, notes=(note,))  # fmt: skip


def _header_geometry(meta: dict[str, Any], shape: tuple[int, ...], name: str, key: str) -> tuple[Any, str]:
    """The view stored by ``xraycardiac drr`` in a volume header, checked; (None, why) without one."""
    record, matrix = meta.get("geometry"), meta.get("projection_matrix")
    if not isinstance(record, dict):
        if matrix is not None:
            return None, (
                "none: the header holds a projection matrix but no geometry record (written by an older "
                "xraycardiac drr); give the view's geometry JSON written beside it"
            )
        return None, f"none (no xraycardiac_geometry in the header of {name})"
    try:
        geometry = CArmGeometry.from_dict({k: v for k, v in record.items() if k != "extra"})
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"inputs.{key}: {name}: its header geometry is not a C-arm geometry ({exc})"
        ) from None
    if matrix is not None:
        p = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
        q = geometry.projection_matrix()
        if not np.allclose(p / np.linalg.norm(p), q / np.linalg.norm(q), atol=1e-6):
            raise ValueError(
                f"inputs.{key}: {name}: the header's projection matrix disagrees with its geometry record; "
                "the header was edited: give the geometry JSON instead"
            )
    if (geometry.detector_rows, geometry.detector_cols) != tuple(shape):
        raise ValueError(
            f"inputs.{key}: {name}: its header geometry is a {geometry.detector_rows} x {geometry.detector_cols} "
            f"detector but the image is {shape[0]} x {shape[1]}"
        )
    return geometry, f"file header ({name}: xraycardiac_geometry, projection matrix checked)"


def _read_dicom(path: Path, key: str, given: dict[str, Any]) -> Radiograph:
    """A DICOM radiograph: pixels through the modality LUT, encoding, polarity, window and geometry."""
    import pydicom

    from xraycardiac.geometry.dicom import geometry_from_dicom

    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds for damaged / unsupported files
        raise ValueError(
            f"inputs.{key}: {path.name}: cannot read its pixels as DICOM ({type(exc).__name__}: {exc})"
        ) from None
    notes: list[str] = []
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"inputs.{key}: {path.name} holds {frames} frames; give one radiograph (one frame)")
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise ValueError(
            f"inputs.{key}: {path.name} is a colour DICOM image; a radiograph is one grey channel"
        )
    pixels = raw.astype(np.float64)
    slope, intercept = (
        float(getattr(ds, "RescaleSlope", 1) or 1),
        float(getattr(ds, "RescaleIntercept", 0) or 0),
    )
    if (slope, intercept) != (1.0, 0.0):
        pixels = pixels * slope + intercept
        notes.append(f"modality LUT applied (RescaleSlope {slope:g}, RescaleIntercept {intercept:g})")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    relation = str(getattr(ds, "PixelIntensityRelationship", "") or "").strip().upper()
    sign = getattr(ds, "PixelIntensityRelationshipSign", None)
    encoding = {"LOG": "log", "LIN": "linear"}.get(relation, "display")
    if encoding != "display" and sign not in (None, ""):
        inverted = int(sign) == 1  # +1: lower values = less beam intensity, so values fall with attenuation
        notes.append(f"PixelIntensityRelationship {relation}, sign {int(sign):+d}")
    elif encoding == "linear":
        inverted = True  # LIN without a sign: values proportional to the beam intensity
        notes.append(
            "PixelIntensityRelationship LIN without a sign: values taken as proportional to the beam"
        )
    else:
        inverted = photometric == "MONOCHROME1"
        notes.append(
            f"PhotometricInterpretation {photometric}"
            + (f", PixelIntensityRelationship {relation}" if relation else "")
        )
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    display_range = None
    if encoding == "display":
        centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
        if centre is not None and width is not None:
            c = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
            w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
            display_range = (c - w / 2.0, c + w / 2.0)
            notes.append(f"VOI window centre {c:g} width {w:g} taken as the display range")
        else:
            ends = (intercept, float(2**bits - 1) * slope + intercept)  # stored 0 and 2^bits - 1, rescaled
            display_range = (min(ends), max(ends))
            notes.append(f"no VOI window: display range = the {bits}-bit stored range, rescaled")
    try:
        geometry = geometry_from_dicom(ds, frame_name=key, overrides=given or None)
        sources = geometry.extra.get("sources") or {"all": "header"}
        source = f"DICOM {getattr(ds, 'Modality', '')} header of {path.name} (" + ", ".join(
            f"{k}: {v}" for k, v in sources.items()) + ")"  # fmt: skip
    except ValueError as exc:
        geometry, source = None, f"none: {exc}"
    if geometry is not None and (geometry.detector_rows, geometry.detector_cols) != pixels.shape:
        raise ValueError(
            f"inputs.{key}: {path.name}: Rows x Columns disagree with its pixel data {pixels.shape}"
        )
    return Radiograph(
        pixels, path.name, "dicom", encoding, inverted, display_range, geometry, source, tuple(notes)
    )
