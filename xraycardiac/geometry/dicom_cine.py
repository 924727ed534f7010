"""Multi-frame DICOM X-ray angiography (XA) cine runs: frames, frame times, per-frame geometry, the ECG.

What an angiography run holds and where this module reads it (DICOM PS3.3):

* **frames**: Pixel Data of ``NumberOfFrames`` (0028,0008) frames, monochrome, through pydicom's
  ``pixel_array`` (so compressed transfer syntaxes work where pydicom has a decoder), with the Modality
  LUT (``RescaleSlope`` / ``RescaleIntercept``) applied when present.
* **frame times** (ms, frame 0 at ``FrameDelay`` (0018,1066) or 0): ``FrameTimeVector`` (0018,1065;
  the interval before each frame, the first 0), else ``FrameTime`` (0018,1063, constant), else
  ``CineRate`` (0018,0040, frames/s), else ``RecommendedDisplayFrameRate`` (0008,2144); in an enhanced XA
  object the per-frame ``FrameContentSequence > FrameAcquisitionDateTime``. None when the file holds
  none of these (the frames are then only ordered).
* **geometry**: :func:`~xraycardiac.geometry.dicom.geometry_from_dicom` of the header, one per frame:
  per-frame angles from the enhanced XA ``PositionerPositionSequence`` (0018,9405) of the per-frame
  (or shared) functional groups, or the legacy ``PositionerPrimaryAngleIncrement`` (0018,1520) /
  ``PositionerSecondaryAngleIncrement`` (0018,1521). Assumption written down: an increment is the
  change from the previous frame ("incremental change ... for each frame"), so frame i's angle is the
  header angle plus the sum of the increments of frames 1..i (the first increment, of frame 0, is
  ignored; a rotational run starts at the header angle).
* **ECG**: the ``WaveformSequence`` (5400,0100) multiplex group with an ECG channel: a channel whose
  source (``ChannelSourceSequence``) names an ECG lead (MDC "2:*" / SCPECG "5.6.3-9-*" codes, or a
  meaning with "ECG" / "lead"), Lead II preferred; samples in mV where the sensitivity unit is mV or uV
  (``ChannelSensitivity`` x ``ChannelSensitivityCorrectionFactor``, ``ChannelBaseline``, as pydicom's
  ``waveform_array``), its sampling frequency (003A,001A) and its start time
  ``MultiplexGroupTimeOffset`` (0018,1068). Assumption: the waveform's offset and ``FrameDelay`` share
  one reference (the run's acquisition start), as when the modality records both in the image object.

:func:`write_xa_cine` writes such a run (uncompressed, legacy multi-frame XA, optional ECG), for the
synthetic cine runs (:mod:`xraycardiac.coronary.synth.cine`) and the tests.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xraycardiac.geometry.carm import CArmGeometry
from xraycardiac.geometry.dicom import geometry_from_dicom
from xraycardiac.outputs import atomic_path

__all__ = ["XA_SOP_CLASS", "ECGWaveform", "XACine", "is_dicom_file", "read_xa_cine", "write_xa_cine"]

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage
_ENHANCED_XA = "1.2.840.10008.5.1.4.1.1.12.1.1"


@dataclass
class ECGWaveform:
    """One ECG channel of a run.

    Attributes:
        samples: (S,) float64 amplitudes (mV when the file's unit is mV or uV, else the file's unit).
        sampling_hz: samples per second.
        start_ms: time of sample 0 on the run's clock (the frames' ``frame_times_ms``), ms.
        channel: the channel's name (its source code meaning, e.g. "Lead II").
        unit: the amplitude unit ("mV" or the file's unit code).
    """

    samples: np.ndarray
    sampling_hz: float
    start_ms: float = 0.0
    channel: str = "ECG"
    unit: str = "mV"

    def __post_init__(self) -> None:
        self.samples = np.asarray(self.samples, dtype=np.float64).reshape(-1)
        if not (math.isfinite(self.sampling_hz) and self.sampling_hz > 0):
            raise ValueError(f"ECGWaveform.sampling_hz: expected samples/s > 0, got {self.sampling_hz!r}")
        if len(self.samples) < 2 or not np.all(np.isfinite(self.samples)):
            raise ValueError(f"ECGWaveform.samples: expected >= 2 finite values, got {len(self.samples)}")

    @property
    def times_ms(self) -> np.ndarray:
        """(S,) time of each sample on the run's clock, ms."""
        return self.start_ms + np.arange(len(self.samples)) * (1000.0 / self.sampling_hz)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``from_dict`` reads it back)."""
        return {"samples": self.samples.tolist(), "sampling_hz": float(self.sampling_hz),
                "start_ms": float(self.start_ms), "channel": self.channel, "unit": self.unit}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ECGWaveform:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(data["samples"], dtype=np.float64), float(data["sampling_hz"]),
                   float(data.get("start_ms", 0.0)), str(data.get("channel", "ECG")),
                   str(data.get("unit", "mV")))  # fmt: skip


@dataclass
class XACine:
    """A multi-frame XA run.

    Attributes:
        frames: (N, rows, cols) float32 stored values (Modality LUT applied); vessels dark as stored.
        frame_times_ms: (N,) float64 time of each frame on the run's clock (ms), or None when the file
            gives no timing.
        geometries: N :class:`CArmGeometry` (one per frame; equal when the header has no per-frame
            angles), or None when the header lacks the C-arm tags (phase selection still works).
        ecg: the ECG channel, or None.
        source: the file read.
        meta: where the timing / geometry came from (``time_source``, ``per_frame_geometry``,
            ``geometry_error`` when the geometry could not be read), heart rate from the header if any.
    """

    frames: np.ndarray
    frame_times_ms: np.ndarray | None
    geometries: list[CArmGeometry] | None
    ecg: ECGWaveform | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        """N."""
        return int(self.frames.shape[0])


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True for a file that starts with the DICOM Part 10 preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _floats(value: Any) -> list[float]:
    """A DICOM number or multi-value as a list of floats."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float) or not hasattr(value, "__iter__"):
        return [float(value)]
    return [float(v) for v in value]


