"""Angiography cine runs in a scene: load a multi-frame XA run, suggest the end-diastolic frame, take a frame.

What Slicer makes of a multi-frame XA file (assumed from Slicer's own DICOM plugins, read, not run):
``DICOMImageSequencePlugin`` (the default for XA / RF, confidence 0.7) loads it as a
``vtkMRMLSequenceNode`` of one-slice scalar volumes, index name "time" in seconds (frame i at i x
FrameTime), shown through a sequence browser's proxy node; ``DICOMScalarVolumePlugin`` loads it as one
scalar volume whose K slices are the frames. Neither keeps the C-arm geometry nor the ECG.
:func:`load_xa_cine` therefore reads the file with the library
(:func:`xraycardiac.geometry.dicom_cine.read_xa_cine`) and builds the same kind of sequence node, with
each frame node carrying its ``XRayCardiac.Geometry`` and the sequence node the run's
``XRayCardiac.FrameTimesMs`` and ``XRayCardiac.ECG``; the panel's run selectors take that sequence
node or a multi-slice volume node (frames along K; geometry, times and ECG from the same attributes
when a script set them). The phase selection itself is the library's
(:func:`xraycardiac.coronary.recon.phase.select_frame`): no Qt, no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from XRayCardiacCommonLib.mrml_io import (
    ATTRIBUTE_PREFIX,
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    describe_node,
    format_projection_matrix,
    node_from_volume,
    volume_from_node,
)

from xraycardiac.volume import Volume

__all__ = [
    "ECG_ATTRIBUTE",
    "FRAME_TIMES_ATTRIBUTE",
    "RunFrames",
    "frame_node_and_volume",
    "is_run",
    "load_xa_cine",
    "run_frames",
    "suggest_frame",
]

FRAME_TIMES_ATTRIBUTE = ATTRIBUTE_PREFIX + "FrameTimesMs"
ECG_ATTRIBUTE = ATTRIBUTE_PREFIX + "ECG"
SOURCE_ATTRIBUTE = ATTRIBUTE_PREFIX + "SourceFile"


def _is_sequence(node: Any) -> bool:
    return node is not None and hasattr(node, "IsA") and node.IsA("vtkMRMLSequenceNode")


def is_run(node: Any) -> bool:
    """True for a sequence node or a scalar volume node with more than one slice (a cine run)."""
    if _is_sequence(node):
        return True
    if node is None or not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode"):
        return False
    image = node.GetImageData()
    return image is not None and image.GetDimensions()[2] > 1


def load_xa_cine(scene: Any, path: str | os.PathLike[str], name: str | None = None) -> Any:
    """Read a multi-frame XA file into a new sequence node (module docstring) and return it.

    Raises:
        ValueError / FileNotFoundError: from ``read_xa_cine``, naming the file; nothing is added then.
    """
    from xraycardiac.geometry.dicom_cine import read_xa_cine

    cine = read_xa_cine(path)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name or os.path.basename(str(path)))
    try:
        times = cine.frame_times_ms
        sequence.SetIndexName("time" if times is not None else "frame")
        sequence.SetIndexUnit("s" if times is not None else "")
        for i in range(cine.num_frames):
            geometry = cine.geometries[i]
            frame = node_from_volume(
                scene, Volume(cine.frames[i][None], geometry.detector_ijk_to_ras()), f"{sequence.GetName()} [{i}]",
                attributes={GEOMETRY_ATTRIBUTE: geometry.to_dict(),
                            PROJECTION_MATRIX_ATTRIBUTE: format_projection_matrix(geometry.projection_matrix())},
            )  # fmt: skip
            value = f"{times[i] / 1000.0:.4f}" if times is not None else str(i)
            sequence.SetDataNodeAtValue(frame, value)  # copies the frame into the sequence
            display = frame.GetDisplayNode()
            if display is not None:
                scene.RemoveNode(display)
            scene.RemoveNode(frame)
        sequence.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps(cine.geometries[0].to_dict()))
        sequence.SetAttribute(SOURCE_ATTRIBUTE, cine.source)
        if times is not None:
            sequence.SetAttribute(FRAME_TIMES_ATTRIBUTE, json.dumps([float(t) for t in times]))
        if cine.ecg is not None:
            sequence.SetAttribute(ECG_ATTRIBUTE, json.dumps(cine.ecg.to_dict()))
    except Exception:
        scene.RemoveNode(sequence)
        raise
    return sequence


@dataclass
class RunFrames:
    """A run's frames and timing as the phase selection needs them.

    Attributes:
        frames: (N, rows, cols) float32.
        times_ms: (N,) frame times (ms) or None.
        ecg: an ``ECGWaveform`` or None.
    """

    frames: np.ndarray
    times_ms: np.ndarray | None
    ecg: Any


def _json_attribute(node: Any, attribute: str, name: str) -> Any:
    text = node.GetAttribute(attribute)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: {node.GetName()!r}: {attribute} is not JSON ({exc})") from None


def run_frames(node: Any, name: str = "volume_node") -> RunFrames:
    """The frames of a run node (sequence of one-slice volumes, or a multi-slice volume), times and ECG.

    Times: ``XRayCardiac.FrameTimesMs``, else a sequence's "time" index in seconds (what Slicer's DICOM
    plugin writes), else None.

    Raises:
        ValueError: naming ``name``: not a run, a frame that is not a one-slice scalar volume, frames of
            different sizes.
    """
    from xraycardiac.geometry.dicom_cine import ECGWaveform

    if not is_run(node):
        raise ValueError(
            f"{name}: expected a cine run (a sequence node or a multi-frame volume), got {describe_node(node)}"
        )
    times = _json_attribute(node, FRAME_TIMES_ATTRIBUTE, name)
    if _is_sequence(node):
        frames = []
        for i in range(node.GetNumberOfDataNodes()):
            volume = volume_from_node(node.GetNthDataNode(i), f"{name} frame {i}").array
            if volume.shape[0] != 1 or (frames and volume.shape[1:] != frames[0].shape):
                raise ValueError(
                    f"{name}: frame {i} of {node.GetName()!r} is {volume.shape}; expected one-slice frames of one size"
                )
            frames.append(volume[0])
        array = np.stack(frames).astype(np.float32)
        if times is None and node.GetIndexName() == "time" and node.GetIndexUnit() == "s":
            times = [1000.0 * float(node.GetNthIndexValue(i)) for i in range(node.GetNumberOfDataNodes())]
    else:
        array = volume_from_node(node, name).array.astype(np.float32)
    ecg = _json_attribute(node, ECG_ATTRIBUTE, name)
    return RunFrames(array, None if times is None else np.asarray(times, dtype=np.float64),
                     ECGWaveform.from_dict(ecg) if ecg else None)  # fmt: skip


def suggest_frame(node: Any, ecg_offset_ms: float = 0.0, name: str = "volume_node") -> Any:
    """The library's phase selection (``PhaseSelection``) on a run node: end-diastole + ``ecg_offset_ms``."""
    from xraycardiac.coronary.recon.phase import select_frame

    run = run_frames(node, name)
    return select_frame(run.frames, run.times_ms, run.ecg, "auto", ecg_offset_ms)


def frame_node_and_volume(node: Any, index: int, name: str = "volume_node") -> tuple[Any, Volume]:
    """(the node carrying frame ``index``'s geometry attribute, the frame as a one-slice ``Volume``).

    A sequence's frame is its own node; a multi-slice volume's frames share the volume node.

    Raises:
        ValueError: naming ``name``: the index outside the run.
    """
    if _is_sequence(node):
        n = node.GetNumberOfDataNodes()
        if not 0 <= index < n:
            raise ValueError(f"{name}: frame {index} is outside the run's frames 0..{n - 1}")
        frame = node.GetNthDataNode(index)
        return frame, volume_from_node(frame, name)
    volume = volume_from_node(node, name)
    n = volume.array.shape[0]
    if not 0 <= index < n:
        raise ValueError(f"{name}: frame {index} is outside the run's frames 0..{n - 1}")
    shift = np.eye(4)
    shift[2, 3] = index
    return node, Volume(volume.array[index : index + 1], volume.ijk_to_ras @ shift, dict(volume.meta))
