"""XRayToCT logic that talks MRML <-> ``xraycardiac`` (importable with slicer-core, no Qt).

The names below are imported on first use (PEP 562), so that ``XRayToCTLib.choices`` can be read
at Slicer start-up before ``xraycardiac`` is installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from XRayToCTLib.choices import DEVICE_CHOICES, POSE_CHOICES

_LAZY = {
    "SimulateRadiographsLogic": "XRayToCTLib.simulate",
    "SimulationRun": "XRayToCTLib.simulate",
    "build_views": "XRayToCTLib.simulate",
    "custom_view_name": "XRayToCTLib.simulate",
}

__all__ = ["DEVICE_CHOICES", "POSE_CHOICES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'XRayToCTLib' has no attribute {name!r}")
