"""Sparse-view CT baselines: exact adjoint, DRR physics, SART / CGLS behaviour, HU output, mean prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xraycardiac import Volume
from xraycardiac.geometry import CArmGeometry
from xraycardiac.metrics.image import hu_window_metrics
from xraycardiac.phantoms.chest import ChestPhantomConfig, make_chest_phantom
from xraycardiac.projection import hu_to_mu, render_drr
from xraycardiac.xray2ct.sparse_view import (
    ProjectionOperator,
    cgls,
    mean_prior,
    mu_to_hu,
    reconstruct_sparse_view,
    sart,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DETECTOR_PX = 32
PA_LATERAL = [0.0, 90.0]
TWELVE = [30.0 * n for n in range(12)]


def _chest_views(angles: list[float], n: int = DETECTOR_PX) -> list[CArmGeometry]:
    """X2CT-style views (SID 949, SOD 541 mm) on an n x n detector of the preset's physical size."""
    spacing = 2.8 * 256 / n
    return [
        CArmGeometry.preset(
            "pa", primary_angle_deg=a, detector_rows=n, detector_cols=n, pixel_spacing_mm=(spacing, spacing)
        )  # fmt: skip
        for a in angles
    ]


@pytest.fixture(scope="module")
def chest() -> Volume:
    """A 24^3 chest phantom at 16 mm (384 mm field), HU."""
    ct, _ = make_chest_phantom(ChestPhantomConfig(shape_ijk=(24, 24, 24), spacing_mm=16.0, seed=0))
    return ct


def _psnr(rec: np.ndarray, ct: np.ndarray) -> float:
    return float(hu_window_metrics(rec, ct, window=(-1000.0, 1000.0))["psnr_db"])


# ---- the operator ----------------------------------------------------------------------------------


