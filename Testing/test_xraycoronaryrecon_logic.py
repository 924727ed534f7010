"""XRayCoronaryRecon's "Synthetic angiograms" logic on a real ``vtkMRMLScene`` (slicer-core), end to
end through the real ``coronary-synth`` job in a child process.

The reference is the same synthesis run in this process (the job is deterministic: pair (t, k) is a
function of the parameters only), read back with ``read_sample``: the scene must hold exactly its
images, geometry and keypoints. With a label map node (a procedural tree voxelised at 0.5 mm) the
centreline must be ``tree_from_labelmap`` of that map.
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
from coronary_helpers import voxelised_tree
from XRayCardiacCommonLib.jobs import JobCancelled
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    node_from_volume,
    parse_projection_matrix,
    read_attributes,
)
from XRayCoronaryReconLib.synthetic import SyntheticAngiogramsLogic, labelmap_volume

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.coronary.from_labelmap import tree_from_labelmap
from xraycardiac.coronary.synth import SynthConfig, synthesize
from xraycardiac.coronary.synth import dataset as ds
from xraycardiac.geometry import CArmGeometry
from xraycardiac.io import read_volume
from xraycardiac.volume import Volume

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
    status = logic.wait(run, timeout_s=240)
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
    work_dir = run.work_dir
    deadline = time.monotonic() + 120
    try:
        while "pair_" not in logic.poll(run).stage:
            assert not run.status.finished, (run.status.state, run.status.message)
            assert time.monotonic() < deadline, "the job never started a pair"
            time.sleep(0.05)
        logic.cancel(run)
        assert run.status.state == "cancelled", run.status.state
        with pytest.raises(JobCancelled):
            logic.import_results(run)
        assert scene.GetNumberOfNodes() == before
        assert not work_dir.exists(), f"{work_dir} left behind"
    finally:
        logic.cancel(run)
        if work_dir.exists():
            shutil.rmtree(work_dir, ignore_errors=True)


# ------------------------------------------------------------------------------ tree from a label map


@pytest.fixture(scope="module")
def coronary_labels() -> Volume:
    """A procedural tree (seed 3) voxelised at 0.5 mm: left tree 1, right tree 2."""
    return voxelised_tree(SEED)[1]


def _labelmap_node(scene, volume: Volume, name: str = "coronary labels"):
    return node_from_volume(scene, volume, name, node_class="vtkMRMLLabelMapVolumeNode")


@pytest.fixture(scope="module")
def from_labelmap(coronary_labels):
    """(scene, node count before the run, label map node, result) of one run from a label map node."""
    scene = slicer.vtkMRMLScene()
    node = _labelmap_node(scene, coronary_labels)
    before = scene.GetNumberOfNodes()
    result = SyntheticAngiogramsLogic(scene).run(
        seed=SEED, pairs=1, injection="left", image_size=IMAGE_SIZE, device="cpu", timeout_s=240,
        labelmap_node=node, left_label=1, right_label=2,
    )  # fmt: skip
    return scene, before, node, result


def test_a_labelmap_node_gives_the_views_keypoints_and_centreline_of_its_tree(
    from_labelmap, coronary_labels
) -> None:
    scene, before, node, result = from_labelmap
    assert result["skipped"] == [] and len(result["pairs"]) == 1, result
    pair = result["pairs"][0]
    nodes = [pair["view1"], pair["view2"], pair["keypoints1"], pair["keypoints2"], result["centreline"]]
    assert scene.GetNumberOfNodes() == before + 10, scene.GetNumberOfNodes() - before
    assert [n.GetName() for n in nodes] == [
        "Synthetic angio coronary labels pair 0 view 1",
        "Synthetic angio coronary labels pair 0 view 2",
        "Synthetic angio coronary labels pair 0 view 1 keypoints",
        "Synthetic angio coronary labels pair 0 view 2 keypoints",
        "Synthetic angio coronary labels centreline",
    ]
    for n in nodes:
        attrs = read_attributes(n)
        assert attrs["LabelMapNode"] == "coronary labels" and attrs["SourceNode"] == node.GetID(), attrs
        assert attrs["Parameters"]["left_label"] == 1 and attrs["Parameters"]["right_label"] == 2, attrs
    for v in (1, 2):
        image = slicer.util.arrayFromVolume(pair[f"view{v}"])
        assert image.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and image.std() > 0.01, (image.shape, image.std())
        assert pair[f"keypoints{v}"].GetNumberOfControlPoints() > 10
    # the centreline is the tree extracted from the label map, not the procedural one
    expected = tree_from_labelmap(coronary_labels, 1, 2)
    polydata = result["centreline"].GetPolyData()
    points = np.array([polydata.GetPoint(i) for i in range(polydata.GetNumberOfPoints())])
    assert points.shape == expected.points.shape, (points.shape, expected.points.shape)
    assert np.allclose(points, expected.points, atol=1e-4), np.abs(points - expected.points).max()


def test_a_segmentation_is_exported_through_a_temporary_node(coronary_labels) -> None:
    scene = slicer.vtkMRMLScene()
    labels = _labelmap_node(scene, coronary_labels)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "coronary segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    names = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    volume = labelmap_volume(scene, segmentation, 1, 2)
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == names
    # same voxels where the export's grid (cropped around the segments) meets the map's
    assert np.allclose(volume.ijk_to_ras[:3, :3], coronary_labels.ijk_to_ras[:3, :3]), volume.ijk_to_ras
    offset = np.linalg.solve(coronary_labels.ijk_to_ras, volume.ijk_to_ras[:, 3])[:3]
    i0, j0, k0 = np.rint(offset).astype(int)
    assert np.allclose(offset, (i0, j0, k0), atol=1e-6) and min(i0, j0, k0) >= 0, offset
    k, j, i = volume.array.shape
    window = coronary_labels.array[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i]
    assert window.shape == volume.array.shape, (window.shape, volume.array.shape)
    assert np.array_equal(volume.array, window), int((volume.array != window).sum())
    assert int((volume.array > 0).sum()) == int((coronary_labels.array > 0).sum())
    # start writes the exported map as the job's label map input
    logic = SyntheticAngiogramsLogic(scene)
    run = logic.start(pairs=1, image_size=64, device="cpu", labelmap_node=segmentation)
    try:
        written = read_volume(run.work_dir / "inputs" / "labelmap.nrrd")
        assert np.array_equal(written.array, volume.array)
        assert np.allclose(written.ijk_to_ras, volume.ijk_to_ras, atol=1e-6)
        assert run.prefix == "Synthetic angio coronary segmentation", run.prefix
    finally:
        logic.cancel(run)
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == names


def _bad_labelmap_inputs(scene, labels: Volume) -> dict[str, object]:
    empty = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "no image")
    zeros = Volume(np.zeros((6, 7, 8), np.uint8), labels.ijk_to_ras)
    left_only = Volume(np.where(labels.array == 2, 0, labels.array), labels.ijk_to_ras)
    image = Volume(np.full((6, 7, 8), 0.5, np.float32), labels.ijk_to_ras)
    return {
        "model": scene.AddNewNodeByClass("vtkMRMLModelNode", "a model"),
        "no image": empty,
        "zeros": _labelmap_node(scene, zeros, "zeros"),
        "left only": _labelmap_node(scene, left_only, "left only"),
        "image": node_from_volume(scene, image, "image"),
        "no segment": scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no segment"),
    }


@pytest.mark.parametrize(
    ("which", "kwargs", "match"),
    [
        ("model", {}, r"labelmap_node: expected a label map volume node .*got vtkMRMLModelNode 'a model'"),
        ("no image", {}, r"labelmap_node: volume node 'no image' holds no voxels"),
        ("zeros", {}, r"labelmap_node: 'zeros' has no voxel of left_label 1 or right_label 2 \(values present: 0\)"),
        ("left only", {"injection": "right"}, r"labelmap_node: 'left only' has no voxel of right_label 2"),
        ("image", {}, r"labelmap_node: 'image' holds non-integer values"),
        ("no segment", {}, r"labelmap_node: segmentation 'no segment' has no segment"),
        ("zeros", {"left_label": 0}, r"left_label: expected an integer label >= 1"),
        ("zeros", {"injection": "right", "right_label": None}, r"right_label: None, but injection 'right'"),
        ("zeros", {"renderer": "gan"}, r"renderer: expected one of \['physics', 'diffusion'\], got 'gan'"),
        (None, {"renderer": "diffusion", "diffusion_model": "no-such-model"},
         r"renderer_config\.model: model 'no-such-model' is not known"),
    ],
)  # fmt: skip
def test_bad_labelmap_input_names_the_problem_and_leaves_the_scene_alone(
    coronary_labels, which, kwargs, match
) -> None:
    scene = slicer.vtkMRMLScene()
    nodes = _bad_labelmap_inputs(scene, coronary_labels)
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=match):
        SyntheticAngiogramsLogic(scene).start(labelmap_node=nodes.get(which), device="cpu", **kwargs)
    assert scene.GetNumberOfNodes() == before, scene.GetNumberOfNodes() - before
