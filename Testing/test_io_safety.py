"""Data safety of file I/O (issue 17): real short writes, damaged inputs, huge headers, bad geometry.

Every fault here is produced for real: a child process with ``RLIMIT_FSIZE`` gets a real EFBIG on a
write that does not fit, files are cut in half or get a flipped byte, headers are written by hand.
CLI runs happen in child processes whose peak RSS is read from ``os.wait4`` and whose heap is capped
by ``RLIMIT_DATA`` so that a regression fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xraycardiac import Volume
from xraycardiac.geometry import geometry_from_dicom
from xraycardiac.io import read_volume, require_3d, write_volume

_REPO = Path(__file__).resolve().parents[1]
_HEAP_CAP = 3 * 2**30  # RLIMIT_DATA of CLI children: a runaway allocation fails instead of swapping
_MAX_RSS_MB = 1536.0


def _ct(n: int = 24, seed: int = 0) -> Volume:
    """A small float32 CT (HU): air around a water cube with a bony block and noise (compresses badly)."""
    rng = np.random.default_rng(seed)
    hu = np.full((n, n, n), -1000.0, np.float32)
    hu[n // 4 : 3 * n // 4, n // 4 : 3 * n // 4, n // 4 : 3 * n // 4] = 0.0
    hu[n // 3 : n // 2, n // 3 : n // 2, n // 4 : n // 3] = 1000.0
    hu += rng.normal(0.0, 20.0, hu.shape).astype(np.float32)
    return Volume.from_geometry(hu, (4.0, 4.0, 4.0), (-2.0 * n, -2.0 * n, -2.0 * n))


def _limits(fsize: int | None) -> None:
    """preexec_fn of the children: cap the heap, and optionally the file size (EFBIG, not SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_DATA, (_HEAP_CAP, _HEAP_CAP))
    if fsize is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


def _child(
    args: list[str], cwd: Path, fsize: int | None = None, timeout: float = 300
) -> tuple[int, str, float]:
    """Run ``python ARGS`` with the limits above; (exit code, stderr + stdout, peak RSS in MB)."""
    log = cwd / f".child{os.getpid()}.log"
    env = dict(os.environ, PYTHONPATH=str(_REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(OMP_NUM_THREADS="1", COLUMNS="200")
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env,
            preexec_fn=lambda: _limits(fsize),
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    log.unlink()
    return proc.returncode, text, usage.ru_maxrss / 1024.0


def _drr(ct: Path, tmp_path: Path, *extra: str) -> tuple[int, str, float]:
    out = tmp_path / "drr_out"
    args = ["-m", "xraycardiac.cli", "drr", str(ct), "--out", str(out), "--device", "cpu", *extra]
    return _child(args, tmp_path)


# --------------------------------------------------------------------------------------------------
# 1. A write that does not fit fails loudly and leaves nothing
# --------------------------------------------------------------------------------------------------

_WRITE_SCRIPT = """
import json, sys
import numpy as np
from xraycardiac import Volume
from xraycardiac.io import write_png, write_volume
rng = np.random.default_rng(0)
vol = Volume.from_geometry(rng.normal(size=(32, 32, 32)).astype(np.float32), (1.0, 1.0, 1.0))
results = {}
for name in sys.argv[1:]:
    try:
        if name.endswith(".png"):
            write_png(rng.integers(0, 255, (256, 256)).astype(np.float32), name)
        elif name.endswith(".vtp"):
            from pathlib import Path
            from vtkmodules.vtkFiltersSources import vtkSphereSource
            from xraycardiac.anatomy.coronary_tree_vtk import write_polydata
            sphere = vtkSphereSource(theta_resolution=100, phi_resolution=100)
            sphere.Update()
            write_polydata(sphere.GetOutput(), Path(name), "test")
        else:
            write_volume(vol, name)
        results[name] = "written"
    except Exception as exc:
        results[name] = [[c.__name__ for c in type(exc).__mro__], str(exc)]
print(json.dumps(results))
"""


def test_writes_that_do_not_fit_raise_and_leave_nothing(tmp_path):
    names = ["v.nii.gz", "v.nii", "v.nrrd", "v.mha", "p.png", "t.vtp"]
    (tmp_path / "w.py").write_text(_WRITE_SCRIPT)
    rc, text, _ = _child(["w.py", *names], tmp_path, fsize=20_000)  # every file needs > 20 kB
    assert rc == 0, text
    results = json.loads(text.strip().splitlines()[-1])
    for name in names:
        got = results[name]
        assert got != "written", f"{name}: a write cut at 20 kB reported success; child output:\n{text}"
        mro, message = got
        assert "OSError" in mro, f"{name}: raised {mro[0]}, expected an OSError: {message}"
        assert name in message and "full" in message, (
            f"{name}: message does not name the file/cause: {message}"
        )
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "w.py")
    assert left == [], f"files left behind after failed writes: {left}"


def test_cardiac_phantoms_on_a_full_disk_fail_and_leave_no_short_file(tmp_path):
    # A 64^3 labels file is ~10 kB and an image ~1 MB: 200 kB lets labels through and cuts the image.
    args = ["-m", "xraycardiac.cli", "cardiac", "phantoms", "--out", "full", "--n", "3", "--grid", "64"]
    rc, text, _ = _child(args, tmp_path, fsize=200_000)
    assert rc != 0, f"exit code 0 on a full disk:\n{text}"
    last = text.strip().splitlines()[-1]
    assert "phantom_00000.nii.gz" in last and "full" in last, f"last line does not say what failed: {last}"
    images = sorted((tmp_path / "full" / "images").iterdir())
    assert images == [], f"short or temp image files left: {[p.name for p in images]}"
    for p in (tmp_path / "full" / "labels").iterdir():  # whatever is there must read back whole
        assert not p.name.startswith("."), f"temp file left: {p}"
        read_volume(p)


# --------------------------------------------------------------------------------------------------
# 2. Truncated or corrupt inputs are refused
# --------------------------------------------------------------------------------------------------


def _damaged(tmp_path: Path, kind: str) -> Path:
    """A CT file damaged in one way: cut .nii.gz, flipped byte in .nii.gz, cut .nii, cut .nrrd."""
    ext = {"cut_gz": ".nii.gz", "flip_gz": ".nii.gz", "cut_nii": ".nii", "cut_nrrd": ".nrrd"}[kind]
    # 64^3: ITK checks a small .nii.gz whole when it probes the file, but streams a larger one unchecked
    path = write_volume(_ct(64), tmp_path / f"{kind}{ext}", compress=kind != "cut_nrrd")
    data = bytearray(path.read_bytes())
    if kind == "flip_gz":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["cut_gz", "flip_gz", "cut_nii", "cut_nrrd"])
