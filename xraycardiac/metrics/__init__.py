"""Metrics shared by the pipelines: realism distances on a fixed encoder, keypoint matching (more to come:
image, topology)."""

from __future__ import annotations

from xraycardiac.metrics.matching import (
    MatchingMetrics,
    assign_matches_to_gt,
    cumulative_error_auc,
    keypoint_correct,
    matching_metrics,
    sample_matching_metrics,
    symmetric_epipolar_error_px,
)
from xraycardiac.metrics.realism import EncoderConfig, FixedEncoder, frechet_distance, mmd2_rbf

__all__ = [
    "EncoderConfig",
    "FixedEncoder",
    "MatchingMetrics",
    "assign_matches_to_gt",
    "cumulative_error_auc",
    "frechet_distance",
    "keypoint_correct",
    "matching_metrics",
    "mmd2_rbf",
    "sample_matching_metrics",
    "symmetric_epipolar_error_px",
]
