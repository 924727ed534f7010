"""Slicer-side logic on a real ``vtkMRMLScene`` (slicer-core): the shared MRML/job helpers of
``XRayCardiacCommonLib`` and XRayToCT's "Simulate radiographs", end to end through the real child
process on the real chest CT.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import slicer  # slicer-core, a test dependency: the real MRML scene
import vtk
from XRayCardiacCommonLib.jobs import JobCancelled, JobError, JobLogic
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    export_node,
    format_projection_matrix,
    node_from_volume,
    parse_projection_matrix,
    read_attributes,
    set_provenance,
    volume_from_node,
)
from XRayToCTLib import choices
from XRayToCTLib.simulate import SimulateRadiographsLogic, build_views, custom_view_name

import xraycardiac
from xraycardiac.geometry import CArmGeometry
from xraycardiac.io import read_volume
from xraycardiac.volume import Volume


def _oblique_volume(dtype: type = np.int16) -> Volume:
    """A 3 x 4 x 5 volume with rotated, anisotropic, left-handed axes and distinct voxel values."""
    a = np.deg2rad(30.0)
    directions = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, -1.0]])
    array = (np.arange(60).reshape(3, 4, 5) - 20).astype(dtype)
    return Volume.from_geometry(array, (0.5, 0.75, 2.5), (10.0, -20.0, 35.0), directions)


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


# ------------------------------------------------------------------------------------------ mrml_io


def test_volume_round_trip_keeps_voxels_and_oblique_geometry() -> None:
    scene = slicer.vtkMRMLScene()
    volume = _oblique_volume()
    node = node_from_volume(scene, volume, "oblique")
    assert node.GetName() == "oblique"
    assert np.allclose(_matrix(node), volume.ijk_to_ras, atol=1e-12), _matrix(node)
    assert node.GetDisplayNode() is not None
    back = volume_from_node(node)
    assert back.array.dtype == np.int16, back.array.dtype
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-12), back.ijk_to_ras
    back.array[0, 0, 0] = 999  # a copy: the node keeps its voxels
    assert slicer.util.arrayFromVolume(node)[0, 0, 0] == -20


def test_volume_from_node_applies_linear_parent_transform() -> None:
    scene = slicer.vtkMRMLScene()
    node = node_from_volume(scene, _oblique_volume(), "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 12.0)
    shift.SetElement(2, 3, -3.0)
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = volume_from_node(node).ijk_to_ras
    expected = _oblique_volume().ijk_to_ras.copy()
    expected[:3, 3] += (12.0, 0.0, -3.0)
    assert np.allclose(world, expected), world


def test_storable_dtypes() -> None:
    scene = slicer.vtkMRMLScene()
    big = node_from_volume(scene, _oblique_volume(np.int64), "int64")
    assert slicer.util.arrayFromVolume(big).dtype == np.int32
    mask = Volume(np.zeros((2, 3, 4), dtype=bool), np.eye(4))
    mask.array[1, 2, 3] = True
    node = node_from_volume(scene, mask, "mask", node_class="vtkMRMLLabelMapVolumeNode")
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    stored = slicer.util.arrayFromVolume(node)
    assert stored.dtype == np.uint8 and int(stored.sum()) == 1, (stored.dtype, stored.sum())


def test_bad_inputs_name_the_parameter_and_leave_the_scene_alone() -> None:
    scene = slicer.vtkMRMLScene()
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="node_class"):
        node_from_volume(scene, _oblique_volume(), "x", node_class="vtkMRMLModelNode")
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(ValueError, match="my_input"):
        volume_from_node(None, "my_input")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no voxels"):
        volume_from_node(empty)
    with pytest.raises(ValueError, match="scalar volume"):
        volume_from_node(scene.AddNewNodeByClass("vtkMRMLModelNode"))


def test_attributes_and_provenance() -> None:
    scene = slicer.vtkMRMLScene()
    node = node_from_volume(
        scene, _oblique_volume(), "p", attributes={"Other.Key": "text", "XRayCardiac.N": 3}
    )
    set_provenance(node, {"Pipeline": "drr", "Seed": 7, "Parameters": {"views": ["PA"], "step_mm": 0.5}})
    assert node.GetAttribute("Other.Key") == "text"
    assert node.GetAttribute("XRayCardiac.PackageVersion") == xraycardiac.__version__
    assert node.GetAttribute("XRayCardiac.Pipeline") == "drr"
    attrs = read_attributes(node)
    assert attrs["Parameters"] == {"views": ["PA"], "step_mm": 0.5}, attrs
    assert attrs["Seed"] == 7 and attrs["N"] == 3, attrs
    assert "Other.Key" not in attrs
    with pytest.raises(ValueError, match="without spaces"):
        set_provenance(node, {"bad key": 1})
    set_provenance(node, {"Seed": None})
    assert node.GetAttribute("XRayCardiac.Seed") is None


def test_projection_matrix_text_round_trip() -> None:
    p = CArmGeometry(primary_angle_deg=33.3, secondary_angle_deg=-12.1).projection_matrix()
    text = format_projection_matrix(p)
    assert len(text.split(",")) == 12
    assert np.array_equal(parse_projection_matrix(text), p)  # full precision, row-major
    with pytest.raises(ValueError, match="XRayCardiac.ProjectionMatrix"):
        parse_projection_matrix(",".join(["1"] * 11))
    with pytest.raises(ValueError, match="missing"):
        parse_projection_matrix(None)


def test_export_node_writes_world_geometry(tmp_path: Path) -> None:
    scene = slicer.vtkMRMLScene()
    volume = _oblique_volume()
    path = export_node(node_from_volume(scene, volume, "e"), tmp_path / "e.nrrd")
    back = read_volume(path)
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-6), back.ijk_to_ras


# --------------------------------------------------------------------------------------------- jobs


def test_job_handle_reports_progress_and_summary() -> None:
    updates = []
    logic = JobLogic(None)
    job = logic.start_job("selftest", {"n_files": 3, "delay_s": 0.01})
    work = job.work_dir
    try:
        status = logic.wait(job, timeout_s=60, on_update=lambda s: updates.append(s.progress))
        assert status.state == "done", (status.state, status.message)
        assert status.summary["n_files"] == 3, status.summary
        assert sorted(p.name for p in Path(status.output_dir).glob("file_*.txt")) == [
            "file_000.txt",
            "file_001.txt",
            "file_002.txt",
        ]
        assert updates == sorted(updates) and updates[-1] == 1.0, updates
    finally:
        logic.cancel(job)
    assert not work.exists(), f"{work} left behind"


def test_job_handle_failure_is_readable() -> None:
    logic = JobLogic(None)
    job = logic.start_job("selftest", {"n_files": 3, "delay_s": 0.0, "fail_at": 1})
    try:
        status = logic.wait(job, timeout_s=60)
        assert status.state == "error"
        assert status.message.startswith("The selftest job failed: RuntimeError"), status.message
        assert not Path(job.output_dir).exists()
        with pytest.raises(JobError, match="RuntimeError"):
            logic.result(job)
    finally:
        logic.cancel(job)


# ------------------------------------------------------------------------------------ XRayToCT views


def test_choices_match_the_core_presets() -> None:
    preset = CArmGeometry.preset("pa")
    assert (choices.DEFAULT_SID_MM, choices.DEFAULT_SOD_MM) == (preset.sid_mm, preset.sod_mm)
    assert (choices.DEFAULT_DETECTOR_ROWS, choices.DEFAULT_DETECTOR_COLS) == (
        preset.detector_rows,
        preset.detector_cols,
    )
    assert (choices.DEFAULT_PIXEL_SPACING_MM,) * 2 == preset.pixel_spacing_mm


def test_build_views() -> None:
    views = build_views("PA + lateral", detector_rows=64, detector_cols=80, pixel_spacing_mm=1.5)
    assert [(v["name"], v["preset"]) for v in views] == [("PA", "pa"), ("Lateral", "lateral")]
    assert views[0]["pixel_spacing_mm"] == [1.5, 1.5] and views[0]["detector_cols"] == 80
    (custom,) = build_views("Custom", primary_angle_deg=-30, secondary_angle_deg=20, sid_mm=1100, sod_mm=700)
    assert custom["name"] == "RAO30_CRA20" and custom["isocenter_ras_mm"] is None, custom
    assert custom_view_name(45.5, -10) == "LAO45.5_CAU10" and custom_view_name(0, 0) == "AP"
    with pytest.raises(ValueError, match="pose"):
        build_views("AP")
    with pytest.raises(ValueError, match="sod_mm"):
        build_views("Custom", sid_mm=500, sod_mm=600)
    with pytest.raises(ValueError, match="detector_rows"):
        build_views("PA", detector_rows=0)


# ---------------------------------------------------------------------------- XRayToCT end to end


@pytest.fixture(scope="module")
def chest_scene():
    """A scene holding the real chest CT at 4 mm as a scalar volume node."""
    from xraycardiac.data.fixtures import load_real_ct

    ct, _, _ = load_real_ct(downsample_mm=4.0)
    scene = slicer.vtkMRMLScene()
    node = node_from_volume(scene, ct, "chest")
    return scene, node


def test_simulate_pa_lateral_end_to_end(chest_scene) -> None:
    scene, ct_node = chest_scene
    before = scene.GetNumberOfNodes()
    views = build_views("PA + lateral", detector_rows=128, detector_cols=128, pixel_spacing_mm=3.5)
    nodes = SimulateRadiographsLogic(scene).run(ct_node, views, device="cpu", timeout_s=240)
    try:
        assert [n.GetName() for n in nodes] == ["chest DRR PA", "chest DRR Lateral"]
        for node, view in zip(nodes, views, strict=True):
            assert scene.GetNodeByID(node.GetID()) is node
            image = slicer.util.arrayFromVolume(node)
            assert image.shape == (1, 128, 128), image.shape
            assert float(image.std()) > 0.1, f"{node.GetName()}: blank image, std {image.std()}"
            assert np.allclose(node.GetSpacing()[:2], (3.5, 3.5)), node.GetSpacing()
            p = parse_projection_matrix(node.GetAttribute(PROJECTION_MATRIX_ATTRIBUTE))
            geometry = json.loads(node.GetAttribute(GEOMETRY_ATTRIBUTE))
            assert np.allclose(p, np.asarray(geometry["projection_matrix"]), rtol=0, atol=1e-9), p
            assert geometry["detector_rows"] == 128 and geometry["pixel_spacing_mm"] == [3.5, 3.5], geometry
            # The image lies on the detector plane: each pixel's RAS position projects onto itself.
            ijk = np.array([[0, 0, 0, 1], [127, 0, 0, 1], [40, 90, 0, 1], [127, 127, 0, 1]], dtype=float)
            ras = ijk @ _matrix(node).T
            uvw = ras @ p.T
            assert np.allclose(uvw[:, :2] / uvw[:, 2:], ijk[:, :2], atol=1e-6), uvw[:, :2] / uvw[:, 2:]
            # The isocentre is the CT centre: it projects to the image centre.
            centre = volume_from_node(ct_node).center_ras()
            h = p @ np.append(centre, 1.0)
            assert np.allclose(h[:2] / h[2], (63.5, 63.5), atol=1e-6), h[:2] / h[2]
            attrs = read_attributes(node)
            assert attrs["Pipeline"] == "drr" and attrs["Device"] == "cpu", attrs
            assert attrs["Parameters"]["view"]["name"] == view["name"], attrs["Parameters"]
            assert attrs["SourceNode"] == ct_node.GetID()
        # PA and lateral see the chest from perpendicular directions: the images differ.
        pa, lat = (slicer.util.arrayFromVolume(n)[0] for n in nodes)
        assert np.abs(pa - lat).mean() > 0.1 * pa.mean(), (np.abs(pa - lat).mean(), pa.mean())
        assert scene.GetNumberOfNodes() == before + 4  # two volumes and their display nodes
    finally:
        for node in nodes:
            scene.RemoveNode(node.GetDisplayNode())
            scene.RemoveNode(node)


def test_simulate_rejects_a_2d_image_as_ct(chest_scene) -> None:
    scene, _ = chest_scene
    image = node_from_volume(scene, Volume(np.ones((1, 32, 32), dtype=np.float32), np.eye(4)), "radiograph")
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="ct_node") as info:
        SimulateRadiographsLogic(scene).start(image, build_views("PA"))
    assert "2D image" in str(info.value), info.value
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(ValueError, match="device"):
        SimulateRadiographsLogic(scene).start(chest_scene[1], build_views("PA"), device="gpu")
    with pytest.raises(ValueError, match="views"):
        SimulateRadiographsLogic(scene).start(chest_scene[1], build_views("PA") * 2)
    assert scene.GetNumberOfNodes() == before


def test_cancel_mid_run_adds_no_node(chest_scene) -> None:
    scene, ct_node = chest_scene
    before = scene.GetNumberOfNodes()
    logic = SimulateRadiographsLogic(scene)
    # A large detector with a fine step keeps the job rendering long enough to be caught mid-run.
    views = build_views("PA + lateral", detector_rows=1024, detector_cols=1024, pixel_spacing_mm=0.45)
    run = logic.start(ct_node, views, device="cpu", step_mm=0.5)
    work_dir = run.work_dir
    deadline = time.monotonic() + 120
    while not logic.poll(run).stage.startswith("rendering"):
        assert not run.status.finished, (run.status.state, run.status.message)
        assert time.monotonic() < deadline, "the job never started rendering"
        time.sleep(0.05)
    logic.cancel(run)
    assert run.status.state == "cancelled", run.status.state
    with pytest.raises(JobCancelled):
        logic.import_results(run)
    assert scene.GetNumberOfNodes() == before
    assert not work_dir.exists(), f"{work_dir} left behind"
