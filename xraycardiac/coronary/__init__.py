"""Coronary angiography engine (Zhao et al. 2025): centreline trees, views, projections, correspondences.

Each module's public names are imported below, one import line per module, and listed in ``__all__``.
"""

from __future__ import annotations

from xraycardiac.coronary.correspondences import (
    GTMatches,
    Keypoints3D,
    ground_truth_matches,
    sample_keypoints,
)
from xraycardiac.coronary.projection import OutsideFieldOfViewError, VesselProjection, project_vessels
from xraycardiac.coronary.render_physics import PhysicsRendererConfig, contrast_to_noise, render_angiogram
from xraycardiac.coronary.tree import CoronaryTree
from xraycardiac.coronary.views import (
    LCA_VIEWS,
    RCA_VIEWS,
    ViewSamplingConfig,
    angle_between_views,
    check_view_pair,
    sample_view_pair,
)

__all__ = [
    "LCA_VIEWS",
    "RCA_VIEWS",
    "CoronaryTree",
    "GTMatches",
    "Keypoints3D",
    "OutsideFieldOfViewError",
    "PhysicsRendererConfig",
    "VesselProjection",
    "ViewSamplingConfig",
    "angle_between_views",
    "check_view_pair",
    "contrast_to_noise",
    "ground_truth_matches",
    "project_vessels",
    "render_angiogram",
    "sample_keypoints",
    "sample_view_pair",
]
