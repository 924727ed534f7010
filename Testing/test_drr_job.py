"""The ``drr`` job end to end: files in, files out, bad input leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xraycardiac import Volume
from xraycardiac.geometry import CArmGeometry
from xraycardiac.io import read_volume, write_volume
from xraycardiac.jobs import JobError, JobSpec, run_in_subprocess, run_job


@pytest.fixture()
def small_ct(tmp_path):
    n = 24
    hu = np.full((n, n, n), -1000.0, np.float32)
    hu[6:18, 6:18, 6:18] = 0.0
    hu[10:14, 10:14, 4:8] = 1000.0  # a bony block on the patient's right (low I = ... see below)
    labels = (hu > -500).astype(np.uint8) + (hu > 500).astype(np.uint8)
    vol = Volume.from_geometry(hu, (4.0, 4.0, 4.0), (-46.0, -46.0, -46.0))
    ct_path = write_volume(vol, tmp_path / "ct.nrrd")
    lab_path = write_volume(Volume(labels, vol.ijk_to_ras), tmp_path / "labels.nrrd")
    return vol, ct_path, lab_path


VIEWS = [
    {"name": "PA", "preset": "pa", "detector_rows": 64, "detector_cols": 64, "pixel_spacing_mm": [3.0, 3.0]},
    {"name": "LAO30", "primary_angle_deg": 30.0, "secondary_angle_deg": -10.0, "sid_mm": 1000.0, "sod_mm": 700.0,
     "detector_rows": 48, "detector_cols": 40, "pixel_spacing_mm": [2.5, 2.0]},
]  # fmt: skip


def test_drr_job_writes_every_view(small_ct, tmp_path):
    vol, ct_path, lab_path = small_ct
    out = tmp_path / "out"
    summary = run_job(
        JobSpec("drr", {"ct": str(ct_path), "labels": str(lab_path)}, {"views": VIEWS}, str(out))
    )
    assert set(summary["views"]) == {"PA", "LAO30"}
    for files in summary["views"].values():
        img = read_volume(out / files["image"])
        record = json.loads((out / files["geometry"]).read_text())
        g = CArmGeometry.from_dict(record)
        assert img.array.shape == (1, g.detector_rows, g.detector_cols)
        np.testing.assert_allclose(img.spacing[:2], g.pixel_spacing_mm[::-1], rtol=1e-6)
        np.testing.assert_allclose(img.ijk_to_ras, g.detector_ijk_to_ras(), atol=1e-4)
        np.testing.assert_allclose(np.array(record["projection_matrix"]), g.projection_matrix(), rtol=1e-9)
        assert np.allclose(g.isocenter_ras_mm, vol.center_ras()), (
            "null isocentre must default to the CT centre"
        )
        assert img.array.std() > 0 and (out / files["png"]).stat().st_size > 100
        lengths = read_volume(out / files["labels"])
        assert files["label_ids"] == lengths.meta["label_ids"] == [1, 2] and lengths.array.shape[0] == 2
        assert lengths.array.max() > 10.0, f"path length through the cube only {lengths.array.max():.1f} mm"
    assert (out / "job_report.json").is_file()


def test_drr_job_in_child_process(small_ct, tmp_path):
    _, ct_path, _ = small_ct
    events = []
    out = tmp_path / "child"
    run_in_subprocess(
        JobSpec("drr", {"ct": str(ct_path)}, {"views": VIEWS[:1]}, str(out)), on_event=events.append
    )
    stages = [e["stage"] for e in events if e.get("event") == "progress"]
    assert "rendering PA" in stages and (out / "PA.nrrd").is_file()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"views": []}, "params.views must be a non-empty list"),
        ({"views": [{"name": "x", "preset": "oblique"}]}, "unknown preset"),
        ({"views": [{"name": "x", "sid_mm": float("1e9"), "sod_mm": 2e9}]}, "sod_mm"),
        ({"views": [{"name": "a/b", "preset": "pa"}]}, "view name"),
        ({"views": VIEWS[:1], "colour": 1}, "unknown parameter"),
    ],
)
def test_bad_parameters_leave_no_output(small_ct, tmp_path, params, match):
    _, ct_path, _ = small_ct
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match=match):
        run_job(JobSpec("drr", {"ct": str(ct_path)}, params, str(out)))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")], "a temp work dir was left behind"


def test_2d_image_as_ct_is_refused(tmp_path):
    img = write_volume(
        Volume.from_geometry(np.zeros((1, 32, 32), np.float32), (1, 1, 1)), tmp_path / "xray.nrrd"
    )
    out = tmp_path / "o"
    with pytest.raises(JobError, match="inputs.ct: expected a 3D volume"):
        run_in_subprocess(JobSpec("drr", {"ct": str(img)}, {"views": VIEWS[:1]}, str(out)))
    assert not out.exists()


def test_nan_spacing_is_refused(tmp_path):
    raw = np.zeros((4, 4, 4), np.int16).tobytes()
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 4 4\n"
        "space directions: (nan,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
        "encoding: raw\nspace origin: (0,0,0)\n\n"
    )
    path = tmp_path / "nan.nrrd"
    path.write_bytes(header.encode() + raw)
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="nan.nrrd"):
        run_job(JobSpec("drr", {"ct": str(path)}, {"views": VIEWS[:1]}, str(out)))
    assert not out.exists()


def test_missing_ct_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nrrd"):
        run_job(
            JobSpec("drr", {"ct": str(tmp_path / "missing.nrrd")}, {"views": VIEWS[:1]}, str(tmp_path / "o"))
        )
