"""CardiacSynth logic that talks MRML <-> ``xraycardiac`` (importable with slicer-core, no Qt).

The choices below need nothing but Python, so the module file can build its parameter node from
them at Slicer start-up, before ``xraycardiac`` is installed; the logic names are imported on
first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

RENDERER_CHOICES = ("warp", "tcdm")
"""How each case's image is made: the template CT warped by the case's deformation (exact, no new
appearance; confidence 1), or the template-conditioned diffusion model (TCDM) with its skip-sampling
variance confidence."""

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Where the job runs the diffusion model; ``auto`` = CUDA when available, else the CPU."""

MAX_CASES = 50
"""Most cases one panel run makes: each adds three nodes to the scene. Larger pretraining sets are
made by ``xraycardiac cardiac synth --n N --shard i/K`` outside Slicer."""

MAX_STRENGTH_MM = 100.0
"""Largest deformation strength the mask generation module accepts, mm (``MGMConfig.strength_mm``)."""

MAX_TEMPLATE_VOXELS = 256**3
"""Largest template grid (voxels) the panel sends to the job; a full-resolution CCTA (~70 M voxels)
must be cropped around the heart and resampled to 1-2 mm first (Crop Volume module)."""

DEFAULT_CASES = 4
DEFAULT_STRENGTH_MM = 4.0
DEFAULT_STEPS = 20
DEFAULT_DATASET_ID = 900
DEFAULT_DATASET_NAME = "CardiacSynth"
"""The nnU-Net export's defaults: those of ``xraycardiac cardiac synth --dataset-id --dataset-name``."""

_LAZY = {
    "CardiacSynthLogic": "CardiacSynthLib.synthesize",
    "CardiacSynthRun": "CardiacSynthLib.synthesize",
    "export_dataset": "CardiacSynthLib.export",
}

__all__ = [
    "DEFAULT_CASES",
    "DEFAULT_DATASET_ID",
    "DEFAULT_DATASET_NAME",
    "DEFAULT_STEPS",
    "DEFAULT_STRENGTH_MM",
    "DEVICE_CHOICES",
    "MAX_CASES",
    "MAX_STRENGTH_MM",
    "MAX_TEMPLATE_VOXELS",
    "RENDERER_CHOICES",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'CardiacSynthLib' has no attribute {name!r}")
