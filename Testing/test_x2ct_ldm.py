"""XRayToCT latent diffusion: loss, sampling determinism, guidance, generation with uncertainty, files."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xraycardiac.geometry import CArmGeometry
from xraycardiac.xray2ct.encoder import XRayEncoder, XRayEncoderConfig, save_encoder
from xraycardiac.xray2ct.ldm import (
    X2CTLDMConfig,
    build_ldm,
    build_scheduler,
    generate,
    guided_prediction,
    ldm_loss,
    load_ldm,
    make_ldm_loss_fn,
    sample_latents,
    save_ldm,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

G = 16  # CT grid and view size; latent 4³
TINY = dict(channels=(8, 16), attention_levels=(False, False), norm_num_groups=8, num_train_timesteps=10,
            inference_steps=5)  # fmt: skip
TINY_ENC = dict(view_size=G, grid=G, cnn_channels=(8, 8), unet_channels=(8, 8), feature_channels=4)


def _geometry(n_views: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PA (+ lateral) views of a 16³ cube of 16 mm voxels at X2CT-GAN distances (cube fills the detector)."""
    pixel = G * 16.0 * 949.0 / (541.0 - G * 8.0) / G
    geoms = [CArmGeometry.preset(name, detector_rows=G, detector_cols=G, pixel_spacing_mm=(pixel, pixel))
             for name in ("pa", "lateral")[:n_views]]  # fmt: skip
    a = np.diag([16.0, 16.0, 16.0, 1.0])
    a[:3, 3] = -16.0 * (G - 1) / 2
    return np.stack([g.projection_matrix() for g in geoms]), a