def _parse_datetime(text: str) -> datetime.datetime:
    """A DICOM DT value (YYYYMMDDHHMMSS[.FFFFFF][&ZZXX]) without its time zone."""
    body = text.strip()[:21]
    if len(body) > 14 and body[14] in "+-":
        body = body[:14]
    whole, _, fraction = body.partition(".")
    return datetime.datetime.strptime(whole.ljust(14, "0"), "%Y%m%d%H%M%S") + datetime.timedelta(
        seconds=float(f"0.{fraction}") if fraction.isdigit() else 0.0
    )


def _frame_times(ds: Dataset, n: int, label: str) -> tuple[np.ndarray | None, str]:
    """(N,) frame times in ms from the run's start (before ``FrameDelay``) and the tag they came from."""
    vector = _floats(getattr(ds, "FrameTimeVector", None))
    if vector:
        if len(vector) != n:
            raise ValueError(
                f"{label}: FrameTimeVector (0018,1065) has {len(vector)} values for {n} frames; "
                "the file's timing is inconsistent"
            )
        times = np.cumsum([0.0, *vector[1:]])
        return times, "FrameTimeVector"
    for keyword, scale in (("FrameTime", 1.0), ("CineRate", None), ("RecommendedDisplayFrameRate", None)):
        values = _floats(getattr(ds, keyword, None))
        if values and math.isfinite(values[0]) and values[0] > 0:
            step = values[0] if scale is not None else 1000.0 / values[0]
            return np.arange(n) * step, keyword
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame is not None and len(per_frame) == n:
        stamps = []
        for item in per_frame:
            content = getattr(item, "FrameContentSequence", None)
            text = str(getattr(content[0], "FrameAcquisitionDateTime", "")) if content else ""
            if not text:
                break
            stamps.append(_parse_datetime(text))
        if len(stamps) == n:
            return np.array(
                [(s - stamps[0]).total_seconds() * 1000.0 for s in stamps]
            ), "FrameAcquisitionDateTime"
    return None, "none"


