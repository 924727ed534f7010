"""XRayCoronaryRecon's "Synthetic angiograms" logic on a real ``vtkMRMLScene`` (slicer-core), end to
end through the real ``coronary-synth`` job in a child process.

The reference is the same synthesis run in this process (the job is deterministic: pair (t, k) is a
function of the parameters only), read back with ``read_sample``: the scene must hold exactly its
images, geometry and keypoints.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import slicer  # slicer-core, a test dependency: the real MRML scene
import vtk
from XRayCardiacCommonLib.jobs import JobCancelled
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    parse_projection_matrix,
    read_attributes,
)
from XRayCoronaryReconLib.synthetic import SyntheticAngiogramsLogic

from xraycardiac.coronary import dataset as ds
from xraycardiac.coronary.tree import CoronaryTree
from xraycardiac.geometry import CArmGeometry
from xraycardiac.jobs.coronary_synth import SynthConfig, synthesize

SEED, IMAGE_SIZE = 3, 128


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _control_points(markups) -> tuple[np.ndarray, list[str]]:
    n = markups.GetNumberOfControlPoints()
    points = np.array([markups.GetNthControlPointPositionVector(i) for i in range(n)], dtype=float)
    return points.reshape(n, 3), [markups.GetNthControlPointLabel(i) for i in range(n)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(scene, node count before, result of the job, reference sample, reference tree)."""
    scene = slicer.vtkMRMLScene()
    before = scene.GetNumberOfNodes()
    result = SyntheticAngiogramsLogic(scene).run(
        seed=SEED, pairs=1, injection="left", image_size=IMAGE_SIZE, device="cpu", timeout_s=240
    )
    root = tmp_path_factory.mktemp("reference") / "dataset"
    config = SynthConfig(
        trees=1, pairs_per_tree=1, seed=SEED, injection="left", image_size=IMAGE_SIZE, device="cpu"
    )
    synthesize(config, root)
    sample = ds.read_sample(ds.sample_path(root, 0, 0), load_thickness=False)
    tree = CoronaryTree.load_json(ds.tree_dir(root, 0) / "tree.json")
    return scene, before, result, sample, tree


def test_nodes_are_added_with_names_and_provenance(synthetic) -> None:
    scene, before, result, _, _ = synthetic
    assert result["skipped"] == [], result["skipped"]
    assert len(result["pairs"]) == 1, result
    pair = result["pairs"][0]
    nodes = [pair["view1"], pair["view2"], pair["keypoints1"], pair["keypoints2"], result["centreline"]]
    for node in nodes:
        assert scene.GetNodeByID(node.GetID()) is node, node.GetName()
        attrs = read_attributes(node)
        assert attrs["Pipeline"] == "coronary-synth" and attrs["Seed"] == SEED, attrs
        assert attrs["Device"] == "cpu" and attrs["PackageVersion"], attrs
        assert attrs["Parameters"]["injection"] == "left", attrs["Parameters"]
    assert [n.GetName() for n in nodes] == [
        f"Synthetic angio seed {SEED} pair 0 view 1",
        f"Synthetic angio seed {SEED} pair 0 view 2",
        f"Synthetic angio seed {SEED} pair 0 view 1 keypoints",
        f"Synthetic angio seed {SEED} pair 0 view 2 keypoints",
        f"Synthetic angio seed {SEED} centreline",
    ]
    assert pair["view1"].IsA("vtkMRMLScalarVolumeNode") and pair["keypoints1"].IsA(
        "vtkMRMLMarkupsFiducialNode"
    )
    assert result["centreline"].IsA("vtkMRMLModelNode")
    # five data nodes, each with one display node
    assert scene.GetNumberOfNodes() == before + 10, scene.GetNumberOfNodes() - before


def test_images_lie_on_their_detector_planes(synthetic) -> None:
    _, _, result, sample, _ = synthetic
    for v in (1, 2):
        node = result["pairs"][0][f"view{v}"]
        geometry = CArmGeometry.from_dict(sample["geometry"][f"view{v}"])
        image = slicer.util.arrayFromVolume(node)
        assert image.shape == (1, IMAGE_SIZE, IMAGE_SIZE), image.shape
        assert image.dtype == np.float32, image.dtype
        assert np.array_equal(image[0], sample[f"image{v}"]), np.abs(image[0] - sample[f"image{v}"]).max()
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.01, (image.min(), image.max())
        assert np.allclose(_matrix(node), geometry.detector_ijk_to_ras(), rtol=0, atol=1e-9), _matrix(node)
        sc, sr = node.GetSpacing()[:2]
        assert np.allclose((sr, sc), geometry.pixel_spacing_mm), (
            node.GetSpacing(),
            geometry.pixel_spacing_mm,
        )
        p = parse_projection_matrix(node.GetAttribute(PROJECTION_MATRIX_ATTRIBUTE))
        assert np.allclose(p, geometry.projection_matrix(), rtol=0, atol=1e-9), p
        assert json.loads(node.GetAttribute(GEOMETRY_ATTRIBUTE)) == sample["geometry"][f"view{v}"]
        # each pixel's RAS position projects onto itself
        ijk = np.array([[0, 0, 0, 1], [IMAGE_SIZE - 1, 5, 0, 1], [40, 90, 0, 1]], dtype=float)
        uv = geometry.project((ijk @ _matrix(node).T)[:, :3])
        assert np.allclose(uv, ijk[:, :2], atol=1e-6), uv