def test_damaged_volume_is_refused_by_the_reader(tmp_path, kind):
    path = _damaged(tmp_path, kind)
    with pytest.raises(ValueError, match=path.name) as info:
        vol = read_volume(path)
        pytest.fail(f"{kind}: read as valid (min {vol.array.min():.3g}, max {vol.array.max():.3g})")
    assert any(w in str(info.value) for w in ("truncated", "corrupt", "CRC", "bytes")), str(info.value)


@pytest.mark.parametrize(
    "kind",
    [
        "cut_gz",
        pytest.param("flip_gz", marks=pytest.mark.slow),
        pytest.param("cut_nii", marks=pytest.mark.slow),
    ],
)  # the reader is tested on every kind above; one CLI run by default shows the refusal reaches `drr`
def test_damaged_volume_is_refused_by_drr(tmp_path, kind):
    path = _damaged(tmp_path, kind)
    rc, text, _ = _drr(path, tmp_path, "--view", "A:0:0", "--size", "32")
    assert rc != 0 and path.name in text, f"{kind}: drr exit {rc}:\n{text[-2000:]}"


def test_intact_files_still_read(tmp_path):
    vol = _ct()
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        for compress in (True, False):
            back = read_volume(write_volume(vol, tmp_path / f"c{int(compress)}{ext}", compress=compress))
            np.testing.assert_array_equal(back.array, vol.array)


# --------------------------------------------------------------------------------------------------
# 5. Sizes are checked before allocating
# --------------------------------------------------------------------------------------------------


def _header_only_nrrd(path: Path, n: int) -> Path:
    """A hand-written NRRD header declaring n^3 float voxels of raw data that is not there."""
    path.write_bytes(
        (
            "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
            f"sizes: {n} {n} {n}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\n"
            "endian: little\nencoding: raw\nspace origin: (0,0,0)\n\n"
        ).encode()
    )
    return path


def test_huge_header_without_data_fails_fast(tmp_path):
    ct = _header_only_nrrd(tmp_path / "huge.nrrd", 1200)
    assert ct.stat().st_size < 300
    with pytest.raises(ValueError, match="huge.nrrd"):
        read_volume(ct)
    rc, text, peak_mb = _drr(ct, tmp_path)
    assert rc != 0 and "huge.nrrd" in text, text[-2000:]
    # Refused from the header, not by a failed 6.9 GB allocation (which the children's heap cap turns
    # into "Failed to allocate memory" instead of letting it grow).
    assert "declares 6,912,000,000" in text or "GiB of memory" in text, text[-2000:]
    assert peak_mb < _MAX_RSS_MB, f"drr grew to {peak_mb:.0f} MB before refusing a 1200^3 header"


def test_volume_larger_than_memory_is_refused_with_the_numbers(tmp_path):
    ct = _header_only_nrrd(tmp_path / "enormous.nrrd", 100_000)  # 4e15 bytes: more than any machine
    with pytest.raises(ValueError, match="enormous.nrrd") as info:
        read_volume(ct)
    assert "memory" in str(info.value) and "GiB" in str(info.value), str(info.value)


