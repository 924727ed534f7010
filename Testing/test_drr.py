"""DRR renderer: agreement with the projection matrix, physical path lengths, label projections."""

from __future__ import annotations

import numpy as np
import pytest

from xraycardiac import Volume
from xraycardiac.geometry import CArmGeometry
from xraycardiac.projection import DRRConfig, hu_to_mu, project_labels, render_drr


def _oblique_directions():
    a = np.deg2rad(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return rz @ np.diag([1.0, -1.0, 1.0])  # rotated and with a flipped axis


@pytest.mark.parametrize(
    "geometry",
    [
        CArmGeometry(0.0, 0.0, detector_rows=160, detector_cols=180, pixel_spacing_mm=(0.8, 0.7)),
        CArmGeometry(33.0, -17.0, detector_rows=200, detector_cols=220, pixel_spacing_mm=(0.7, 0.6)),
        CArmGeometry(-75.0, 28.0, sid_mm=1000, sod_mm=700, detector_rows=180, detector_cols=150),
    ],
)
def test_bright_voxel_lands_where_projection_matrix_says(geometry):
    arr = np.full((40, 50, 60), -1000.0, dtype=np.float32)
    ijk = (31, 23, 17)
    arr[ijk[2], ijk[1], ijk[0]] = 60000.0
    vol = Volume.from_geometry(arr, (2.0, 2.5, 3.0), (-70, -55, -45), _oblique_directions())
    geometry = geometry.with_(isocenter_ras_mm=tuple(vol.center_ras()))
    # a fine step: the top of a one-voxel trilinear tent is flat, so coarse sampling moves the argmax
    drr = render_drr(vol, geometry, DRRConfig(step_mm=0.25)).array[0]
    expected = geometry.project(vol.ijk_to_ras_points([ijk]))[0]
    r, c = np.unravel_index(np.argmax(drr), drr.shape)
    vv, uu = np.mgrid[: drr.shape[0], : drr.shape[1]]  # air is mu = 0: the whole image is the blob
    centroid = np.array([(drr * uu).sum(), (drr * vv).sum()]) / drr.sum()
    err = np.linalg.norm(centroid - expected)
    assert err < 0.5, f"DRR peak centroid {centroid} vs projection {expected}: {err:.3f} px"
    assert abs(c - expected[0]) <= 0.5 + 1e-9 and abs(r - expected[1]) <= 0.5 + 1e-9, (
        f"argmax pixel (u={c}, v={r}) is not the pixel containing {expected}"
    )


def test_water_sphere_central_path_length():
    """A water sphere of radius 40 mm: the central ray crosses 80 mm of water."""
    n, sp = 64, 1.5
    k, j, i = np.mgrid[:n, :n, :n]
    c = (n - 1) / 2
    inside = ((i - c) ** 2 + (j - c) ** 2 + (k - c) ** 2) * sp**2 <= 40.0**2
    hu = np.where(inside, 0.0, -1000.0).astype(np.float32)
    vol = Volume.from_geometry(hu, (sp, sp, sp), (-c * sp,) * 3)
    g = CArmGeometry(20.0, 10.0, detector_rows=65, detector_cols=65, pixel_spacing_mm=(1.0, 1.0))
    drr = render_drr(vol, g, DRRConfig(step_mm=0.25)).array[0]
    length = drr[32, 32] / float(hu_to_mu(np.float32(0.0)))
    assert length == pytest.approx(80.0, abs=1.5), f"central path length {length:.2f} mm, expected 80"
    labels = Volume(inside.astype(np.uint8), vol.ijk_to_ras)
    lengths, ids = project_labels(labels, g, config=DRRConfig(step_mm=0.25))
    assert ids == [1]
    assert lengths[0, 32, 32] == pytest.approx(80.0, abs=1.5)
    # nearest-neighbour labels vs trilinear CT: the same sphere, to within a voxel at the rim
    diff_mm = np.abs(lengths[0] - drr / float(hu_to_mu(np.float32(0.0))))
    assert diff_mm.mean() < 0.5 and diff_mm.max() < 2.0, (
        f"label vs CT path length: mean {diff_mm.mean():.3f} mm, max {diff_mm.max():.3f} mm"
    )


def test_drr_output_sits_on_detector_plane():
    vol = Volume.from_geometry(np.zeros((8, 8, 8), np.float32), (4.0, 4.0, 4.0), (-14, -14, -14))
    g = CArmGeometry(45.0, 0.0, detector_rows=20, detector_cols=30, pixel_spacing_mm=(0.5, 0.4))
    out = render_drr(vol, g)
    assert out.array.shape == (1, 20, 30)
    np.testing.assert_allclose(out.spacing[:2], [0.4, 0.5])
    np.testing.assert_allclose(np.array(out.meta["projection_matrix"]).reshape(3, 4), g.projection_matrix())
    assert out.array.min() > 0, "water everywhere: every ray that crosses the volume must be positive"


def test_2d_image_is_rejected_as_ct():
    img = Volume.from_geometry(np.zeros((1, 64, 64), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="ct: expected a 3D volume"):
        render_drr(img, CArmGeometry())
