"""Improved DDPM (Nichol & Dhariwal 2021) on MONAI schedulers: the learned-variance hybrid loss.

The network, the scheduler and the sampling loop stay three objects (MONAI's separation): any
``DiffusionModelUNet`` whose output has 2C channels (noise estimate ‖ variance interpolant v) for a
C-channel image, a ``monai.networks.schedulers.DDPMScheduler`` with ``variance_type="learned_range"``,
the functions here and the shared loop :func:`xraycardiac.diffusion.sample`.

Learned variance, as MONAI's ``DDPMScheduler`` samples it: the network's second half v in
[-1, 1] sets ``var = f * beta_t + (1 - f) * beta_tilde_t`` with ``f = (v + 1) / 2``, where
``beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t`` is the true posterior variance. IDDPM
interpolates the *log* variance instead; we train the interpolation MONAI's sampler uses, so the
variance learned is the one ``DDPMScheduler.step`` draws with.

Hybrid loss (IDDPM eq. 16): ``L = L_simple + lambda * L_vlb``, ``L_simple`` the MSE of the noise
estimate, ``L_vlb`` one uniformly drawn term of the variational bound per sample scaled by the
number of timesteps T (an unbiased estimate of the sum), in bits per dimension: the KL between the
true posterior q(x_{t-1} | x_t, x_0) and the model's Gaussian for t > 0, and the negative
log-likelihood of x_0 under a Gaussian discretised to the data's bins for t = 0. As in IDDPM the
mean in the VLB term uses the noise estimate with its gradient stopped, so L_vlb trains only the
variance; lambda = 1e-3.

Sampling (:mod:`xraycardiac.diffusion.sampling`): DDPM (the full chain, with the learned variance)
or DDIM (deterministic with eta = 0, any number of steps; it uses the noise estimate only).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "SAMPLERS", "discretized_gaussian_nll", "hybrid_loss", "learned_range_variance", "normal_kl", "split_output",
]  # fmt: skip

SAMPLERS = ("ddim", "ddpm")
_LOG2 = math.log(2.0)


def split_output(output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 2C, ...) network output -> (noise estimate (B, C, ...), v (B, C, ...)); v None if C channels."""
    if output.shape[1] == channels:
        return output, None
    if output.shape[1] != 2 * channels:
        raise ValueError(
            f"network output has {output.shape[1]} channels; expected {channels} or {2 * channels}"
        )
    return output[:, :channels], output[:, channels:]


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor):
    """Elementwise KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)) in nats."""
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1
    )


def discretized_gaussian_nll(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bin_width: float
) -> torch.Tensor:
    """Elementwise -log P(x) in nats for data on bins of ``bin_width`` in [-1, 1], under N(mean, e^(2 log_scale)).

    The two outermost bins extend to -inf / +inf (IDDPM / DDPM's decoder L_0).
    """
    inv = torch.exp(-log_scale)
    upper = torch.special.ndtr(inv * (x - mean + bin_width / 2))
    lower = torch.special.ndtr(inv * (x - mean - bin_width / 2))
    p = torch.where(
        x < -1 + bin_width / 2, upper, torch.where(x > 1 - bin_width / 2, 1 - lower, upper - lower)
    )
    return -torch.log(p.clamp(min=1e-12))


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.to(t.device)[t].float().reshape(-1, *([1] * (ndim - 1)))


def learned_range_variance(scheduler, t: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(model variance, true posterior variance beta_tilde_t) for timesteps t (B,) and v (B, C, ...).

    ``var = f beta_t + (1 - f) beta_tilde_t`` with ``f = (clamp(v, -1, 1) + 1) / 2``: the interpolation
    ``DDPMScheduler(variance_type="learned_range")`` samples with.
    """
    nd = v.ndim
    abar = scheduler.alphas_cumprod
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta_t = _gather(scheduler.betas, t, nd)
    post_var = (1.0 - _gather(abar_prev, t, nd)) / (1.0 - _gather(abar, t, nd)) * beta_t
    frac = (v.float().clamp(-1, 1) + 1.0) / 2.0
    return frac * beta_t + (1.0 - frac) * post_var, post_var


def hybrid_loss(
    network: Callable[..., torch.Tensor],
    scheduler,
    x0: torch.Tensor,
    condition: torch.Tensor | None,
    generator: torch.Generator,
    vlb_weight: float = 1e-3,
    bin_width: float = 2.0 / 255.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """IDDPM hybrid loss for one batch (see the module docstring).

    Args:
        network: ``network(x, timesteps=t)`` -> (B, 2C, ...) (or (B, C, ...) for fixed variance,
            then only L_simple), taking [noisy image ‖ condition] channels.
        scheduler: a MONAI ``DDPMScheduler`` (its ``add_noise``, betas and cumulative alphas).
        x0: (B, C, ...) clean images in [-1, 1].
        condition: (B, Cc, ...) condition channels concatenated to the noisy image, or None.
        generator: draws t and the noise (seed it for reproducible training).
        vlb_weight: lambda; 0 trains the noise estimate only.
        bin_width: data quantisation step in [-1, 1] units (2/255 for 8-bit images).

    Returns:
        (scalar loss, {"mse": ..., "vlb": ...}).
    """
    b, c = x0.shape[:2]
    n_t = scheduler.num_train_timesteps
    t = torch.randint(0, n_t, (b,), generator=generator, device=generator.device).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0)
    x_t = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
    inp = x_t if condition is None else torch.cat([x_t, condition], dim=1)
    eps, v = split_output(network(inp, timesteps=t), c)
    mse = (eps.float() - noise.float()).pow(2).mean()
    if v is None or vlb_weight == 0:
        return mse, {"mse": float(mse.detach()), "vlb": 0.0}

    nd = x0.ndim
    betas = scheduler.betas
    abar = scheduler.alphas_cumprod
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta_t, ab_t, ab_prev = _gather(betas, t, nd), _gather(abar, t, nd), _gather(abar_prev, t, nd)
    alpha_t = 1.0 - beta_t
    coef_x0 = ab_prev.sqrt() * beta_t / (1.0 - ab_t)
    coef_xt = alpha_t.sqrt() * (1.0 - ab_prev) / (1.0 - ab_t)
    x_t, x0f = x_t.float(), x0.float()
    true_mean = coef_x0 * x0f + coef_xt * x_t
    pred_x0 = (x_t - (1.0 - ab_t).sqrt() * eps.detach().float()) / ab_t.sqrt()
    pred_mean = coef_x0 * pred_x0 + coef_xt * x_t
    model_var, post_var = learned_range_variance(scheduler, t, v)
    # beta_tilde_0 = 0: floor the log at beta_tilde_1, the smallest positive posterior variance (as IDDPM)
    floor = float((1.0 - abar[0]) / (1.0 - abar[1]) * betas[1])
    model_logvar = torch.log(model_var.clamp(min=floor * 1e-3))
    true_logvar = torch.log(post_var.clamp(min=floor))
    kl = normal_kl(true_mean, true_logvar, pred_mean, model_logvar).flatten(1).mean(1) / _LOG2
    nll = discretized_gaussian_nll(x0f, pred_mean, 0.5 * model_logvar, bin_width).flatten(1).mean(1) / _LOG2
    vlb = torch.where(t == 0, nll, kl)
    loss = mse + vlb_weight * n_t * vlb.mean()
    return loss, {"mse": float(mse.detach()), "vlb": float(vlb.mean().detach())}
