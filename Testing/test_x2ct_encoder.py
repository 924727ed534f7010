"""XRayToCT X-ray encoder (CLS-DM): lifting by the true C-arm geometry, shapes, losses, bad inputs."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from xraycardiac.geometry import CArmGeometry
from xraycardiac.xray2ct.encoder import (
    XRayEncoder,
    XRayEncoderConfig,
    back_project,
    encoder_loss,
    info_nce,
    lift_grid,
    load_encoder,
    make_encoder_loss_fn,
    save_encoder,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

G = 16  # CT voxels per side and detector pixels per side
TINY = dict(view_size=G, grid=G, cnn_channels=(8, 8), unet_channels=(8, 8), feature_channels=4)


def _cube(spacing_mm: float) -> np.ndarray:
    """ijk_to_ras of an axis-aligned G³ cube centred on the RAS origin (I = R, J = A, K = S)."""
    a = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    a[:3, 3] = -spacing_mm * (G - 1) / 2.0
    return a


def _views(sid: float, sod: float, pixel_mm: float) -> list[CArmGeometry]:
    """PA (0°, 0°) and left lateral (+90°, 0°) views about the origin with a G x G detector."""
    return [
        CArmGeometry(primary_angle_deg=angle, secondary_angle_deg=0.0, sid_mm=sid, sod_mm=sod,
                     detector_rows=G, detector_cols=G, pixel_spacing_mm=(pixel_mm, pixel_mm))
        for angle in (0.0, 90.0)
    ]  # fmt: skip


def _near_parallel() -> tuple[np.ndarray, np.ndarray, list[CArmGeometry]]:
    """1 mm voxels, SOD 19 m: voxel columns project onto pixel centres (divergence < 0.02 px)."""
    sid, sod = 20000.0, 19000.0
    geoms = _views(sid, sod, pixel_mm=sid / sod)  # magnification x 1 mm voxel = one pixel
    return np.stack([g.projection_matrix() for g in geoms]), _cube(1.0), geoms


def _bright(volume: torch.Tensor, threshold: float = 0.5) -> set[tuple[int, int, int]]:
    """(k, j, i) indices of the voxels above threshold."""
    return {tuple(int(x) for x in idx) for idx in torch.nonzero(volume > threshold)}


def _spot_volume(grid_xy: torch.Tensor, view: int, u0: int, v0: int) -> torch.Tensor:
    """Lift a feature map that is 1 at pixel (u0, v0) of ``view`` and 0 elsewhere -> (D, H, W)."""
    feats = torch.zeros(1, 2, 1, G, G)
    feats[0, view, 0, v0, u0] = 1.0
    return back_project(feats, grid_xy)[0, view, 0]


def test_geometry_convention_the_lifting_test_relies_on() -> None:
    """CArmGeometry (not the encoder) puts voxels at PA u = 15 - i, lateral u = 15 - j, v = 15 - k."""
    p, a, geoms = _near_parallel()
    idx = np.arange(G, dtype=np.float64)
    kk, jj, ii = np.meshgrid(idx, idx, idx, indexing="ij")
    ras = (np.stack([ii, jj, kk, np.ones_like(ii)], -1).reshape(-1, 4) @ a.T)[:, :3]
    uv_pa, uv_lat = geoms[0].project(ras), geoms[1].project(ras)
    err_pa = np.abs(uv_pa - np.stack([15 - ii.ravel(), 15 - kk.ravel()], 1)).max()
    err_lat = np.abs(uv_lat - np.stack([15 - jj.ravel(), 15 - kk.ravel()], 1)).max()
    print(f"max deviation from the parallel-beam pixel: PA {err_pa:.4f} px, lateral {err_lat:.4f} px")
    assert err_pa < 0.05 and err_lat < 0.05


def test_lifting_follows_the_rays_pa_along_y_lateral_along_x() -> None:
    p, a, _ = _near_parallel()
    grid_xy, _ = lift_grid(p, a, G, G)
    assert grid_xy.shape == (2, G, G, G, 2)
    u0, v0 = 3, 5  # asymmetric: a swap of u/v or a mirror moves the line
    pa = _bright(_spot_volume(grid_xy, 0, u0, v0))
    lat = _bright(_spot_volume(grid_xy, 1, u0, v0))
    # PA ray through (u0, v0): i = 15 - u0 (patient's left on the image's right), k = 15 - v0 (head up),
    # every j: the line runs along RAS y (anterior-posterior)
    expected_pa = {(15 - v0, j, 15 - u0) for j in range(G)}
    # lateral (source at the patient's right): j = 15 - u0 (anterior on the left), k = 15 - v0, every i
    expected_lat = {(15 - v0, 15 - u0, i) for i in range(G)}
    print(f"PA spot lifts to {len(pa)} voxels, lateral spot to {len(lat)}")
    assert pa == expected_pa, sorted(pa)[:4]
    assert lat == expected_lat, sorted(lat)[:4]
    pa_vol = _spot_volume(grid_xy, 0, u0, v0)
    on_line = pa_vol[15 - v0, :, 15 - u0]
    assert float(on_line.min()) > 0.95 and float(pa_vol.sum() - on_line.sum()) < 0.05 * G

    # the same check must reject a swapped (u <-> v) or mirrored (u -> -u) convention
    swapped = grid_xy[..., [1, 0]]
    mirrored = grid_xy * torch.tensor([-1.0, 1.0])
    assert _bright(_spot_volume(swapped, 0, u0, v0)) != expected_pa
    assert _bright(_spot_volume(mirrored, 0, u0, v0)) != expected_pa
    assert _bright(_spot_volume(swapped, 1, u0, v0)) != expected_lat
    assert _bright(_spot_volume(mirrored, 1, u0, v0)) != expected_lat
    # and the views must not be exchangeable: the PA spot lifted with the lateral's grid is elsewhere
    assert _bright(_spot_volume(grid_xy.flip(0), 0, u0, v0)) != expected_pa


def test_lifting_matches_the_projection_matrix_in_a_divergent_x2ct_beam() -> None:
    """X2CT-GAN distances (SID 949, SOD 541 mm), 16 mm voxels: lifted value = bilinear hat at P's pixel."""
    spacing = 16.0
    pixel = G * spacing * 949.0 / (541.0 - G * spacing / 2) / G  # the whole cube fits the detector
    geoms = _views(949.0, 541.0, pixel)
    p, a = np.stack([g.projection_matrix() for g in geoms]), _cube(spacing)
    grid_xy, depth = lift_grid(p, a, G, G)
    idx = np.arange(G, dtype=np.float64)
    kk, jj, ii = np.meshgrid(idx, idx, idx, indexing="ij")
    ras = (np.stack([ii, jj, kk, np.ones_like(ii)], -1).reshape(-1, 4) @ a.T)[:, :3]
    u0, v0 = 6, 9
    worst = 0.0
    for view, geom in enumerate(geoms):
        uv = geom.project(ras)
        hat = np.clip(1 - np.abs(uv[:, 0] - u0), 0, None) * np.clip(1 - np.abs(uv[:, 1] - v0), 0, None)
        got = _spot_volume(grid_xy, view, u0, v0).numpy().ravel()
        worst = max(worst, float(np.abs(got - hat).max()))
        assert hat.max() > 0.5  # the spot's ray does cross the cube
    print(f"max |lifted - bilinear weight at P's pixel| = {worst:.2e}")
    assert worst < 1e-4
    # depth: -1 nearest the source. PA source is posterior (j = 0 side), lateral source at the right (+x)
    assert float(depth[0, :, 0, :].max()) < float(depth[0, :, -1, :].min())
    assert float(depth[1, :, :, -1].max()) < float(depth[1, :, :, 0].min())
    assert float(depth.min()) == pytest.approx(-1.0) and float(depth.max()) == pytest.approx(1.0)
    # voxels projecting beyond the detector sample zero: a cube twice as wide overflows it
    big = _cube(2 * spacing)
    g_big, _ = lift_grid(p, big, G, G)
    ones = back_project(torch.ones(1, 2, 1, G, G), g_big)[0, 0, 0].numpy().ravel()
    uv = geoms[0].project((np.stack([ii, jj, kk, np.ones_like(ii)], -1).reshape(-1, 4) @ big.T)[:, :3])
    outside = ((uv < -1.5) | (uv > G + 0.5)).any(axis=1)  # more than one pixel beyond the edge
    inside = ((uv >= 0) & (uv <= G - 1)).all(axis=1)
    print(f"oversized cube: {outside.sum()} voxels off the detector, {inside.sum()} on it")
    assert outside.sum() > 100 and inside.sum() > 100
    assert ones[outside].max() == 0.0 and ones[inside].min() == pytest.approx(1.0)


