"""C-arm geometry: the physical meaning of every convention, and two-view algebra."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xraycardiac.geometry import (
    CArmGeometry,
    epipolar_distance,
    fundamental_matrix,
    geometry_from_dicom,
    reprojection_error,
    triangulate,
)


def test_ap_source_is_posterior_and_image_is_radiological():
    g = CArmGeometry(0.0, 0.0, sid_mm=1200, sod_mm=800)
    np.testing.assert_allclose(g.source_position, [0, -800, 0], atol=1e-9)
    # the patient's left (-x) is on the image's right, the head (+z) is up (smaller row)
    left, head = g.project(np.array([[-50.0, 0, 0], [0, 0, 50.0]]))
    cu, cv = g.principal_point
    assert left[0] > cu, f"patient's left projected to column {left[0]}, centre {cu}"
    assert head[1] < cv, f"head projected to row {head[1]}, centre {cv}"


def test_lao90_source_on_patient_right_and_rao_on_left():
    np.testing.assert_allclose(CArmGeometry(90.0, 0.0).source_position, [800, 0, 0], atol=1e-9)
    assert CArmGeometry(-30.0, 0.0).source_position[0] < 0, "RAO: the source must be on the patient's left"


def test_cranial_source_is_caudal():
    src = CArmGeometry(0.0, 30.0).source_position
    assert src[2] < 0, f"CRA 30: source z = {src[2]:.1f} mm, expected caudal (< 0)"
    np.testing.assert_allclose(src, [0, -800 * np.cos(np.pi / 6), -800 * 0.5], atol=1e-9)


def test_sod_and_magnification():
    g = CArmGeometry(37.0, -21.0, sid_mm=1100, sod_mm=700, isocenter_ras_mm=(10, -5, 30))
    assert np.linalg.norm(g.source_position - g.isocenter) == pytest.approx(700.0, abs=1e-9)
    assert np.linalg.norm(g.detector_center - g.source_position) == pytest.approx(1100.0, abs=1e-9)
    # a 10 mm segment at the isocentre, parallel to the detector's u axis, spans 10 * SID/SOD mm
    u_ax, _ = g.detector_axes
    a, b = g.project(np.stack([g.isocenter, g.isocenter + 10 * u_ax]))
    measured = np.linalg.norm(b - a) * g.pixel_spacing_mm[1]
    assert measured == pytest.approx(10 * 1100 / 700, rel=1e-9), f"magnified length {measured}"
    assert g.magnification == pytest.approx(1100 / 700)
    np.testing.assert_allclose(g.project(g.isocenter[None])[0], g.principal_point, atol=1e-9)


def test_table_offset_moves_isocentre_against_the_table():
    g = CArmGeometry(isocenter_ras_mm=(0, 0, 0), table_offset_ras_mm=(0, 0, 100))
    np.testing.assert_allclose(g.isocenter, [0, 0, -100])


def test_projection_matrix_agrees_with_detector_plane():
    g = CArmGeometry(25.0, 15.0, detector_rows=300, detector_cols=400, pixel_spacing_mm=(0.2, 0.3))
    uv = np.array([[0.0, 0.0], [399.0, 299.0], [123.4, 56.7]])
    np.testing.assert_allclose(g.project(g.pixel_to_detector_ras(uv)), uv, atol=1e-9)
    m = g.detector_ijk_to_ras()
    ijk = np.array([123.4, 56.7, 0.0, 1.0])
    np.testing.assert_allclose(g.project((m @ ijk)[None, :3])[0], ijk[:2], atol=1e-9)


def test_triangulation_recovers_points_within_1e6_mm():
    rng = np.random.default_rng(1)
    g1 = CArmGeometry(30.0, 20.0)
    g2 = CArmGeometry(-40.0, -10.0, sid_mm=1050, sod_mm=760, isocenter_ras_mm=(5, -3, 12))
    x = rng.normal(size=(200, 3)) * 60
    p1, p2 = g1.projection_matrix(), g2.projection_matrix()
    xt = triangulate(p1, p2, g1.project(x), g2.project(x))
    err = np.abs(xt - x).max()
    assert err < 1e-6, f"triangulation error {err:.3e} mm"
    assert reprojection_error(p1, xt, g1.project(x)).max() < 1e-6


def test_triangulating_wrong_matches_stays_finite_and_never_worse_than_the_dlt():
    # Random pixel pairs are skew rays; some DLT points land far away, where Gauss-Newton used to
    # diverge until its normal equations were singular (a LinAlgError at 512 px, 30 deg apart).
    from kornia.geometry.epipolar import triangulate_points

    rng = np.random.default_rng(0)
    g1 = CArmGeometry(30.0, 20.0, detector_rows=512, detector_cols=512)
    g2 = CArmGeometry(5.0, 15.0, detector_rows=512, detector_cols=512)
    p1, p2 = g1.projection_matrix(), g2.projection_matrix()
    u1, u2 = rng.uniform(0, 511, (20000, 2)), rng.uniform(0, 511, (20000, 2))
    xt = triangulate(p1, p2, u1, u2)
    assert np.isfinite(xt).all(), f"{(~np.isfinite(xt).all(axis=1)).sum()} non-finite points"

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float64))[None]

    dlt = triangulate_points(t(p1), t(p2), t(u1), t(u2), solver="svd")[0].numpy()
    err = reprojection_error(p1, xt, u1) ** 2 + reprojection_error(p2, xt, u2) ** 2
    err_dlt = reprojection_error(p1, dlt, u1) ** 2 + reprojection_error(p2, dlt, u2) ** 2
    worse = err > err_dlt * (1 + 1e-9) + 1e-9
    assert not worse.any(), f"{worse.sum()} points refined to a larger error than the DLT gave"


def test_fundamental_matrix_and_epipolar_distance():
    rng = np.random.default_rng(2)
    g1, g2 = CArmGeometry(-30.0, 25.0), CArmGeometry(40.0, 0.0)
    f = fundamental_matrix(g1.projection_matrix(), g2.projection_matrix())
    x = rng.normal(size=(100, 3)) * 50
    x1, x2 = g1.project(x), g2.project(x)
    assert epipolar_distance(f, x1, x2).max() < 1e-6
    shifted = x2 + np.array([0.0, 5.0])
    d = epipolar_distance(f, x1, shifted)
    assert d.min() > 0.5, f"a 5 px shift should leave the epipolar line, min distance {d.min():.3f} px"


def test_json_round_trip_and_unknown_field(tmp_path):
    g = CArmGeometry(12.5, -7.0, name="view1", pixel_spacing_mm=(0.25, 0.3), isocenter_ras_mm=(1, 2, 3))
    g.save_json(tmp_path / "g.json")
    back = CArmGeometry.load_json(tmp_path / "g.json")
    assert back == g
    np.testing.assert_allclose(back.projection_matrix(), g.projection_matrix())
    with pytest.raises(ValueError, match="unknown field"):
        CArmGeometry.from_dict({"primary_angle": 3})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sid_mm": float("nan")}, "sid_mm"),
        ({"sod_mm": 1300.0}, "sod_mm"),
        ({"pixel_spacing_mm": (0.3, float("nan"))}, "pixel_spacing_mm"),
        ({"detector_rows": 0}, "detector_rows"),
    ],
)
def test_bad_geometry_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CArmGeometry(**kwargs)


def test_presets_follow_x2ct():
    pa, lat = CArmGeometry.preset("pa"), CArmGeometry.preset("lateral")
    assert (pa.sid_mm, pa.sod_mm) == (949.0, 541.0)
    assert pa.source_position[1] < 0 and lat.source_position[0] > 0
    with pytest.raises(ValueError, match="unknown preset"):
        CArmGeometry.preset("oblique")


def _write_dicom(path, modality="XA", drop=None, orientation=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = modality
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PositionerPrimaryAngle = -30.5
    ds.PositionerSecondaryAngle = 20.0
    ds.DistanceSourceToDetector = 1040.0
    ds.DistanceSourceToPatient = 765.0
    ds.ImagerPixelSpacing = [0.278, 0.279]
    ds.Rows, ds.Columns = 512, 510
    if orientation:
        ds.PatientOrientation = orientation
    if drop:
        delattr(ds, drop)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_geometry_from_dicom_xa(tmp_path):
    g = geometry_from_dicom(_write_dicom(tmp_path / "a.dcm"))
    assert (g.primary_angle_deg, g.secondary_angle_deg) == (-30.5, 20.0)
    assert (g.sid_mm, g.sod_mm, g.detector_rows, g.detector_cols) == (1040.0, 765.0, 512, 510)
    assert g.pixel_spacing_mm == (0.278, 0.279)
    assert not g.flip_columns and not g.flip_rows


def test_patient_orientation_flips_axes(tmp_path):
    g = geometry_from_dicom(_write_dicom(tmp_path / "b.dcm", orientation=["R", "F"]))
    assert g.flip_columns and not g.flip_rows
    u_ax, _ = g.detector_axes
    assert u_ax[0] > 0, "columns must now run toward the patient's right"


def test_dicom_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Modality 'CT'"):
        geometry_from_dicom(_write_dicom(tmp_path / "ct.dcm", modality="CT"))
    with pytest.raises(ValueError, match="DistanceSourceToPatient"):
        geometry_from_dicom(_write_dicom(tmp_path / "c.dcm", drop="DistanceSourceToPatient"))
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        geometry_from_dicom(tmp_path / "missing.dcm")
    (tmp_path / "junk.dcm").write_text("not dicom")
    with pytest.raises(ValueError, match="junk.dcm"):
        geometry_from_dicom(tmp_path / "junk.dcm")
