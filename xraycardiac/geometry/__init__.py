"""C-arm geometry in patient RAS: projection matrices, DICOM XA headers, two-view epipolar geometry.

The epipolar functions run on torch + kornia; they are imported on first use (PEP 562), so that
importing ``xraycardiac.geometry`` for ``CArmGeometry`` (as the Slicer modules do in Slicer's own
process) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from xraycardiac.geometry.carm import X2CT_SID_MM, X2CT_SOD_MM, CArmGeometry, project_points
from xraycardiac.geometry.dicom import geometry_from_dicom

_LAZY = {
    "epipolar_distance": "xraycardiac.geometry.epipolar",
    "epipolar_lines": "xraycardiac.geometry.epipolar",
    "fundamental_matrix": "xraycardiac.geometry.epipolar",
    "reprojection_error": "xraycardiac.geometry.epipolar",
    "triangulate": "xraycardiac.geometry.epipolar",
    "triangulate_views": "xraycardiac.geometry.epipolar",
}

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
    "triangulate_views",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xraycardiac.geometry' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