def test_encoder_lift_carries_raw_views_and_depth() -> None:
    torch.manual_seed(0)
    cfg = XRayEncoderConfig(**TINY)
    enc = XRayEncoder(cfg)
    p, a, _ = _near_parallel()
    views = torch.rand(2, 2, G, G)
    with torch.no_grad():
        lifted = enc.lift(views, p, a)
    per_view = cfg.lifted_channels_per_view
    assert lifted.shape == (2, 2 * per_view, G, G, G)
    grid_xy, depth = lift_grid(p, a, G, G)
    raw = back_project(views[:, :, None], grid_xy)[:, :, 0]
    for v in range(2):
        torch.testing.assert_close(lifted[:, v * per_view + cfg.feature_channels], raw[:, v])
        torch.testing.assert_close(
            lifted[:, v * per_view + cfg.feature_channels + 1], depth[v].expand(2, G, G, G)
        )
    # per-case geometry (B, V, 3, 4) gives the same as the shared one
    with torch.no_grad():
        batched = enc.lift(views, np.stack([p, p]), np.stack([a, a]))
    torch.testing.assert_close(batched, lifted)
    # cases centred elsewhere (cube and isocentre moved together, as each cached case is) share one grid
    shift = np.array([30.0, -12.5, 7.0])
    moved = [g.with_(isocenter_ras_mm=tuple(shift)) for g in _near_parallel()[2]]
    p2, a2 = np.stack([g.projection_matrix() for g in moved]), a.copy()
    a2[:3, 3] += shift
    assert lift_grid(p2, a2, G, G)[0] is lift_grid(p, a, G, G)[0]
    with torch.no_grad():
        torch.testing.assert_close(enc.lift(views, np.stack([p, p2]), np.stack([a, a2])), lifted)


