"""XRayToCT logic that talks MRML <-> ``xraycardiac`` (importable with slicer-core, no Qt).

The names below are imported on first use (PEP 562), so that ``XRayToCTLib.choices`` and the
"Generate CT" defaults can be read at Slicer start-up before ``xraycardiac`` is installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from XRayToCTLib.choices import DEVICE_CHOICES, POSE_CHOICES

X2CT_DEFAULT_MODEL = "x2ct-demo"
"""The x2ct model the "Generate CT" section starts with (``xraycardiac x2ct install FOLDER`` installs one)."""

X2CT_DEFAULT_STEPS = 20
X2CT_MAX_STEPS = 25
"""Sampler steps of ``x2ct-generate`` (default, most); a test checks they equal the job's."""

X2CT_DEFAULT_SAMPLES = 4
X2CT_MAX_SAMPLES = 64
"""Samples K of ``x2ct-generate`` (default, most); the uncertainty volume needs K >= 2."""

_LAZY = {
    "SimulateRadiographsLogic": "XRayToCTLib.simulate",
    "SimulationRun": "XRayToCTLib.simulate",
    "build_views": "XRayToCTLib.simulate",
    "custom_view_name": "XRayToCTLib.simulate",
    "GenerateCTLogic": "XRayToCTLib.generate",
    "GenerateResult": "XRayToCTLib.generate",
    "GenerateRun": "XRayToCTLib.generate",
    "describe_result": "XRayToCTLib.generate",
    "installed_x2ct_models": "XRayToCTLib.generate",
    "resolve_model": "XRayToCTLib.generate",
}

__all__ = [
    "DEVICE_CHOICES",
    "POSE_CHOICES",
    "X2CT_DEFAULT_MODEL",
    "X2CT_DEFAULT_SAMPLES",
    "X2CT_DEFAULT_STEPS",
    "X2CT_MAX_SAMPLES",
    "X2CT_MAX_STEPS",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'XRayToCTLib' has no attribute {name!r}")
