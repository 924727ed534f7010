"""Read and write volumes and 2D images with their geometry in patient RAS.

All file I/O goes through SimpleITK. ITK keeps images in patient **LPS**; the library works in
**RAS** (see ``xraycardiac.volume``). The conversion happens here and nowhere else: the first two
rows of the direction matrix and the first two origin coordinates change sign,

    ijk_to_ras[:3, :3] = F @ direction_lps @ diag(spacing),   ijk_to_ras[:3, 3] = F @ origin_lps,
    F = diag(-1, -1, 1).

SimpleITK's arrays are already indexed (z, y, x) = (K, J, I), so voxel arrays pass through unchanged.
A 2D file (PNG, a 2D NRRD, a single-frame DICOM) comes back as a volume with K = 1; its third axis is
the LPS z axis (RAS S) with a spacing of 1 mm.

Metadata: ``Volume.meta`` entries whose values are str, int, float, bool or (JSON-serialisable) lists
and dicts are stored as key/value pairs ``xraycardiac_<key> = <JSON>`` in NRRD and MetaImage headers and are
read back into ``meta``; NIfTI has no room for them and drops them. ``read_volume`` also records
``source_path``, ``source_format`` and, for DICOM, ``modality`` and ``series_instance_uid``.

Outputs are written to a temporary file in the destination directory, checked, then renamed over the
target with ``os.replace`` (``xraycardiac.outputs.atomic_path``, the home of every atomic write), so a
crash or a full disk never leaves a half-written file under the final name. ITK's writers do not always report a short write (the NIfTI writer only prints ``NWAD: wrote
only 0 of N bytes``), so every volume is verified after writing by the same check that guards reading:
the header is read back and the stored voxel data is measured against it (gzip streams are inflated
in bounded chunks, which also checks their CRC and length).

Reading refuses, before any voxel buffer is allocated: a file whose stored data is shorter than its
header declares or whose compressed stream is damaged, a volume larger than the memory available, a
NIfTI voxel size (pixdim) of 0, and a multi-component (vector) image where a scalar one is expected
(colour 2D pictures are still reduced to luminance).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.outputs import atomic_path, check_parent, write_bytes_atomic, write_failed
from xraycardiac.stored_data import check_stored_data, check_stored_data_in, pixel_bytes
from xraycardiac.volume import Volume

__all__ = [
    "META_PREFIX",
    "SUPPORTED_READ_FORMATS",
    "SUPPORTED_WRITE_EXTENSIONS",
    "read_volume",
    "require_2d",
    "require_3d",
    "require_label_map",
    "write_bytes_atomic",
    "write_png",
    "write_volume",
]

_log = logging.getLogger(__name__)

META_PREFIX = "xraycardiac_"
"""Prefix of the header keys that carry ``Volume.meta`` entries."""

SUPPORTED_READ_FORMATS = (
    "NRRD (.nrrd, .nhdr), NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), "
    "DICOM (a series directory or a single file), 2D images (.png, .jpg, .tif, .bmp)"
)
SUPPORTED_WRITE_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

_FORMAT_NAMES = {
    "NrrdImageIO": "nrrd",
    "NiftiImageIO": "nifti",
    "MetaImageIO": "metaimage",
    "GDCMImageIO": "dicom",
    "PNGImageIO": "png",
    "JPEGImageIO": "jpeg",
    "TIFFImageIO": "tiff",
    "BMPImageIO": "bmp",
}

# 2D formats whose colour is presentation only: RGB(A) is reduced to luminance, not refused.
_PICTURE_FORMATS = ("png", "jpeg", "tiff", "bmp", "dicom")

_SUFFIX_FORMATS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
}

_DICOM_TAG = re.compile(r"^[0-9a-fA-F]{4}\|[0-9a-fA-F]{4}$")

# DICOM tags read into meta (SimpleITK spells them "gggg|eeee", lower case).
_DICOM_META_TAGS = {
    "modality": "0008|0060",
    "series_instance_uid": "0020|000e",
    "series_description": "0008|103e",
}


# --------------------------------------------------------------------------------------------------
# Geometry conversion
# --------------------------------------------------------------------------------------------------


def _image_to_volume(image: Any, meta: dict[str, Any]) -> Volume:
    """Convert a SimpleITK image (2D or 3D, LPS) to a RAS ``Volume``; 2D becomes K = 1."""
    import SimpleITK as sitk

    dim = image.GetDimension()
    if dim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D image, got {dim} dimensions")
    n = image.GetNumberOfComponentsPerPixel()
    if n != 1:
        if dim != 2 or n not in (3, 4) or meta.get("source_format") not in _PICTURE_FORMATS:
            raise ValueError(
                f"the image has {n} components per voxel (a vector or colour image) where a scalar volume "
                "is expected; extract one component (or convert to grey levels) first"
            )
        stored = sitk.GetArrayFromImage(image)
        rgb = stored[..., :3].astype(np.float32)
        meta["colour_components"] = n  # a radiograph reader refuses real colour: see xraycardiac.radiograph
        meta["colour_bits"] = 8 * stored.dtype.itemsize
        meta["colour_spread"] = float(np.max(np.ptp(rgb, axis=-1))) if rgb.size else 0.0
        image = _to_scalar(image)
    array = sitk.GetArrayFromImage(image)
    spacing = np.ones(3)
    origin = np.zeros(3)
    direction = np.eye(3)
    spacing[:dim] = image.GetSpacing()
    origin[:dim] = image.GetOrigin()
    direction[:dim, :dim] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if dim == 2:
        array = array[None, ...]
    m = np.eye(4)
    m[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    m[:3, 3] = _LPS_TO_RAS @ origin
    return Volume(array=array, ijk_to_ras=m, meta=meta)


def _to_scalar(image: Any) -> Any:
    """Reduce an RGB(A) 2D picture to luminance (ITU-R BT.601 weights)."""
    import SimpleITK as sitk

    rgb = sitk.GetArrayFromImage(image).astype(np.float32)[..., :3]
    luma = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    out = sitk.GetImageFromArray(luma, isVector=False)
    out.CopyInformation(image)
    return out


def _volume_to_image(volume: Volume) -> Any:
    """Convert a RAS ``Volume`` to a 3D SimpleITK image in LPS (K = 1 stays a one-slice 3D image)."""
    import SimpleITK as sitk

    array = np.ascontiguousarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(array, isVector=False)
    spacing = volume.spacing
    direction_lps = _LPS_TO_RAS @ volume.directions
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in _LPS_TO_RAS @ volume.origin])
    image.SetDirection([float(v) for v in direction_lps.reshape(-1)])
    return image


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


def _encode_meta(meta: dict[str, Any]) -> dict[str, str]:
    """``Volume.meta`` -> header key/values (JSON strings); unsupported entries are skipped with a log line."""
    out: dict[str, str] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not key or ":=" in key or "\n" in key or "=" in key:
            _log.debug("meta key %r not written to the file header (not a plain name)", key)
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (str, int, float, list, dict)):  # bool is an int
            _log.debug("meta[%r] of type %s not written to the file header", key, type(value).__name__)
            continue
        try:
            out[META_PREFIX + key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            _log.debug("meta[%r] is not JSON-serialisable; not written to the file header", key)
    return out


def _decode_meta(reader: Any) -> dict[str, Any]:
    """Header key/values written by ``_encode_meta`` -> meta entries."""
    meta: dict[str, Any] = {}
    for key in reader.GetMetaDataKeys():
        if not key.startswith(META_PREFIX):
            continue
        raw = reader.GetMetaData(key)
        try:
            meta[key[len(META_PREFIX) :]] = json.loads(raw)
        except json.JSONDecodeError:
            meta[key[len(META_PREFIX) :]] = raw  # written by another tool: keep the text
    return meta


def _dicom_meta(get: Any, has: Any) -> dict[str, Any]:
    """DICOM tags of interest -> meta entries, given getter/has-key callables."""
    meta: dict[str, Any] = {}
    for name, tag in _DICOM_META_TAGS.items():
        if has(tag):
            value = get(tag).strip()
            if value:
                meta[name] = value
    return meta


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _unreadable(path: Path, reason: str) -> ValueError:
    reason = reason.strip().splitlines()[-1] if reason.strip() else "unknown reason"
    return ValueError(
        f"{path}: cannot read this file as an image ({reason}). Supported formats: {SUPPORTED_READ_FORMATS}."
    )


def read_volume(path: str | os.PathLike[str], series_uid: str | None = None) -> Volume:
    """Read a volume or a 2D image with its geometry converted to RAS.

    Args:
        path: an image file (NRRD, NIfTI, MetaImage, a single DICOM file, PNG/JPEG/TIFF/BMP) or a
            directory holding one DICOM series.
        series_uid: for a DICOM directory holding several series, the SeriesInstanceUID to read.

    Returns:
        Volume with array (K, J, I) (K = 1 for 2D inputs; RGB inputs are reduced to luminance),
        ``ijk_to_ras`` in RAS mm, and meta holding ``source_path``, ``source_format``, DICOM
        ``modality`` / ``series_instance_uid`` where available and any ``xraycardiac_*`` header entries.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as an image, is truncated or damaged, declares a NIfTI
            voxel size of 0, holds a vector image (other than a colour 2D picture), would not fit in the
            available memory; the directory holds no DICOM series, or it holds several and
            ``series_uid`` does not pick one of them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"read_volume: {path} does not exist")
    if path.is_dir():
        return _read_dicom_series(path, series_uid)
    if series_uid is not None:
        raise ValueError(
            f"read_volume: series_uid={series_uid!r} applies to a DICOM directory, not to file {path}"
        )
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(path, str(exc)) from exc
    _check_header(path, reader)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(path, str(exc)) from exc
    io_name = (
        reader.GetMetaData("ITK_InputFilterName") if reader.HasMetaDataKey("ITK_InputFilterName") else ""
    )
    if not io_name and any(_DICOM_TAG.match(key) for key in reader.GetMetaDataKeys()):
        io_name = "GDCMImageIO"  # GDCM does not set ITK_InputFilterName; its keys are DICOM tags
    meta = _decode_meta(reader)
    if io_name == "GDCMImageIO":
        meta.update(_dicom_meta(reader.GetMetaData, reader.HasMetaDataKey))
    meta["source_path"] = str(path)
    meta["source_format"] = _FORMAT_NAMES.get(io_name) or _SUFFIX_FORMATS.get(
        path.suffix.lower(), io_name or "unknown"
    )  # ITK's picture readers leave ITK_InputFilterName unset
    try:
        return _image_to_volume(image, meta)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _check_header(path: Path, reader: Any) -> None:
    """Refuse, before the voxels are read, a file too large for memory, one whose data is shorter than
    its header declares or whose compressed data is damaged, and a NIfTI voxel size of 0."""
    import SimpleITK as sitk

    from xraycardiac.runtime import require_memory

    size = tuple(int(n) for n in reader.GetSize())
    declared = math.prod(size) * pixel_bytes(reader)
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    require_memory(
        2 * declared,  # ITK's buffer and the NumPy copy
        f"reading {path} ({' x '.join(map(str, size))} voxels of {pixel})",
        "crop or downsample the volume, or use a machine with more memory",
    )
    nifti = check_stored_data(path, declared)
    if nifti is not None:
        bad = [
            (i, v) for i, v in enumerate(nifti["pixdim"][:3], start=1) if not (math.isfinite(v) and v != 0)
        ]
        if bad:
            listed = ", ".join(f"pixdim[{i}] = {v:g}" for i, v in bad)
            raise ValueError(
                f"{path}: the NIfTI header gives a voxel size of {listed} mm; a voxel size must be a finite "
                "value other than 0 (fix the header, e.g. set the spacing in the tool that wrote it)"
            )


