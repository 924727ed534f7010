"""XRayCoronaryRecon's "Reconstruct" logic on a real ``vtkMRMLScene`` (slicer-core), end to end through the
real ``coronary-reconstruct`` job in a child process.

The input nodes are made as the "Synthetic angiograms" import makes them (one-slice volume nodes on
the detector plane with ``XRayCardiac.Geometry`` / ``ProjectionMatrix``), from one synthesized 256 px
pair, with its ground-truth vessel masks as label map nodes; view 2's geometry is perturbed
(+3 / -2 degrees) so that the refinement has something to do.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer  # slicer-core, a test dependency: the real MRML scene
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    format_projection_matrix,
    node_from_volume,
    parse_projection_matrix,
    read_attributes,
)
from XRayCoronaryReconLib.reconstruct import (
    GEOMETRY_ORIGINAL_ATTRIBUTE,
    ReconstructLogic,
    describe_calibration,
    method_spec,
)

from xraycardiac.coronary.recon.calibration import apply_corrections
from xraycardiac.coronary.synth import SynthConfig, synthesize
from xraycardiac.coronary.synth import dataset as ds
from xraycardiac.geometry import CArmGeometry
from xraycardiac.volume import Volume


def _add_view(scene, name, image, geometry, node_class="vtkMRMLScalarVolumeNode", with_geometry=True):
    attributes = {}
    if with_geometry:
        attributes = {
            PROJECTION_MATRIX_ATTRIBUTE: format_projection_matrix(geometry.projection_matrix()),
            GEOMETRY_ATTRIBUTE: geometry.to_dict(),
        }
    volume = Volume(np.asarray(image)[None], geometry.detector_ijk_to_ras())
    return node_from_volume(scene, volume, name, node_class=node_class, attributes=attributes)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """(scene, {name: node}, g2 as recorded) of a synthesized 256 px pair."""
    root = tmp_path_factory.mktemp("reconstruct") / "dataset"
    synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=256, seed=3), root)
    s = ds.read_sample(ds.sample_path(root, 0, 0), load_thickness=False)
    g1, g2 = (CArmGeometry.from_dict(s["geometry"][f"view{v}"]) for v in (1, 2))
    g2 = apply_corrections(g2, {"primary_offset_deg": 3.0, "secondary_offset_deg": -2.0})
    scene = slicer.vtkMRMLScene()
    nodes = {
        "view1": _add_view(scene, "view 1", s["image1"].astype(np.float32), g1),
        "view2": _add_view(scene, "view 2", s["image2"].astype(np.float32), g2),
    }
    for v, g in ((1, g1), (2, g2)):
        mask = s[f"mask{v}"].astype(np.uint8)
        nodes[f"mask{v}"] = _add_view(scene, f"mask {v}", mask, g, "vtkMRMLLabelMapVolumeNode", False)
    nodes["bare"] = _add_view(scene, "no geometry", s["image1"].astype(np.float32), g1, with_geometry=False)
    return scene, nodes, g2


def test_reconstruct_adds_nodes_and_refines_view2(views):
    scene, nodes, g2 = views
    before = scene.GetNumberOfNodes()
    original = nodes["view2"].GetAttribute(GEOMETRY_ATTRIBUTE)
    result = ReconstructLogic(scene).run(
        nodes["view1"], nodes["view2"], mask_node1=nodes["mask1"], mask_node2=nodes["mask2"],
        method="vessel", device="cpu", timeout_s=240, prior_sigma_deg=2.5, prior_sigma_mm=6.0,
    )  # fmt: skip
    calibration = result["calibration"]
    params = result["report"]["params"]  # the panel's prior reaches the job's calibration
    assert (params["prior_sigma_deg"], params["prior_sigma_mm"]) == (2.5, 6.0), params
    print(
        f"\n{result['text']}; {len(result['branches'])} branches, report {result['report']['reconstruction']}"
    )
    n = result["report"]["matches"]
    for v in (1, 2):
        markups = result[f"keypoints{v}"]
        assert markups.GetNumberOfControlPoints() == n, (v, markups.GetNumberOfControlPoints(), n)
        if n:
            assert markups.GetNthControlPointLabel(n - 1) == str(n - 1)
    table = result["table"]
    assert table.GetNumberOfRows() == n and table.GetNumberOfColumns() == 6
    assert [table.GetColumnName(i) for i in range(6)] == ["index", "u1", "v1", "u2", "v2", "score"]
    assert len(result["branches"]) >= 1
    assert all(c.GetNumberOfControlPoints() >= 2 for c in result["branches"])
    assert result["tube"].GetPolyData().GetNumberOfPoints() > 0
    assert result["centreline"].GetPolyData().GetNumberOfPoints() > 0
    # keypoints 1 lie on view 1's detector plane: they project back to their pixel
    g1 = CArmGeometry.from_dict(json.loads(nodes["view1"].GetAttribute(GEOMETRY_ATTRIBUTE)))
    if n:
        p = np.array(result["keypoints1"].GetNthControlPointPositionVector(0))
        uv = g1.project(p[None])[0]
        u1, v1 = table.GetCellText(0, 1), table.GetCellText(0, 2)
        assert np.allclose(uv, (float(u1), float(v1)), atol=1e-3), (uv, u1, v1)
    attributes = read_attributes(nodes["view2"])
    assert attributes["CalibrationRefined"] == calibration["refined"]
    if calibration["refined"]:
        assert nodes["view2"].GetAttribute(GEOMETRY_ORIGINAL_ATTRIBUTE) == original
        refined = CArmGeometry.from_dict(json.loads(nodes["view2"].GetAttribute(GEOMETRY_ATTRIBUTE)))
        p = parse_projection_matrix(nodes["view2"].GetAttribute(PROJECTION_MATRIX_ATTRIBUTE))
        assert np.allclose(p, refined.projection_matrix())
        assert attributes["ReprojectionErrorAfterPx"] < attributes["ReprojectionErrorBeforePx"]
    for node in (result["keypoints1"], result["table"], result["tube"], *result["branches"]):
        assert read_attributes(node)["Pipeline"] == "coronary-reconstruct", node.GetName()
    assert scene.GetNumberOfNodes() > before


def test_volume_without_geometry_names_the_node_and_leaves_the_scene(views):
    scene, nodes, _ = views
    before = scene.GetNumberOfNodes()
    logic = ReconstructLogic(scene)
    with pytest.raises(ValueError, match=r"volume_node2: 'no geometry' has no C-arm geometry"):
        logic.start(nodes["view1"], nodes["bare"])
    small = _add_view(scene, "small mask", np.zeros((64, 64), np.uint8), CArmGeometry(), with_geometry=False)
    try:
        with pytest.raises(ValueError, match=r"mask_node1: 'small mask' is 64 x 64"):
            logic.start(nodes["view1"], nodes["view2"], mask_node1=small)
    finally:
        scene.RemoveNode(small.GetDisplayNode())
        scene.RemoveNode(small)
    with pytest.raises(ValueError, match="foundation"):
        logic.start(nodes["view1"], nodes["view2"], foundation="dinov2:/models/dino")
    with pytest.raises(ValueError, match="device"):
        logic.start(nodes["view1"], nodes["view2"], device="tpu")
    with pytest.raises(ValueError, match="prior_sigma_mm: expected a standard deviation > 0"):
        logic.start(nodes["view1"], nodes["view2"], prior_sigma_mm=0.0)
    assert scene.GetNumberOfNodes() == before


def test_failed_job_adds_nothing(views):
    """An empty vessel mask: the job fails with 'no vessel found in image 1'; the scene is unchanged."""
    scene, nodes, g2 = views
    g1 = CArmGeometry.from_dict(json.loads(nodes["view1"].GetAttribute(GEOMETRY_ATTRIBUTE)))
    empty = _add_view(scene, "empty mask", np.zeros((256, 256), np.uint8), g1, with_geometry=False)
    before = scene.GetNumberOfNodes()
    attributes = read_attributes(nodes["view2"])
    from XRayCardiacCommonLib.jobs import JobError

    with pytest.raises(JobError, match="no vessel found in image 1"):
        ReconstructLogic(scene).run(
            nodes["view1"], nodes["view2"], mask_node1=empty, device="cpu", timeout_s=120
        )
    assert scene.GetNumberOfNodes() == before
    assert read_attributes(nodes["view2"]) == attributes


def test_method_spec_and_calibration_text():
    assert method_spec("sift+epipolar") == "sift+epipolar"
    assert method_spec("matcher", " runs/m1 ") == "matcher:runs/m1"
    assert method_spec("matcher on vessels + band", "m2") == "vmatcher:m2+band"
    with pytest.raises(ValueError, match="matcher_model"):
        method_spec("matcher on vessels + band", " ")
    with pytest.raises(ValueError, match="matcher_model"):
        method_spec("matcher", "")
    with pytest.raises(ValueError, match="method"):
        method_spec("surf")
    text = describe_calibration(
        {"refined": True, "matches": 12, "error_before_px": {"mean": 3.2}, "error_after_px": {"mean": 0.05},
         "outliers": [3, 7], "reason": "held-out matches fit better"}
    )  # fmt: skip
    assert text == (
        "Reprojection error 3.20 px -> 0.05 px (view 2 refined, 12 matches, 2 outliers: held-out matches fit better)"
    )
    # issue 20: a rejected refinement says what it would have given and why the recorded pose was kept
    text = describe_calibration(
        {"refined": False, "kept": "recorded", "matches": 30, "error_before_px": {"mean": 4.1},
         "error_after_px": {"mean": 4.1}, "candidate": {"error_after_px": {"mean": 1.2}},
         "reason": "the refinement does not predict held-out matches better"}
    )  # fmt: skip
    assert "refinement to 1.20 px rejected, recorded view 2 kept" in text
    assert "does not predict held-out matches better" in text
