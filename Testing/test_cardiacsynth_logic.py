"""CardiacSynth's logic on a real ``vtkMRMLScene`` (slicer-core), end to end through the real
``cardiac-synth`` job in a child process.

The reference of the phantom run is the template the job uses (``template_from_phantom`` of the same
seed, rebuilt here) and the dataset it exported: the scene must hold exactly the exported voxels, on
the template's grid, with segments whose names, colours and voxels follow the label table. A
segmentation template (a 40^3 phantom at 4 mm, with renamed and reordered segments) must be exported
onto the CT's grid with the values its segment NAMES give, through a temporary node that is removed.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import slicer  # slicer-core, a test dependency: the real MRML scene
import vtk
from CardiacSynthLib.synthesize import (  # the module folder is on sys.path (conftest.py)
    CardiacSynthLogic,
    _image_volume,
    _segmentation_labels,
    export_dataset,
)
from XRayCardiacCommonLib.jobs import JobCancelled, JobError  # noqa: E402
from XRayCardiacCommonLib.mrml_io import node_from_volume, read_attributes  # noqa: E402

from xraycardiac.cardiac.labels import LABEL_TABLE, label_by_name, label_info  # noqa: E402
from xraycardiac.cardiac.templates import template_from_phantom  # noqa: E402
from xraycardiac.io import read_volume  # noqa: E402
from xraycardiac.phantoms.cardiac import CardiacPhantomConfig  # noqa: E402
from xraycardiac.volume import Volume  # noqa: E402

TIMEOUT_S = 240
SMALL = CardiacPhantomConfig(seed=1, shape_ijk=(40, 40, 40), spacing_mm=4.0)


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _names(scene) -> list[str]:
    return [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())]


def _segments(node) -> list[tuple[str, tuple[float, float, float], int]]:
    """(name, colour, label value) of each segment."""
    s = node.GetSegmentation()
    out = []
    for i in range(s.GetNumberOfSegments()):
        segment = s.GetNthSegment(i)
        out.append((segment.GetName(), tuple(segment.GetColor()), segment.GetLabelValue()))
    return out


def _segment_voxels(scene, segmentation, reference, value_of_name) -> np.ndarray:
    """The segmentation on ``reference``'s grid, each segment's voxels set to ``value_of_name(name)``."""
    before = scene.GetNumberOfNodes()
    s = segmentation.GetSegmentation()
    ids = vtk.vtkStringArray()
    names = []
    for i in range(s.GetNumberOfSegments()):
        ids.InsertNextValue(s.GetNthSegmentID(i))
        names.append(s.GetNthSegment(i).GetName())
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "test export")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, ids, labelmap, reference
    )
    exported = np.array(slicer.util.arrayFromVolume(labelmap), copy=True)
    out = np.zeros(exported.shape, dtype=np.uint8)
    for index, name in enumerate(names, start=1):
        out[exported == index] = value_of_name(name)
    while scene.GetNumberOfNodes() > before:
        scene.RemoveNode(scene.GetNthNode(scene.GetNumberOfNodes() - 1))
    return out


@functools.cache
def _small_template():
    return template_from_phantom(SMALL)


def _small_template_nodes(scene, segment_names: dict[int, str] | None = None):
    """(CT node, label map node, segmentation node, template) of the 40^3 phantom; segments renamed
    (``segment_names``, else the table keys) and in reverse order."""
    template = _small_template()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # as in Slicer, where it always exists
    image = node_from_volume(scene, template.image, "small CT")
    labelmap = node_from_volume(
        scene, template.labels, "small labels", node_class="vtkMRMLLabelMapVolumeNode"
    )
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "small segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    s = segmentation.GetSegmentation()
    names = segment_names or {}
    for i in range(s.GetNumberOfSegments()):
        segment = s.GetNthSegment(i)
        segment.SetName(names.get(segment.GetLabelValue(), label_info(segment.GetLabelValue()).key))
    # reverse the segment order: the values must come from the names, not from the order
    for i, segment_id in enumerate(reversed([s.GetNthSegmentID(k) for k in range(s.GetNumberOfSegments())])):
        s.SetSegmentIndex(segment_id, i)
    return image, labelmap, segmentation, template


# --------------------------------------------------------------------------------- phantom template


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """(scene, node count before, result, reference template, export folder, seconds)."""
    scene = slicer.vtkMRMLScene()
    before = scene.GetNumberOfNodes()
    export = tmp_path_factory.mktemp("export") / "dataset"
    t0 = time.perf_counter()
    result = CardiacSynthLogic(scene).run(n=2, seed=5, device="cpu", export_dir=export, timeout_s=TIMEOUT_S)
    seconds = time.perf_counter() - t0
    return scene, before, result, template_from_phantom(CardiacPhantomConfig(seed=0)), export, seconds


def test_phantom_cases_are_added_with_names_and_provenance(phantom) -> None:
    scene, before, result, _, export, seconds = phantom
    print(f"phantom template, 2 cases: {seconds:.1f} s")
    assert [c["name"] for c in result["cases"]] == ["case_00000", "case_00001"], result["cases"]
    for i, case in enumerate(result["cases"]):
        assert [case[k].GetName() for k in ("image", "labels", "confidence")] == [
            f"CardiacSynth case {i} image",
            f"CardiacSynth case {i} labels",
            f"CardiacSynth case {i} confidence",
        ]
        assert case["image"].IsA("vtkMRMLScalarVolumeNode") and not case["image"].IsA(
            "vtkMRMLLabelMapVolumeNode"
        )
        assert case["labels"].IsA("vtkMRMLSegmentationNode")
        for key in ("image", "labels", "confidence"):
            node = case[key]
            assert scene.GetNodeByID(node.GetID()) is node, node.GetName()
            attrs = read_attributes(node)
            assert attrs["Pipeline"] == "cardiac-synth" and attrs["Seed"] == 5, attrs
            assert attrs["Device"] == "cpu" and attrs["PackageVersion"] and attrs["Renderer"] == "warp", attrs
            assert attrs["Case"] == case["name"] and isinstance(attrs["CaseSeed"], int), attrs
            assert attrs["Template"] == "phantom_seed0" and attrs["Parameters"]["n"] == 2, attrs
            assert attrs["ExportDir"] == str(export), attrs
    # per case: 3 data nodes with one display node each; plus the subject hierarchy node
    assert scene.GetNumberOfNodes() == before + 2 * 6 + 1, _names(scene)
    assert not [n for n in _names(scene) if "temporary" in n], _names(scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemName(result["folder"]) == "CardiacSynth phantom_seed0 seed 5"
    children = vtk.vtkIdList()
    sh.GetItemChildren(result["folder"], children)
    in_folder = {sh.GetItemDataNode(children.GetId(k)).GetID() for k in range(children.GetNumberOfIds())}
    assert in_folder == {c[k].GetID() for c in result["cases"] for k in ("image", "labels", "confidence")}


def test_phantom_cases_lie_on_the_template_grid_with_the_exported_voxels(phantom) -> None:
    scene, _, result, template, export, _ = phantom
    datalist = json.loads((export / "datalist.json").read_text())["training"]
    assert len(datalist) == 2, datalist
    for case, files in zip(result["cases"], datalist, strict=True):
        image = slicer.util.arrayFromVolume(case["image"])
        assert image.shape == template.image.array.shape == (64, 64, 64), image.shape
        assert image.dtype == np.float32, image.dtype
        error = np.abs(_matrix(case["image"]) - template.image.ijk_to_ras).max()
        assert error < 1e-3, f"image IJK-to-RAS differs from the template's by {error} mm"
        assert np.allclose(_matrix(case["confidence"]), _matrix(case["image"]), rtol=0, atol=1e-9)
        reference = read_volume(export / files["image"]).array
        assert np.array_equal(image, reference), np.abs(image - reference).max()
        # warp: the template CT deformed, so in the template's HU range but not the template itself
        assert np.abs(image - template.image.array).mean() > 1.0, "the case is the undeformed template"
        assert template.image.array.min() - 1 <= image.min() and image.max() <= template.image.array.max() + 1

        confidence = slicer.util.arrayFromVolume(case["confidence"])
        assert confidence.shape == image.shape and confidence.min() >= 0.0 and confidence.max() <= 1.0
        assert np.all(confidence == 1.0), "warp renderer: confidence must be 1 everywhere"
        display = case["confidence"].GetDisplayNode()
        assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5), (
            display.GetWindow(),
            display.GetLevel(),
        )

        labels = read_volume(export / files["label"]).array
        segments = _segments(case["labels"])
        values = sorted(int(v) for v in np.unique(labels) if v)
        assert [s[2] for s in segments] == values, (segments, values)
        for name, color, value in segments:
            entry = label_info(value)
            assert name == entry.name, (name, value)
            assert np.allclose(color, np.array(entry.color_rgb) / 255.0), (name, color, entry.color_rgb)
        voxels = _segment_voxels(scene, case["labels"], case["image"], lambda n: label_by_name(n).value)
        assert np.array_equal(voxels, labels), f"{np.count_nonzero(voxels != labels)} voxels differ"
        dice = (
            2
            * np.sum((labels > 0) & (template.labels.array > 0))
            / (np.sum(labels > 0) + np.sum(template.labels.array > 0))
        )
        assert 0.8 < dice < 1.0, f"heart Dice case vs template {dice:.3f}: not a small deformation"


def test_export_holds_the_dataset_and_nothing_partial(phantom) -> None:
    _, _, _, _, export, _ = phantom
    for name in (
        "datalist.json",
        "dataset.json",
        "synth.json",
        "template_image.nrrd",
        "template_labels.nrrd",
    ):
        assert (export / name).is_file(), sorted(p.name for p in export.iterdir())
    for sub in ("imagesTr", "labelsTr", "confidenceTr", "cases"):
        assert len(list((export / sub).iterdir())) == 2, sub
    assert json.loads((export / "dataset.json").read_text())["numTraining"] == 2
    assert [p.name for p in export.parent.iterdir()] == ["dataset"], list(export.parent.iterdir())


def test_export_refuses_a_folder_that_is_not_empty(tmp_path) -> None:
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "a.json").write_text("{}")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(ValueError, match=r"export_dir: .*full is a folder that is not empty"):
        export_dataset(tmp_path / "source", tmp_path / "full")
    (tmp_path / "empty").mkdir()
    assert export_dataset(tmp_path / "source", tmp_path / "empty") == tmp_path / "empty"
    assert (tmp_path / "empty" / "a.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full", "source"]


def test_nnunet_export_makes_the_dataset_folder_nnunet_finds(tmp_path) -> None:
    """The panel's nnU-Net export, as the CLI's --nnunet-raw/--dataset-id/--dataset-name: the dataset lands
    in nnUNet_raw/Dataset<ID>_<NAME> beside the datasets already there; an ID in use is refused at once."""
    from CardiacSynthLib import DEFAULT_DATASET_ID, DEFAULT_DATASET_NAME

    from xraycardiac.cardiac import synth

    assert (DEFAULT_DATASET_ID, DEFAULT_DATASET_NAME) == (
        synth.DEFAULT_DATASET_ID,
        synth.DEFAULT_DATASET_NAME,
    )
    raw = tmp_path / "nnUNet_raw"
    (raw / "Dataset001_Other").mkdir(parents=True)
    scene = slicer.vtkMRMLScene()
    with pytest.raises(ValueError, match=r"dataset_id: .*Dataset001_Other"):
        CardiacSynthLogic(scene).start(n=1, device="cpu", export_dir=raw, nnunet_dataset_id=1)
    with pytest.raises(ValueError, match=r"dataset_name: expected letters"):
        CardiacSynthLogic(scene).start(
            n=1, device="cpu", export_dir=raw, nnunet_dataset_id=7, nnunet_dataset_name="a b"
        )
    result = CardiacSynthLogic(scene).run(
        n=1,
        seed=2,
        device="cpu",
        export_dir=raw,
        nnunet_dataset_id=7,
        nnunet_dataset_name="Heart",
        timeout_s=TIMEOUT_S,
    )
    target = raw / "Dataset007_Heart"
    assert result["export_dir"] == str(target)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset001_Other", "Dataset007_Heart"]
    dataset = json.loads((target / "dataset.json").read_text())
    assert (
        dataset["numTraining"] == 1
        and (target / dataset["file_ending"].join(["imagesTr/case_00000_0000", ""])).is_file()
    )


# ---------------------------------------------------------------------------- segmentation template


def test_segmentation_is_mapped_by_segment_name_through_a_temporary_node() -> None:
    scene = slicer.vtkMRMLScene()
    image_node, _, segmentation, template = _small_template_nodes(
        scene, {1: "LV blood pool", 6: "Aorta", 8: "LCA"}
    )
    before = _names(scene)
    labels, names = _segmentation_labels(scene, segmentation, _image_volume(image_node), image_node, None)
    assert _names(scene) == before, "the temporary label map (or its colour table) was left in the scene"
    assert np.array_equal(labels.array, template.labels.array), np.count_nonzero(
        labels.array != template.labels.array
    )
    assert np.allclose(labels.ijk_to_ras, template.image.ijk_to_ras)
    assert names[1] == "LV blood pool" and names[6] == "Aorta" and names[8] == "LCA" and names[2] == "rv", (
        names
    )


def test_segmentation_template_end_to_end() -> None:
    scene = slicer.vtkMRMLScene()
    image_node, _, segmentation, template = _small_template_nodes(scene, {5: "Myo"})
    before = scene.GetNumberOfNodes()
    t0 = time.perf_counter()
    result = CardiacSynthLogic(scene).run(
        image_node, segmentation, n=1, seed=2, strength_mm=3.0, device="cpu", timeout_s=TIMEOUT_S
    )
    print(f"segmentation template 40^3, 1 case: {time.perf_counter() - t0:.1f} s")
    assert scene.GetNumberOfNodes() == before + 6, _names(scene)[before:]
    case = result["cases"][0]
    assert slicer.util.arrayFromVolume(case["image"]).shape == (40, 40, 40)
    assert np.abs(_matrix(case["image"]) - template.image.ijk_to_ras).max() < 1e-3
    names = {value: name for name, _, value in _segments(case["labels"])}
    assert names[5] == "Myo" and names[1] == "lv" and names[9] == "rca", names
    attrs = read_attributes(case["labels"])
    assert attrs["TemplateVolumeNode"] == "small CT" and attrs["TemplateLabelsNode"] == "small segmentation"
    assert attrs["SourceNode"] == image_node.GetID() and attrs["Template"] == "small CT", attrs
    assert "ExportDir" not in attrs and result["export_dir"] is None


# ------------------------------------------------------------------------------------- bad inputs


@pytest.fixture
def bad_inputs():
    """A scene holding the small template and nodes that are wrong in one way each."""
    scene = slicer.vtkMRMLScene()
    image, labelmap, segmentation, template = _small_template_nodes(scene)
    shifted = template.labels.ijk_to_ras.copy()
    shifted[:3, 3] += 2.0
    nodes = {
        "image": image,
        "labelmap": labelmap,
        "segmentation": segmentation,
        "shifted": node_from_volume(
            scene,
            Volume(template.labels.array, shifted),
            "shifted labels",
            node_class="vtkMRMLLabelMapVolumeNode",
        ),
        "empty": node_from_volume(
            scene,
            Volume(np.zeros_like(template.labels.array), template.labels.ijk_to_ras),
            "empty labels",
            node_class="vtkMRMLLabelMapVolumeNode",
        ),
        "foreign": node_from_volume(
            scene,
            Volume(
                np.where(template.labels.array == 1, 42, template.labels.array), template.labels.ijk_to_ras
            ),
            "foreign labels",
            node_class="vtkMRMLLabelMapVolumeNode",
        ),
        "no segment": scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no segment"),
        "empty segment": scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "outside segmentation"),
    }
    # a segment that lies entirely outside the CT: exported onto the CT's grid, it is empty
    far = template.labels.ijk_to_ras.copy()
    far[:3, 3] += 1000.0
    elsewhere = node_from_volume(
        scene, Volume(template.labels.array, far), "far labels", node_class="vtkMRMLLabelMapVolumeNode"
    )
    outside = nodes["empty segment"]
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(elsewhere, outside)
    for i in range(outside.GetSegmentation().GetNumberOfSegments()):
        segment = outside.GetSegmentation().GetNthSegment(i)
        segment.SetName(label_info(segment.GetLabelValue()).key)
    renamed = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "renamed segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, renamed)
    r = renamed.GetSegmentation()
    for i in range(r.GetNumberOfSegments()):
        r.GetNthSegment(i).SetName(label_info(r.GetNthSegment(i).GetLabelValue()).key)
    r.GetNthSegment(0).SetName("Left ventricle")
    r.GetNthSegment(2).SetName("tumour")
    nodes["renamed"] = renamed
    return scene, nodes


@pytest.mark.parametrize(
    ("image", "labels", "options", "pattern"),
    [
        (
            "image",
            "shifted",
            {},
            r"template_segmentation_or_labelmap, template_volume: the label map 'shifted labels' and the "
            r"template CT 'small CT' are on different voxel grids",
        ),
        ("image", "empty", {}, r"template_segmentation_or_labelmap: the label map 'empty labels' is empty"),
        (
            "image",
            "empty segment",
            {},
            r"template_segmentation_or_labelmap: segmentation 'outside segmentation' is empty inside the template CT",
        ),
        (
            "image",
            "renamed",
            {},
            r"template_segmentation_or_labelmap: segment name\(s\) \['tumour'\] of "
            r"segmentation 'renamed segmentation' are not in the cardiac label table",
        ),
        (
            "image",
            "foreign",
            {},
            r"template_segmentation_or_labelmap: the label map 'foreign labels': label values \[42\] are not in the "
            r"cardiac label table",
        ),
        ("image", "no segment", {}, r"segmentation 'no segment' has no segment"),
        ("image", None, {}, r"template_segmentation_or_labelmap: the template CT .* needs its segmentation"),
        (None, "segmentation", {}, r"template_volume: template labels .* were given without their CT"),
        ("labelmap", "labelmap", {}, r"template_volume: expected the template CT as a scalar volume node"),
        ("image", "image", {}, r"template_segmentation_or_labelmap: .*'small CT' holds non-integer values"),
        (None, None, {"n": 0}, r"n: expected an integer from 1 to 50"),
        (None, None, {"strength_mm": -1.0}, r"strength_mm: expected a number from 0 to 100 mm"),
        (None, None, {"renderer": "gan"}, r"renderer: expected one of \['warp', 'tcdm'\]"),
        (None, None, {"renderer": "tcdm"}, r"model: renderer 'tcdm' needs a TCDM model"),
        (None, None, {"device": "tpu"}, r"device: expected one of"),
        (None, None, {"steps": 0}, r"steps: expected an integer from 1 to 1000"),
        (None, None, {"harmonise": "yes"}, r"harmonise: expected true or false"),
    ],
)
def test_bad_inputs_raise_and_leave_the_scene_unchanged(bad_inputs, image, labels, options, pattern) -> None:
    scene, nodes = bad_inputs
    before = _names(scene)
    logic = CardiacSynthLogic(scene)
    with pytest.raises(ValueError, match=pattern):
        logic.start(nodes.get(image), nodes.get(labels), **{"device": "cpu", **options})
    assert _names(scene) == before


def test_a_non_empty_export_folder_is_refused_before_the_job_starts(tmp_path) -> None:
    (tmp_path / "old.txt").write_text("x")
    scene = slicer.vtkMRMLScene()
    with pytest.raises(ValueError, match=r"export_dir: .* is a folder that is not empty"):
        CardiacSynthLogic(scene).start(n=1, export_dir=tmp_path)
    assert scene.GetNumberOfNodes() == 0


# ------------------------------------------------------------------------- failures add nothing


def test_a_failed_job_adds_no_node(tmp_path) -> None:
    scene = slicer.vtkMRMLScene()
    image, labelmap, _, _ = _small_template_nodes(scene)
    before = _names(scene)
    logic = CardiacSynthLogic(scene)
    run = logic.start(image, labelmap, n=1, renderer="tcdm", model=str(tmp_path / "missing.pt"), device="cpu")
    work_dir = run.work_dir
    status = logic.wait(run, timeout_s=TIMEOUT_S)
    assert status.state == "error" and "missing.pt" in status.message, status.message
    with pytest.raises(JobError, match="missing.pt"):
        logic.import_results(run)
    assert _names(scene) == before
    assert not work_dir.exists(), work_dir


def test_the_harmonise_switch_reaches_the_job_as_both_steps(tmp_path) -> None:
    """The panel's one switch is the job's hu_harmonise and texture_harmonise (tcdm only)."""
    scene = slicer.vtkMRMLScene()
    image, labelmap, _, _ = _small_template_nodes(scene)
    logic = CardiacSynthLogic(scene)
    for on in (True, False):
        run = logic.start(image, labelmap, n=1, renderer="tcdm", model=str(tmp_path / "missing.pt"), device="cpu",
                          harmonise=on)  # fmt: skip
        assert run.params["hu_harmonise"] is on and run.params["texture_harmonise"] is on
        assert logic.wait(run, timeout_s=TIMEOUT_S).state == "error"  # the model file is missing
    warp = logic.start(n=1, device="cpu", harmonise=False)
    assert "hu_harmonise" not in warp.params and "texture_harmonise" not in warp.params
    logic.cancel(warp)


def test_a_broken_output_adds_no_node() -> None:
    """Case 1's image is corrupt: case 0's nodes, already added, are removed again."""
    scene = slicer.vtkMRMLScene()
    image, labelmap, _, _ = _small_template_nodes(scene)
    logic = CardiacSynthLogic(scene)
    run = logic.start(image, labelmap, n=2, device="cpu")
    status = logic.wait(run, timeout_s=TIMEOUT_S)
    assert status.state == "done", status.message
    broken = Path(status.output_dir) / "imagesTr" / "case_00001_0000.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    before = _names(scene)
    with pytest.raises(ValueError, match="case_00001_0000"):
        logic.import_results(run)
    assert _names(scene) == before
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), children, True)
    folders = [sh.GetItemName(children.GetId(k)) for k in range(children.GetNumberOfIds())]
    assert not [f for f in folders if f.startswith("CardiacSynth")], folders
    assert run.work_dir is None


def test_cancel_adds_nothing_and_deletes_the_job_files() -> None:
    scene = slicer.vtkMRMLScene()
    logic = CardiacSynthLogic(scene)
    run = logic.start(n=3, device="cpu")
    work_dir = run.work_dir
    logic.cancel(run)
    assert not work_dir.exists(), work_dir
    with pytest.raises(JobCancelled):
        logic.import_results(run)
    assert scene.GetNumberOfNodes() == 0


def test_label_table_is_what_the_segments_use() -> None:
    """Guard: the table's keys are unique, so ``label_by_name`` maps every segment name to one value."""
    keys = [e.key for e in LABEL_TABLE]
    assert len(set(keys)) == len(keys), keys
