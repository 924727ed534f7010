"""Projection of volumes to C-arm views: DRRs of CT and per-label path lengths."""

from __future__ import annotations

from xraycardiac.projection.drr import (
    MU_WATER_PER_MM,
    DRRConfig,
    hu_to_mu,
    project_labels,
    ray_integrals,
    render_drr,
)

__all__ = ["MU_WATER_PER_MM", "DRRConfig", "hu_to_mu", "project_labels", "ray_integrals", "render_drr"]
