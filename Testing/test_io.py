"""Round trips of xraycardiac.io through every supported format, the RAS/LPS sign handling, bad inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from xraycardiac.io import read_volume, require_2d, require_3d, write_png, write_volume
from xraycardiac.volume import Volume


def _rotation(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    """Proper rotation (det +1) about ``axis`` by ``angle_deg`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a /= np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _oblique_volume(dtype: type = np.int16) -> Volume:
    """(K, J, I) = (4, 5, 6) volume, oblique axes, anisotropic spacing, non-zero origin, distinct voxels."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 2000, size=(4, 5, 6)).astype(dtype)
    return Volume.from_geometry(
        array,
        spacing_ijk_mm=(0.7, 0.9, 2.5),
        origin_ras_mm=(-12.5, 40.25, 101.0),
        directions_ras=_rotation((1.0, 2.0, 0.5), 27.0),
        meta={"patient": "phantom", "seed": 7, "scale": 1.5, "window_hu": [-1000, 1000]},
    )


def _assert_same_geometry(got: Volume, want: Volume, atol: float = 1e-5) -> None:
    err = np.abs(got.ijk_to_ras - want.ijk_to_ras).max()
    assert err < atol, (
        f"ijk_to_ras differs by {err:.3g} (tolerance {atol}):\n{got.ijk_to_ras}\nvs\n{want.ijk_to_ras}"
    )


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_round_trip_oblique_volume(tmp_path: Path, ext: str) -> None:
    vol = _oblique_volume()
    out = write_volume(vol, tmp_path / f"ct{ext}")
    back = read_volume(out)
    assert back.array.shape == vol.array.shape, f"shape {back.array.shape} != {vol.array.shape}"
    assert back.array.dtype == vol.array.dtype, f"dtype {back.array.dtype} != {vol.array.dtype}"
    np.testing.assert_array_equal(back.array, vol.array)
    _assert_same_geometry(back, vol)
    # A voxel's RAS position is the same through the file (the whole point of the matrix).
    ijk = np.array([[5.0, 4.0, 3.0], [1.0, 2.0, 0.0]])
    np.testing.assert_allclose(back.ijk_to_ras_points(ijk), vol.ijk_to_ras_points(ijk), atol=1e-5)
    assert back.meta["source_path"] == str(out)
    assert list(tmp_path.iterdir()) == [out], f"temp files left behind: {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_meta_round_trip_in_headers(tmp_path: Path, ext: str) -> None:
    vol = _oblique_volume()
    vol.meta.update({"flag": True, "text": "line1\nline2", "npf": np.float64(0.25), "record": {"a": [1, 2]},
                     "skip": {1, 2}})  # fmt: skip
    back = read_volume(write_volume(vol, tmp_path / f"v{ext}"))
    for key in ("patient", "seed", "scale", "window_hu", "flag", "text", "npf", "record"):
        want = vol.meta[key].item() if isinstance(vol.meta[key], np.generic) else vol.meta[key]
        assert back.meta.get(key) == want, f"meta[{key!r}]: read {back.meta.get(key)!r}, wrote {want!r}"
        assert type(back.meta[key]) is type(want), (
            f"meta[{key!r}] type {type(back.meta[key])} != {type(want)}"
        )
    # a JSON object (e.g. a DRR's geometry record) is kept; a set has no JSON form and is skipped
    assert "skip" not in back.meta, "values without a JSON form must be skipped"


def test_nrrd_header_holds_lps_and_reads_back_as_ras(tmp_path: Path) -> None:
    # Written by SimpleITK directly, i.e. in LPS, as any ITK-based tool (and Slicer's NRRD writer) does.
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), dtype=np.float32))
    image.SetOrigin((10.0, 20.0, 30.0))
    image.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "lps.nrrd"))
    vol = read_volume(tmp_path / "lps.nrrd")
    np.testing.assert_allclose(vol.origin, [-10.0, -20.0, 30.0], err_msg=f"RAS origin {vol.origin}")
    np.testing.assert_allclose(vol.directions, np.diag([-1.0, -1.0, 1.0]), err_msg=f"{vol.directions}")
    np.testing.assert_allclose(vol.spacing, [1.0, 2.0, 3.0])
    # And the other way: a RAS volume lands in the file as LPS, with NRRD's space tag saying so.
    ras = Volume.from_geometry(np.zeros((2, 2, 2), np.int16), (1, 1, 1), origin_ras_mm=(-10.0, -20.0, 30.0))
    write_volume(ras, tmp_path / "ras.nrrd", compress=False)
    header = (tmp_path / "ras.nrrd").read_bytes().split(b"\n\n")[0].decode()
    assert "space: left-posterior-superior" in header, header
    assert "space origin: (10,20,30)" in header, header
    reread = sitk.ReadImage(str(tmp_path / "ras.nrrd"))
    np.testing.assert_allclose(reread.GetOrigin(), (10.0, 20.0, 30.0))
    np.testing.assert_allclose(reread.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1))


def _write_dicom_series(vol: Volume, directory: Path, series_uid: str, modality: str = "CT") -> None:
    """Write ``vol`` (int16) as one DICOM file per slice with the geometry tags a scanner writes."""
    directory.mkdir(parents=True, exist_ok=True)
    f = np.diag([-1.0, -1.0, 1.0])
    d_lps = f @ vol.directions
    iop = "\\".join(f"{v:.10f}" for v in (*d_lps[:, 0], *d_lps[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.array.shape[0]):
        sl = sitk.GetImageFromArray(vol.array[k])
        sl.SetSpacing([float(vol.spacing[0]), float(vol.spacing[1])])
        ipp = f @ vol.ijk_to_ras_points(np.array([[0.0, 0.0, float(k)]]))[0]
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in ipp),
            "0020|0037": iop,
            "0018|0050": f"{vol.spacing[2]:.10f}",
            "0008|103e": "test series",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(directory / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_round_trip(tmp_path: Path) -> None:
    vol = _oblique_volume()
    uid = "1.2.826.0.1.3680043.8.498.11"
    _write_dicom_series(vol, tmp_path / "series", uid)
    back = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(back.array, vol.array)
    _assert_same_geometry(back, vol, atol=1e-5)
    assert back.meta["modality"] == "CT", back.meta
    assert back.meta["series_instance_uid"] == uid, back.meta
    assert back.meta["source_format"] == "dicom-series", back.meta


def test_dicom_directory_with_two_series_needs_series_uid(tmp_path: Path) -> None:
    vol = _oblique_volume()
    uid_a, uid_b = "1.2.826.0.1.3680043.8.498.21", "1.2.826.0.1.3680043.8.498.22"
    _write_dicom_series(vol, tmp_path / "mixed" / "a", uid_a)
    _write_dicom_series(Volume(vol.array[:, :, ::-1].copy(), vol.ijk_to_ras), tmp_path / "mixed" / "b", uid_b)
    for p in (tmp_path / "mixed" / "b").iterdir():  # both series in one flat directory
        p.rename(tmp_path / "mixed" / "a" / f"b_{p.name}")
    with pytest.raises(ValueError) as err:
        read_volume(tmp_path / "mixed" / "a")
    assert uid_a in str(err.value) and uid_b in str(err.value), str(err.value)
    assert "series_uid" in str(err.value), str(err.value)
    b = read_volume(tmp_path / "mixed" / "a", series_uid=uid_b)
    np.testing.assert_array_equal(b.array, vol.array[:, :, ::-1])
    with pytest.raises(ValueError, match="not in directory"):
        read_volume(tmp_path / "mixed" / "a", series_uid="1.2.3")


def test_single_dicom_file_is_k1_with_modality(tmp_path: Path) -> None:
    vol = _oblique_volume()
    _write_dicom_series(
        Volume(vol.array[:1].copy(), vol.ijk_to_ras), tmp_path / "xa", "1.2.3.4", modality="XA"
    )
    back = read_volume(tmp_path / "xa" / "slice000.dcm")
    assert back.array.shape == (1, 5, 6), back.array.shape
    np.testing.assert_array_equal(back.array[0], vol.array[0])
    assert back.meta["modality"] == "XA", back.meta
    assert back.meta["source_format"] == "dicom", back.meta
    require_2d(back, "radiograph")
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-5, err_msg=f"{back.origin} vs {vol.origin}")


def test_2d_image_round_trip(tmp_path: Path) -> None:
    img = Volume.from_geometry(
        np.arange(35, dtype=np.float32).reshape(1, 5, 7),
        spacing_ijk_mm=(0.3, 0.4, 1.0),
        origin_ras_mm=(5.0, -6.0, 7.0),
        directions_ras=_rotation((0.0, 1.0, 1.0), 40.0),
    )
    for ext in (".nrrd", ".mha", ".nii.gz"):
        back = read_volume(write_volume(img, tmp_path / f"img{ext}"))
        assert back.array.shape == (1, 5, 7), f"{ext}: {back.array.shape}"
        np.testing.assert_array_equal(back.array, img.array)
        _assert_same_geometry(back, img)


def test_2d_files_read_as_k1(tmp_path: Path) -> None:
    # A true 2D NRRD (dimension 2) with LPS origin (3, 4): RAS origin (-3, -4, 0).
    image = sitk.GetImageFromArray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    image.SetOrigin((3.0, 4.0))
    image.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image, str(tmp_path / "flat.nrrd"))
    vol = read_volume(tmp_path / "flat.nrrd")
    assert vol.array.shape == (1, 3, 4), vol.array.shape
    np.testing.assert_array_equal(vol.array[0], np.arange(12).reshape(3, 4))
    np.testing.assert_allclose(vol.origin, [-3.0, -4.0, 0.0], err_msg=str(vol.origin))
    np.testing.assert_allclose(vol.spacing, [0.5, 0.25, 1.0], err_msg=str(vol.spacing))
    # PNG, grey and RGB (RGB reduced to luminance).
    grey = (np.arange(20, dtype=np.uint8) * 10).reshape(4, 5)
    Image.fromarray(grey).save(tmp_path / "g.png")
    g = read_volume(tmp_path / "g.png")
    assert g.array.shape == (1, 4, 5), g.array.shape
    np.testing.assert_array_equal(g.array[0], grey)
    rgb = np.stack([grey, grey, grey], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    c = read_volume(tmp_path / "c.png")
    np.testing.assert_allclose(c.array[0], grey, atol=0.01, err_msg=f"luminance of a grey RGB: {c.array[0]}")


def test_write_png_window_and_atomicity(tmp_path: Path) -> None:
    a = np.array([[-2000.0, -1000.0, 0.0], [1000.0, 3000.0, np.nan]])
    out = write_png(a, tmp_path / "p.png", window=(-1000, 1000))
    px = np.asarray(Image.open(out))
    np.testing.assert_array_equal(px, [[0, 0, 128], [255, 255, 0]], err_msg=str(px))
    out2 = write_png(np.array([[[1.0, 3.0], [2.0, 5.0]]]), tmp_path / "q.png")  # (1, rows, cols), min/max
    np.testing.assert_array_equal(np.asarray(Image.open(out2)), [[0, 128], [64, 255]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "q.png"], list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="window"):
        write_png(a, tmp_path / "r.png", window=(5, 1))
    with pytest.raises(ValueError, match="shape"):
        write_png(np.zeros((2, 2, 2)), tmp_path / "r.png")


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    # The rename onto the target fails (the target is a directory) after the temp file was written.
    (tmp_path / "taken.nrrd").mkdir()
    with pytest.raises(OSError):
        write_volume(_oblique_volume(), tmp_path / "taken.nrrd")
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(OSError):
        write_png(np.zeros((2, 2)), tmp_path / "taken.png")
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["taken.nrrd", "taken.png"], f"temp files left behind: {leftovers}"


def test_bad_inputs(tmp_path: Path) -> None:
    missing = tmp_path / "nope.nrrd"
    with pytest.raises(FileNotFoundError, match="nope.nrrd"):
        read_volume(missing)
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    with pytest.raises(ValueError) as err:
        read_volume(junk)
    assert "notes.txt" in str(err.value) and "NRRD" in str(err.value) and "NIfTI" in str(err.value), str(
        err.value
    )
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n\x00\x01")
    with pytest.raises(ValueError, match="broken.nrrd"):
        read_volume(broken)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no DICOM series"):
        read_volume(empty_dir)
    with pytest.raises(ValueError, match=r"\.nrrd, \.nii"):
        write_volume(_oblique_volume(), tmp_path / "v.vtk")
    with pytest.raises(ValueError, match="atomically"):
        write_volume(_oblique_volume(), tmp_path / "v.nhdr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_volume(_oblique_volume(), tmp_path / "no" / "dir" / "v.nrrd")
    assert not os.path.exists(tmp_path / "no")


def test_require_2d_and_3d() -> None:
    ct = _oblique_volume()
    xray = Volume.from_geometry(np.zeros((1, 8, 9), np.float32), (1.0, 1.0, 1.0))
    thin = Volume.from_geometry(np.zeros((5, 1, 9), np.float32), (1.0, 1.0, 1.0))
    assert require_3d(ct, "ct") is ct
    assert require_2d(xray, "radiograph") is xray
    with pytest.raises(ValueError, match=r"^ct_volume: expected a 3D volume.*2D image.*\(9, 8, 1\)"):
        require_3d(xray, "ct_volume")
    with pytest.raises(ValueError, match=r"^ct_volume: .*degenerate"):
        require_3d(thin, "ct_volume")
    with pytest.raises(ValueError, match=r"^radiograph: expected a 2D image.*4 slices"):
        require_2d(ct, "radiograph")
