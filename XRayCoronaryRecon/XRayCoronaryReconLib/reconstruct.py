"""Two X-ray frames in a scene -> matched keypoints, refined view 2, 3D centreline: the ``coronary-reconstruct`` job.

The work is the core pipeline ``coronary-reconstruct`` (:mod:`xraycardiac.jobs.coronary_reconstruct`:
keypoint matching, refinement of view 2's C-arm geometry, 3D centreline reconstruction), run in a
separate process; this file checks the nodes, writes them as the job's inputs and imports its
outputs. Input volume nodes are 2D (one slice) scalar volumes carrying ``XRayCardiac.Geometry``
(a ``CArmGeometry.to_dict()`` JSON: what the "Synthetic angiograms" section and the DICOM XA reader
store); it is handed to the job as ``geometry1`` / ``geometry2``. Optional vessel mask nodes (label
maps or scalar volumes, > 0 = vessel, the size of their image) are the accurate path: without them
the job segments the vessels with the learned network (``segmentation="network"``, the
``coronary-vessel-seg-demo`` model) or, as the classical baseline, by Frangi vesselness
(``segmentation="frangi"``).

``import_results`` adds (names start with ``"<view 1 name> recon"``):

* two locked markups point lists "... keypoints view 1/2": the matched keypoints, each at its
  position ON ITS IMAGE'S DETECTOR PLANE in RAS (recorded geometry, so it overlays the image node),
  labelled by its match index (the same label in both lists = one match);
* a table node "... matches": columns index, u1, v1, u2, v2 (pixels, u = column, v = row), score;
* one markups curve per reconstructed branch "... segment_NNN" (linear curves, locked; each starts
  at its parent point so the branches connect), a model node "... centreline" (polylines with
  ``Radius``) and a model node "... tube" (the tube surface), RAS mm;
* for each view the network segmented: a scalar volume "... vessel probability view N" (0-1, on the
  image's grid) and a segmentation "... vessels view N" (the model's mask: probability >= its threshold);
* on volume node 2: ``XRayCardiac.Geometry`` / ``XRayCardiac.ProjectionMatrix`` replaced by the
  refined geometry (when refined), the previous geometry kept once as ``XRayCardiac.GeometryOriginal``
  (a second run keeps the first original), and ``XRayCardiac.CalibrationRefined``,
  ``XRayCardiac.ReprojectionErrorBeforePx`` / ``...AfterPx`` (mean over the matches, pixels).

Every added node carries provenance (``Pipeline``, ``PackageVersion``, ``Device``, ``Parameters``,
``SourceNodes``). On any error nothing is added and volume node 2's attributes are restored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from XRayCardiacCommonLib.jobs import JobLogic, JobRun, JobStatus
from XRayCardiacCommonLib.mrml_io import (
    ATTRIBUTE_PREFIX,
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    describe_node,
    format_projection_matrix,
    node_from_volume,
    node_geometry,
    removed_on_error,
    set_provenance,
    temporary_nodes,
    volume_from_node,
)

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.geometry import CArmGeometry
from xraycardiac.volume import Volume
from XRayCoronaryReconLib import (
    DEVICE_CHOICES,
    LEARNED_METHOD_CHOICES,
    RECONSTRUCT_DEFAULT_METHOD,
    RECONSTRUCT_METHOD_CHOICES,
    SEGMENTATION_CHOICES,
)

__all__ = [
    "GEOMETRY_ORIGINAL_ATTRIBUTE",
    "PIPELINE",
    "ReconstructLogic",
    "ReconstructRun",
    "describe_calibration",
    "method_spec",
    "views_from_lists",
]

PIPELINE = "coronary-reconstruct"
GEOMETRY_ORIGINAL_ATTRIBUTE = ATTRIBUTE_PREFIX + "GeometryOriginal"
_CALIBRATION_ATTRIBUTES = (
    ATTRIBUTE_PREFIX + "CalibrationRefined",
    ATTRIBUTE_PREFIX + "ReprojectionErrorBeforePx",
    ATTRIBUTE_PREFIX + "ReprojectionErrorAfterPx",
)
_VIEW2_ATTRIBUTES = (GEOMETRY_ATTRIBUTE, PROJECTION_MATRIX_ATTRIBUTE, GEOMETRY_ORIGINAL_ATTRIBUTE)
_VIEW2_ATTRIBUTES += _CALIBRATION_ATTRIBUTES
_TABLE_COLUMNS = ("index", "u1", "v1", "u2", "v2", "score")


def method_spec(choice: str, matcher_model: str = "") -> str:
    """The job's ``method`` string of a panel choice: ``"matcher"`` + a model -> ``"matcher:<model>"``,
    ``"matcher on vessels + band"`` + a model -> ``"vmatcher:<model>+band"``.

    Raises:
        ValueError: naming ``method`` for an unknown choice, ``matcher_model`` when a learned one has none.
    """
    if choice not in RECONSTRUCT_METHOD_CHOICES:
        raise ValueError(f"method: expected one of {list(RECONSTRUCT_METHOD_CHOICES)}, got {choice!r}")
    if choice not in LEARNED_METHOD_CHOICES:
        return choice
    model = (matcher_model or "").strip()
    if not model:
        raise ValueError(
            "matcher_model: the learned matcher needs a model name, run folder or .pt weights file"
        )
    return f"matcher:{model}" if choice == "matcher" else f"vmatcher:{model}+band"


def describe_calibration(calibration: dict[str, Any]) -> str:
    """One line for the panel: the reprojection error before / after, which pose was kept and why.

    E.g. ``"Reprojection error 3.21 px -> 0.05 px (view 2 refined, 42 matches, 3 outliers: held-out
    matches fit better ...)"`` or ``"Reprojection error 3.21 px (42 matches); refinement to 2.10 px
    rejected, recorded view 2 kept: ..."``.
    """
    before = (calibration.get("error_before_px") or {}).get("mean")
    after = (calibration.get("error_after_px") or {}).get("mean")
    n = calibration.get("matches", 0)
    reason = calibration.get("reason") or "not refined"
    views = int(calibration.get("views") or 2)
    which = "view 2" if views == 2 else f"views 2-{views}"  # view 1 is the fixed reference
    if before is None:
        return f"Reprojection error: no match ({n} matches); {which} not refined"
    if calibration.get("refined"):
        outliers = len(calibration.get("outliers") or [])
        return (
            f"Reprojection error {before:.2f} px -> {after:.2f} px ({which} refined, {n} matches, "
            f"{outliers} outliers: {reason})"
        )
    candidate = ((calibration.get("candidate") or {}).get("error_after_px") or {}).get("mean")
    if candidate is not None:
        return (
            f"Reprojection error {before:.2f} px ({n} matches); refinement to {candidate:.2f} px rejected, "
            f"recorded {which} kept: {reason}"
        )
    return f"Reprojection error {before:.2f} px ({n} matches; {which} not refined: {reason})"


def views_from_lists(
    volume_nodes: Sequence[Any], mask_nodes: Sequence[Any] = (), frames: Sequence[int | None] = ()
) -> list[tuple[Any, Any, int | None]]:
    """Views 3, 4, ... as (volume node, mask node or None, frame or None), from the panel's lists.

    Trailing None volumes are dropped (empty selectors); masks / frames may be shorter than the views.

    Raises:
        ValueError: a None view before a selected one, or a mask / frame without its view (named by
            view number, e.g. ``more_volume_nodes[0] (view 3)``).
    """
    volumes = list(volume_nodes)
    while volumes and volumes[-1] is None:
        volumes.pop()
    for i, node in enumerate(volumes):
        if node is None:
            raise ValueError(
                f"more_volume_nodes[{i}] (view {i + 3}): empty while view {len(volumes) + 2} is selected; "
                "select the views in order"
            )
    for name, values in (("more_mask_nodes", list(mask_nodes)), ("more_frames", list(frames))):
        extra = [i for i, value in enumerate(values) if value is not None and i >= len(volumes)]
        if extra:
            raise ValueError(
                f"{name}[{extra[0]}] (view {extra[0] + 3}): given, but view {extra[0] + 3} has no image; "
                f"{len(volumes)} more view(s) selected"
            )
    masks, picks = list(mask_nodes) + [None] * len(volumes), list(frames) + [None] * len(volumes)
    return [(node, masks[i], picks[i]) for i, node in enumerate(volumes)]


def _image(node: Any, name: str) -> Volume:
    """A 2D (one slice) scalar volume node as a ``Volume``; a ValueError naming ``name`` otherwise."""
    volume = volume_from_node(node, name)
    if volume.array.shape[0] != 1:
        raise ValueError(
            f"{name}: {node.GetName()!r} has {volume.array.shape[0]} slices; expected one 2D X-ray frame"
        )
    return volume


def _view(
    node: Any, name: str, frame: int | None, ecg_offset_ms: float
) -> tuple[Volume, Any, dict[str, Any] | None]:
    """(the frame as a one-slice ``Volume``, the node holding its geometry, how it was chosen or None).

    A cine run (a sequence node, or a multi-slice volume: ``XRayCoronaryReconLib.cine``) gives frame
    ``frame``, or with None the library's end-diastole (+ ``ecg_offset_ms``); a one-slice volume is
    its own frame (``frame`` None or 0).
    """
    from XRayCoronaryReconLib.cine import frame_node_and_volume, is_run, suggest_frame

    if not is_run(node):
        if frame not in (None, 0):
            raise ValueError(f"{name}: {describe_node(node)} is one frame; frame {frame} needs a cine run")
        return _image(node, name), node, None
    if frame is None:
        choice = suggest_frame(node, ecg_offset_ms, name)
        record = {"frame": choice.frame, "method": choice.method, "reason": choice.reason}
    else:
        record = {"frame": int(frame), "method": "user", "reason": f"frame {frame} chosen by the user"}
    holder, volume = frame_node_and_volume(node, record["frame"], name)
    return volume, holder, record


def _geometry(node: Any, name: str, shape: tuple[int, int]) -> dict[str, Any]:
    """The node's ``XRayCardiac.Geometry`` dict, parsed and checked against its (rows, cols); required."""
    geometry = node_geometry(node, name, shape)
    if geometry is None:
        raise ValueError(
            f"{name}: {node.GetName()!r} has no C-arm geometry (attribute {GEOMETRY_ATTRIBUTE}); load the "
            "frame from DICOM XA (the geometry is read from its header) or make it in 'Synthetic angiograms'"
        )
    return geometry


