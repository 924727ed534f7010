"""XRayCoronaryRecon with cine runs on a real ``vtkMRMLScene`` (slicer-core): load a multi-frame XA file as a
sequence node, suggest the end-diastolic frame, reconstruct from two runs through the real job.

The runs are written as multi-frame XA files from one synthesized 256 px pair: per view 7 frames, the
rendered angiogram at a known frame with an R peak of the file's ECG at its time, the other frames the
same image shifted (another phase). Also the two shapes Slicer's own DICOM plugins give a run (module
docstring of ``XRayCoronaryReconLib.cine``): a sequence of one-slice volumes with a "time" index in
seconds and no geometry, and one volume with the frames along K.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer  # slicer-core, a test dependency: the real MRML scene
from XRayCardiacCommonLib.mrml_io import GEOMETRY_ATTRIBUTE, node_from_volume
from XRayCoronaryReconLib.cine import (
    ECG_ATTRIBUTE,
    FRAME_TIMES_ATTRIBUTE,
    load_xa_cine,
    run_frames,
    suggest_frame,
)
from XRayCoronaryReconLib.reconstruct import ReconstructLogic

from xraycardiac.coronary.synth.cine import synthetic_ecg
from xraycardiac.geometry import CArmGeometry
from xraycardiac.geometry.dicom_cine import ECGWaveform, write_xa_cine
from xraycardiac.volume import Volume

FRAME_MS = 80.0
ED = {1: 2, 2: 5}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """({"run1", "run2": XA files, "mask1", "mask2": 2D masks}, (g1, g2), {v: frames})."""
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth.dataset import read_sample, sample_path

    root = tmp_path_factory.mktemp("cine_slicer")
    synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=256, seed=3), root / "dataset")
    s = read_sample(sample_path(root / "dataset", 0, 0), load_thickness=False)
    files, geometries, all_frames = {}, [], {}
    for v in (1, 2):
        g = CArmGeometry.from_dict(s["geometry"][f"view{v}"])
        geometries.append(g)
        image = np.round(np.asarray(s[f"image{v}"], dtype=np.float64) * 255.0) / 255.0
        frames = np.stack([np.roll(image, 4 * (i - ED[v]), axis=1) for i in range(7)])
        t = np.arange(-600.0, 7 * FRAME_MS + 600.0, 2.0)
        r = np.array([ED[v] * FRAME_MS - 900.0, ED[v] * FRAME_MS, ED[v] * FRAME_MS + 900.0])
        ecg = ECGWaveform(synthetic_ecg(t, r, np.random.default_rng(v), 0.03), 500.0, -600.0, "Lead II")
        files[f"run{v}"] = write_xa_cine(root / f"run{v}.dcm", frames, g, FRAME_MS, ecg=ecg)
        files[f"mask{v}"] = s[f"mask{v}"].astype(np.uint8)
        all_frames[v] = frames
    return files, tuple(geometries), all_frames


def test_load_xa_cine_makes_a_sequence_with_geometry_times_and_ecg(runs):
    files, (g1, _), frames = runs
    scene = slicer.vtkMRMLScene()
    sequence = load_xa_cine(scene, files["run1"], "run 1")
    assert sequence.IsA("vtkMRMLSequenceNode") and sequence.GetNumberOfDataNodes() == 7
    assert sequence.GetIndexName() == "time" and sequence.GetIndexUnit() == "s"
    assert [float(sequence.GetNthIndexValue(i)) for i in range(7)] == pytest.approx(np.arange(7) * 0.08)
    frame = sequence.GetNthDataNode(3)
    g = CArmGeometry.from_dict(json.loads(frame.GetAttribute(GEOMETRY_ATTRIBUTE)))
    assert (g.primary_angle_deg, g.secondary_angle_deg) == pytest.approx(
        (g1.primary_angle_deg, g1.secondary_angle_deg)
    )
    assert json.loads(sequence.GetAttribute(FRAME_TIMES_ATTRIBUTE)) == pytest.approx(np.arange(7) * 80.0)
    assert json.loads(sequence.GetAttribute(ECG_ATTRIBUTE))["sampling_hz"] == 500.0
    run = run_frames(sequence)
    np.testing.assert_allclose(run.frames / 255.0, frames[1], atol=1e-6)
    choice = suggest_frame(sequence)
    assert choice.method == "ecg" and choice.frame == ED[1], choice.reason
    assert (
        scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0
    )  # frames live in the sequence


def test_runs_as_slicers_dicom_plugins_load_them(runs):
    files, (g1, _), frames = runs
    scene = slicer.vtkMRMLScene()
    # DICOMImageSequencePlugin: one-slice volumes, index "time" in s, no geometry, no ECG
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "1: XA [1]")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    for i, f in enumerate(frames[1]):
        node = node_from_volume(
            scene, Volume((f * 255.0)[None].astype(np.float32), g1.detector_ijk_to_ras()), "f"
        )
        sequence.SetDataNodeAtValue(node, f"{i * 0.08:.3f}")
        scene.RemoveNode(node.GetDisplayNode())
        scene.RemoveNode(node)
    run = run_frames(sequence)
    assert run.ecg is None and run.times_ms == pytest.approx(np.arange(7) * 80.0)
    choice = suggest_frame(sequence)
    assert choice.method == "image" and 0 <= choice.frame < 7
    with pytest.raises(ValueError, match=r"volume_node1: .* has no C-arm geometry"):
        ReconstructLogic(scene).start(sequence, sequence, frame1=2, frame2=3)
    # DICOMScalarVolumePlugin: one volume, frames along K; geometry / times / ECG set by a script
    volume = node_from_volume(scene, Volume(frames[1] * 255.0, g1.detector_ijk_to_ras()), "run as volume",
                              attributes={GEOMETRY_ATTRIBUTE: g1.to_dict(),
                                          FRAME_TIMES_ATTRIBUTE: [80.0 * i for i in range(7)],
                                          ECG_ATTRIBUTE: sequence_ecg(files["run1"])})  # fmt: skip
    assert suggest_frame(volume).frame == ED[1]
    with pytest.raises(ValueError, match=r"volume_node1: frame 9 is outside the run's frames 0..6"):
        ReconstructLogic(scene).start(volume, volume, frame1=9)


def sequence_ecg(path) -> dict:
    from xraycardiac.geometry.dicom_cine import read_xa_cine

    return read_xa_cine(path).ecg.to_dict()


@pytest.mark.slow
def test_reconstruct_from_two_runs_uses_the_suggested_and_the_chosen_frame(runs):
    files, (g1, g2), _ = runs
    scene = slicer.vtkMRMLScene()
    run1, run2 = (load_xa_cine(scene, files[f"run{v}"], f"run {v}") for v in (1, 2))
    masks = [node_from_volume(scene, Volume(files[f"mask{v}"][None], g.detector_ijk_to_ras()), f"mask {v}",
                              node_class="vtkMRMLLabelMapVolumeNode") for v, g in ((1, g1), (2, g2))]  # fmt: skip
    result = ReconstructLogic(scene).run(
        run1, run2, mask_node1=masks[0], mask_node2=masks[1], method="vessel", device="cpu", timeout_s=240,
        frame2=ED[2],
    )  # fmt: skip
    assert result["frames"]["view1"]["method"] == "ecg" and result["frames"]["view1"]["frame"] == ED[1]
    assert result["frames"]["view2"] == {
        "frame": ED[2],
        "method": "user",
        "reason": f"frame {ED[2]} chosen by the user",
    }
    assert (
        result["report"]["matches"] > 10 and result["table"].GetNumberOfRows() == result["report"]["matches"]
    )
