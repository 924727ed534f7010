"""Skip-Sampling Variance: confidence from DDIM step-count disagreement, checked against errors."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch

from xraycardiac.cardiac.ssv import (
    SSVConfig,
    confidence_error_auroc,
    confidence_error_correlation,
    skip_sampling_variance,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 16


def _region() -> torch.Tensor:
    region = torch.zeros((1, 1, N, N, N), dtype=torch.bool)
    region[..., 4:8, 5:11, 6:12] = True
    return region


def _fake_sampler(calls: list) -> object:
    """Same volume for every step count, except in a known region where the result depends on the steps."""
    base = torch.linspace(-0.8, 0.8, N**3).reshape(1, 1, N, N, N)
    region = _region()

    def sample_fn(cond: torch.Tensor, steps: int, generator=None, noise=None) -> torch.Tensor:
        calls.append((steps, noise))
        out = base + 0.01 * noise.tanh()  # depends on the noise, not on the steps
        return torch.where(region, out + 0.2 * np.log(steps) * noise.sign(), out).clamp(-1, 1)

    return sample_fn


def test_confidence_is_one_where_schedules_agree_and_lower_where_they_differ() -> None:
    calls: list = []
    cond = torch.zeros((1, 4, N, N, N))
    mean, variance, confidence = skip_sampling_variance(
        _fake_sampler(calls), cond, schedules=(10, 20, 50), generator=torch.Generator().manual_seed(0)
    )
    region = _region()
    assert [c[0] for c in calls] == [10, 20, 50]
    assert all(c[1] is calls[0][1] for c in calls), "every schedule must get the same noise"
    assert mean.shape == variance.shape == confidence.shape == (1, 1, N, N, N)
    assert float(confidence.min()) >= 0.0 and float(confidence.max()) <= 1.0
    outside, inside = confidence[~region], confidence[region]
    print(f"confidence outside min {float(outside.min()):.6f}, inside max {float(inside.max()):.4f}")
    assert float(outside.min()) == 1.0 and float(variance[~region].max()) < 1e-12
    assert float(inside.max()) < 1.0
    # an error map that is exactly the disagreeing region: confidence finds it perfectly
    error = region.float()
    auroc = confidence_error_auroc(confidence, error, threshold=0.5)
    rho = confidence_error_correlation(confidence, error)
    print(f"AUROC {auroc:.4f}, Spearman {rho:.3f}")
    assert auroc == pytest.approx(1.0, abs=1e-9)
    assert rho < -0.9


def test_same_noise_gives_same_result_and_tau_scales_confidence() -> None:
    cond = torch.zeros((1, 4, N, N, N))
    noise = torch.randn((1, 1, N, N, N), generator=torch.Generator().manual_seed(1))
    a = skip_sampling_variance(_fake_sampler([]), cond, noise=noise)
    b = skip_sampling_variance(_fake_sampler([]), cond, noise=noise)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    loose = skip_sampling_variance(_fake_sampler([]), cond, noise=noise, tau=1.0)[2]
    region = _region()
    assert float(loose[region].mean()) > float(a[2][region].mean())
    assert torch.allclose(a[2], torch.exp(-a[1] / 1e-3))


def test_auroc_and_correlation_on_known_values() -> None:
    conf = np.array([0.9, 0.8, 0.3, 0.1])
    err = np.array([0.0, 0.1, 0.5, 0.7])
    assert confidence_error_auroc(conf, err, threshold=0.2) == 1.0
    assert confidence_error_auroc(conf[::-1].copy(), err, threshold=0.2) == 0.0
    assert confidence_error_auroc(np.ones(4), err, threshold=0.2) == 0.5  # ties: no information
    assert confidence_error_correlation(conf, err) == pytest.approx(-1.0)
    assert confidence_error_correlation(conf, err, method="pearson") < -0.95
    assert confidence_error_auroc(conf, err, threshold=0.2, mask=np.array([1, 0, 1, 0])) == 1.0


def test_bad_inputs_name_the_parameter() -> None:
    cond = torch.zeros((1, 4, N, N, N))
    with pytest.raises(ValueError, match="SSVConfig.schedules"):
        skip_sampling_variance(_fake_sampler([]), cond, schedules=(10, 10), generator=torch.Generator())
    with pytest.raises(ValueError, match="SSVConfig.tau"):
        SSVConfig(tau=0.0)
    with pytest.raises(ValueError, match="generator"):
        skip_sampling_variance(_fake_sampler([]), cond)
    with pytest.raises(ValueError, match="noise"):
        skip_sampling_variance(_fake_sampler([]), cond, noise=torch.zeros((1, 1, 8, 8, 8)))

    def broken(cond, steps, generator=None, noise=None):
        return torch.full_like(noise, float("nan"))

    with pytest.raises(ValueError, match="sample_fn"):
        skip_sampling_variance(broken, cond, generator=torch.Generator())
    with pytest.raises(ValueError, match="threshold"):
        confidence_error_auroc(np.ones(4), np.zeros(4), threshold=0.5)
    with pytest.raises(ValueError, match="confidence"):
        confidence_error_auroc(np.full(4, 2.0), np.arange(4.0), threshold=1.5)
    with pytest.raises(ValueError, match="error_map"):
        confidence_error_auroc(np.ones(4), np.ones(5), threshold=0.5)
    with pytest.raises(ValueError, match="error_map: constant"):
        confidence_error_correlation(np.linspace(0, 1, 4), np.ones(4))


def test_ssv_on_a_tiny_tcdm() -> None:
    """The real sampler plugs in: same noise, three DDIM step counts, finite maps in range."""
    from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, encode_condition, sample_tcdm

    cfg = TCDMConfig(n_classes=3, grid=16, channels=(8, 16), num_train_timesteps=10)
    torch.manual_seed(0)
    unet, scheduler = build_tcdm(cfg)
    for p in unet.out.parameters():  # MONAI zero-initialises the output conv
        torch.nn.init.normal_(p, std=0.1)
    unet.eval()
    labels = torch.zeros((1, N, N, N), dtype=torch.long)
    labels[:, 4:12, 4:12, 4:12] = 1
    labels[:, 6:9, 6:9, 6:9] = 2
    image = labels[:, None].float() * 0.5 - 0.5
    cond = encode_condition(cfg, labels, image, labels)
    t0 = time.perf_counter()
    sample_fn = functools.partial(sample_tcdm, unet, scheduler)
    mean, variance, confidence = skip_sampling_variance(
        sample_fn, cond, schedules=(2, 5, 10), generator=torch.Generator().manual_seed(0)
    )
    print(f"SSV K=3 (2+5+10 steps) at 16^3: {time.perf_counter() - t0:.2f} s")
    assert bool(torch.isfinite(mean).all()) and float(mean.abs().max()) <= 1.0
    assert float(variance.min()) >= 0 and 0.0 <= float(confidence.min()) <= float(confidence.max()) <= 1.0
    assert float(variance.max()) > 0, "an untrained model's DDIM runs should disagree somewhere"