def _per_frame_angles(ds: Dataset, n: int, primary: float, secondary: float, label: str) -> np.ndarray | None:
    """(N, 2) primary / secondary angle of each frame (degrees), or None when the header has one pose."""
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame is not None and len(per_frame) == n:
        angles = []
        for item in per_frame:
            position = getattr(item, "PositionerPositionSequence", None)
            if not position:
                break
            angles.append(
                (float(position[0].PositionerPrimaryAngle), float(position[0].PositionerSecondaryAngle))
            )
        if len(angles) == n:
            return np.array(angles)
    increments = [_floats(getattr(ds, k, None)) for k in ("PositionerPrimaryAngleIncrement",
                                                         "PositionerSecondaryAngleIncrement")]  # fmt: skip
    if not any(increments):
        return None
    out = np.zeros((n, 2))
    for axis, (values, start) in enumerate(zip(increments, (primary, secondary), strict=True)):
        if values and len(values) != n:
            raise ValueError(
                f"{label}: Positioner{('Primary', 'Secondary')[axis]}AngleIncrement has {len(values)} values "
                f"for {n} frames; expected one per frame"
            )
        steps = np.asarray(values if values else np.zeros(n), dtype=np.float64)
        out[:, axis] = start + np.concatenate([[0.0], np.cumsum(steps[1:])])
    return out


_ECG_CODES = ("2:", "5.6.3-9-")  # MDC ECG lead codes, SCPECG lead codes


def _channel_name(channel: Dataset) -> tuple[str, bool, int]:
    """(name, is an ECG lead, preference: 0 for Lead II) of a ChannelDefinitionSequence item."""
    source = getattr(channel, "ChannelSourceSequence", None)
    code = source[0] if source else Dataset()
    meaning = str(getattr(code, "CodeMeaning", "") or getattr(channel, "ChannelLabel", "") or "")
    value = str(getattr(code, "CodeValue", ""))
    text = meaning.lower()
    ecg = value.startswith(_ECG_CODES) or "ecg" in text or "lead" in text or "ekg" in text
    lead2 = text.replace(" ", "") in ("leadii", "ii", "lead2") or value in ("2:2", "5.6.3-9-2")
    return meaning or value or "ECG", ecg, 0 if lead2 else 1


def _read_ecg(ds: Dataset, label: str) -> ECGWaveform | None:
    """The ECG channel of the WaveformSequence, or None when the file has none."""
    groups = getattr(ds, "WaveformSequence", None)
    if not groups:
        return None
    best: tuple[int, int, int] | None = None
    for g, group in enumerate(groups):
        for c, channel in enumerate(getattr(group, "ChannelDefinitionSequence", None) or ()):
            _, ecg, preference = _channel_name(channel)
            group_label = str(getattr(group, "MultiplexGroupLabel", "")).lower()
            if ecg or "ecg" in group_label:
                if best is None or preference < best[0]:
                    best = (preference, g, c)
    if best is None:
        return None
    _, g, c = best
    group = groups[g]
    try:
        samples = np.asarray(ds.waveform_array(g), dtype=np.float64)[:, c]
    except Exception as e:  # pydicom: wrong length, bits, interpretation
        raise ValueError(f"{label}: the ECG waveform (WaveformSequence item {g}) cannot be read ({e})") from e
    channel = group.ChannelDefinitionSequence[c]
    units = getattr(channel, "ChannelSensitivityUnitsSequence", None)
    unit = str(getattr(units[0], "CodeValue", "")) if units else ""
    if unit == "uV":
        samples, unit = samples / 1000.0, "mV"
    rate = _floats(getattr(group, "SamplingFrequency", None))
    if not rate or not rate[0] > 0:
        raise ValueError(f"{label}: the ECG waveform has no SamplingFrequency (003A,001A) > 0")
    offset = _floats(getattr(group, "MultiplexGroupTimeOffset", None))
    return ECGWaveform(
        samples, rate[0], offset[0] if offset else 0.0, _channel_name(channel)[0], unit or "mV"
    )