def _read_dicom_series(directory: Path, series_uid: str | None) -> Volume:
    """Read one DICOM series from ``directory`` (slices sorted by GDCM along the slice normal)."""
    import SimpleITK as sitk

    series_ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)) or ())
    if not series_ids:
        raise ValueError(
            f"read_volume: directory {directory} holds no DICOM series. "
            f"Give a DICOM series directory or an image file; supported formats: {SUPPORTED_READ_FORMATS}."
        )
    if series_uid is None:
        if len(series_ids) > 1:
            raise ValueError(
                f"read_volume: directory {directory} holds {len(series_ids)} DICOM series; pick one with "
                f"series_uid=, one of: {', '.join(series_ids)}"
            )
        series_uid = series_ids[0]
    elif series_uid not in series_ids:
        raise ValueError(
            f"read_volume: series_uid={series_uid!r} is not in directory {directory}; "
            f"it holds: {', '.join(series_ids)}"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(directory, str(exc)) from exc
    meta = _dicom_meta(lambda tag: reader.GetMetaData(0, tag), lambda tag: reader.HasMetaDataKey(0, tag))
    meta["series_instance_uid"] = series_uid
    meta["source_path"] = str(directory)
    meta["source_format"] = "dicom-series"
    return _image_to_volume(image, meta)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _write_extension(path: Path) -> str:
    """The lower-case extension of ``path`` among the writable ones, or a ValueError."""
    name = path.name.lower()
    for ext in SUPPORTED_WRITE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    hint = ""
    if name.endswith((".nhdr", ".mhd")):
        hint = " Detached headers cannot be written atomically; use .nrrd or .mha."
    raise ValueError(
        f"write_volume: cannot write {path}: the extension must be one of "
        f"{', '.join(SUPPORTED_WRITE_EXTENSIONS)}.{hint}"
    )


def write_volume(volume: Volume, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write a volume to NRRD, NIfTI or MetaImage (chosen by extension), atomically.

    Args:
        volume: the volume; its RAS geometry is converted to the file's LPS (NIfTI: RAS on disk, as
            ITK handles it). K = 1 volumes are written as one-slice 3D images so that their full
            3D placement survives.
        path: destination ending in .nrrd, .nii, .nii.gz or .mha; its directory must exist.
        compress: compress the voxel data (gzip) where the format allows; .nii is never compressed.

    Returns:
        The written path.

    Raises:
        ValueError: unsupported extension.
        FileNotFoundError: the destination directory does not exist.
        OSError: the file could not be written whole (full disk, file size limit, permissions); the
            written file is checked by reading its header back and measuring its voxel data.
    """
    import SimpleITK as sitk

    path = Path(path)
    ext = _write_extension(path)
    check_parent(path, "write_volume")
    image = _volume_to_image(volume)
    if ext in (".nrrd", ".mha"):
        for key, value in _encode_meta(volume.meta).items():
            image.SetMetaData(key, value)
    with atomic_path(path, ext) as tmp:
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(tmp))
        writer.SetUseCompression(bool(compress))
        try:
            writer.Execute(image)
            _verify_written(tmp, image)
        except (RuntimeError, ValueError, OSError) as exc:
            raise write_failed(path, exc) from None
    return path


def _verify_written(tmp: Path, image: Any) -> None:
    """Read back the header of a volume just written and check that all its voxel data is stored."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    reader.ReadImageInformation()
    if reader.GetSize() != image.GetSize() or reader.GetPixelID() != image.GetPixelID():
        raise ValueError(
            f"the header read back says {reader.GetSize()} voxels of "
            f"{sitk.GetPixelIDValueAsString(reader.GetPixelID())}, written were {image.GetSize()} of "
            f"{image.GetPixelIDTypeAsString()}"
        )
    check_stored_data_in(tmp, math.prod(image.GetSize()) * pixel_bytes(reader))  # the caller names the file


def write_png(
    array2d: np.ndarray, path: str | os.PathLike[str], window: Sequence[float] | None = None
) -> Path:
    """Write an 8-bit grey-level PNG preview, atomically.

    Args:
        array2d: (rows, cols) values, or (1, rows, cols) as a K = 1 volume array. Row 0 is the top.
        path: destination .png file; its directory must exist.
        window: (low, high) values mapped to 0 and 255 (e.g. HU (-1000, 1000)); values outside are
            clipped. If None, the finite minimum and maximum of the image are used.

    Returns:
        The written path.

    Raises:
        ValueError: array2d is not 2D, the window is not (low, high) with low < high, or the path
            does not end in .png.
        FileNotFoundError: the destination directory does not exist.
        OSError: the file could not be written whole (full disk, file size limit, permissions).
    """
    from PIL import Image

    path = Path(path)
    a = np.asarray(array2d)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"write_png: array2d must have shape (rows, cols) or (1, rows, cols), got {a.shape}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"write_png: path must end in .png, got {path}")
    check_parent(path, "write_png")
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if window is None:
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 1.0)
    else:
        if len(window) != 2 or not np.all(np.isfinite(window)) or not window[0] < window[1]:
            raise ValueError(
                f"write_png: window must be (low, high) finite values with low < high, got {window}"
            )
        lo, hi = float(window[0]), float(window[1])
    scaled = np.zeros_like(a) if hi <= lo else (np.clip(a, lo, hi) - lo) / (hi - lo)
    pixels = np.where(finite, np.round(scaled * 255.0), 0.0).astype(np.uint8)
    with atomic_path(path, ".png") as tmp:
        try:
            Image.fromarray(pixels).save(tmp, format="PNG")  # a Python file object: short writes raise
        except OSError as exc:
            raise write_failed(path, exc) from None
    return path


