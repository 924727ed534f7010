"""Slicer-side helpers shared by the XRayCardiac modules: MRML <-> ``xraycardiac`` data and jobs.

Importable with slicer-core alone (no Qt, no ctk), so the module logic is testable with pytest on a
plain ``vtkMRMLScene``. Importing this package imports ``xraycardiac``: module widgets import it only
after the Python dependencies are installed.
"""

from __future__ import annotations

from XRayCardiacCommonLib.jobs import (
    JobCancelled,
    JobError,
    JobHandle,
    JobStatus,
    describe_error,
    job_python,
    start_job_from_nodes,
)
from XRayCardiacCommonLib.jobs_logic import JobLogic, JobRun
from XRayCardiacCommonLib.mrml_io import (
    ATTRIBUTE_PREFIX,
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    describe_node,
    export_node,
    format_projection_matrix,
    node_from_volume,
    node_geometry,
    parse_projection_matrix,
    read_attributes,
    removed_on_error,
    set_provenance,
    temporary_nodes,
    volume_from_node,
)

__all__ = [
    "ATTRIBUTE_PREFIX",
    "GEOMETRY_ATTRIBUTE",
    "PROJECTION_MATRIX_ATTRIBUTE",
    "JobCancelled",
    "JobError",
    "JobHandle",
    "JobLogic",
    "JobRun",
    "JobStatus",
    "describe_error",
    "describe_node",
    "export_node",
    "format_projection_matrix",
    "job_python",
    "node_from_volume",
    "node_geometry",
    "parse_projection_matrix",
    "read_attributes",
    "removed_on_error",
    "set_provenance",
    "start_job_from_nodes",
    "temporary_nodes",
    "volume_from_node",
]
