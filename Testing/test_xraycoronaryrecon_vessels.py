"""XRayCoronaryRecon "Reconstruct" with no vessel masks, on a real ``vtkMRMLScene`` (slicer-core): the job
segments both frames with the learned network, and the logic adds each view's vessel probability (a
scalar volume, 0-1, on the frame's grid) and its segmentation; plausibility warnings reach the status text."""

from __future__ import annotations

import numpy as np
import pytest
import slicer  # slicer-core: the real MRML scene
import vtk
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    format_projection_matrix,
    node_from_volume,
)
from XRayCoronaryReconLib.reconstruct import ReconstructLogic

from xraycardiac.coronary.synth import SynthConfig, synthesize
from xraycardiac.coronary.synth import dataset as ds
from xraycardiac.geometry import CArmGeometry
from xraycardiac.volume import Volume


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon_vessels") / "dataset"
    synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=256, seed=3), root)
    s = ds.read_sample(ds.sample_path(root, 0, 0), load_thickness=False)
    scene = slicer.vtkMRMLScene()
    nodes = []
    for v in (1, 2):
        g = CArmGeometry.from_dict(s["geometry"][f"view{v}"])
        attributes = {
            PROJECTION_MATRIX_ATTRIBUTE: format_projection_matrix(g.projection_matrix()),
            GEOMETRY_ATTRIBUTE: g.to_dict(),
        }
        volume = Volume(s[f"image{v}"].astype(np.float32)[None], g.detector_ijk_to_ras())
        nodes.append(node_from_volume(scene, volume, f"view {v}", attributes=attributes))
    return scene, nodes


def test_reconstruct_without_masks_adds_probability_volumes_and_segmentations(frames):
    scene, (n1, n2) = frames
    result = ReconstructLogic(scene).run(n1, n2, method="vessel+epipolar", device="cpu", timeout_s=300)
    assert result["report"]["vessels"] == {"view1": "network", "view2": "network"}
    for v, node in ((1, n1), (2, n2)):
        volume, segmentation = result[f"vessel_probability{v}"], result[f"vessels{v}"]
        assert volume.GetName() == f"view 1 recon vessel probability view {v}"
        array = slicer.util.arrayFromVolume(volume)
        assert array.shape == slicer.util.arrayFromVolume(node).shape and 0 <= array.min() <= array.max() <= 1
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(a)
        node.GetIJKToRASMatrix(b)
        assert all(
            a.GetElement(i, j) == pytest.approx(b.GetElement(i, j)) for i in range(4) for j in range(4)
        )
        assert segmentation.IsA("vtkMRMLSegmentationNode")
        assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    warnings = result["warnings"]
    assert warnings == result["report"]["plausibility"]["warnings"]
    assert all(f"WARNING: {w}" in result["text"] for w in warnings)


def test_unknown_segmentation_is_refused_before_the_job(frames):
    scene, (n1, n2) = frames
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=r"segmentation: expected one of \['network', 'frangi'\]"):
        ReconstructLogic(scene).start(n1, n2, segmentation="otsu")
    assert scene.GetNumberOfNodes() == before
