"""What the three pipelines share on top of MONAI's networks and schedulers.

``schedulers``: the one scheduler builder (DDPM, DDIM, rectified flow); ``sampling``: the one
reverse-diffusion loop (conditioning by concatenation, by a global embedding with classifier-free
guidance, or none); ``iddpm``: the IDDPM learned-variance hybrid loss.
"""

from __future__ import annotations

from xraycardiac.diffusion.iddpm import (
    SAMPLERS,
    discretized_gaussian_nll,
    hybrid_loss,
    learned_range_variance,
    normal_kl,
    split_output,
)
from xraycardiac.diffusion.sampling import guided_prediction, initial_noise, sample
from xraycardiac.diffusion.schedulers import SCHEDULERS, build_scheduler, check_steps

__all__ = [
    "SAMPLERS", "SCHEDULERS", "build_scheduler", "check_steps", "discretized_gaussian_nll", "guided_prediction",
    "hybrid_loss", "initial_noise", "learned_range_variance", "normal_kl", "sample", "split_output",
]  # fmt: skip
