"""XRayCoronaryRecon's "Reconstruct" logic with three views on a real ``vtkMRMLScene`` (slicer-core), end to
end through the real ``coronary-reconstruct`` job (issue 20 item 4: the panel takes N frames).

One synthesized tree seen in two 256 px pairs: views 1-3 as the "Synthetic angiograms" import makes
them, with their ground-truth masks as label maps; views 2 and 3 recorded a few degrees off.
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
)
from XRayCoronaryReconLib.reconstruct import ReconstructLogic, describe_calibration, views_from_lists

from xraycardiac.coronary.recon.calibration import apply_corrections
from xraycardiac.volume import Volume


def _add(scene, name, image, geometry, node_class="vtkMRMLScalarVolumeNode", with_geometry=True):
    attributes = {}
    if with_geometry:
        attributes = {PROJECTION_MATRIX_ATTRIBUTE: format_projection_matrix(geometry.projection_matrix()),
                      GEOMETRY_ATTRIBUTE: geometry.to_dict()}  # fmt: skip
    volume = Volume(np.asarray(image)[None], geometry.detector_ijk_to_ras())
    return node_from_volume(scene, volume, name, node_class=node_class, attributes=attributes)


@pytest.fixture(scope="module")
def three_views(four_view_dataset):
    from xraycardiac.coronary.recon.evaluate_views import tree_views

    views = tree_views(four_view_dataset, 0)
    gs = list(views["geometries"][:3])
    gs[1] = apply_corrections(gs[1], {"primary_offset_deg": 2.0, "secondary_offset_deg": -1.0})
    gs[2] = apply_corrections(gs[2], {"primary_offset_deg": -1.5, "isocenter_shift_r_mm": 2.0})
    scene = slicer.vtkMRMLScene()
    nodes = {}
    for v in range(3):
        nodes[f"view{v + 1}"] = _add(scene, f"view {v + 1}", views["images"][v].astype(np.float32), gs[v])
        nodes[f"mask{v + 1}"] = _add(scene, f"mask {v + 1}", views["masks"][v].astype(np.uint8), gs[v],
                                     "vtkMRMLLabelMapVolumeNode", False)  # fmt: skip
    return scene, nodes


def test_reconstruct_from_three_views_reports_the_kept_calibration_on_every_view(three_views):
    scene, nodes = three_views
    originals = {v: nodes[f"view{v}"].GetAttribute(GEOMETRY_ATTRIBUTE) for v in (2, 3)}
    result = ReconstructLogic(scene).run(
        nodes["view1"], nodes["view2"], mask_node1=nodes["mask1"], mask_node2=nodes["mask2"],
        more_volume_nodes=[nodes["view3"], None], more_mask_nodes=[nodes["mask3"]], method="vessel",
        device="cpu", timeout_s=900, prior_sigma_deg=2.0, prior_sigma_mm=4.0,
    )  # fmt: skip
    calibration, report = result["calibration"], result["report"]
    print(f"\n{result['text']}")
    assert report["views"] == 3 and calibration["views"] == 3
    assert "views 2-3" in result["text"] and "Reprojection error" in result["text"]
    assert ("kept" in result["text"]) != calibration["refined"]  # the text says which calibration was kept
    assert len(result["tables"]) == 3  # one match table per view pair
    # the plausibility check over all three views reaches the panel's status text
    assert result["warnings"] == report["plausibility"]["warnings"]
    assert all(f"WARNING: {w}" in result["text"] for w in result["warnings"])
    for v in (2, 3):  # each view carries the outcome; refined geometry only when the refinement was kept
        node = nodes[f"view{v}"]
        assert json.loads(node.GetAttribute("XRayCardiac.CalibrationRefined")) == calibration["refined"]
        assert (node.GetAttribute(GEOMETRY_ATTRIBUTE) != originals[v]) == calibration["refined"]
    assert len(result["branches"]) >= 1 and result["tube"].GetPolyData().GetNumberOfPoints() > 0


def test_views_lists_are_checked_by_view_number(three_views):
    scene, nodes = three_views
    assert views_from_lists([nodes["view3"], None], [nodes["mask3"]]) == [
        (nodes["view3"], nodes["mask3"], None)
    ]
    with pytest.raises(
        ValueError, match=r"more_volume_nodes\[0\] \(view 3\): empty while view 4 is selected"
    ):
        views_from_lists([None, nodes["view3"]])
    with pytest.raises(ValueError, match=r"more_mask_nodes\[1\] \(view 4\): given, but view 4 has no image"):
        views_from_lists([nodes["view3"]], [None, nodes["mask3"]])
    with pytest.raises(ValueError, match=r"more_frames\[0\] \(view 3\)"):
        views_from_lists([], [], [4])
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="more_volume_nodes"):
        ReconstructLogic(scene).start(
            nodes["view1"], nodes["view2"], more_volume_nodes=[None, nodes["view3"]]
        )
    assert scene.GetNumberOfNodes() == count


def test_calibration_text_names_the_views():
    record = {"views": 4, "refined": False, "matches": 30, "error_before_px": {"mean": 3.0},
              "candidate": {"error_after_px": {"mean": 2.0}}, "reason": "held-out matches do not fit better"}  # fmt: skip
    text = describe_calibration(record)
    assert "recorded views 2-4 kept" in text and "3.00 px" in text and "2.00 px rejected" in text
    assert "view 2 refined" in describe_calibration({**record, "views": 2, "refined": True,
                                                     "error_after_px": {"mean": 0.5}})  # fmt: skip