def test_adjoint_is_the_exact_transpose():
    a = np.deg2rad(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    vol = Volume.from_geometry(np.zeros((16, 18, 20), np.float32), (3.0, 3.5, 4.0), (-30, -30, -30),
                               rz @ np.diag([1.0, -1.0, 1.0]))  # fmt: skip
    geos = [
        CArmGeometry(0.0, 0.0, 900, 600, 24, 20, (5.0, 6.0), tuple(vol.center_ras())),
        CArmGeometry(70.0, -25.0, 900, 600, 24, 20, (5.0, 6.0), tuple(vol.center_ras())),
        CArmGeometry(-40.0, 30.0, 1000, 700, 24, 20, (5.0, 6.0), tuple(vol.center_ras())),
    ]
    A = ProjectionOperator(vol.array.shape, vol.ijk_to_ras, geos)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.rand(A.grid_shape, generator=gen) * 0.03
        y = torch.randn(A.shape_out, generator=gen)
        ax, aty = A.forward(x), A.adjoint(y)
        lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
        scale = float(ax.norm() * y.norm())
        assert scale > 0
        err = abs(lhs - rhs) / scale
        assert err < 1e-4, f"<Ax, y> = {lhs:.6g} vs <x, A^T y> = {rhs:.6g}: relative gap {err:.2e}"
    # row / column sums are A 1 and A^T 1, and the per-view column sums add up to the total
    ones = torch.ones(A.grid_shape)
    torch.testing.assert_close(A.row_sums(), A.forward(ones))
    torch.testing.assert_close(A.col_sums(), A.adjoint(torch.ones(A.shape_out)))
    torch.testing.assert_close(
        sum(A.col_sums(v) for v in range(A.n_views)), A.col_sums(), rtol=1e-5, atol=1e-4
    )


def test_row_sum_is_the_path_length_through_the_grid():
    """The central PA ray crosses the grid box along A-P: 16 voxels x 4 mm = 64 mm, less the padding."""
    vol = Volume.from_geometry(np.zeros((16, 16, 16), np.float32), (4.0, 4.0, 4.0), (-30, -30, -30))
    g = CArmGeometry(0.0, 0.0, 949, 541, 25, 25, (6.0, 6.0), tuple(vol.center_ras()))
    rows = ProjectionOperator(vol.array.shape, vol.ijk_to_ras, [g]).row_sums()[0]
    # the box is [-0.5, 15.5] voxels; over each outer half voxel trilinear sampling with zero padding
    # ramps from 0.5 to 1, integrating to 0.375 instead of 0.5: 15.75 voxels = 63 mm in all
    assert float(rows[12, 12]) == pytest.approx(63.0, abs=0.2), (
        f"central ray sum {float(rows[12, 12]):.3f} mm"
    )


def test_operator_matches_render_drr(chest):
    """A (hu_to_mu(ct)) is the DRR the networks are trained on."""
    geos = _chest_views([0.0, 90.0, 35.0])
    A = ProjectionOperator(chest.array.shape, chest.ijk_to_ras, geos)
    # no air voxel: render_drr marches the whole grid as A does -> identical to float precision
    body = Volume(np.maximum(chest.array, -990.0), chest.ijk_to_ras)
    ours = A.forward(hu_to_mu(body.array)).numpy()
    for v, g in enumerate(geos):
        np.testing.assert_allclose(ours[v], render_drr(body, g).array[0], rtol=1e-4, atol=1e-5)
    # with air around the body render_drr crops to the body first, which moves the samples a little
    ours = A.forward(hu_to_mu(chest.array)).numpy()
    drr = np.stack([render_drr(chest, g).array[0] for g in geos])
    rel = np.linalg.norm(ours - drr) / np.linalg.norm(drr)
    assert rel < 0.02, f"operator vs render_drr on the cropped chest: relative L2 gap {rel:.4f}"


def test_detector_shape_rebins_keeping_the_physical_detector(chest):
    fine = ProjectionOperator(chest.array.shape, chest.ijk_to_ras, _chest_views(PA_LATERAL, 32))
    coarse = ProjectionOperator(chest.array.shape, chest.ijk_to_ras, _chest_views(PA_LATERAL, 32),
                                detector_shape=(16, 16))  # fmt: skip
    assert coarse.shape_out == (2, 16, 16)
    assert coarse.geometries[0].pixel_spacing_mm == pytest.approx((44.8, 44.8))
    mu = hu_to_mu(chest.array)
    block = fine.forward(mu).reshape(2, 16, 2, 16, 2).mean(dim=(2, 4))
    rel = float((coarse.forward(mu) - block).norm() / block.norm())
    assert rel < 0.05, f"rebinned projection vs 2x2 block mean of the fine one: relative gap {rel:.4f}"


# ---- solvers ---------------------------------------------------------------------------------------


def test_cgls_residual_never_increases_and_many_views_beat_two(chest):
    mu = torch.as_tensor(hu_to_mu(chest.array))
    psnr = {}
    for name, angles in (("PA+lateral", PA_LATERAL), ("12 views", TWELVE)):
        A = ProjectionOperator(chest.array.shape, chest.ijk_to_ras, _chest_views(angles))
        x, history = cgls(A, A.forward(mu), n_iter=10)
        steps = np.diff(history)
        assert len(history) == 11 and np.all(steps <= 1e-6 * history[0]), (
            f"{name}: CGLS residual norms increase: {np.round(history, 5).tolist()}"
        )
        assert history[-1] < 0.05 * history[0], f"{name}: residual {history[0]:.4g} -> {history[-1]:.4g}"
        psnr[name] = _psnr(mu_to_hu(x.numpy()), chest.array)
    print(f"\nCGLS (10 it), chest 24^3 @ 16 mm, window [-1000, 1000] HU: "
          f"PA+lateral {psnr['PA+lateral']:.2f} dB, 12 views {psnr['12 views']:.2f} dB")  # fmt: skip
    assert psnr["12 views"] > psnr["PA+lateral"] + 4.0, f"CGLS PSNR: {psnr}"


def test_damped_cgls_is_monotone_and_shrinks_the_solution(chest):
    A = ProjectionOperator(chest.array.shape, chest.ijk_to_ras, _chest_views(PA_LATERAL))
    y = A.forward(hu_to_mu(chest.array))
    x0, _ = cgls(A, y, n_iter=8)
    x1, history = cgls(A, y, n_iter=8, damping=30.0)
    assert np.all(np.diff(history) <= 1e-6 * history[0]), f"damped history {history}"
    assert float(x1.norm()) < float(x0.norm()), (
        f"|x| undamped {float(x0.norm()):.4g}, damped {float(x1.norm()):.4g}"
    )


def test_sart_many_views_beat_two_and_fit_the_inputs(chest):
    psnr = {}
    for name, angles in (("PA+lateral", PA_LATERAL), ("12 views", TWELVE)):
        geos = _chest_views(angles)
        A = ProjectionOperator(chest.array.shape, chest.ijk_to_ras, geos)
        y = A.forward(hu_to_mu(chest.array)).numpy()
        rec = reconstruct_sparse_view(y, geos, chest.array.shape, chest.ijk_to_ras, method="sart", n_iter=10)
        assert rec.array.shape == chest.array.shape and rec.meta["quantity"] == "HU"
        np.testing.assert_allclose(rec.ijk_to_ras, chest.ijk_to_ras)
        assert rec.meta["relative_residual"] < 0.05, (
            f"{name}: reprojection {rec.meta['relative_residual']:.4f}"
        )
        psnr[name] = _psnr(rec.array, chest.array)
    print(f"\nSART (10 it), chest 24^3 @ 16 mm, window [-1000, 1000] HU: "
          f"PA+lateral {psnr['PA+lateral']:.2f} dB, 12 views {psnr['12 views']:.2f} dB")  # fmt: skip
    assert psnr["12 views"] > psnr["PA+lateral"] + 4.0, f"SART PSNR: {psnr}"


def test_sart_nonneg_and_reprojection_on_two_views(chest):
    A = ProjectionOperator(chest.array.shape, chest.ijk_to_ras, _chest_views(PA_LATERAL))
    y = A.forward(hu_to_mu(chest.array))
    # inconsistent data (noise of 10 % of the mean) drives an unconstrained solution negative
    y_noisy = y + 0.1 * float(y.mean()) * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    free = sart(A, y_noisy, n_iter=5, nonneg=False)
    assert float(free.min()) < 0, "test premise: without the constraint SART goes negative here"
    calls = []
    x = sart(A, y_noisy, n_iter=5, nonneg=True, callback=lambda it, xi: calls.append((it, float(xi.min()))))
    assert float(x.min()) >= 0.0, f"nonneg SART: min mu {float(x.min()):.3g}"
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5] and min(c[1] for c in calls) >= 0.0
    # on clean data the 2 input views are reproduced far better than by the zero volume
    x = sart(A, y, n_iter=10)
    err = float((A.forward(x) - y).norm() / y.norm())
    assert err < 0.05, f"SART reprojection error on PA + lateral {err:.4f} (zero volume: 1.0)"
    # simultaneous ordering reduces the error too, and a callback returning True stops early
    calls.clear()
    xs = sart(A, y, n_iter=10, order="simultaneous", callback=lambda it, xi: calls.append(it) or it == 3)
    assert calls == [1, 2, 3]
    err_s = float((A.forward(xs) - y).norm() / y.norm())
    assert err_s < 0.5, f"simultaneous SART, 3 passes: reprojection error {err_s:.4f}"