@dataclass
class ReconstructRun(JobRun):
    """A started ``coronary-reconstruct`` job and what is needed to import its results.

    Attributes:
        params: the job parameters.
        nodes: the input nodes (``volume1``, ``volume2``, optional ``mask1``, ``mask2``).
        prefix: start of the output node names.
        frames: per view given as a cine run, ``{"view1": {"frame", "method", "reason"}, ...}`` and the
            frame nodes holding the geometry used (``"geometry_node1"`` / ``"geometry_node2"``).
    """

    params: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)
    prefix: str = "Coronary recon"
    frames: dict[str, Any] = field(default_factory=dict)


class ReconstructLogic(JobLogic[ReconstructRun, dict[str, Any]]):
    """Start ``coronary-reconstruct`` jobs on two X-ray volume nodes and import their results (``JobLogic``)."""

    def start(
        self,
        volume_node1: Any,
        volume_node2: Any,
        mask_node1: Any = None,
        mask_node2: Any = None,
        method: str = RECONSTRUCT_DEFAULT_METHOD,
        foundation: str | None = None,
        refine_calibration: bool = True,
        device: str = "auto",
        epipolar_tolerance_px: float = 3.0,
        frame1: int | None = None,
        frame2: int | None = None,
        ecg_offset_ms: float = 0.0,
        segmentation: str = "network",
        prior_sigma_deg: float = 1.5,
        prior_sigma_mm: float = 3.0,
        more_volume_nodes: Sequence[Any] = (),
        more_mask_nodes: Sequence[Any] = (),
        more_frames: Sequence[int | None] = (),
    ) -> ReconstructRun:
        """Check the nodes and parameters and start the job; returns at once (the scene is not changed).

        Args:
            volume_node1, volume_node2: 2D scalar volume nodes (one slice) with ``XRayCardiac.Geometry``;
                their sizes may differ (each has its own geometry).
            mask_node1, mask_node2: optional vessel masks (> 0 = vessel) of the size of their image:
                the accurate path (module docstring); None = Frangi segmentation of the image.
            method: keypoint matcher (``xraycardiac.coronary.matching.evaluate.METHOD_FORMS``), e.g.
                ``"vessel+epipolar"``, ``"sift+epipolar"``, ``"matcher:<model or folder>"``.
            foundation: ``"family:/folder"`` of the learned matcher's foundation model, or None.
            refine_calibration: refine view 2's geometry from the matches (skipped, and said so,
                with fewer than 6 matches).
            device: ``auto``, ``cpu`` or ``cuda``.
            epipolar_tolerance_px: tolerance of the ``+epipolar`` filter, pixels.
            frame1, frame2: for a view given as a cine run (sequence node or multi-slice volume:
                ``XRayCoronaryReconLib.cine``), the frame to use; None = the suggested one (end-diastole
                + ``ecg_offset_ms`` ms, by the run's ECG or, without one, its images).
            ecg_offset_ms: the wanted phase after the R peak (ms).
            segmentation: how views without a mask are segmented: "network" (learned, with a
                probability map) or "frangi" (the classical baseline).
            prior_sigma_deg, prior_sigma_mm: how far view 2's recorded angles (degrees) and isocentre
                (mm) may be off: the calibration prior's standard deviations (> 0; checked by the job's
                ``PairConfig``).
            more_volume_nodes: views 3, 4, ... (frames or runs, as views 1 and 2; trailing None ignored):
                an N-view job, all views but view 1 calibrated jointly (:func:`views_from_lists`).
            more_mask_nodes, more_frames: their masks and frames, in the same order (None = none / auto).

        Raises:
            ValueError: naming the parameter: a node that is not a 2D scalar volume, a volume without
                geometry (or one unlike its size), a mask of another size, an empty method, an
                unknown device, a foundation model with a method that does not use one.
        """
        volumes: dict[str, Volume] = {}
        geometries: dict[str, dict[str, Any]] = {}
        frames: dict[str, Any] = {}
        extra = views_from_lists(more_volume_nodes, more_mask_nodes, more_frames)
        view_nodes = [(1, volume_node1, frame1), (2, volume_node2, frame2)]
        view_nodes += [(v, node, frame) for v, (node, _, frame) in enumerate(extra, start=3)]
        mask_nodes = [(1, mask_node1), (2, mask_node2)] + [
            (v, m) for v, (_, m, _) in enumerate(extra, start=3)
        ]
        for v, node, frame in view_nodes:
            name = f"volume_node{v}"
            volumes[f"image{v}"], holder, record = _view(node, name, frame, float(ecg_offset_ms))
            geometries[f"geometry{v}"] = _geometry(holder, name, volumes[f"image{v}"].array.shape[1:])
            frames[f"geometry_node{v}"] = holder
            if record is not None:
                frames[f"view{v}"] = record
        for v, node in mask_nodes:
            if node is None:
                continue
            mask = _image(node, f"mask_node{v}")
            shape, expected = mask.array.shape[1:], volumes[f"image{v}"].array.shape[1:]
            if shape != expected:
                raise ValueError(
                    f"mask_node{v}: {node.GetName()!r} is {shape[0]} x {shape[1]} pixels but volume_node{v} "
                    f"is {expected[0]} x {expected[1]}; a vessel mask must be the size of its image"
                )
            volumes[f"mask{v}"] = Volume((mask.array > 0).astype(np.uint8), mask.ijk_to_ras)
        if not isinstance(method, str) or not method.strip():
            raise ValueError(
                f"method: expected a matcher such as {RECONSTRUCT_DEFAULT_METHOD!r}, got {method!r}"
            )
        method = method.strip()
        foundation = foundation.strip() if isinstance(foundation, str) and foundation.strip() else None
        if foundation is not None and not method.startswith(("matcher:", "vmatcher:")):
            raise ValueError(
                f"foundation: only the learned matcher (method 'matcher:<model>') uses a foundation model; "
                f"method is {method!r}: clear the foundation folder or choose a matcher"
            )
        device_text = device.strip().lower() if isinstance(device, str) else device
        if device_text not in DEVICE_CHOICES:
            raise ValueError(f"device: expected one of {list(DEVICE_CHOICES)}, got {device!r}")
        if not isinstance(refine_calibration, bool):
            raise ValueError(f"refine_calibration: expected True or False, got {refine_calibration!r}")
        for name, sigma in (("prior_sigma_deg", prior_sigma_deg), ("prior_sigma_mm", prior_sigma_mm)):
            if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
                raise ValueError(f"{name}: expected a standard deviation > 0, got {sigma!r}")
        if segmentation not in SEGMENTATION_CHOICES:
            raise ValueError(
                f"segmentation: expected one of {list(SEGMENTATION_CHOICES)}, got {segmentation!r}"
            )
        params: dict[str, Any] = {
            "segmentation": segmentation,
            "prior_sigma_deg": float(prior_sigma_deg),
            "prior_sigma_mm": float(prior_sigma_mm),
            "method": method,
            "refine_calibration": refine_calibration,
            "epipolar_tolerance_px": float(epipolar_tolerance_px),
            "device": device_text,
        }
        if foundation is not None:
            params["foundation"] = foundation
        nodes = {f"volume{v}": node for v, node, _ in view_nodes} | {
            f"mask{v}": node for v, node in mask_nodes
        }
        return self.start_job(
            PIPELINE,
            params,
            input_nodes=volumes,
            run_type=ReconstructRun,
            json_inputs=geometries,
            params=params,
            nodes=nodes,
            prefix=f"{volume_node1.GetName()} recon",
            frames=frames,
        )

    def run(
        self,
        volume_node1: Any,
        volume_node2: Any,
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """``start``, wait (blocking) and ``import_results``: for scripts and tests.

        Args:
            options: ``start``'s other arguments.

        Raises:
            everything ``start`` and ``import_results`` raise; TimeoutError after ``timeout_s``.
        """
        run = self.start(volume_node1, volume_node2, **options)
        return self.wait_and_import(run, timeout_s=timeout_s, on_update=on_update)

    # ------------------------------------------------------------------------------------ import

    def _add_nodes(self, run: ReconstructRun, status: JobStatus) -> dict[str, Any]:
        """The nodes of a done job (module docstring), for ``import_results``.

        Returns:
            ``{"keypoints1", "keypoints2": markups, "table": table node, "branches": [curve nodes],
            "centreline", "tube": model nodes, "calibration": calibration.json dict, "report":
            report.json dict, "text": describe_calibration(...)}``. On any error no node is added and
            volume node 2's attributes are unchanged.
        """
        root, summary = Path(status.output_dir or ""), status.summary or {}
        matches = json.loads((root / "matches.json").read_text(encoding="utf-8"))
        calibration = json.loads((root / "calibration.json").read_text(encoding="utf-8"))
        refined = json.loads((root / "geometry2_refined.json").read_text(encoding="utf-8"))
        report = json.loads((root / "report.json").read_text(encoding="utf-8"))
        tree = CoronaryTree.load_json(root / "tree.json")
        n_views = sum(1 for k in run.nodes if k.startswith("volume"))
        used = [refined]
        if n_views > 2:
            used = json.loads((root / "geometries_refined.json").read_text(encoding="utf-8"))[1:]
        pairs = matches.get("pairs") or {"1-2": {"x_i": matches["x1"], "x_j": matches["x2"]}}
        xs = {key: tuple(np.asarray(p[k], dtype=np.float64).reshape(-1, 2) for k in ("x_i", "x_j"))
              for key, p in pairs.items()}  # fmt: skip
        scores = np.asarray(matches.get("scores") or np.zeros(len(xs["1-2"][0])), dtype=np.float64).reshape(
            -1
        )
        x1, x2 = xs.get("1-2", (np.zeros((0, 2)), np.zeros((0, 2))))
        targets = [run.nodes[f"volume{v}"] for v in range(2, n_views + 1)]
        g1, g2 = (
            CArmGeometry.from_dict(
                json.loads(
                    run.frames.get(f"geometry_node{v}", run.nodes[f"volume{v}"]).GetAttribute(
                        GEOMETRY_ATTRIBUTE
                    )
                )
            )
            for v in (1, 2)
        )
        provenance = {
            "Pipeline": PIPELINE,
            "Device": report.get("device", run.params.get("device")),
            "Parameters": run.params,
            "SourceNodes": [n.GetID() for n in run.nodes.values() if n is not None],
        }
        if summary.get("xraycardiac_version"):
            provenance["PackageVersion"] = summary["xraycardiac_version"]
        saved = [{a: node.GetAttribute(a) for a in _VIEW2_ATTRIBUTES} for node in targets]
        added: list[Any] = []
        result: dict[str, Any] = {"calibration": calibration, "report": report,
                                  "frames": {k: v for k, v in run.frames.items() if k.startswith("view")}}  # fmt: skip
        try:
            with removed_on_error(self.scene):
                for v, x, g in ((1, x1, g1), (2, x2, g2)):
                    node = self._add_keypoints(f"{run.prefix} keypoints view {v}", x, g, added)
                    result[f"keypoints{v}"] = node
                result["table"] = self._add_table(f"{run.prefix} matches", x1, x2, scores, added)
                result["tables"] = [result["table"]] + [
                    self._add_table(f"{run.prefix} matches {key}", a, b, np.zeros(len(a)), added)
                    for key, (a, b) in xs.items() if key != "1-2"
                ]  # fmt: skip
                result["branches"] = self._add_branches(run.prefix, tree, added)
                result["centreline"] = self._add_model(f"{run.prefix} centreline", tree.to_polydata(), added)
                result["tube"] = self._add_model(f"{run.prefix} tube", _read_vtp(root / "tube.vtp"), added)
                for v in range(1, n_views + 1):
                    name = (report.get("outputs") or {}).get(f"vessel_probability{v}")
                    if name:
                        nodes = self._add_vessels(
                            f"{run.prefix}", v, root / name, run.nodes[f"volume{v}"], added
                        )
                        result[f"vessel_probability{v}"], result[f"vessels{v}"] = nodes
                for node in added:
                    set_provenance(node, provenance)
                for node, geometry in zip(targets, used, strict=True):
                    self._store_calibration(node, calibration, geometry)
        except BaseException:
            for node, attributes in zip(targets, saved, strict=True):
                for attribute, value in attributes.items():
                    if value is None:
                        node.RemoveAttribute(attribute)
                    else:
                        node.SetAttribute(attribute, value)
            raise
        result["warnings"] = list((report.get("plausibility") or {}).get("warnings") or [])
        result["text"] = describe_calibration(calibration) + "".join(
            f"\nWARNING: {w}" for w in result["warnings"]
        )
        return result

    def _add_vessels(
        self, prefix: str, view: int, path: Path, image_node: Any, added: list[Any]
    ) -> tuple[Any, Any]:
        """The job's vessel probability of one view as a scalar volume and a segmentation (probability >= 0.5)."""
        from xraycardiac.io import read_volume

        probability = read_volume(path)
        volume = node_from_volume(self.scene, probability, f"{prefix} vessel probability view {view}")
        added.append(volume)
        display = volume.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
        labels = Volume((np.asarray(probability.array) >= 0.5).astype(np.uint8), probability.ijk_to_ras)
        segmentation = self.scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{prefix} vessels view {view}"
        )
        added.append(segmentation)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(image_node)
        with temporary_nodes(self.scene) as keep:
            labelmap = node_from_volume(
                self.scene, labels, f"{prefix} vessels view {view} (temporary import)",
                node_class="vtkMRMLLabelMapVolumeNode",
            )  # fmt: skip
            imported = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmap, segmentation
            )
            keep += [
                segmentation,
                *(segmentation.GetNthDisplayNode(i) for i in range(segmentation.GetNumberOfDisplayNodes())),
            ]
            keep.append(slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene))
        if not imported:
            raise ValueError(
                f"{path.name}: the vessel mask of view {view} could not be imported into a segmentation"
            )
        return volume, segmentation

    def _store_calibration(self, node: Any, calibration: dict[str, Any], refined: dict[str, Any]) -> None:
        """The refined geometry and the reprojection errors as attributes of volume node 2."""
        before = (calibration.get("error_before_px") or {}).get("mean")
        after = (calibration.get("error_after_px") or {}).get("mean")
        values = (calibration.get("refined", False), before, after)
        for attribute, value in zip(_CALIBRATION_ATTRIBUTES, values, strict=True):
            node.SetAttribute(attribute, json.dumps(value))
        if not calibration.get("refined"):
            return
        if node.GetAttribute(GEOMETRY_ORIGINAL_ATTRIBUTE) is None:  # keep the first original
            node.SetAttribute(GEOMETRY_ORIGINAL_ATTRIBUTE, node.GetAttribute(GEOMETRY_ATTRIBUTE))
        geometry = CArmGeometry.from_dict(refined)
        node.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps(geometry.to_dict(), sort_keys=True))
        node.SetAttribute(PROJECTION_MATRIX_ATTRIBUTE, format_projection_matrix(geometry.projection_matrix()))

    def _add_keypoints(self, name: str, uv: np.ndarray, geometry: CArmGeometry, added: list[Any]) -> Any:
        """A locked point list of the matched pixels at their detector-plane RAS positions, label = match index."""
        markups = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        added.append(markups)
        markups.CreateDefaultDisplayNodes()
        positions = geometry.pixel_to_detector_ras(uv) if len(uv) else np.zeros((0, 3))
        for i, p in enumerate(positions):
            markups.AddControlPoint(float(p[0]), float(p[1]), float(p[2]), str(i))
        markups.SetLocked(True)
        return markups

    def _add_table(
        self, name: str, x1: np.ndarray, x2: np.ndarray, scores: np.ndarray, added: list[Any]
    ) -> Any:
        """A table node: index, u1, v1, u2, v2 (pixels), score."""
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        added.append(table)
        columns = (np.arange(len(x1)), x1[:, 0], x1[:, 1], x2[:, 0], x2[:, 1], scores)
        for column_name, values in zip(_TABLE_COLUMNS, columns, strict=True):
            array = vtk.vtkIntArray() if column_name == "index" else vtk.vtkDoubleArray()
            array.SetName(column_name)
            array.SetNumberOfValues(len(values))
            for i, value in enumerate(values):
                array.SetValue(i, int(value) if column_name == "index" else float(value))
            table.AddColumn(array)
        return table

    def _add_branches(self, prefix: str, tree: CoronaryTree, added: list[Any]) -> list[Any]:
        """One locked linear markups curve per branch, starting at the parent point of its first point."""
        curves = []
        for b, name in enumerate(tree.branch_names):
            index = np.flatnonzero(tree.branch == b)
            if len(index) == 0:
                continue
            parent = int(tree.parents[index[0]])
            if parent >= 0:
                index = np.concatenate([[parent], index])
            if len(index) < 2:
                continue
            points = vtk.vtkPoints()
            for p in tree.points[index]:
                points.InsertNextPoint(float(p[0]), float(p[1]), float(p[2]))
            curve = self.scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", f"{prefix} {name}")
            added.append(curve)
            curve.CreateDefaultDisplayNodes()
            curve.SetCurveTypeToLinear()
            curve.SetControlPointPositionsWorld(points)
            curve.SetLocked(True)
            curves.append(curve)
        return curves

    def _add_model(self, name: str, polydata: Any, added: list[Any]) -> Any:
        model = self.scene.AddNewNodeByClass("vtkMRMLModelNode", name)
        added.append(model)
        model.SetAndObservePolyData(polydata)
        model.CreateDefaultDisplayNodes()
        return model


def _read_vtp(path: Path) -> Any:
    """The polydata of a ``.vtp`` file; a ValueError naming the file when it cannot be read."""
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    if poly is None or poly.GetNumberOfPoints() == 0:
        raise ValueError(f"{path.name}: the job's tube model is empty or unreadable")
    out = vtk.vtkPolyData()
    out.DeepCopy(poly)
    return out
