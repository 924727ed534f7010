"""Metrics shared by the pipelines: realism distances on a fixed encoder (more to come: image, matching, topology)."""

from __future__ import annotations

from xraycardiac.metrics.realism import EncoderConfig, FixedEncoder, frechet_distance, mmd2_rbf

__all__ = ["EncoderConfig", "FixedEncoder", "frechet_distance", "mmd2_rbf"]
