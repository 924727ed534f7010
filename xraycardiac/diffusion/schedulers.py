"""The one builder of MONAI noise schedulers (DDPM, DDIM, rectified flow) for the three pipelines.

Each pipeline maps its config to these arguments (``coronary.render_diffusion.build_scheduler``,
``cardiac.tcdm.build_tcdm`` / ``ddim_sampler``, ``xray2ct.ldm.build_scheduler``); the MONAI
constructors are called here only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEDULERS", "build_scheduler", "check_steps"]

SCHEDULERS = ("ddpm", "ddim", "rflow")


def check_steps(steps: Any, num_train_timesteps: int) -> int:
    """``steps`` if it is an integer in 1 .. num_train_timesteps.

    Raises:
        ValueError: naming ``steps``, its value and the allowed range.
    """
    if not (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= num_train_timesteps):
        raise ValueError(
            f"steps: expected an integer in 1..{num_train_timesteps} (the model's training timesteps), "
            f"got {steps!r}"
        )
    return steps


def build_scheduler(
    kind: str,
    num_train_timesteps: int,
    steps: int | None = None,
    *,
    schedule: str = "linear_beta",
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
    variance_type: str = "fixed_small",
    noise_schedule_of: Any = None,
    **schedule_args: Any,
) -> Any:
    """A MONAI scheduler, with ``set_timesteps(steps)`` when ``steps`` is given.

    Args:
        kind: "ddpm" (``DDPMScheduler``: training, or the full ancestral chain), "ddim"
            (``DDIMScheduler``, eta 0 when sampled by :func:`xraycardiac.diffusion.sample`) or "rflow"
            (``RFlowScheduler``: discrete uniform timesteps, no timestep transform; its schedule
            arguments are not used).
        num_train_timesteps: T of the diffusion process.
        steps: sampling steps in 1..T (None: leave the constructor's timesteps).
        schedule: MONAI noise schedule name (``NoiseSchedules``).
        prediction_type: "epsilon", "v_prediction" or "sample".
        clip_sample: clip the clean-sample estimate to [-1, 1] in each step.
        variance_type: DDPM only: "fixed_small", "fixed_large", "learned" or "learned_range" (IDDPM).
        noise_schedule_of: another scheduler whose betas, alphas and cumulative alphas (float32)
            replace the built ones (a DDIM sampler for a DDPM-trained model's exact schedule).
        **schedule_args: extra schedule arguments (e.g. ``beta_start``, ``beta_end``).

    Raises:
        ValueError: an unknown ``kind`` or ``steps`` outside 1..T.
    """
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

    if kind not in SCHEDULERS:
        raise ValueError(f"sampler: expected one of {SCHEDULERS}, got {kind!r}")
    if steps is not None:
        check_steps(steps, num_train_timesteps)
    t = num_train_timesteps
    if kind == "rflow":
        sched = RFlowScheduler(
            num_train_timesteps=t, use_discrete_timesteps=True, sample_method="uniform",
            use_timestep_transform=False,
        )  # fmt: skip
    elif kind == "ddpm":
        sched = DDPMScheduler(
            num_train_timesteps=t, schedule=schedule, variance_type=variance_type,
            prediction_type=prediction_type, clip_sample=clip_sample, **schedule_args,
        )  # fmt: skip
    else:
        sched = DDIMScheduler(
            num_train_timesteps=t, schedule=schedule, clip_sample=clip_sample, prediction_type=prediction_type,
            **schedule_args,
        )  # fmt: skip
    if noise_schedule_of is not None:
        src = noise_schedule_of
        sched.betas, sched.alphas = src.betas.clone(), src.alphas.clone()
        sched.alphas_cumprod = src.alphas_cumprod.clone().float()
    if steps is not None:
        sched.set_timesteps(steps)
    return sched
