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

__all__ = ["image_grid", "read_geometry_input", "read_run_input", "read_view"]


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