def read_xa_cine(path: str | os.PathLike[str], require_geometry: bool = True) -> XACine:
    """Read a multi-frame (or single-frame) XA / RF run with its timing, geometry and ECG (module docstring).

    Args:
        path: the DICOM file.
        require_geometry: False = a header without the C-arm tags still gives the frames and timing
            (``geometries`` None, the reason in ``meta["geometry_error"]``).

    Raises:
        FileNotFoundError / IsADirectoryError; ValueError naming the file: not DICOM, truncated, not
        XA/RF, colour frames, inconsistent timing, an unreadable ECG, or (``require_geometry``) a C-arm
        tag missing.
    """
    path = Path(path)
    label = str(path)
    geometry: CArmGeometry | None = None
    meta: dict[str, Any] = {}
    try:
        geometry = geometry_from_dicom(path)
    except ValueError as e:
        if require_geometry or "required C-arm tag" not in str(e):
            raise
        meta["geometry_error"] = str(e)
    try:
        ds = pydicom.dcmread(path)
        frames = np.asarray(ds.pixel_array)
    except Exception as e:  # pydicom: pixel data shorter than declared, no decoder, ...
        raise ValueError(f"{label}: the frames cannot be read ({type(e).__name__}: {e})") from e
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise ValueError(
            f"{label}: colour frames (SamplesPerPixel {ds.SamplesPerPixel}); expected monochrome XA"
        )
    frames = frames.reshape(n, int(ds.Rows), int(ds.Columns)).astype(np.float32)
    slope, intercept = (_floats(getattr(ds, k, None)) for k in ("RescaleSlope", "RescaleIntercept"))
    if slope or intercept:
        frames = frames * np.float32(slope[0] if slope else 1.0) + np.float32(
            intercept[0] if intercept else 0.0
        )
    if (
        str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1"
    ):  # stored dark = high: make dark low
        frames = frames.max() + frames.min() - frames
    times, source = _frame_times(ds, n, label)
    delay = _floats(getattr(ds, "FrameDelay", None))
    if times is not None and delay:
        times = times + delay[0]
    geometries = None
    if geometry is not None:
        angles = _per_frame_angles(ds, n, geometry.primary_angle_deg, geometry.secondary_angle_deg, label)
        meta["per_frame_geometry"] = angles is not None
        if angles is None:
            geometries = [geometry] * n
        else:
            geometries = [geometry.with_(primary_angle_deg=float(a), secondary_angle_deg=float(b),
                                         name=f"{geometry.name}[{i}]") for i, (a, b) in enumerate(angles)]  # fmt: skip
    meta["time_source"] = source
    heart_rate = _floats(getattr(ds, "HeartRate", None))
    if heart_rate:
        meta["header_heart_rate_bpm"] = heart_rate[0]
    return XACine(frames, times, geometries, _read_ecg(ds, label), label, meta)


