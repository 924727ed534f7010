"""XRayCoronaryRecon logic that talks MRML <-> ``xraycardiac`` (importable with slicer-core, no Qt).

The choices below need nothing but Python, so the module file can build its parameter node from
them at Slicer start-up, before ``xraycardiac`` is installed; the logic names are imported on
first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

INJECTION_CHOICES = ("left", "right")
"""Which coronary tree is opacified (selective injection); the views are that tree's standard views."""

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Where the job projects the vessels; ``auto`` = CUDA when available, else the CPU."""

IMAGE_SIZE_CHOICES = ("256", "384", "512", "768", "1024")
"""Square detector sizes in pixels offered by the panel (the field of view stays ~150-200 mm)."""

MAX_PAIRS = 10
"""Most view pairs one panel run makes (each pair adds four nodes)."""

DEFAULT_IMAGE_SIZE = 512

RENDERER_CHOICES = ("physics", "diffusion")
"""How the angiograms are rendered: Beer-Lambert physics, or the mask-conditioned diffusion model."""

DIFFUSION_MODEL = "angio-diffusion-demo"
"""The diffusion renderer's model (``xraycardiac models list``); its grid (128 px) is the default image size."""

DIFFUSION_STEPS = 50
"""DDIM steps of the diffusion renderer."""

TREE_SOURCE_CHOICES = ("procedural (seed)", "label map / segmentation")
"""Where the coronary tree comes from: grown from a seed, or extracted from a coronary label map."""

RECONSTRUCT_DEFAULT_METHOD = "vessel+epipolar"
"""The keypoint matcher of the "Reconstruct" section by default (vessel keypoints, epipolar filter)."""

RECONSTRUCT_METHOD_CHOICES = (
    "vessel+epipolar", "sift+epipolar", "vessel", "sift", "matcher", "matcher on vessels + band"
)  # fmt: skip
"""Matchers offered by the "Reconstruct" section; "matcher" (the learned one) takes the model name, folder
or .pt file typed in the matcher model field; "matcher on vessels + band" is the same model on keypoints of
the vessel probability map, its attention masked by the epipolar band the recorded geometry and the
prior's sigmas allow (job method ``vmatcher:<model>+band``)."""

LEARNED_METHOD_CHOICES = ("matcher", "matcher on vessels + band")
"""The choices of :data:`RECONSTRUCT_METHOD_CHOICES` that need the matcher model field."""

SEGMENTATION_CHOICES = ("network", "frangi")
"""How "Reconstruct" segments a view without a vessel mask (the job's ``segmentation``): the learned
network (a probability volume + segmentation are added) or the classical Frangi baseline."""

_LAZY = {
    "SyntheticAngiogramsLogic": "XRayCoronaryReconLib.synthetic",
    "SyntheticRun": "XRayCoronaryReconLib.synthetic",
    "ReconstructLogic": "XRayCoronaryReconLib.reconstruct",
    "ReconstructRun": "XRayCoronaryReconLib.reconstruct",
}

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEVICE_CHOICES",
    "DIFFUSION_MODEL",
    "LEARNED_METHOD_CHOICES",
    "DIFFUSION_STEPS",
    "IMAGE_SIZE_CHOICES",
    "INJECTION_CHOICES",
    "MAX_PAIRS",
    "RECONSTRUCT_DEFAULT_METHOD",
    "RECONSTRUCT_METHOD_CHOICES",
    "SEGMENTATION_CHOICES",
    "RENDERER_CHOICES",
    "TREE_SOURCE_CHOICES",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'XRayCoronaryReconLib' has no attribute {name!r}")
