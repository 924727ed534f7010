"""The ``coronary-reconstruct`` job on multi-frame DICOM XA runs (frame "auto" by the ECG, or the user's).

Each view of a synthesized 256 px pair becomes a 7-frame XA run: the rendered angiogram at a known
frame with an R peak of the run's ECG at its time, the other frames the same image shifted by 4-24
pixels (another phase). The job on the runs must use exactly the frame at the R peak: its matches
equal those of the job given that frame as a 2D image.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xraycardiac.coronary.synth.cine import synthetic_ecg
from xraycardiac.geometry import CArmGeometry
from xraycardiac.geometry.dicom_cine import ECGWaveform, write_xa_cine
from xraycardiac.io import write_volume
from xraycardiac.jobs import JobSpec, run_job
from xraycardiac.volume import Volume

FRAME_MS = 80.0
ED = {1: 2, 2: 5}  # the frame of each view's run at its R peak


@pytest.fixture(scope="module")
def cine_files(tmp_path_factory):
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth.dataset import read_sample, sample_path

    root = tmp_path_factory.mktemp("cine_pair")
    synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=256, seed=3), root / "dataset")
    s = read_sample(sample_path(root / "dataset", 0, 0), load_thickness=False)
    files = {}
    for v in (1, 2):
        g = CArmGeometry.from_dict(s["geometry"][f"view{v}"])
        image = np.round(np.asarray(s[f"image{v}"], dtype=np.float64) * 255.0) / 255.0
        frames = np.stack([np.roll(image, 4 * (i - ED[v]), axis=1) for i in range(7)])
        t = np.arange(-600.0, 7 * FRAME_MS + 600.0, 2.0)
        r_peaks = np.array([ED[v] * FRAME_MS - 900.0, ED[v] * FRAME_MS, ED[v] * FRAME_MS + 900.0])
        ecg = ECGWaveform(synthetic_ecg(t, r_peaks, np.random.default_rng(v), 0.03), 500.0, -600.0, "Lead II")
        files[f"run{v}"] = str(write_xa_cine(root / f"run{v}.dcm", frames, g, FRAME_MS, ecg=ecg))
        files[f"frame{v}"] = str(write_volume(Volume(frames[ED[v]][None] * 255.0, g.detector_ijk_to_ras()),
                                              root / f"frame{v}.nrrd"))  # fmt: skip
        files[f"mask{v}"] = str(write_volume(Volume(s[f"mask{v}"].astype(np.uint8)[None], g.detector_ijk_to_ras()),
                                             root / f"mask{v}.nrrd"))  # fmt: skip
        files[f"geometry{v}"] = str(root / f"geometry{v}.json")
        (root / f"geometry{v}.json").write_text(json.dumps(s["geometry"][f"view{v}"]))
    return files


def _run(files, tmp_path, name, inputs, **params):
    out = tmp_path / name
    spec = JobSpec("coronary-reconstruct", {k: files[f] for k, f in inputs.items()},
                   {"device": "cpu", **params}, str(out))  # fmt: skip
    return run_job(spec), out


@pytest.mark.slow
def test_runs_with_ecg_give_the_end_diastole_frame_and_its_matches(cine_files, tmp_path):
    masks = {"mask1": "mask1", "mask2": "mask2", "geometry1": "geometry1", "geometry2": "geometry2"}
    summary, out = _run(
        cine_files, tmp_path, "cine", {"image1": "run1", "image2": "run2", **masks}, method="vessel"
    )
    frames = summary["frames"]
    for v in (1, 2):
        record = frames[f"view{v}"]
        assert record["method"] == "ecg" and record["frame"] == ED[v], record
        assert record["frames"] == 7 and record["has_ecg"] and record["time_source"] == "FrameTime"
    _, out2d = _run(
        cine_files, tmp_path, "frames", {"image1": "frame1", "image2": "frame2", **masks}, method="vessel"
    )
    cine_matches = json.loads((out / "matches.json").read_text())
    frame_matches = json.loads((out2d / "matches.json").read_text())
    assert len(cine_matches["x1"]) > 10
    assert cine_matches["x1"] == frame_matches["x1"] and cine_matches["x2"] == frame_matches["x2"]


def test_user_frame_and_header_geometry(cine_files, tmp_path):
    inputs = {"image1": "run1", "image2": "run2", "mask1": "mask1", "mask2": "mask2"}
    summary, out = _run(cine_files, tmp_path, "user", inputs, frame1=4, frame2="6", refine_calibration=False)
    assert summary["frames"]["view1"]["method"] == "user" and summary["frames"]["view1"]["frame"] == 4
    assert summary["frames"]["view2"]["frame"] == 6
    used = CArmGeometry.from_dict(json.loads((out / "geometry2_refined.json").read_text()))
    recorded = CArmGeometry.load_json(cine_files["geometry2"])
    assert abs(used.primary_angle_deg - recorded.primary_angle_deg) < 1e-3
    assert abs(used.secondary_angle_deg - recorded.secondary_angle_deg) < 1e-3
    assert used.isocenter_ras_mm == (0.0, 0.0, 0.0)  # a DICOM header does not say where the isocentre is


def test_bad_frames_are_refused_before_any_output(cine_files, tmp_path):
    inputs = {"image1": "run1", "image2": "run2", "mask1": "mask1", "mask2": "mask2"}
    with pytest.raises(ValueError, match=r"inputs.image1: frame: 7 is outside the run's frames 0..6"):
        _run(cine_files, tmp_path, "a", inputs, frame1=7)
    with pytest.raises(ValueError, match=r"params.frame2: expected 'auto' or a frame index"):
        _run(cine_files, tmp_path, "b", inputs, frame2=-1)
    flat = {"image1": "frame1", "image2": "frame2", "geometry1": "geometry1", "geometry2": "geometry2"}
    with pytest.raises(
        ValueError, match=r"params.frame1: 3 asks for a frame of a run, but inputs.image1 is one"
    ):
        _run(cine_files, tmp_path, "c", flat, frame1=3)
    with pytest.raises(ValueError, match=r"params.ecg_offset_ms"):
        _run(cine_files, tmp_path, "d", inputs, ecg_offset_ms=float("inf"))
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_cli_phase_and_reconstruct_on_runs(cine_files, tmp_path):
    from typer.testing import CliRunner

    from xraycardiac.cli import app

    result = CliRunner().invoke(app, ["coronary", "phase", cine_files["run2"]])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["frame"] == ED[2] and record["method"] == "ecg" and record["frames"] == 7
    result = CliRunner().invoke(app, ["coronary", "phase", cine_files["run2"], "--frame", "x"])
    assert result.exit_code != 0 and "expected 'auto' or a frame index" in result.output
    out = tmp_path / "cli"
    args = ["coronary", "reconstruct", "--image1", cine_files["run1"], "--image2", cine_files["run2"],
            "--mask1", cine_files["mask1"], "--mask2", cine_files["mask2"], "--frame2", "6", "--method", "vessel",
            "--no-refine", "--device", "cpu", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["frames"]["view1"]["frame"] == ED[1] and report["frames"]["view2"]["method"] == "user"
    assert (out / "centreline.vtp").is_file()
