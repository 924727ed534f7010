"""Slices of a volume shown radiologically, for the demo's figures."""

from __future__ import annotations

import numpy as np


def coronal_slice(volume) -> np.ndarray:
    """Coronal mid-slice shown radiologically: patient's left on the image's right, head up."""
    coronal = volume.array[:, volume.array.shape[1] // 2, :]  # (K, I)
    d = volume.directions
    if d[0, 0] > 0:  # I runs to the patient's right: mirror so that the left is on the image's right
        coronal = coronal[:, ::-1]
    if d[2, 2] > 0:  # K runs to the head: put the head at the top row
        coronal = coronal[::-1]
    return np.ascontiguousarray(coronal)


def axial_slice(volume, k: int) -> np.ndarray:
    """Axial slice k shown radiologically: patient's right on the image's left, anterior at the top."""
    a = volume.array[k]  # (J, I)
    d = volume.directions
    if d[0, 0] > 0:  # I runs to the patient's right: mirror
        a = a[:, ::-1]
    if d[1, 1] > 0:  # J runs anterior: anterior on the top row
        a = a[::-1]
    return np.ascontiguousarray(a)


def three_planes(volume, k: int, j: int, i: int) -> list[np.ndarray]:
    """Axial (radiological), coronal and sagittal slices through voxel (k, j, i); head up, anterior left."""
    a = volume.array
    axial = axial_slice(volume, k)
    coronal = a[::-1, j, ::-1] if volume.directions[0, 0] > 0 else a[::-1, j, :]  # head up, left on the right
    sagittal = (
        a[::-1, :, i][:, ::-1] if volume.directions[1, 1] > 0 else a[::-1, :, i]
    )  # head up, anterior left
    return [np.ascontiguousarray(x) for x in (axial, coronal, sagittal)]
