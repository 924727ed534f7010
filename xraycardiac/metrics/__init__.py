"""Metrics shared by the pipelines: realism distances on a fixed encoder, keypoint matching, image fidelity
(PSNR/SSIM/MAE on a stated range) and topology (Betti numbers, clDice)."""

from __future__ import annotations

from xraycardiac.metrics.image import (
    hu_window_metrics,
    mae,
    noise_power_spectrum,
    psnr,
    ssim3d,
    ssim_slicewise,
)
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
from xraycardiac.metrics.topology import betti_numbers, cldice, per_label_betti

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
    # image
    "hu_window_metrics",
    "mae",
    "noise_power_spectrum",
    "psnr",
    "ssim3d",
    "ssim_slicewise",
    # topology
    "betti_numbers",
    "cldice",
    "per_label_betti",
]
