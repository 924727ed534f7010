"""Coronary angiography engine (Zhao et al. 2025): synth/ (views, projections, correspondences, renderers,
datasets), matching/ (keypoints, matchers, evaluation), recon/ (calibration, 3D centrelines).

The public names are loaded on first use (PEP 562), so ``xraycardiac.coronary.cli`` and the command
line start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CoronaryTree": "xraycardiac.anatomy.coronary_tree",
    "GTMatches": "synth.correspondences",
    "Keypoints3D": "synth.correspondences",
    "ground_truth_matches": "synth.correspondences",
    "sample_keypoints": "synth.correspondences",
    "OutsideFieldOfViewError": "synth.projection",
    "VesselProjection": "synth.projection",
    "project_vessels": "synth.projection",
    "PhysicsRendererConfig": "synth.render_physics",
    "contrast_to_noise": "synth.render_physics",
    "render_angiogram": "synth.render_physics",
    "LCA_VIEWS": "synth.views",
    "RCA_VIEWS": "synth.views",
    "ViewSamplingConfig": "synth.views",
    "angle_between_views": "synth.views",
    "check_view_pair": "synth.views",
    "sample_view_pair": "synth.views",
    "CoronaryPairDataset": "synth.dataset",
    "collate_pairs": "synth.dataset",
    "list_samples": "synth.dataset",
    "labelmap_surface": "from_labelmap",
    "tree_from_labelmap": "from_labelmap",
    "AngioDiffusionConfig": "synth.render_diffusion",
    "AngioDiffusionRenderer": "synth.render_diffusion",
    "MatcherConfig": "matching.baselines",
    "MatchResult": "matching.baselines",
    "match_orb": "matching.baselines",
    "match_sift": "matching.baselines",
    "VesselKeypointConfig": "matching.vessel_keypoints",
    "detect_vessel_keypoints": "matching.vessel_keypoints",
    "match_vessel_keypoints": "matching.vessel_keypoints",
    "FoundationSpec": "matching.foundation",
    "load_foundation": "matching.foundation",
    "sample_features": "matching.foundation",
    "KeypointNet": "matching.keypoint_net",
    "KeypointNetConfig": "matching.keypoint_net",
    "AttentionMatcher": "matching.attention_matcher",
    "AttentionMatcherConfig": "matching.attention_matcher",
    "CoronaryMatcher": "matching.matcher",
    "CoronaryMatcherConfig": "matching.matcher",
    "evaluate_matchers": "matching.evaluate",
    "CalibrationConfig": "recon.calibration",
    "refine_second_view": "recon.calibration",
    "refine_views": "recon.calibration",
    "calibrate_views": "recon.acceptance",
    "ReconstructionConfig": "recon.centrelines",
    "centreline_error_mm": "recon.reconstruct",
    "reconstruct_tree": "recon.reconstruct",
    "reconstruct_views": "recon.reconstruct",
    "save_tube_vtp": "recon.reconstruct",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xraycardiac.coronary' has no attribute {name!r}")
    module = _EXPORTS[name]
    module = module if module.startswith("xraycardiac.") else f"xraycardiac.coronary.{module}"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
