"""Reading a job's image and C-arm geometry inputs, with errors that name the input (``inputs.<key>``).

Shared by the jobs that take radiographs / angiograms (``x2ct-generate``, ``coronary-reconstruct``);
:func:`read_run_input` also takes one frame out of a multi-frame DICOM XA run (``coronary-reconstruct``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.jobs.spec import JobSpec
from xraycardiac.radiograph import check_image, read_npy_image

__all__ = [
    "MAX_VIEWS",
    "image_grid",
    "read_geometry_input",
    "read_run_input",
    "read_view",
    "read_views",
    "view_count",
]


def _require_file(path: Path, key: str, expected: str) -> None:
    """FileNotFoundError / IsADirectoryError naming ``inputs.<key>`` unless ``path`` is a file."""
    if path.is_dir():
        raise IsADirectoryError(f"inputs.{key}: {path} is a folder; expected {expected}")
    if not path.is_file():
        raise FileNotFoundError(f"inputs.{key}: {path} does not exist")


def read_view(path: str | os.PathLike[str], key: str) -> np.ndarray:
    """A radiograph file as a finite (rows, cols) float64 array; a ValueError naming ``inputs.<key>``.

    Args:
        path: a one-slice volume file (NRRD, NIfTI, MetaImage, ...) or a ``.npy`` (rows, cols) array.
        key: the input's name, for messages.
    """
    path = Path(path)
    _require_file(path, key, "a radiograph file (a one-slice volume or a .npy array)")
    if path.suffix.lower() == ".npy":
        array = read_npy_image(path, key)
    else:
        from xraycardiac.io import read_volume

        try:
            array = np.asarray(read_volume(path).array, dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"inputs.{key}: {exc}") from None
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    check_image(array, key, path.name)
    return array


def read_geometry_input(spec: JobSpec, key: str, shape: tuple[int, int], image_key: str) -> Any:
    """Input ``key`` (a ``CArmGeometry`` JSON), checked against its image's (rows, cols)."""
    from xraycardiac.radiograph import load_view_geometry

    return load_view_geometry(spec.input_path(key), key, shape, image_key)


def read_run_input(
    spec: JobSpec, key: str, frame: int | str, ecg_offset_ms: float, frame_param: str
) -> tuple[np.ndarray, Any, dict[str, Any] | None]:
    """Input ``key`` as (image, header geometry or None, phase record or None).

    A DICOM file (Part 10 preamble) is read as an XA run: the frame ``frame`` ("auto": end-diastole
    + ``ecg_offset_ms`` by :func:`xraycardiac.coronary.recon.phase.frame_from_run`) with its header's
    C-arm geometry; any other file is one radiograph (:func:`read_view`), for which ``frame`` must be
    "auto" or 0.
    """
    from xraycardiac.geometry.dicom_cine import is_dicom_file

    path = spec.input_path(key)
    if path.is_file() and is_dicom_file(path):
        from xraycardiac.coronary.recon.phase import frame_from_run

        try:
            run = frame_from_run(path, frame, ecg_offset_ms)
        except ValueError as exc:
            raise ValueError(f"inputs.{key}: {exc}") from None
        return run.image, run.geometry, run.summary()
    if frame not in ("auto", 0):
        raise ValueError(
            f"params.{frame_param}: {frame!r} asks for a frame of a run, but inputs.{key} is one image; "
            "give a multi-frame DICOM XA file or leave it 'auto'"
        )
    return read_view(path, key), None, None


def image_grid(spec: JobSpec, key: str) -> np.ndarray:
    """The (4, 4) ijk_to_ras of image ``key``'s file (identity for a .npy array or a DICOM run)."""
    from xraycardiac.geometry.dicom_cine import is_dicom_file
    from xraycardiac.io import read_volume

    path = spec.input_path(key)
    return np.eye(4) if path.suffix.lower() == ".npy" or is_dicom_file(path) else read_volume(path).ijk_to_ras


MAX_VIEWS = 8
"""Most views a ``coronary-reconstruct`` job takes (inputs ``image1`` .. ``image8``)."""


def view_count(spec: JobSpec) -> int:
    """N, the number of views of a job whose inputs are ``image1`` .. ``imageN`` (with ``geometry<k>`` /
    ``mask<k>`` for k <= N only).

    Raises:
        ValueError: fewer than 2 images, a gap in the numbering, more than :data:`MAX_VIEWS`, or a
            geometry / mask / frame whose image is missing (the input named).
    """
    n = 0
    while f"image{n + 1}" in spec.inputs:
        n += 1
    for key in spec.inputs:
        for prefix in ("image", "geometry", "mask"):
            k = key.removeprefix(prefix)
            if key.startswith(prefix) and k.isdigit() and not 1 <= int(k) <= n:
                raise ValueError(
                    f"inputs.{key}: there is no inputs.image{k}; the views are inputs.image1 .. image{n} "
                    "(numbered without gaps), each with its geometry<k> and optional mask<k>"
                )
    if n < 2:
        raise ValueError(
            f"inputs: {n} image(s) given; give inputs.image1 and inputs.image2 (at least 2 views)"
        )
    if n > MAX_VIEWS:
        raise ValueError(f"inputs: {n} images given; at most {MAX_VIEWS} views")
    return n


def read_views(
    spec: JobSpec, frames: dict[str, int | str], ecg_offset_ms: float, why_geometry: str
) -> tuple[list[np.ndarray], list[Any], list[np.ndarray | None], list[dict[str, Any] | None]]:
    """The N views of a job (:func:`view_count`): images, geometries, masks (None = segment), phase records.

    Each ``image<k>`` is one radiograph or a multi-frame DICOM XA run (frame ``frames["frame<k>"]``,
    :func:`read_run_input`); its geometry is ``geometry<k>`` or, for a run, its header's.

    Raises:
        ValueError: as :func:`view_count`, or a view without a geometry (``why_geometry`` says why one is needed).
    """
    n = view_count(spec)
    runs = [read_run_input(spec, f"image{v}", frames.get(f"frame{v}", "auto"), ecg_offset_ms, f"frame{v}")
            for v in range(1, n + 1)]  # fmt: skip
    geometries = []
    for v, (image, header, _) in enumerate(runs, start=1):
        if f"geometry{v}" in spec.inputs:
            geometries.append(read_geometry_input(spec, f"geometry{v}", image.shape, f"image{v}"))
        elif header is not None:
            geometries.append(header)
        else:
            raise ValueError(
                f"inputs.geometry{v}: missing; {why_geometry}: give the C-arm geometry of image {v} "
                "(a CArmGeometry JSON, e.g. read from its DICOM XA header), or the DICOM XA run itself"
            )
    masks = [read_view(spec.input_path(f"mask{v}"), f"mask{v}") if f"mask{v}" in spec.inputs else None
             for v in range(1, n + 1)]  # fmt: skip
    return [r[0] for r in runs], geometries, masks, [r[2] for r in runs]
