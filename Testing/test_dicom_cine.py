"""Multi-frame XA cine files (xraycardiac.geometry.dicom_cine): frames, timing, per-frame geometry, ECG.

Files are written with ``write_xa_cine`` (uncompressed legacy XA, pydicom) and, for the enhanced-XA and
damaged cases, changed with pydicom or cut on disk; every case reads a real file back.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from xraycardiac.geometry import CArmGeometry
from xraycardiac.geometry.dicom_cine import ECGWaveform, is_dicom_file, read_xa_cine, write_xa_cine

GEOMETRY = CArmGeometry(
    primary_angle_deg=-30.0, secondary_angle_deg=20.0, sid_mm=1000.0, sod_mm=700.0,
    detector_rows=24, detector_cols=32, pixel_spacing_mm=(0.5, 0.5),
)  # fmt: skip


def _frames(n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.round(rng.uniform(0, 1, (n, 24, 32)) * 255) / 255


def test_round_trip_frames_times_geometry_and_ecg(tmp_path):
    frames = _frames()
    t = np.arange(-100.0, 500.0, 2.0)
    ecg = ECGWaveform(np.sin(t / 50.0), 500.0, -100.0, "Lead II")
    path = write_xa_cine(tmp_path / "run.dcm", frames, GEOMETRY, 66.7, ecg=ecg, heart_rate_bpm=72)
    assert is_dicom_file(path) and not is_dicom_file(__file__)
    cine = read_xa_cine(path)
    assert cine.num_frames == 6 and cine.frames.shape == (6, 24, 32)
    np.testing.assert_allclose(cine.frames / 255.0, frames, atol=1e-6)
    np.testing.assert_allclose(cine.frame_times_ms, np.arange(6) * 66.7, atol=1e-3)
    assert cine.meta["time_source"] == "FrameTime" and cine.meta["per_frame_geometry"] is False
    assert len(cine.geometries) == 6
    g = cine.geometries[3]
    assert (g.primary_angle_deg, g.secondary_angle_deg, g.sid_mm, g.sod_mm) == (-30.0, 20.0, 1000.0, 700.0)
    assert cine.ecg is not None and cine.ecg.sampling_hz == 500.0 and cine.ecg.start_ms == -100.0
    assert cine.ecg.channel == "Lead II" and cine.ecg.unit == "mV"
    np.testing.assert_allclose(cine.ecg.samples, ecg.samples, atol=0.0006)  # 1 uV per count
    np.testing.assert_allclose(cine.ecg.times_ms, t, atol=1e-9)


def test_frame_time_vector_and_per_frame_angle_increments(tmp_path):
    intervals = np.array([0.0, 33.0, 33.0, 40.0, 33.0, 33.0])
    increments = np.array([[0.0, 0.0], [2.0, -1.0], [2.0, -1.0], [2.0, -1.0], [2.0, -1.0], [2.0, -1.0]])
    path = write_xa_cine(
        tmp_path / "rot.dcm", _frames(), GEOMETRY, intervals, angle_increments_deg=increments
    )
    cine = read_xa_cine(path)
    np.testing.assert_allclose(cine.frame_times_ms, np.cumsum(intervals))
    assert cine.meta["time_source"] == "FrameTimeVector" and cine.meta["per_frame_geometry"] is True
    primaries = [g.primary_angle_deg for g in cine.geometries]
    secondaries = [g.secondary_angle_deg for g in cine.geometries]
    np.testing.assert_allclose(primaries, -30.0 + 2.0 * np.arange(6))
    np.testing.assert_allclose(secondaries, 20.0 - 1.0 * np.arange(6))
    assert cine.ecg is None


def test_enhanced_xa_per_frame_positioner_and_acquisition_times(tmp_path):
    path = write_xa_cine(tmp_path / "e.dcm", _frames(3), GEOMETRY, 100.0)
    ds = pydicom.dcmread(path)
    del ds.FrameTime, ds.CineRate
    groups = []
    for i in range(3):
        position, content = Dataset(), Dataset()
        position.PositionerPrimaryAngle, position.PositionerSecondaryAngle = 10.0 + i, -5.0 * i
        content.FrameAcquisitionDateTime = f"20261207120000.{125000 * i:06d}+0100"
        item = Dataset()
        item.PositionerPositionSequence = Sequence([position])
        item.FrameContentSequence = Sequence([content])
        groups.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.save_as(path)
    cine = read_xa_cine(path)
    np.testing.assert_allclose(cine.frame_times_ms, [0.0, 125.0, 250.0])
    assert cine.meta["time_source"] == "FrameAcquisitionDateTime"
    assert [g.primary_angle_deg for g in cine.geometries] == [10.0, 11.0, 12.0]
    assert [g.secondary_angle_deg for g in cine.geometries] == [0.0, -5.0, -10.0]


def test_ecg_lead_choice_uv_units_and_multiplex_offset(tmp_path):
    """Two channels: a respiration channel first, then Lead II in uV; the ECG is the second, in mV."""
    path = write_xa_cine(tmp_path / "w.dcm", _frames(2), GEOMETRY, 100.0,
                         ecg=ECGWaveform(np.linspace(-1, 1, 50), 250.0, 40.0, "Lead II"))  # fmt: skip
    ds = pydicom.dcmread(path)
    group = ds.WaveformSequence[0]
    lead = group.ChannelDefinitionSequence[0]
    resp = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RESP", "99X", "Respiration"
    resp.ChannelSourceSequence = Sequence([code])
    resp.ChannelSensitivity, resp.ChannelSensitivityCorrectionFactor, resp.ChannelBaseline = "1", "1", "0"
    resp.ChannelSensitivityUnitsSequence = lead.ChannelSensitivityUnitsSequence
    resp.ChannelSampleSkew, resp.WaveformBitsStored = "0", 16
    group.ChannelDefinitionSequence = Sequence([resp, lead])
    group.NumberOfWaveformChannels = 2
    data = np.frombuffer(group.WaveformData, dtype="<i2")
    group.WaveformData = np.stack([np.full_like(data, 7), data], axis=1).astype("<i2").tobytes()
    ds.save_as(path)
    ecg = read_xa_cine(path).ecg
    assert ecg.channel == "Lead II" and ecg.start_ms == 40.0 and ecg.sampling_hz == 250.0
    np.testing.assert_allclose(ecg.samples, np.linspace(-1, 1, 50), atol=0.0006)


def test_header_without_carm_tags_reads_frames_only_when_allowed(tmp_path):
    path = write_xa_cine(tmp_path / "n.dcm", _frames(4), GEOMETRY, 50.0)
    ds = pydicom.dcmread(path)
    del ds.DistanceSourceToDetector
    ds.save_as(path)
    with pytest.raises(ValueError, match="DistanceSourceToDetector"):
        read_xa_cine(path)
    cine = read_xa_cine(path, require_geometry=False)
    assert cine.geometries is None and "DistanceSourceToDetector" in cine.meta["geometry_error"]
    assert cine.num_frames == 4 and cine.frame_times_ms[1] == 50.0


def test_cut_file_and_bad_inputs_are_refused(tmp_path):
    path = write_xa_cine(tmp_path / "c.dcm", _frames(), GEOMETRY, 66.7)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 500])
    with pytest.raises(ValueError, match="cut.dcm"):
        read_xa_cine(cut)
    inconsistent = pydicom.dcmread(path)
    inconsistent.FrameTimeVector = ["0", "33"]
    del inconsistent.FrameTime
    inconsistent.save_as(tmp_path / "v.dcm")
    with pytest.raises(ValueError, match="FrameTimeVector .* 2 values for 6 frames"):
        read_xa_cine(tmp_path / "v.dcm")
    with pytest.raises(ValueError, match="frames: expected"):
        write_xa_cine(tmp_path / "x.dcm", _frames()[:, :10], GEOMETRY, 66.7)
    with pytest.raises(ValueError, match="frame_time_ms"):
        write_xa_cine(tmp_path / "x.dcm", _frames(), GEOMETRY, 0.0)
    assert not (tmp_path / "x.dcm").exists()
