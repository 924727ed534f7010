"""XRayToCT logic that talks MRML <-> ``xraycardiac`` (importable with slicer-core, no Qt)."""

from __future__ import annotations

from XRayToCTLib.simulate import (
    DEVICE_CHOICES,
    POSE_CHOICES,
    SimulateRadiographsLogic,
    SimulationRun,
    build_views,
    custom_view_name,
)

__all__ = [
    "DEVICE_CHOICES",
    "POSE_CHOICES",
    "SimulateRadiographsLogic",
    "SimulationRun",
    "build_views",
    "custom_view_name",
]
