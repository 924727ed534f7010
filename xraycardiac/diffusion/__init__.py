"""What the three pipelines share on top of ``monai.networks.nets`` / ``schedulers``: IDDPM loss and sampling."""

from __future__ import annotations

from xraycardiac.diffusion.iddpm import (
    SAMPLERS,
    discretized_gaussian_nll,
    hybrid_loss,
    learned_range_variance,
    normal_kl,
    sample,
    split_output,
)

__all__ = [
    "SAMPLERS", "discretized_gaussian_nll", "hybrid_loss", "learned_range_variance", "normal_kl", "sample",
    "split_output",
]  # fmt: skip
