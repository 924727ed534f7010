"""Skip-Sampling Variance: confidence from DDIM step-count disagreement, checked against errors."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from xraycardiac.cardiac.ssv import (
    CALIBRATED_TAU,
    SSVConfig,
    confidence_error_auroc,
    confidence_error_correlation,
    fit_tau,
    neighbour_correlation,
    region_error_auroc,
    reliability_table,
    resolve_tau,
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

    def sample_fn(cond: torch.Tensor, steps: int, generator=None, noise=None, on_x0=None) -> torch.Tensor:
        calls.append((steps, noise))
        out = base + 0.01 * noise.tanh()  # depends on the noise, not on the steps
        out = torch.where(region, out + 0.2 * np.log(steps) * noise.sign(), out).clamp(-1, 1)
        for _ in range(3):
            on_x0(out)
        return out

    return sample_fn


def test_confidence_is_one_where_schedules_agree_and_lower_where_they_differ() -> None:
    calls: list = []
    cond = torch.zeros((1, 4, N, N, N))
    mean, variance, confidence = skip_sampling_variance(
        _fake_sampler(calls),
        cond,
        schedules=(10, 20, 50),
        generator=torch.Generator().manual_seed(0),
        smooth_vox=0.0,
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
    assert torch.allclose(a[2], torch.exp(-a[1] / resolve_tau(None, N)))
    assert resolve_tau(None, 64) == CALIBRATED_TAU[64] and resolve_tau(2e-3, 64) == 2e-3
    assert resolve_tau(None, 16) == CALIBRATED_TAU[32] and resolve_tau(None, 160) == CALIBRATED_TAU[64]


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

    def broken(cond, steps, generator=None, noise=None, on_x0=None):
        return torch.full_like(noise, float("nan"))

    def silent(cond, steps, generator=None, noise=None, on_x0=None):
        return noise.clamp(-1, 1)

    with pytest.raises(ValueError, match="sample_fn"):
        skip_sampling_variance(broken, cond, generator=torch.Generator())
    with pytest.raises(ValueError, match="on_x0 was called 0 time"):
        skip_sampling_variance(silent, cond, generator=torch.Generator())
    with pytest.raises(ValueError, match="SSVConfig.smooth_vox"):
        SSVConfig(smooth_vox=-1.0)
    with pytest.raises(ValueError, match="block"):
        region_error_auroc(np.ones((4, 4, 4)), np.zeros((4, 4, 4)), 0.5, block=8)
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
    estimates: list[torch.Tensor] = []
    final = sample_tcdm(unet, scheduler, cond, 5, noise=torch.randn((1, 1, N, N, N)), on_x0=estimates.append)
    assert len(estimates) == 5 and all(e.shape == (1, 1, N, N, N) for e in estimates)
    # the last step's estimate is where DDIM (eta 0, final alpha 1) ends: checks the x0 formula
    assert torch.allclose(estimates[-1], final, atol=1e-4)
    t0 = time.perf_counter()
    sample_fn = functools.partial(sample_tcdm, unet, scheduler)
    mean, variance, confidence = skip_sampling_variance(
        sample_fn, cond, schedules=(2, 5, 10), generator=torch.Generator().manual_seed(0)
    )
    print(f"SSV K=3 (2+5+10 steps) at 16^3: {time.perf_counter() - t0:.2f} s")
    assert bool(torch.isfinite(mean).all()) and float(mean.abs().max()) <= 1.0
    assert float(variance.min()) >= 0 and 0.0 <= float(confidence.min()) <= float(confidence.max()) <= 1.0
    assert float(variance.max()) > 0, "an untrained model's DDIM runs should disagree somewhere"


def _textured_sampler(region: torch.Tensor) -> object:
    """Like the shipped TCDM: the K end points differ by voxel-sized texture everywhere (white noise);
    inside ``region`` the model invents content: its early clean-image estimates are far from where it
    ends, and the end differs from the reference there."""
    base = torch.zeros((1, 1, N, N, N))

    def sample_fn(cond, steps, generator=None, noise=None, on_x0=None):
        g = torch.Generator().manual_seed(steps)
        end = base + 0.5 * region.float()  # the reference is 0: error only in the region
        n = 6
        for i in range(n):  # estimates converge from 0.5 away (region) / 0.05 away (elsewhere)
            away = (1.0 - i / (n - 1)) * torch.where(region, 0.5, 0.05)
            if on_x0 is not None:
                on_x0((end + away).clamp(-1, 1))
        return (end + 0.15 * torch.randn(end.shape, generator=g)).clamp(-1, 1)  # texture, per run

    return sample_fn


def test_confidence_is_spatially_coherent_and_finds_the_invented_region() -> None:
    """The issue's defect: end-point variance is white texture noise (neighbour correlation ~0) that does
    not rank error; the pooled, smoothed x0-estimate variance is coherent and finds the region."""
    region = torch.zeros((1, 1, N, N, N), dtype=torch.bool)
    region[..., 4:12, 4:12, 0:8] = True
    cond = torch.zeros((1, 4, N, N, N))
    _, _, conf = skip_sampling_variance(_textured_sampler(region), cond, noise=torch.zeros((1, 1, N, N, N)))
    error = region.float() * 500.0 + torch.rand((1, 1, N, N, N), generator=torch.Generator().manual_seed(3))
    rho = neighbour_correlation(conf[0, 0])
    auroc = region_error_auroc(conf[0, 0], error[0, 0], threshold=100.0, block=4)
    print(f"neighbour correlation {rho:.3f}, region AUROC {auroc:.3f}")
    assert rho >= 0.5
    assert auroc >= 0.95


def test_metrics_on_known_maps() -> None:
    rng = np.random.default_rng(0)
    white = rng.random((16, 16, 16))
    assert abs(neighbour_correlation(white)) < 0.1
    assert neighbour_correlation(ndimage.gaussian_filter(white, 2)) > 0.8
    with pytest.raises(ValueError, match="constant"):
        neighbour_correlation(np.ones((4, 4, 4)))
    conf = np.ones((8, 8, 8))
    err = np.zeros((8, 8, 8))
    conf[:4, :4, :4], err[:4, :4, :4] = 0.2, 200.0  # one 4^3 block wrong and unsure
    assert region_error_auroc(conf, err, 100.0, block=4) == 1.0
    assert region_error_auroc(1.0 - conf + 0.2, err, 100.0, block=4) == 0.0
    rows = reliability_table(conf, err, 100.0, bins=5)
    assert [(r["lo"], r["voxels"], r["error_rate"]) for r in rows] == [(0.2, 64.0, 1.0), (0.8, 448.0, 0.0)]
    assert rows[0]["mean_confidence"] == pytest.approx(0.2)


def test_fit_tau_recovers_a_known_scale() -> None:
    """Errors drawn with P(ok) = exp(-v / 0.01): the Brier fit finds tau = 0.01."""
    rng = np.random.default_rng(1)
    v = rng.uniform(0.0, 0.05, 200_000)
    error = np.where(rng.random(v.size) < np.exp(-v / 0.01), 10.0, 500.0)
    tau = fit_tau(v, error, threshold=100.0)
    print(f"fitted tau {tau:.5f}")
    assert tau == pytest.approx(0.01, rel=0.05)