def test_water_cube_reconstructs_to_zero_hu():
    n, sp = 16, 4.0
    hu = np.full((n, n, n), -1000.0, np.float32)
    hu[4:12, 4:12, 4:12] = 0.0
    vol = Volume.from_geometry(hu, (sp, sp, sp), (-(n - 1) * sp / 2,) * 3)
    geos = [CArmGeometry(a, b, 949, 541, 24, 24, (8.0, 8.0)) for a in TWELVE for b in (-20.0, 20.0)]
    y = np.stack([render_drr(vol, g).array[0] for g in geos])
    rec = reconstruct_sparse_view(y, geos, hu.shape, vol.ijk_to_ras, method="sart", n_iter=15)
    inside = rec.array[5:11, 5:11, 5:11]
    outside = np.concatenate([rec.array[:2].ravel(), rec.array[-2:].ravel()])
    print(
        f"\nwater cube: inside {inside.mean():.1f} +- {inside.std():.1f} HU, air slabs {outside.mean():.1f} HU"
    )
    assert abs(float(inside.mean())) < 25.0, (
        f"inside the water cube: mean {inside.mean():.1f} HU, expected ~0"
    )
    assert float(np.abs(inside).max()) < 100.0, f"inside the water cube: max |HU| {np.abs(inside).max():.1f}"
    assert float(outside.mean()) < -950.0, f"air slabs: mean {outside.mean():.1f} HU, expected ~-1000"


def test_mu_to_hu_inverts_hu_to_mu():
    hu = np.array([-1000.0, -500.0, 0.0, 40.0, 1500.0], np.float32)
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-3)
    np.testing.assert_allclose(mu_to_hu(np.array([-0.01], np.float32)), [-1000.0])
    torch.testing.assert_close(
        mu_to_hu(hu_to_mu(torch.as_tensor(hu))), torch.as_tensor(hu), atol=1e-3, rtol=0
    )


