"""Slicer-side helpers shared by the XRayCardiac modules: MRML <-> ``xraycardiac`` data and jobs.

Importable with slicer-core alone (no Qt, no ctk), so the module logic is testable with pytest on a
plain ``vtkMRMLScene``. The names below are imported on first use (PEP 562): importing the package
imports neither ``xraycardiac`` nor its dependencies, so the module files can import it while Slicer
loads them (``support`` checks the Slicer version there), before the dependencies are installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "JobCancelled": "XRayCardiacCommonLib.jobs",
    "JobError": "XRayCardiacCommonLib.jobs",
    "JobStatus": "XRayCardiacCommonLib.jobs",
    "describe_error": "XRayCardiacCommonLib.jobs",
    "job_python": "XRayCardiacCommonLib.jobs",
    "JobLogic": "XRayCardiacCommonLib.jobs",
    "JobRun": "XRayCardiacCommonLib.jobs",
    "ATTRIBUTE_PREFIX": "XRayCardiacCommonLib.mrml_io",
    "GEOMETRY_ATTRIBUTE": "XRayCardiacCommonLib.mrml_io",
    "PROJECTION_MATRIX_ATTRIBUTE": "XRayCardiacCommonLib.mrml_io",
    "describe_node": "XRayCardiacCommonLib.mrml_io",
    "export_node": "XRayCardiacCommonLib.mrml_io",
    "format_projection_matrix": "XRayCardiacCommonLib.mrml_io",
    "node_from_volume": "XRayCardiacCommonLib.mrml_io",
    "node_geometry": "XRayCardiacCommonLib.mrml_io",
    "parse_projection_matrix": "XRayCardiacCommonLib.mrml_io",
    "read_attributes": "XRayCardiacCommonLib.mrml_io",
    "removed_on_error": "XRayCardiacCommonLib.mrml_io",
    "set_provenance": "XRayCardiacCommonLib.mrml_io",
    "temporary_nodes": "XRayCardiacCommonLib.mrml_io",
    "volume_from_node": "XRayCardiacCommonLib.mrml_io",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'XRayCardiacCommonLib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