# --------------------------------------------------------------------------------------------------
# Checks for pipeline inputs
# --------------------------------------------------------------------------------------------------


def require_3d(volume: Volume, name: str) -> Volume:
    """Check that ``volume`` is a 3D volume (a CT), not a 2D image.

    Args:
        volume: the input to check.
        name: the parameter name to put in the error message.

    Returns:
        ``volume``, unchanged.

    Raises:
        ValueError: K == 1 or any of I, J, K is < 2, or voxels are NaN or infinite.
    """
    i, j, k = volume.shape_ijk
    if min(i, j, k) < 2:
        raise ValueError(
            f"{name}: expected a 3D volume (a CT) with at least 2 voxels along I, J and K, got a "
            f"{'2D image' if k == 1 else 'degenerate volume'} of size (I, J, K) = ({i}, {j}, {k})"
        )
    if np.issubdtype(volume.array.dtype, np.inexact):
        bad = volume.array.size - int(np.count_nonzero(np.isfinite(volume.array)))
        if bad:
            source = volume.meta.get("source_path", "the volume")
            raise ValueError(
                f"{name}: {source} holds {bad} non-finite voxels (NaN or infinite) of {volume.array.size}; "
                "expected finite values (HU for a CT): replace them, e.g. by -1000 (air), first"
            )
    return volume