# ---- mean prior ------------------------------------------------------------------------------------


def test_mean_prior_is_the_voxelwise_mean():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(4, 5, 6)).astype(np.float32) * 100 for _ in range(3)]
    affine = Volume.from_geometry(arrays[0], (2.0, 2.0, 3.0), (1.0, 2.0, 3.0)).ijk_to_ras
    prior = mean_prior([Volume(a, affine) for a in arrays])
    np.testing.assert_allclose(prior.array, np.mean(arrays, axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(prior.ijk_to_ras, affine)
    assert prior.meta["n_volumes"] == 3
    with pytest.raises(ValueError, match=r"volumes\[1\].*shape"):
        mean_prior([Volume(arrays[0], affine), Volume(arrays[1][:, :, :5], affine)])
    shifted = affine.copy()
    shifted[0, 3] += 0.5
    with pytest.raises(ValueError, match=r"volumes\[2\].*ijk_to_ras"):
        mean_prior([Volume(a, affine) for a in arrays[:2]] + [Volume(arrays[2], shifted)])
    with pytest.raises(ValueError, match="volumes"):
        mean_prior([])


# ---- bad inputs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_problem():
    vol = Volume.from_geometry(np.zeros((16, 16, 16), np.float32), (4.0, 4.0, 4.0), (-30, -30, -30))
    geos = [CArmGeometry(a, 0.0, 949, 541, 24, 24, (6.0, 6.0)) for a in PA_LATERAL]
    return np.zeros((2, 24, 24), np.float32), geos, vol.array.shape, vol.ijk_to_ras


@pytest.mark.parametrize(
    ("change", "param"),
    [
        (lambda v, g: (v[:1], g), "geometries"),  # 1 view, 2 geometries
        (lambda v, g: (v, g[:1]), "geometries"),  # 2 views, 1 geometry
        (lambda v, g: (v[:, :23], g), "views"),  # (2, 23, 24) stack for a 24 x 24 detector
        (lambda v, g: (v[0], g), "views"),  # a single 2D image
        (lambda v, g: (np.full_like(v, np.nan), g), "views"),
    ],
)
def test_bad_view_stacks_are_rejected(small_problem, change, param):
    views, geos, shape, affine = small_problem
    views, geos = change(views, geos)
    with pytest.raises(ValueError, match=param):
        reconstruct_sparse_view(views, geos, shape, affine)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"method": "fbp"}, "method"),
        ({"n_iter": 0}, "n_iter"),
        ({"n_iter": -3}, "n_iter"),
        ({"n_iter": 2.5}, "n_iter"),
        ({"method": "cgls", "n_iter": 0}, "n_iter"),
        ({"relaxation": 2.5}, "relaxation"),
        ({"order": "random"}, "order"),
        ({"method": "cgls", "damping": -1.0}, "damping"),
        ({"initial_hu": np.zeros((3, 3, 3))}, "initial_hu"),
        ({"step_mm": 0.0}, "step_mm"),
    ],
)
def test_bad_options_are_rejected(small_problem, kwargs, param):
    views, geos, shape, affine = small_problem
    with pytest.raises(ValueError, match=param):
        reconstruct_sparse_view(views, geos, shape, affine, **kwargs)


def test_bad_operator_inputs_are_rejected(small_problem):
    _, geos, shape, affine = small_problem
    with pytest.raises(ValueError, match="grid_shape"):
        ProjectionOperator((16, 16), affine, geos)
    with pytest.raises(ValueError, match="geometries"):
        ProjectionOperator(shape, affine, [])
    with pytest.raises(ValueError, match="geometries"):
        ProjectionOperator(shape, affine, [geos[0], geos[1].with_(detector_rows=20)])
    A = ProjectionOperator(shape, affine, geos)
    with pytest.raises(ValueError, match="x"):
        A.forward(torch.zeros(8, 8, 8))
    with pytest.raises(ValueError, match="y"):
        A.adjoint(torch.zeros(3, 24, 24))
    with pytest.raises(ValueError, match="n_iter"):
        sart(A, torch.zeros(A.shape_out), n_iter=0)
    with pytest.raises(ValueError, match="n_iter"):
        cgls(A, torch.zeros(A.shape_out), n_iter=0)