def test_ct_given_as_labels_is_refused_before_allocating(tmp_path):
    ct = write_volume(_ct(32), tmp_path / "ct.nrrd")  # float HU with ~30 000 distinct values
    rc, text, peak_mb = _drr(ct, tmp_path, "--labels", str(ct), "--view", "A:0:0", "--size", "256")
    assert rc != 0, text[-2000:]
    assert "labels" in text and "distinct" in text, (
        f"message does not say the labels are not a label map:\n{text}"
    )
    assert peak_mb < _MAX_RSS_MB, f"drr grew to {peak_mb:.0f} MB with a CT as --labels"


def test_detector_too_large_for_memory_is_refused(tmp_path):
    ct = write_volume(_ct(16), tmp_path / "ct.nrrd")
    rc, text, peak_mb = _drr(ct, tmp_path, "--view", "A:0:0", "--size", "100000")
    assert rc != 0 and "--size" in text and "GiB" in text, text[-2000:]
    assert peak_mb < _MAX_RSS_MB, f"drr grew to {peak_mb:.0f} MB with --size 100000"


# --------------------------------------------------------------------------------------------------
# 6. Wrong geometry and vector images are refused
# --------------------------------------------------------------------------------------------------


def test_nifti_voxel_size_zero_is_refused(tmp_path):
    path = write_volume(_ct(8), tmp_path / "zero.nii")
    data = bytearray(path.read_bytes())
    data[80:84] = np.float32(0.0).tobytes()  # pixdim[1]: voxel size along I
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="zero.nii") as info:
        vol = read_volume(path)
        pytest.fail(f"voxel size 0 read as spacing {vol.spacing}")
    assert "pixdim" in str(info.value) and "0" in str(info.value), str(info.value)


def test_vector_nifti_is_refused_not_reduced(tmp_path):
    image = sitk.GetImageFromArray(np.ones((6, 7, 8, 4), np.float32), isVector=True)
    path = tmp_path / "vector.nii.gz"
    sitk.WriteImage(image, str(path))
    with pytest.raises(ValueError, match="vector.nii.gz") as info:
        vol = read_volume(path)
        pytest.fail(f"a 4-component image was read as a scalar volume {vol.array.shape}")
    assert "4 components" in str(info.value), str(info.value)


def _xa(path: Path, primary: float, secondary: float) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "XA"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = primary, secondary
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1040.0, 765.0
    ds.ImagerPixelSpacing = [0.278, 0.278]
    ds.Rows, ds.Columns = 512, 512
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("primary", "secondary", "tag"),
    [(720.0, 0.0, "PositionerPrimaryAngle"), (-181.0, 0.0, "PositionerPrimaryAngle"),
     (30.0, 95.0, "PositionerSecondaryAngle")],
)  # fmt: skip
def test_dicom_angles_out_of_range_are_refused(tmp_path, primary, secondary, tag):
    path = _xa(tmp_path / "xa.dcm", primary, secondary)
    with pytest.raises(ValueError, match=tag) as info:
        geometry_from_dicom(path)
    assert "xa.dcm" in str(info.value) and f"{max(primary, secondary, key=abs):g}" in str(info.value)
    assert geometry_from_dicom(_xa(tmp_path / "ok.dcm", -180.0, 90.0)).primary_angle_deg == -180.0


# --------------------------------------------------------------------------------------------------
# 10. Non-finite voxels are named
# --------------------------------------------------------------------------------------------------


def test_non_finite_ct_voxels_are_refused_with_their_count(tmp_path):
    vol = _ct(16)
    vol.array[3, 4, 5] = np.nan
    vol.array[5, 6, 7] = np.inf
    path = write_volume(vol, tmp_path / "nan.nrrd")
    with pytest.raises(ValueError, match="nan.nrrd") as info:
        require_3d(read_volume(path), "inputs.ct")
    assert "2 non-finite" in str(info.value) and "inputs.ct" in str(info.value), str(info.value)
    rc, text, _ = _drr(path, tmp_path, "--view", "A:0:0", "--size", "32")
    assert rc != 0 and "non-finite" in text and "nan.nrrd" in text, text[-2000:]


def test_child_helper_reports_rss(tmp_path):
    """The RSS measurement the size tests rely on sees a real 300 MB allocation."""
    code = "import numpy as np; a = np.ones(300 * 2**20 // 8); print(a.sum())"
    rc, text, peak_mb = _child(["-c", textwrap.dedent(code)], tmp_path)
    assert rc == 0 and peak_mb > 300, (rc, text, peak_mb)


def test_memory_helper_reads_the_machine_and_names_the_parameter():
    from xraycardiac.runtime import available_memory_bytes, require_memory

    avail = available_memory_bytes()
    assert avail is not None and 0 < avail < 2**50, avail
    require_memory(1024, "a tiny buffer", "nothing")  # fits
    with pytest.raises(ValueError, match=r"needs about .* GiB .* available; use a smaller --size"):
        require_memory(2.0**60, "the DRR", "use a smaller --size")