def _perturb(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every weight some random value (the U-Net's zero-initialised output conv included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)


def _decode(z: torch.Tensor) -> torch.Tensor:
    """A stand-in decoder: latent (N, 4, 4, 4, 4) -> (N, 1, 16, 16, 16) in [-1, 1]."""
    return torch.tanh(F.interpolate(z[:, :1], scale_factor=4, mode="trilinear", align_corners=False))


@pytest.mark.parametrize("kind", ["ddim-v", "ddim-eps", "rflow"])
def test_loss_is_finite_and_decreases_on_a_fixed_latent(kind: str) -> None:
    torch.manual_seed(0)
    # 10 timesteps: the cosine schedule spans clean to pure noise (the LDM betas are meant for T = 1000)
    cosine = {"schedule": "cosine"}
    extra = {
        "ddim-v": cosine,
        "ddim-eps": {**cosine, "prediction_type": "epsilon"},
        "rflow": {"sampler": "rflow"},
    }
    extra = extra[kind]
    unet, sched = build_ldm(X2CTLDMConfig(**TINY, **extra))
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 4, 4, 4, generator=gen)
    cond = z0 + 0.3 * torch.randn(2, 4, 4, 4, 4, generator=gen)

    def eval_loss() -> float:
        with torch.no_grad():
            gens = [torch.Generator().manual_seed(100 + s) for s in range(8)]
            return float(np.mean([float(ldm_loss(unet, sched, z0, cond, g)[0]) for g in gens]))

    before = eval_loss()
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for step in range(30):
        loss, metrics = ldm_loss(unet, sched, z0, cond, torch.Generator().manual_seed(step))
        assert math.isfinite(metrics["mse"]) and set(metrics) == {"mse"}
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    took = time.perf_counter() - t0
    print(f"{kind}: held-out diffusion loss {before:.3f} -> {after:.3f} in 30 steps ({took:.1f} s)")
    assert after < 0.8 * before


def test_sampling_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    torch.manual_seed(0)
    unet, sched = build_ldm(X2CTLDMConfig(**TINY))
    _perturb(unet)
    cond = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(1))

    def run(seed: int) -> torch.Tensor:
        return sample_latents(unet, sched, cond, 3, None, torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    assert a.shape == (3, 2, 4, 4, 4, 4)
    assert torch.equal(a, b)
    diff_seeds = float((a - c).abs().mean())
    diff_samples = float((a[0] - a[1]).abs().mean())
    print(f"mean |difference|: seeds 7 vs 8 {diff_seeds:.3f}, samples 0 vs 1 of one seed {diff_samples:.3f}")
    assert diff_seeds > 0.1 and diff_samples > 0.1
    assert torch.isfinite(a).all()


def test_generate_mean_and_uncertainty() -> None:
    torch.manual_seed(0)
    enc = XRayEncoder(XRayEncoderConfig(**TINY_ENC)).eval()
    unet, _ = build_ldm(X2CTLDMConfig(**TINY))
    _perturb(unet)
    p, a = _geometry()
    views = torch.rand(1, 2, G, G, generator=torch.Generator().manual_seed(2))
    t0 = time.perf_counter()
    out = generate(enc, _decode, unet, views, p, a, latent_scale=1.0, n_samples=3, steps=5, seed=3)
    took = time.perf_counter() - t0
    again = generate(enc, _decode, unet, views, p, a, latent_scale=1.0, n_samples=3, steps=5, seed=3)
    other = generate(enc, _decode, unet, views, p, a, latent_scale=1.0, n_samples=3, steps=5, seed=4)
    assert out.mean.shape == out.std.shape == out.direct.shape == (1, 1, G, G, G)
    assert out.samples.shape == (3, 1, 1, G, G, G)
    assert float(out.mean.abs().max()) <= 1.0 and float(out.std.min()) >= 0.0
    torch.testing.assert_close(out.mean, out.samples.mean(0))
    torch.testing.assert_close(out.std, out.samples.std(0))
    assert torch.equal(out.mean, again.mean) and torch.equal(out.std, again.std)
    print(f"generate K=3, 5 steps: {took:.2f} s; mean std {float(out.std.mean()):.3f}; "
          f"|mean(seed 3) - mean(seed 4)| {float((out.mean - other.mean).abs().mean()):.3f}")  # fmt: skip
    assert float(out.std.mean()) > 1e-3 and not torch.equal(out.mean, other.mean)
    # samples that do not depend on the noise have zero spread
    flat = generate(enc, lambda z: torch.zeros(z.shape[0], 1, G, G, G), unet, views, p, a, 1.0, n_samples=2)
    assert float(flat.std.abs().max()) == 0.0
    with pytest.raises(ValueError, match=r"n_samples: the uncertainty .* needs n_samples >= 2, got 1"):
        generate(enc, _decode, unet, views, p, a, latent_scale=1.0, n_samples=1)
    single = generate(enc, _decode, unet, views, p, a, latent_scale=1.0, n_samples=1, uncertainty=False)
    assert single.std is None and single.mean.shape == (1, 1, G, G, G)
    with pytest.raises(ValueError, match=r"latent_scale"):
        generate(enc, _decode, unet, views, p, a, latent_scale=0.0)
    with pytest.raises(ValueError, match=r"unet: its latent_channels 8 / cond_channels 8 do not match"):
        wide = build_ldm(X2CTLDMConfig(**{**TINY, "latent_channels": 8, "cond_channels": 8}))[0]
        generate(enc, _decode, wide, views, p, a, latent_scale=1.0)


def test_single_view_global_embedding_and_guidance() -> None:
    torch.manual_seed(0)
    cfg = X2CTLDMConfig(**TINY, global_embedding=True, embedding_dim=16, embed_channels=(8, 16), n_views=1,
                        guidance_scale=2.0)  # fmt: skip
    unet, sched = build_ldm(cfg)
    _perturb(unet)
    gen = torch.Generator().manual_seed(0)
    views = torch.rand(2, 1, G, G, generator=gen)
    x = torch.randn(2, 8, 4, 4, 4, generator=gen)
    t = torch.tensor([3, 7])
    with torch.no_grad():
        emb = unet.embed_views(views)
        cond_out = unet(x, t, emb)
        null_out = unet(x, t, emb, None, torch.ones(2, dtype=torch.bool))
        s1 = guided_prediction(unet, x, t, emb, 1.0)
        s0 = guided_prediction(unet, x, t, emb, 0.0)
        s2 = guided_prediction(unet, x, t, emb, 2.0)
    assert torch.equal(s1, cond_out)
    torch.testing.assert_close(s0, null_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, 2 * cond_out - null_out, atol=1e-5, rtol=1e-5)
    gap = float((cond_out - null_out).abs().mean())
    print(f"|conditional - null| = {gap:.4f}")
    assert gap > 1e-4  # the embedding does reach the U-Net
    # training: the embedder learns through the diffusion loss; the null embedding stays in the graph
    z0, cond = torch.randn(2, 4, 4, 4, 4, generator=gen), torch.randn(2, 4, 4, 4, 4, generator=gen)
    loss, _ = ldm_loss(unet, sched, z0, cond, torch.Generator().manual_seed(1), views=views)
    loss.backward()
    assert unet.embedder.proj.weight.grad is not None and unet.null_embedding.grad is not None
    # one PA radiograph end to end, with guidance
    enc = XRayEncoder(XRayEncoderConfig(**{**TINY_ENC, "n_views": 1})).eval()
    p, a = _geometry(1)
    out = generate(enc, _decode, unet, views[:1], p, a, latent_scale=1.0, n_samples=2, steps=3, seed=0)
    assert out.mean.shape == (1, 1, G, G, G) and torch.isfinite(out.std).all()
    with pytest.raises(ValueError, match=r"embedding: this LDM needs the global embedding"):
        sample_latents(unet, sched, cond, 1, 2, torch.Generator())


def test_loss_fn_for_the_trainer() -> None:
    torch.manual_seed(0)
    enc = XRayEncoder(XRayEncoderConfig(**TINY_ENC)).eval()
    unet, sched = build_ldm(X2CTLDMConfig(**TINY))
    p, a = _geometry()
    gen = torch.Generator().manual_seed(0)
    batch = {
        "ct": torch.rand(2, 1, G, G, G, generator=gen) * 2 - 1,
        "views": torch.rand(2, 2, G, G, generator=gen),
    }
    encode = lambda ct: F.avg_pool3d(ct, 4).repeat(1, 4, 1, 1, 1)  # noqa: E731 -- stand-in scaled latent
    loss_fn = make_ldm_loss_fn(enc, encode, sched, p, a)
    loss, metrics = loss_fn(unet, batch, gen)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and "mse" in metrics
    assert all(q.grad is None for q in enc.parameters())  # the encoder stays frozen


def test_config_and_input_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"X2CTLDMConfig.prediction_type: expected 'v_prediction'"):
        X2CTLDMConfig(sampler="rflow", prediction_type="epsilon")
    with pytest.raises(ValueError, match=r"X2CTLDMConfig.guidance_scale: expected 1 when global_embedding"):
        X2CTLDMConfig(guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"X2CTLDMConfig.norm_num_groups"):
        X2CTLDMConfig(channels=(12, 16), attention_levels=(False, False))
    with pytest.raises(ValueError, match=r"X2CTLDMConfig.sampler"):
        X2CTLDMConfig(sampler="ddpm")
    assert (
        X2CTLDMConfig.preset("paper").downsample_factor == 4
        and X2CTLDMConfig.preset("demo") == X2CTLDMConfig()
    )
    with pytest.raises(ValueError, match=r"X2CTLDMConfig.preset: unknown preset"):
        X2CTLDMConfig.preset("huge")
    with pytest.raises(ValueError, match=r"X2CTLDMConfig.inference_steps"):
        X2CTLDMConfig(**{**TINY, "inference_steps": 11})
    unet, sched = build_ldm(X2CTLDMConfig(**TINY))
    gen = torch.Generator()
    with pytest.raises(ValueError, match=r"cond: expected \(B, 4, d, h, w\)"):
        ldm_loss(unet, sched, torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), gen)
    with pytest.raises(ValueError, match=r"z0: expected \(1, 4, 4, 4, 4\) to match cond"):
        ldm_loss(unet, sched, torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 4, 4, 4), gen)
    with pytest.raises(ValueError, match=r"cond: latent grid \(3, 3, 3\) is not a multiple of 2"):
        sample_latents(unet, sched, torch.zeros(1, 4, 3, 3, 3), 1, 2, gen)
    with pytest.raises(ValueError, match=r"guidance_scale: 2.0 needs a global embedding"):
        sample_latents(unet, sched, torch.zeros(1, 4, 4, 4, 4), 1, 2, gen, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"steps: expected an integer in 1..10"):
        build_scheduler(X2CTLDMConfig(**TINY), steps=20)
    enc = XRayEncoder(XRayEncoderConfig(**TINY_ENC))
    p, a = _geometry()
    with pytest.raises(ValueError, match=r"views: the model takes 2 view\(s\) per case, got 1"):
        generate(enc, _decode, unet, torch.zeros(1, 1, G, G), p, a, latent_scale=1.0)
    with pytest.raises(ValueError, match=r"views: expected \(batch, views, rows, cols\)"):
        generate(enc, _decode, unet, torch.zeros(1, 2, G, G, G), p, a, latent_scale=1.0)
    with pytest.raises(ValueError, match=r"views: all views must have the same size"):
        generate(enc, _decode, unet, [np.zeros((G, G)), np.zeros((8, 8))], p, a, latent_scale=1.0)


