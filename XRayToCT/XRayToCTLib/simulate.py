"""Simulate radiographs (DRRs) of a CT volume node: MRML in, the core ``drr`` job, MRML out.

The rendering itself is the core pipeline ``drr`` (``xraycardiac.jobs.drr``), run in a separate
process; this file only builds its job from scene nodes and imports its results. Each output is a
2D scalar volume node (one slice, placed on the detector plane in RAS with the detector pixel
spacing) carrying:

* ``XRayCardiac.ProjectionMatrix``: 12 comma-separated numbers, the row-major 3x4 matrix mapping
  homogeneous RAS mm to pixel (column, row), pixel centres at integers, origin top-left;
* ``XRayCardiac.Geometry``: the C-arm geometry JSON the job wrote (angles, SID, SOD, detector);
* provenance: ``XRayCardiac.Pipeline``, ``PackageVersion``, ``Device``, ``Parameters``, ``SourceNode``.

Pose presets come from ``CArmGeometry.preset`` (X2CT-GAN distances: SID 949 mm, SOD 541 mm);
"Custom" uses the angles and distances given. Angles follow DICOM: primary + LAO / - RAO,
secondary + cranial / - caudal.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from XRayCardiacCommonLib.jobs import JobLogic, JobRun, JobStatus
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    format_projection_matrix,
    node_from_volume,
    removed_on_error,
    set_provenance,
    volume_from_node,
)

from xraycardiac.io import read_volume, require_2d, require_3d
from xraycardiac.jobs.drr import view_geometry
from XRayToCTLib.choices import (
    DEFAULT_DETECTOR_COLS,
    DEFAULT_DETECTOR_ROWS,
    DEFAULT_PIXEL_SPACING_MM,
    DEFAULT_SID_MM,
    DEFAULT_SOD_MM,
    DEVICE_CHOICES,
    POSE_CHOICES,
)

__all__ = [
    "DEVICE_CHOICES",
    "POSE_CHOICES",
    "SimulateRadiographsLogic",
    "SimulationRun",
    "build_views",
    "custom_view_name",
]

PIPELINE = "drr"
# pose -> (view name, CArmGeometry preset) for each view it renders
_PRESET_VIEWS: dict[str, tuple[tuple[str, str], ...]] = {
    "PA": (("PA", "pa"),),
    "Lateral": (("Lateral", "lateral"),),
    "PA + lateral": (("PA", "pa"), ("Lateral", "lateral")),
}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _number(value: float) -> str:
    return f"{abs(value):g}"


def custom_view_name(primary_angle_deg: float, secondary_angle_deg: float) -> str:
    """A view name that says the pose, e.g. ``"LAO30_CRA15"``, ``"RAO20_CAU10"``, ``"AP"`` at 0/0."""
    parts = []
    if primary_angle_deg:
        parts.append(("LAO" if primary_angle_deg > 0 else "RAO") + _number(primary_angle_deg))
    if secondary_angle_deg:
        parts.append(("CRA" if secondary_angle_deg > 0 else "CAU") + _number(secondary_angle_deg))
    return "_".join(parts) or "AP"


def build_views(
    pose: str,
    detector_rows: int = DEFAULT_DETECTOR_ROWS,
    detector_cols: int = DEFAULT_DETECTOR_COLS,
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM,
    primary_angle_deg: float = 0.0,
    secondary_angle_deg: float = 0.0,
    sid_mm: float = DEFAULT_SID_MM,
    sod_mm: float = DEFAULT_SOD_MM,
) -> list[dict[str, Any]]:
    """The ``params.views`` list of the ``drr`` job for a pose choice and a detector.

    Args:
        pose: one of ``POSE_CHOICES``. A preset takes its angles and distances from
            ``CArmGeometry.preset``; ``"Custom"`` uses the four arguments below.
        detector_rows: detector size in pixels (rows), > 0.
        detector_cols: detector size in pixels (columns), > 0.
        pixel_spacing_mm: square detector pixel size at the detector, mm, > 0.
        primary_angle_deg: Custom only; + LAO, - RAO.
        secondary_angle_deg: Custom only; + cranial, - caudal.
        sid_mm: Custom only; source to detector distance.
        sod_mm: Custom only; source to isocentre distance (< ``sid_mm``).

    Returns:
        One view dict per image; the isocentre is left to the job (the centre of the CT).

    Raises:
        ValueError: naming the bad argument and what is allowed.
    """
    if pose not in POSE_CHOICES:
        raise ValueError(f"pose: expected one of {list(POSE_CHOICES)}, got {pose!r}")
    detector = {
        "detector_rows": detector_rows,
        "detector_cols": detector_cols,
        "pixel_spacing_mm": [pixel_spacing_mm, pixel_spacing_mm],
    }
    if pose == "Custom":
        views = [
            {
                "name": custom_view_name(primary_angle_deg, secondary_angle_deg),
                "primary_angle_deg": primary_angle_deg,
                "secondary_angle_deg": secondary_angle_deg,
                "sid_mm": sid_mm,
                "sod_mm": sod_mm,
                **detector,
                "isocenter_ras_mm": None,
            }
        ]
    else:
        views = [{"name": name, "preset": preset, **detector} for name, preset in _PRESET_VIEWS[pose]]
    for view in views:
        _check_view(view)
    return views


def _check_view(view: Any) -> None:
    """Validate one view with the job's own parser, so a bad value fails before a process starts."""
    view_geometry(view, np.zeros(3))


