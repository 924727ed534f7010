"""Scores of a 2D vessel segmentation against its ground truth (benchmarks/coronary_vessel_seg.py)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from xraycardiac.metrics.chest_masks import dice

__all__ = ["vessel_segmentation_scores"]


def vessel_segmentation_scores(
    predicted: np.ndarray, truth: np.ndarray, centreline_px: np.ndarray, tolerance_px: float = 1.0
) -> dict[str, float]:
    """Dice, centreline recall and precision of a vessel mask.

    Args:
        predicted: (rows, cols) bool predicted vessel mask.
        truth: (rows, cols) bool ground-truth vessel mask.
        centreline_px: (N, 2) ground-truth centreline points (u = column, v = row) on visible vessels.
        tolerance_px: distance within which a point / pixel counts as found, pixels.

    Returns:
        ``dice`` (pixelwise, strict), ``centreline_recall`` (fraction of the centreline points with a
        predicted pixel within ``tolerance_px``), ``precision`` (fraction of the predicted pixels
        within ``tolerance_px`` of a true vessel pixel: a one-pixel-wide edge disagreement is not a
        false vessel); NaN where undefined (no centreline point, no predicted pixel).

    Raises:
        ValueError: masks of different shapes.
    """
    pred, gt = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(
            f"vessel_segmentation_scores: masks {pred.shape} and {gt.shape} must be the same 2D shape"
        )
    pts = np.asarray(centreline_px, dtype=np.float64).reshape(-1, 2)
    to_pred = ndimage.distance_transform_edt(~pred) if pred.any() else np.full(pred.shape, np.inf)
    to_gt = ndimage.distance_transform_edt(~gt) if gt.any() else np.full(gt.shape, np.inf)
    ij = np.clip(np.round(pts).astype(int), 0, np.array(pred.shape[::-1]) - 1)
    recall = float(np.mean(to_pred[ij[:, 1], ij[:, 0]] <= tolerance_px)) if len(pts) else float("nan")
    precision = float(np.mean(to_gt[pred] <= tolerance_px)) if pred.any() else float("nan")
    return {"dice": dice(pred, gt), "centreline_recall": recall, "precision": precision}
