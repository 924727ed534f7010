"""CardiacSynth's logic with label maps as users have them, on a real ``vtkMRMLScene`` (slicer-core): a
TotalSegmentator segmentation matched by segment names (or terminology), a TotalSegmentator label map
through the ``totalsegmentator`` preset, end to end through the job, cases read back as table labels."""

from __future__ import annotations

import numpy as np
import pytest
import slicer  # slicer-core, a test dependency: the real MRML scene
from CardiacSynthLib.synthesize import (  # the module folder is on sys.path (conftest.py)
    CardiacSynthLogic,
    _image_volume,
    _segmentation_labels,
)
from XRayCardiacCommonLib.mrml_io import node_from_volume, read_attributes  # noqa: E402

from xraycardiac.cardiac.label_maps import resolve_label_mapping  # noqa: E402
from xraycardiac.cardiac.labels import AORTA, WHOLE_HEART, label_info  # noqa: E402
from xraycardiac.volume import Volume  # noqa: E402

SVC = 12
HEART_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~"
    "SCT^80891009^Heart~^^~Anatomic codes - DICOM master list~^^~^^"
)


def _totalsegmentator_volumes():
    """(CT, label map) of a 24^3 TotalSegmentator-v2-style map: heart 51, aorta 52, SVC 62, spleen 1."""
    n = 24
    k, j, i = np.indices((n, n, n))
    lab = np.zeros((n, n, n), np.uint8)
    lab[(k - 12) ** 2 + (j - 12) ** 2 + (i - 10) ** 2 <= 36] = 51
    lab[((j - 12) ** 2 + (i - 18) ** 2 <= 4) & (k >= 6) & (k <= 19)] = 52
    lab[(k - 19) ** 2 + (j - 5) ** 2 + (i - 12) ** 2 <= 4] = 62
    lab[1:4, 1:4, 1:4] = 1
    image = np.where(lab > 0, 300.0, -800.0).astype(np.float32)
    return (Volume.from_geometry(image, (2.5,) * 3, (-30.0, -30.0, -30.0)),
            Volume.from_geometry(lab, (2.5,) * 3, (-30.0, -30.0, -30.0)))  # fmt: skip


def _totalsegmentator_segmentation(scene):
    """What the TotalSegmentator extension makes: one segment per class, named by class (the heart only by
    its terminology here), other organs included."""
    ct, lab = _totalsegmentator_volumes()
    image = node_from_volume(scene, ct, "chest CT")
    labelmap = node_from_volume(scene, lab, "ts labels", node_class="vtkMRMLLabelMapVolumeNode")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    s = seg.GetSegmentation()
    names = {51: "Segment_51", 52: "aorta", 62: "superior_vena_cava", 1: "spleen"}
    for idx in range(s.GetNumberOfSegments()):
        segment = s.GetNthSegment(idx)
        segment.SetName(names[segment.GetLabelValue()])
        if segment.GetLabelValue() == 51:
            segment.SetTag("TerminologyEntry", HEART_TERMINOLOGY)
    return image, labelmap, seg, lab


def test_totalsegmentator_segmentation_is_matched_by_names_and_terminology() -> None:
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    image, _, seg, raw = _totalsegmentator_segmentation(scene)
    labels, names = _segmentation_labels(
        scene, seg, _image_volume(image), image, resolve_label_mapping("totalsegmentator")
    )
    expected = np.select([raw.array == 51, raw.array == 52, raw.array == 62], [WHOLE_HEART, AORTA, SVC], 0)
    assert np.array_equal(labels.array, expected), np.count_nonzero(labels.array != expected)
    assert names == {WHOLE_HEART: "Segment_51", AORTA: "aorta", SVC: "superior_vena_cava"}, names
    # Without the whole-body preset, the spleen is an error that names it and the preset.
    with pytest.raises(ValueError, match=r"segment name\(s\) \['spleen'\] .* 'totalsegmentator'"):
        _segmentation_labels(scene, seg, _image_volume(image), image, None)


def test_totalsegmentator_label_map_end_to_end() -> None:
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    image, labelmap, _, raw = _totalsegmentator_segmentation(scene)
    logic = CardiacSynthLogic(scene)
    with pytest.raises(
        ValueError, match=r"label values \[51, 52, 62\] .* 'totalsegmentator'; its values \[1\]"
    ):
        logic.start(image, labelmap, n=1, device="cpu")
    result = logic.run(image, labelmap, n=1, strength_mm=1.0, device="cpu", label_mapping="totalsegmentator",
                       timeout_s=240)  # fmt: skip
    (case,) = result["cases"]
    s = case["labels"].GetSegmentation()
    names = sorted(s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments()))
    assert names == sorted(label_info(v).name for v in (AORTA, WHOLE_HEART, SVC)), names
    values = sorted(s.GetNthSegment(i).GetLabelValue() for i in range(s.GetNumberOfSegments()))
    assert values == [AORTA, WHOLE_HEART, SVC], values
    assert read_attributes(case["image"])["LabelMapping"] == "totalsegmentator"