def test_encoder_shapes_and_losses_are_finite() -> None:
    torch.manual_seed(0)
    cfg = XRayEncoderConfig(**TINY)
    enc = XRayEncoder(cfg)
    p, a, _ = _near_parallel()
    cond, ct_hat = enc(torch.rand(2, 2, G, G), p, a)
    assert cond.shape == (2, 4, 4, 4, 4) and ct_hat.shape == (2, 1, G, G, G)
    assert float(ct_hat.detach().abs().max()) <= 1.0
    latent, ct = torch.randn(2, 4, 4, 4, 4), torch.rand(2, 1, G, G, G) * 2 - 1
    total, parts = encoder_loss(cond, ct_hat, latent, ct, cfg)
    print({k: round(v, 4) for k, v in parts.items()}, float(total.detach()))
    assert math.isfinite(float(total.detach())) and all(math.isfinite(v) for v in parts.values())
    expected = parts["contrastive"] + parts["mse"] + parts["reconstruction"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert all(q.grad is not None for q in enc.parameters())
    mono = XRayEncoderConfig(**{**TINY, "n_views": 1, "fusion": "mean", "lift_depth_encoding": False})
    cond1, ct1 = XRayEncoder(mono)(torch.rand(1, 1, G, G), p[:1], a)
    assert cond1.shape == (1, 4, 4, 4, 4) and ct1.shape == (1, 1, G, G, G)


def test_info_nce_is_log_n_for_random_features_and_zero_for_a_perfect_match() -> None:
    gen = torch.Generator().manual_seed(0)
    b, n_tokens = 2, 2 * 8  # 4³ latent, 2³ patches: 8 tokens per case
    losses_t1, losses_t01 = [], []
    for _ in range(20):
        c, z = torch.randn(b, 4, 4, 4, 4, generator=gen), torch.randn(b, 4, 4, 4, 4, generator=gen)
        losses_t1.append(float(info_nce(c, z, temperature=1.0, patch=2)[0]))
        losses_t01.append(float(info_nce(c, z, temperature=0.1, patch=2)[0]))
    z = torch.randn(b, 4, 4, 4, 4, generator=gen)
    same, top1 = info_nce(z, z, temperature=0.1, patch=2)
    sigma2 = (1 / 0.1) ** 2 / (4 * 8)  # variance of the logits of unrelated 32-d unit tokens at T = 0.1
    mean_t1, mean_t01, bound = np.mean(losses_t1), np.mean(losses_t01), math.log(n_tokens) + sigma2 / 2
    print(f"InfoNCE, N = {n_tokens}: log N = {math.log(n_tokens):.3f}; random T=1: {mean_t1:.3f}; random "
          f"T=0.1: {mean_t01:.3f} (log N + sigma²/2 = {bound:.3f}); cond == latent: {float(same):.2e} "
          f"(top-1 {top1:.2f})")  # fmt: skip
    assert abs(np.mean(losses_t1) - math.log(n_tokens)) < 0.1
    assert np.mean(losses_t01) > math.log(n_tokens)
    assert float(same) < 0.02 and top1 == 1.0


def test_encoder_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    cfg = XRayEncoderConfig(**TINY)
    enc = XRayEncoder(cfg)
    p, a, _ = _near_parallel()
    gen = torch.Generator().manual_seed(1)
    batch = {
        "views": torch.rand(2, 2, G, G, generator=gen),
        "ct": torch.rand(2, 1, G, G, G, generator=gen) * 2 - 1,
    }
    target = torch.randn(2, 4, 4, 4, 4, generator=gen)
    loss_fn = make_encoder_loss_fn(lambda ct: target[: ct.shape[0]], cfg, p, a)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    losses, t0 = [], time.perf_counter()
    for _ in range(30):
        loss, parts = loss_fn(enc, batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    took = time.perf_counter() - t0
    print(f"encoder loss {losses[0]:.3f} -> {losses[-1]:.3f} in 30 steps ({took:.1f} s); {parts}")
    assert losses[-1] < 0.7 * losses[0]


def test_bad_inputs_name_the_parameter() -> None:
    cfg = XRayEncoderConfig(**TINY)
    enc = XRayEncoder(cfg)
    p, a, _ = _near_parallel()
    with pytest.raises(ValueError, match=r"views: all views must have the same size"):
        enc([np.zeros((G, G)), np.zeros((G, 12))], p, a)
    with pytest.raises(ValueError, match=r"views: the model takes 2 view\(s\) per case, got 1"):
        enc(torch.zeros(1, 1, G, G), p, a)
    with pytest.raises(ValueError, match=r"views: expected \(batch, views, rows, cols\).*3D volume"):
        enc(torch.zeros(1, 2, G, G, G), p, a)
    with pytest.raises(ValueError, match=r"views: expected 2D \(rows, cols\) images"):
        enc([np.zeros((G, G)), np.zeros((G, G, G))], p, a)
    with pytest.raises(ValueError, match=r"views: expected 16 x 16 pixels"):
        enc(torch.zeros(1, 2, 32, 32), p, a)
    with pytest.raises(ValueError, match=r"projection_matrices: expected \(2, 3, 4\)"):
        enc(torch.zeros(1, 2, G, G), p[:1], a)
    with pytest.raises(ValueError, match=r"ijk_to_ras"):
        enc(torch.zeros(1, 2, G, G), p, a[:3])
    with pytest.raises(ValueError, match=r"XRayEncoderConfig.n_views"):
        XRayEncoderConfig(n_views=3)
    with pytest.raises(ValueError, match=r"XRayEncoderConfig.grid"):
        XRayEncoderConfig(**{**TINY, "grid": 18})
    with pytest.raises(ValueError, match=r"XRayEncoderConfig.fusion"):
        XRayEncoderConfig(fusion="max")
    assert (
        XRayEncoderConfig.preset("demo").latent_grid == 16
        and XRayEncoderConfig.preset("paper").latent_grid == 16
    )
    with pytest.raises(ValueError, match=r"XRayEncoderConfig.preset: unknown preset 'huge'"):
        XRayEncoderConfig.preset("huge")
    with pytest.raises(ValueError, match=r"latent: shape"):
        encoder_loss(torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 1, G, G, G), torch.zeros(1, 4, 2, 2, 2),
                     torch.zeros(1, 1, G, G, G), cfg)  # fmt: skip


def test_save_load_round_trip_and_mismatch(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = XRayEncoderConfig(**TINY)
    enc = XRayEncoder(cfg).eval()
    path = save_encoder(enc, tmp_path / "encoder.pt")
    back = load_encoder(path, expected=cfg)
    p, a, _ = _near_parallel()
    v = torch.rand(1, 2, G, G)
    with torch.no_grad():
        torch.testing.assert_close(back(v, p, a)[0], enc(v, p, a)[0])
    with pytest.raises(
        ValueError, match=r"XRayEncoderConfig differs from the expected one \(feature_channels: 4 != 8"
    ):
        load_encoder(path, expected=XRayEncoderConfig(**{**TINY, "feature_channels": 8}))
    data = torch.load(path, weights_only=True)
    data["config"]["feature_channels"] = 8
    torch.save(data, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=r"weights do not fit their config"):
        load_encoder(tmp_path / "edited.pt")
    torch.save({"format": "something.else", "config": {}, "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"format 'something.else', expected 'xraycardiac.x2ct_encoder'"):
        load_encoder(tmp_path / "other.pt")