def test_save_load_round_trip_and_checkpoint_config_mismatch(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = X2CTLDMConfig(**TINY)
    unet, _ = build_ldm(cfg)
    _perturb(unet)
    path = save_ldm(unet, tmp_path / "ldm.pt")
    back = load_ldm(path, expected=cfg)
    x, t = torch.randn(1, 8, 4, 4, 4), torch.tensor([5])
    with torch.no_grad():
        torch.testing.assert_close(back(x, t), unet(x, t))
    with pytest.raises(ValueError, match=r"X2CTLDMConfig differs from the expected one \(prediction_type: "):
        load_ldm(path, expected=X2CTLDMConfig(**TINY, prediction_type="epsilon"))
    data = torch.load(path, weights_only=True)
    data["config"]["channels"] = [8, 8]
    torch.save(data, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=r"edited.pt: weights do not fit their config"):
        load_ldm(tmp_path / "edited.pt")
    data["config"]["colour"] = "blue"
    torch.save(data, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match=r"unknown X2CTLDMConfig field\(s\) \['colour'\]"):
        load_ldm(tmp_path / "unknown.pt")
    enc_path = save_encoder(XRayEncoder(XRayEncoderConfig(**TINY_ENC)), tmp_path / "encoder.pt")
    with pytest.raises(
        ValueError, match=r"format 'xraycardiac.x2ct_encoder', expected 'xraycardiac.x2ct_ldm'"
    ):
        load_ldm(enc_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"not a readable torch weights file"):
        load_ldm(tmp_path / "junk.pt")
