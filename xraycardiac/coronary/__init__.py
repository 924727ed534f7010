"""Coronary angiography engine (Zhao et al. 2025): trees, views, projections, correspondences, renderers, matching.

The public names are loaded on first use (PEP 562), so ``xraycardiac.coronary.cli`` and the command
line start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CoronaryTree": "tree",
    "GTMatches": "correspondences",
    "Keypoints3D": "correspondences",
    "ground_truth_matches": "correspondences",
    "sample_keypoints": "correspondences",
    "OutsideFieldOfViewError": "projection",
    "VesselProjection": "projection",
    "project_vessels": "projection",
    "PhysicsRendererConfig": "render_physics",
    "contrast_to_noise": "render_physics",
    "render_angiogram": "render_physics",
    "LCA_VIEWS": "views",
    "RCA_VIEWS": "views",
    "ViewSamplingConfig": "views",
    "angle_between_views": "views",
    "check_view_pair": "views",
    "sample_view_pair": "views",
    "CoronaryPairDataset": "dataset",
    "collate_pairs": "dataset",
    "list_samples": "dataset",
    "labelmap_surface": "from_labelmap",
    "tree_from_labelmap": "from_labelmap",
    "AngioDiffusionConfig": "render_diffusion",
    "AngioDiffusionRenderer": "render_diffusion",
    "MatcherConfig": "baselines",
    "MatchResult": "baselines",
    "match_orb": "baselines",
    "match_sift": "baselines",
    "VesselKeypointConfig": "vessel_keypoints",
    "detect_vessel_keypoints": "vessel_keypoints",
    "match_vessel_keypoints": "vessel_keypoints",
    "FoundationSpec": "foundation",
    "load_foundation": "foundation",
    "sample_features": "foundation",
    "KeypointNet": "keypoint_net",
    "KeypointNetConfig": "keypoint_net",
    "AttentionMatcher": "attention_matcher",
    "AttentionMatcherConfig": "attention_matcher",
    "CoronaryMatcher": "train_matcher",
    "CoronaryMatcherConfig": "train_matcher",
    "evaluate_matchers": "evaluate",
    "CalibrationConfig": "calibration",
    "refine_second_view": "calibration",
    "ReconstructionConfig": "reconstruct",
    "centreline_error_mm": "reconstruct",
    "reconstruct_tree": "reconstruct",
    "save_tube_vtp": "reconstruct",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xraycardiac.coronary' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"xraycardiac.coronary.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