def test_keypoints_overlay_the_images_and_project_to_their_pixels(synthetic) -> None:
    _, _, result, sample, _ = synthetic
    kp = sample["keypoints"]
    for v in (1, 2):
        markups = result["pairs"][0][f"keypoints{v}"]
        geometry = CArmGeometry.from_dict(sample["geometry"][f"view{v}"])
        points, labels = _control_points(markups)
        indices = np.flatnonzero(kp[f"in_field{v}"])
        assert len(indices) > 10, len(indices)
        assert labels == [str(i) for i in indices], labels[:10]
        error = np.abs(geometry.project(points) - kp[f"uv{v}"][indices]).max()
        assert error < 1e-4, f"view {v}: control points project {error} px from their keypoints"
        # on the detector plane: in the image's IJK frame they have K = 0 and IJ = their pixel
        ijk = np.c_[points, np.ones(len(points))] @ np.linalg.inv(_matrix(result["pairs"][0][f"view{v}"])).T
        assert np.abs(ijk[:, 2]).max() < 1e-6, np.abs(ijk[:, 2]).max()
        assert np.abs(ijk[:, :2] - kp[f"uv{v}"][indices]).max() < 1e-4, np.abs(
            ijk[:, :2] - kp[f"uv{v}"][indices]
        ).max()
        assert markups.GetLocked(), "ground-truth keypoints should be locked"
    # a ground-truth match (i, j) pairs the same keypoint index in both lists
    labels1 = _control_points(result["pairs"][0]["keypoints1"])[1]
    labels2 = _control_points(result["pairs"][0]["keypoints2"])[1]
    assert len(kp["matches"]) > 0
    for i, j in kp["matches"]:
        assert labels1[i] == labels2[j], (i, j, labels1[i], labels2[j])


def test_centreline_model_is_the_tree(synthetic) -> None:
    _, _, result, _, tree = synthetic
    polydata = result["centreline"].GetPolyData()
    assert polydata.GetNumberOfPoints() == tree.num_points, (polydata.GetNumberOfPoints(), tree.num_points)
    points = np.array([polydata.GetPoint(i) for i in range(polydata.GetNumberOfPoints())])
    assert np.allclose(points, tree.points, atol=1e-4), np.abs(points - tree.points).max()
    assert polydata.GetPointData().GetArray("Radius") is not None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"pairs": 0}, "pairs"),
        ({"pairs": 11}, "pairs"),
        ({"injection": "both"}, "injection"),
        ({"seed": -1}, "seed"),
        ({"image_size": 16}, "image_size"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_bad_input_names_the_parameter_and_leaves_the_scene_alone(kwargs, name) -> None:
    scene = slicer.vtkMRMLScene()
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=name) as info:
        SyntheticAngiogramsLogic(scene).start(**kwargs)
    assert str(next(iter(kwargs.values()))) in str(info.value), info.value
    assert scene.GetNumberOfNodes() == before


def test_a_broken_output_adds_no_node() -> None:
    scene = slicer.vtkMRMLScene()
    before = scene.GetNumberOfNodes()
    logic = SyntheticAngiogramsLogic(scene)
    run = logic.start(seed=SEED, pairs=1, image_size=64, device="cpu")
    status = run.job.wait(timeout_s=240)
    assert status.state == "done", (status.state, status.message)
    (ds.sample_path(status.output_dir, 0, 0) / "view2.png").unlink()
    with pytest.raises(FileNotFoundError, match="view2.png"):
        logic.import_results(run)
    assert scene.GetNumberOfNodes() == before, scene.GetNumberOfNodes() - before
    assert not Path(status.output_dir).exists(), "the job's files were left behind"


def test_cancel_mid_run_adds_no_node() -> None:
    scene = slicer.vtkMRMLScene()
    before = scene.GetNumberOfNodes()
    logic = SyntheticAngiogramsLogic(scene)
    run = logic.start(seed=SEED, pairs=10, image_size=512, device="cpu")
    work_dir = run.job.work_dir
    deadline = time.monotonic() + 120
    try:
        while "pair_" not in run.poll().stage:
            assert not run.job.status.finished, (run.job.status.state, run.job.status.message)
            assert time.monotonic() < deadline, "the job never started a pair"
            time.sleep(0.05)
        logic.cancel(run)
        assert run.job.status.state == "cancelled", run.job.status.state
        with pytest.raises(JobCancelled):
            logic.import_results(run)
        assert scene.GetNumberOfNodes() == before
        assert not work_dir.exists(), f"{work_dir} left behind"
    finally:
        run.job.cleanup()
        if work_dir.exists():
            shutil.rmtree(work_dir, ignore_errors=True)
