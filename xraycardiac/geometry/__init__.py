"""C-arm geometry in patient RAS: projection matrices, DICOM XA headers, two-view epipolar geometry."""

from __future__ import annotations

from xraycardiac.geometry.carm import X2CT_SID_MM, X2CT_SOD_MM, CArmGeometry, project_points
from xraycardiac.geometry.dicom import geometry_from_dicom
from xraycardiac.geometry.epipolar import (
    epipolar_distance,
    epipolar_lines,
    fundamental_matrix,
    reprojection_error,
    triangulate,
)

__all__ = [
    "X2CT_SID_MM",
    "X2CT_SOD_MM",
    "CArmGeometry",
    "epipolar_distance",
    "epipolar_lines",
    "fundamental_matrix",
    "geometry_from_dicom",
    "project_points",
    "reprojection_error",
    "triangulate",
]