@dataclass
class SimulationRun(JobRun):
    """A started DRR job and what is needed to import its results.

    Attributes:
        ct_name: name of the CT node, used in the output node names.
        ct_id: MRML ID of the CT node.
        views: the requested views.
        params: the job parameters.
    """

    ct_name: str
    ct_id: str
    views: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)


class SimulateRadiographsLogic(JobLogic[SimulationRun, list[Any]]):
    """Build, start and import DRR jobs for a scene (``JobLogic``: poll, cancel, import_results)."""

    @staticmethod
    def output_name(ct_name: str, view_name: str) -> str:
        """Name of the output node of one view, e.g. ``"chest DRR PA"``."""
        return f"{ct_name} DRR {view_name}"

    def start(
        self,
        ct_node: Any,
        views: Sequence[dict[str, Any]],
        device: str = "auto",
        step_mm: float | None = None,
    ) -> SimulationRun:
        """Check the inputs and start the job; returns at once (the scene is not changed).

        Args:
            ct_node: a 3D ``vtkMRMLScalarVolumeNode`` in HU (not a label map, not a 2D image).
            views: view dicts as ``build_views`` makes them; names must be unique.
            device: ``auto``, ``cpu``, ``cuda`` (``cuda:N`` and ``mps`` are accepted too); an
                unavailable accelerator falls back to the CPU with a warning in the job log.
            step_mm: ray sampling step in mm; None = half the smallest CT voxel spacing.

        Raises:
            ValueError: naming the bad parameter (``ct_node``, ``views``, ``device``, ``step_mm``).
        """
        ct = volume_from_node(ct_node, "ct_node")
        if ct_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(
                f"ct_node: {ct_node.GetName()!r} is a label map; select a CT (scalar volume in HU)"
            )
        require_3d(ct, "ct_node")
        views = [dict(v) for v in views]
        if not views:
            raise ValueError("views: expected at least one view")
        for view in views:
            try:
                _check_view(view)
            except ValueError as exc:
                raise ValueError(f"views: {exc}") from exc
        names = [v["name"] for v in views]
        if len(set(names)) != len(names):
            raise ValueError(f"views: view names must be unique, got {names}")
        if not isinstance(device, str) or not _DEVICE.match(device.strip().lower()):
            raise ValueError(
                f"device: expected one of {list(DEVICE_CHOICES)} (or cuda:N, mps), got {device!r}"
            )
        if step_mm is not None and not (
            isinstance(step_mm, int | float) and math.isfinite(step_mm) and step_mm > 0
        ):
            raise ValueError(f"step_mm: expected a finite value > 0 mm or None, got {step_mm!r}")
        params: dict[str, Any] = {"views": views, "device": device.strip().lower()}
        if step_mm is not None:
            params["step_mm"] = float(step_mm)
        return self.start_job(
            PIPELINE,
            params,
            input_nodes={"ct": ct},
            run_type=SimulationRun,
            ct_name=ct_node.GetName(),
            ct_id=ct_node.GetID(),
            views=views,
            params=params,
        )

    def _add_nodes(self, run: SimulationRun, status: JobStatus) -> list[Any]:
        """One 2D volume node per view of a done job (``import_results``), in the order of ``run.views``.

        Raises:
            ValueError: an output file is not what the ``drr`` job promises.
        """
        out = Path(status.output_dir or "")
        summary = status.summary or {}
        outputs = summary.get("views", {})
        nodes: list[Any] = []
        with removed_on_error(self.scene):
            for view in run.views:
                name = view["name"]
                files = outputs.get(name)
                if not isinstance(files, dict) or "image" not in files or "geometry" not in files:
                    raise ValueError(f"drr job: no image/geometry listed for view {name!r} in its summary")
                image = require_2d(read_volume(out / files["image"]), f"drr output {files['image']}")
                geometry = json.loads((out / files["geometry"]).read_text(encoding="utf-8"))
                matrix = np.asarray(geometry.get("projection_matrix"), dtype=np.float64)
                node = node_from_volume(
                    self.scene,
                    image,
                    self.output_name(run.ct_name, name),
                    attributes={
                        PROJECTION_MATRIX_ATTRIBUTE: format_projection_matrix(matrix),
                        GEOMETRY_ATTRIBUTE: geometry,
                    },
                )
                nodes.append(node)
                provenance = {
                    "Pipeline": PIPELINE,
                    "Device": summary.get("device", run.params.get("device")),
                    "Parameters": {**{k: v for k, v in run.params.items() if k != "views"}, "view": view},
                    "SourceNode": run.ct_id,
                }
                if summary.get("xraycardiac_version"):  # the version that ran the job
                    provenance["PackageVersion"] = summary["xraycardiac_version"]
                set_provenance(node, provenance)
        return nodes

    def run(
        self,
        ct_node: Any,
        views: Sequence[dict[str, Any]],
        device: str = "auto",
        step_mm: float | None = None,
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
    ) -> list[Any]:
        """``start``, wait (blocking) and ``import_results``: for scripts and tests.

        Raises:
            everything ``start`` and ``import_results`` raise; TimeoutError after ``timeout_s``.
        """
        run = self.start(ct_node, views, device=device, step_mm=step_mm)
        return self.wait_and_import(run, timeout_s=timeout_s, on_update=on_update)