def _ecg_group(ecg: ECGWaveform) -> Dataset:
    """A WaveformSequence item holding ``ecg`` as one 16-bit Lead II channel (1 uV per count)."""
    counts = np.clip(np.round(ecg.samples * 1000.0), -32768, 32767).astype("<i2")
    source = Dataset()
    source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = "2:2", "MDC", ecg.channel
    unit = Dataset()
    unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "uV", "UCUM", "microvolt"
    channel = Dataset()
    channel.ChannelSourceSequence = Sequence([source])
    channel.ChannelSensitivity = "1"
    channel.ChannelSensitivityUnitsSequence = Sequence([unit])
    channel.ChannelSensitivityCorrectionFactor = "1"
    channel.ChannelBaseline = "0"
    channel.ChannelSampleSkew = "0"
    channel.WaveformBitsStored = 16
    group = Dataset()
    group.MultiplexGroupTimeOffset = f"{ecg.start_ms:.3f}"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = 1
    group.NumberOfWaveformSamples = len(counts)
    group.SamplingFrequency = f"{ecg.sampling_hz:g}"
    group.MultiplexGroupLabel = "ECG"
    group.ChannelDefinitionSequence = Sequence([channel])
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = counts.tobytes()
    return group


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters with as many digits as fit."""
    return f"{value:.9g}"


def write_xa_cine(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    geometry: CArmGeometry,
    frame_time_ms: float | np.ndarray,
    ecg: ECGWaveform | None = None,
    angle_increments_deg: np.ndarray | None = None,
    heart_rate_bpm: float | None = None,
) -> Path:
    """Write an uncompressed legacy multi-frame XA file (atomically: a temp sibling, then a rename).

    Args:
        path: the new file.
        frames: (N, rows, cols) values in [0, 1] (vessels dark), stored as 8-bit MONOCHROME2.
        geometry: the header's C-arm pose (angles, SID, SOD, pixel spacing; the isocentre is not
            stored: a reader puts it at RAS 0); rows x cols must be its detector.
        frame_time_ms: the constant frame interval (ms) -> ``FrameTime`` / ``CineRate``, or (N,)
            intervals (first 0) -> ``FrameTimeVector``.
        ecg: written as a WaveformSequence ECG channel (16 bit, 1 uV per count) when given.
        angle_increments_deg: (N, 2) per-frame primary / secondary increments (rotational runs).
        heart_rate_bpm: ``HeartRate`` (0018,1088) when given.

    Returns:
        The path written.

    Raises:
        ValueError: frames not (N, rows, cols) of the detector, values outside [0, 1], bad timing.
    """
    path = Path(path)
    frames = np.asarray(frames, dtype=np.float64)
    n = frames.shape[0] if frames.ndim == 3 else 0
    if frames.ndim != 3 or frames.shape[1:] != (geometry.detector_rows, geometry.detector_cols):
        raise ValueError(
            f"frames: expected (N, {geometry.detector_rows}, {geometry.detector_cols}) for the geometry's "
            f"detector, got shape {frames.shape}"
        )
    if not (np.all(np.isfinite(frames)) and frames.min() >= 0.0 and frames.max() <= 1.0):
        raise ValueError("frames: expected finite values in [0, 1]")
    intervals = np.atleast_1d(np.asarray(frame_time_ms, dtype=np.float64))
    if not (np.all(np.isfinite(intervals)) and np.all(intervals[-1:] > 0) and len(intervals) in (1, n)):
        raise ValueError(
            f"frame_time_ms: expected one interval > 0 ms or {n} intervals, got {frame_time_ms!r}"
        )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = XA_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "XA", 1, 1
    ds.PatientName, ds.PatientID = "Synthetic^Cine", "SYNTH"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.PositionerPrimaryAngle = _ds(geometry.primary_angle_deg)
    ds.PositionerSecondaryAngle = _ds(geometry.secondary_angle_deg)
    ds.DistanceSourceToDetector = _ds(geometry.sid_mm)
    ds.DistanceSourceToPatient = _ds(geometry.sod_mm)
    ds.ImagerPixelSpacing = [_ds(s) for s in geometry.pixel_spacing_mm]
    ds.NumberOfFrames = n
    if len(intervals) == 1:
        ds.FrameTime = f"{intervals[0]:.4f}"
        ds.CineRate = max(1, round(1000.0 / intervals[0]))
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    else:
        ds.FrameTimeVector = [f"{t:.4f}" for t in intervals]
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTimeVector")
    if angle_increments_deg is not None:
        inc = np.asarray(angle_increments_deg, dtype=np.float64).reshape(n, 2)
        ds.PositionerPrimaryAngleIncrement = [f"{v:.4f}" for v in inc[:, 0]]
        ds.PositionerSecondaryAngleIncrement = [f"{v:.4f}" for v in inc[:, 1]]
    if heart_rate_bpm is not None:
        ds.HeartRate = round(heart_rate_bpm)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = geometry.detector_rows, geometry.detector_cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.round(frames * 255.0).astype(np.uint8).tobytes()
    if ecg is not None:
        ds.WaveformSequence = Sequence([_ecg_group(ecg)])
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
