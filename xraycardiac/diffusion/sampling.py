"""The one reverse-diffusion loop of the three pipelines, with the conditioning as a mode.

Network, scheduler and loop stay three objects (MONAI's separation). The loop runs any MONAI
scheduler built by :func:`xraycardiac.diffusion.build_scheduler` from the caller's initial noise;
the conditioning modes combine freely:

* none: ``network(x_t, timesteps=t)``;
* concatenation (``condition``): ``network([x_t ‖ condition], timesteps=t)`` (the angiogram
  renderer's mask/thickness, TCDM's label and template channels, XRayToCT's encoder map);
* global embedding (``embedding``): ``network(..., timesteps=t, embedding=e)`` with classifier-free
  guidance ``out = out_null + s (out_cond - out_null)`` (:func:`guided_prediction`; the network takes
  ``drop`` (B,) bool rows that use its null embedding).

Output handling per scheduler: ``DDPMScheduler`` gets the whole output, so a (B, 2C, ...) output
(IDDPM learned variance, ``variance_type="learned_range"``) sets each step's variance and the
generator draws each step's noise; ``DDIMScheduler`` (eta 0, deterministic) gets the noise estimate
only (the first C channels: :func:`xraycardiac.diffusion.split_output`); ``RFlowScheduler`` gets the
velocity and the next timestep (0 after the last), Euler steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from xraycardiac.diffusion.iddpm import split_output

__all__ = ["guided_prediction", "initial_noise", "sample"]


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: Any) -> torch.Tensor:
    """Standard normal (shape) drawn on the generator's device, then moved to ``device``."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def guided_prediction(
    network: Callable[..., torch.Tensor],
    x: torch.Tensor,
    timesteps: torch.Tensor,
    embedding: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """Network output, with classifier-free guidance ``null + s (cond - null)`` for an embedding.

    Args:
        network: ``network(x, timesteps=t[, embedding=e, drop=d])``.
        x: (B, C (+ Cc), ...) network input.
        timesteps: (B,) int64.
        embedding: (B, E) global embedding, or None (no embedding: ``guidance_scale`` must be 1).
        guidance_scale: s; 1 returns the conditional output (no null pass), 0 the unconditional one.

    Returns:
        The network output (B, C', ...) (conditional and null passes as one batch of 2B when s != 1).
    """
    if embedding is None:
        if guidance_scale != 1:
            raise ValueError(
                f"guidance_scale: {guidance_scale} needs a global embedding (this model has none)"
            )
        return network(x, timesteps=timesteps)
    if guidance_scale == 1:
        return network(x, timesteps=timesteps, embedding=embedding)
    b = x.shape[0]
    drop = torch.arange(2 * b, device=x.device) >= b
    both = network(
        torch.cat([x, x]), timesteps=torch.cat([timesteps, timesteps]),
        embedding=torch.cat([embedding, embedding]), drop=drop,
    )  # fmt: skip
    cond_out, null_out = both[:b], both[b:]
    return null_out + guidance_scale * (cond_out - null_out)


@torch.no_grad()
def sample(
    network: Callable[..., torch.Tensor],
    scheduler: Any,
    noise: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    embedding: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    timesteps: Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run a MONAI scheduler's reverse chain from ``noise`` (see the module docstring).

    Args:
        network: the denoiser (eval mode).
        scheduler: a ``DDPMScheduler``, ``DDIMScheduler`` or ``RFlowScheduler`` with its timesteps set.
        noise: (B, C, ...) float32 start x_T, on the device the network runs on (or an already
            noised start for SDEdit-style sampling with ``timesteps``).
        condition: (B, Cc, ...) channels concatenated to x_t, or None.
        embedding: (B, E) global embedding (classifier-free guidance with ``guidance_scale``), or None.
        guidance_scale: s (1: the conditional prediction only).
        timesteps: the timesteps to run, descending (None: all of ``scheduler.timesteps``).
        generator: DDPM's step noise (unused by DDIM and RFlow).
        progress: ``progress(i, n)`` after each of the n steps.

    Returns:
        (B, C, ...) float32 x_0 estimate, not clipped (callers clip to their data range).
    """
    x = noise
    b, c, dev = x.shape[0], x.shape[1], x.device
    kind = type(scheduler).__name__
    times = [int(t) for t in (scheduler.timesteps if timesteps is None else timesteps)]
    for i, t in enumerate(times):
        inp = x if condition is None else torch.cat([x, condition], dim=1)
        ts = torch.full((b,), t, device=dev, dtype=torch.long)
        out = guided_prediction(network, inp, ts, embedding, guidance_scale).float()
        if kind == "DDPMScheduler":
            x, _ = scheduler.step(out, t, x, generator=generator)
        elif kind == "RFlowScheduler":
            x, _ = scheduler.step(out, t, x, times[i + 1] if i + 1 < len(times) else 0)
        else:
            x, _ = scheduler.step(split_output(out, c)[0], t, x)
        if progress is not None:
            progress(i + 1, len(times))
    return x