def require_label_map(volume: Volume, name: str, max_labels: int = 255) -> list[int]:
    """Check that ``volume`` is a label map (integer labels, few of them), not a CT, before per-label work.

    Args:
        volume: the input to check.
        name: the parameter name to put in the error message.
        max_labels: the most distinct non-zero labels accepted.

    Returns:
        The sorted non-zero label values.

    Raises:
        ValueError: non-integer values, or more than ``max_labels`` distinct non-zero values.
    """
    source = volume.meta.get("source_path", "the volume")
    values = np.unique(volume.array)
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
        raise ValueError(
            f"{name}: {source} is not a label map: it holds {values.size} distinct values, not all integers "
            f"(range {values.min():g} to {values.max():g}); is it a CT? Give a label map (integer labels)"
        )
    ids = [int(v) for v in values if v != 0]
    if len(ids) > max_labels:
        raise ValueError(
            f"{name}: {source} is not a label map: it holds {len(ids)} distinct non-zero values (at most "
            f"{max_labels} labels accepted; range {values.min():g} to {values.max():g}); is it a CT?"
        )
    return ids


def require_2d(volume: Volume, name: str) -> Volume:
    """Check that ``volume`` is a 2D image (K = 1, e.g. a radiograph), not a 3D volume.

    Args:
        volume: the input to check.
        name: the parameter name to put in the error message.

    Returns:
        ``volume``, unchanged.

    Raises:
        ValueError: K != 1, or the image has fewer than 2 rows or columns.
    """
    i, j, k = volume.shape_ijk
    if k != 1 or min(i, j) < 2:
        what = f"a 3D volume with {k} slices" if k != 1 else "a degenerate image"
        raise ValueError(
            f"{name}: expected a 2D image (a radiograph, K = 1) with at least 2 rows and columns, got "
            f"{what} of size (I, J, K) = ({i}, {j}, {k})"
        )
    return volume
