"""Synthetic coronary angiograms into a scene: the core ``coronary-synth`` job, MRML out.

The synthesis itself is the core pipeline ``coronary-synth`` (``xraycardiac.jobs.coronary_synth``:
a coronary tree, K clinically used C-arm view pairs, physics or diffusion rendering, ground-truth
keypoints), run in a separate process; this file only starts it and imports the dataset it writes
(format: :mod:`xraycardiac.coronary.synth.dataset`). One run makes one tree and K pairs of it. The tree is
either procedural (phantom seed = ``seed``) or extracted from a coronary label map in the scene
(``labelmap_node``: the job's ``inputs.labelmap``, written to NRRD in world RAS; the tree is
``tree_from_labelmap`` of its ``left_label`` / ``right_label``). A segmentation node is exported to a
temporary label map node first (``vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode``,
in slicer-core, no Qt), which is removed again: its segments become labels 1, 2, ... in the order of
the segment list, as Slicer's "Export to label map" numbers them. For each pair k and view v it adds:

* a 2D scalar volume node "<prefix> pair k view v" (one slice, the rendered angiogram as float in
  [0, 1], vessels dark) placed on the detector plane in RAS by ``CArmGeometry.detector_ijk_to_ras``,
  carrying ``XRayCardiac.ProjectionMatrix`` (12 numbers, row-major 3x4, RAS mm -> pixel (u, v)) and
  ``XRayCardiac.Geometry`` (the view's ``CArmGeometry.to_dict()``);
* a markups point list "<prefix> pair k view v keypoints": the ground-truth keypoints that fall on
  that detector, each at its position ON THE DETECTOR PLANE in RAS (so it overlays the image in
  3D and projects back to its pixel), labelled by its index in the pair's keypoint list (the same
  label in both views = a ground-truth match), with its kind and branch as description.

and once, the 3D centreline of the whole tree (both coronary trees, RAS mm) as a model node
"<prefix> centreline" with the point arrays ``Radius``, ``Branch``, ``Tree``. Every node carries
provenance attributes (``Pipeline``, ``PackageVersion``, ``Device``, ``Seed``, ``Parameters``,
``Sample``; with a label map also ``LabelMapNode``, its name, and ``SourceNode``, its ID). Pairs the
job skips (the tree outside the field of view) add no node and are reported in the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
from XRayCardiacCommonLib.jobs import JobLogic, JobRun, JobStatus
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    describe_node,
    format_projection_matrix,
    node_from_volume,
    removed_on_error,
    set_provenance,
    temporary_nodes,
    volume_from_node,
)

from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.coronary.synth import dataset as ds
from xraycardiac.geometry import CArmGeometry
from xraycardiac.jobs.coronary_synth import config_from_params
from xraycardiac.jsonutil import is_int
from xraycardiac.volume import Volume
from XRayCoronaryReconLib import (
    DEVICE_CHOICES,
    DIFFUSION_MODEL,
    DIFFUSION_STEPS,
    INJECTION_CHOICES,
    MAX_PAIRS,
    RENDERER_CHOICES,
)

__all__ = ["PIPELINE", "SyntheticAngiogramsLogic", "SyntheticRun", "labelmap_volume"]

PIPELINE = "coronary-synth"
_TREE_INDEX = 0  # one run = one tree (index 0, phantom seed = seed)


def _segmentation_volume(scene: Any, node: Any, name: str) -> Volume:
    """A segmentation node as a label map ``Volume`` (segments -> 1, 2, ... in list order), via a temporary node."""
    if node.GetSegmentation() is None or node.GetSegmentation().GetNumberOfSegments() == 0:
        raise ValueError(f"{name}: segmentation {node.GetName()!r} has no segment")
    with temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass(
            "vtkMRMLLabelMapVolumeNode", f"{node.GetName()} (temporary export)"
        )
        # tight extent around the segments, padded, with the segmentation's parent transform
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
            node, labelmap, slicer.vtkSegmentation.EXTENT_UNION_OF_EFFECTIVE_SEGMENTS_PADDED
        )
        if not exported:
            raise ValueError(f"{name}: segmentation {node.GetName()!r} could not be exported to a label map")
        return volume_from_node(labelmap, name)


def labelmap_volume(
    scene: Any, node: Any, left_label: int | None, right_label: int | None, name: str = "labelmap_node"
) -> Volume:
    """The coronary label map of ``node`` as a ``Volume`` (world RAS), checked for the requested labels.

    Args:
        scene: the scene holding ``node`` (a segmentation is exported through a temporary node
            that is removed again: the scene's nodes are unchanged).
        node: a ``vtkMRMLLabelMapVolumeNode``, a ``vtkMRMLScalarVolumeNode`` with integer values, or
            a ``vtkMRMLSegmentationNode`` (segments -> labels 1, 2, ... in segment-list order).
        left_label: label value of the left coronary tree, or None.
        right_label: label value of the right coronary tree, or None (may equal ``left_label``).
        name: the parameter name used in error messages.

    Returns:
        Volume (K, J, I) of integer labels with the node's IJK-to-world-RAS matrix.

    Raises:
        ValueError: naming ``name``: another node type, no voxels, a 2D image, non-integer values,
            or no voxel of either label.
    """
    if node is None or not hasattr(node, "IsA"):
        raise ValueError(f"{name}: expected a label map volume node or a segmentation node, got {node!r}")
    if node.IsA("vtkMRMLSegmentationNode"):
        volume = _segmentation_volume(scene, node, name)
    elif node.IsA("vtkMRMLScalarVolumeNode"):
        volume = volume_from_node(node, name)
    else:
        raise ValueError(
            f"{name}: expected a label map volume node (vtkMRMLLabelMapVolumeNode, or a scalar volume of "
            f"integer labels) or a segmentation node, got {describe_node(node)}"
        )
    label = node.GetName()
    i, j, k = volume.shape_ijk
    if min(i, j, k) < 2:
        raise ValueError(f"{name}: {label!r} is not a 3D label map: size (I, J, K) = ({i}, {j}, {k}) voxels")
    array = volume.array
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.rint(array))
        if bad.any():
            raise ValueError(
                f"{name}: {label!r} holds non-integer values (e.g. {array[bad].flat[0]!r}); expected "
                "integer labels (a label map or a segmentation, not an image)"
            )
    requested = [v for v in dict.fromkeys((left_label, right_label)) if v is not None]
    if not any(np.any(array == v) for v in requested):
        values = np.unique(array)
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if values.size > 10 else "")
        raise ValueError(
            f"{name}: {label!r} has no voxel of left_label {left_label} or right_label {right_label} "
            f"(values present: {shown}); set the labels the map uses"
        )
    return volume


@dataclass
class SyntheticRun(JobRun):
    """A started ``coronary-synth`` job and what is needed to import its results.

    Attributes:
        params: the job parameters (with a label map, also ``labelmap``: the input node's name).
        prefix: start of the output node names, e.g. ``"Synthetic angio seed 7"``, or
            ``"Synthetic angio <label map node name>"``.
        source: provenance of the input node (``LabelMapNode``: name, ``SourceNode``: ID); empty
            for a procedural tree.
    """

    params: dict[str, Any] = field(default_factory=dict)
    prefix: str = "Synthetic angio"
    source: dict[str, Any] = field(default_factory=dict)


class SyntheticAngiogramsLogic(JobLogic[SyntheticRun, dict[str, Any]]):
    """Start ``coronary-synth`` jobs and import their view pairs, keypoints and centreline (``JobLogic``)."""

    def start(
        self,
        seed: int = 0,
        pairs: int = 1,
        injection: str = "left",
        image_size: int | None = None,
        device: str = "auto",
        labelmap_node: Any = None,
        left_label: int | None = 1,
        right_label: int | None = 2,
        renderer: str = "physics",
        diffusion_model: str = DIFFUSION_MODEL,
    ) -> SyntheticRun:
        """Check the parameters and start the job; returns at once (the scene is not changed).

        Args:
            seed: integer >= 0: the phantom seed of the procedural tree, and the seed of the views
                and renderings (the same seed gives the same tree, views and images).
            pairs: number of view pairs K, 1..``MAX_PAIRS``.
            injection: ``"left"`` or ``"right"``: the opacified coronary tree (and its standard views).
            image_size: square detector size in pixels, 64..2048; the pixel size scales so that the
                field of view stays that of a 512-pixel detector (~150-200 mm). None: 512 for
                "physics", the model's grid (128 for ``angio-diffusion-demo``) for "diffusion".
            device: ``auto``, ``cpu`` or ``cuda`` (projection ray marcher, diffusion model).
            labelmap_node: None (a procedural tree), or the coronary label map the tree is extracted
                from: a ``vtkMRMLLabelMapVolumeNode``, a ``vtkMRMLScalarVolumeNode`` of integer labels
                or a ``vtkMRMLSegmentationNode`` (see the module docstring).
            left_label: with ``labelmap_node``: label of the left coronary tree (integer >= 1), or None.
            right_label: with ``labelmap_node``: label of the right coronary tree, or None; equal to
                ``left_label`` when one label holds both trees (ImageCAS).
            renderer: ``"physics"`` (Beer-Lambert) or ``"diffusion"`` (mask-conditioned diffusion
                model ``diffusion_model``, ``DIFFUSION_STEPS`` DDIM steps).
            diffusion_model: the diffusion renderer's model name (``xraycardiac models list``), folder
                or weights file.

        Raises:
            ValueError: naming the bad parameter, its value and what is allowed (an unknown
                diffusion model: ``renderer_config.model``). FileNotFoundError: the diffusion
                model's weights are missing.
        """
        if not is_int(seed, numpy=True) or seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
        if not is_int(pairs, numpy=True) or not 1 <= pairs <= MAX_PAIRS:
            raise ValueError(f"pairs: expected an integer from 1 to {MAX_PAIRS}, got {pairs!r}")
        if injection not in INJECTION_CHOICES:
            raise ValueError(f"injection: expected one of {list(INJECTION_CHOICES)}, got {injection!r}")
        if image_size is not None and (not is_int(image_size, numpy=True) or not 64 <= image_size <= 2048):
            raise ValueError(
                f"image_size: expected an integer from 64 to 2048 pixels or None, got {image_size!r}"
            )
        device_text = device.strip().lower() if isinstance(device, str) else device
        if device_text not in DEVICE_CHOICES:
            raise ValueError(f"device: expected one of {list(DEVICE_CHOICES)}, got {device!r}")
        if renderer not in RENDERER_CHOICES:
            raise ValueError(f"renderer: expected one of {list(RENDERER_CHOICES)}, got {renderer!r}")
        params: dict[str, Any] = {
            "trees": 1,
            "pairs_per_tree": int(pairs),
            "renderer": renderer,
            "seed": int(seed),
            "injection": injection,
            "device": device_text,
        }
        if image_size is not None:
            params["image_size"] = int(image_size)
        if renderer == "diffusion":
            params["renderer_config"] = {"model": diffusion_model, "steps": DIFFUSION_STEPS}
        config_from_params(params)  # the job's own checks, now (an unknown diffusion model included)
        if labelmap_node is None:
            return self.start_job(
                PIPELINE,
                params,
                run_type=SyntheticRun,
                params=params,
                prefix=f"Synthetic angio seed {int(seed)}",
            )

        for name, value in (("left_label", left_label), ("right_label", right_label)):
            if value is not None and (not is_int(value, numpy=True) or value < 1):
                raise ValueError(
                    f"{name}: expected an integer label >= 1 or None (no such tree), got {value!r}"
                )
        if left_label is None and right_label is None:
            raise ValueError(
                "left_label, right_label: both are None; give the label of at least one coronary tree"
            )
        side_label = left_label if injection == "left" else right_label
        if side_label is None:
            raise ValueError(
                f"{injection}_label: None, but injection {injection!r} opacifies the {injection} coronary tree"
            )
        volume = labelmap_volume(self.scene, labelmap_node, left_label, right_label)
        if left_label != right_label and not np.any(volume.array == side_label):
            raise ValueError(
                f"labelmap_node: {labelmap_node.GetName()!r} has no voxel of {injection}_label {side_label}, "
                f"the tree that injection {injection!r} opacifies"
            )
        params["left_label"] = None if left_label is None else int(left_label)
        params["right_label"] = None if right_label is None else int(right_label)
        return self.start_job(
            PIPELINE,
            params,
            input_nodes={"labelmap": volume},
            run_type=SyntheticRun,
            params={**params, "labelmap": labelmap_node.GetName()},
            prefix=f"Synthetic angio {labelmap_node.GetName()}",
            source={"LabelMapNode": labelmap_node.GetName(), "SourceNode": labelmap_node.GetID()},
        )

    def run(
        self,
        seed: int = 0,
        pairs: int = 1,
        injection: str = "left",
        image_size: int | None = None,
        device: str = "auto",
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """``start``, wait (blocking) and ``import_results``: for scripts and tests.

        Args:
            options: ``start``'s other arguments (``labelmap_node``, ``left_label``, ``right_label``,
                ``renderer``, ``diffusion_model``).

        Raises:
            everything ``start`` and ``import_results`` raise; TimeoutError after ``timeout_s``.
        """
        run = self.start(seed, pairs, injection, image_size, device, **options)
        return self.wait_and_import(run, timeout_s=timeout_s, on_update=on_update)

    # ------------------------------------------------------------------------------------ import

    def _add_nodes(self, run: SyntheticRun, status: JobStatus) -> dict[str, Any]:
        """The nodes of a done job (module docstring), for ``import_results``.

        Returns:
            ``{"pairs": [{"view1", "view2", "keypoints1", "keypoints2": node, "sample": name}, ...],
            "centreline": model node, "skipped": [{"sample", "reason"}, ...]}``, pairs in order.
        """
        root = Path(status.output_dir or "")
        summary = status.summary or {}
        provenance: dict[str, Any] = {
            "Pipeline": PIPELINE,
            "Device": summary.get("config", {}).get("device", run.params.get("device")),
            "Seed": run.params["seed"],
            "Parameters": run.params,
            **run.source,
        }
        if summary.get("xraycardiac_version"):  # the version that ran the job
            provenance["PackageVersion"] = summary["xraycardiac_version"]
        tree = CoronaryTree.load_json(ds.tree_dir(root, _TREE_INDEX) / "tree.json")
        result: dict[str, Any] = {
            "pairs": [],
            "centreline": None,
            "skipped": summary.get("skipped_pairs", []),
        }
        with removed_on_error(self.scene):
            model = self._add_model(f"{run.prefix} centreline", tree)
            set_provenance(model, provenance)
            result["centreline"] = model
            for k in range(run.params["pairs_per_tree"]):
                path = ds.sample_path(root, _TREE_INDEX, k)
                if not path.is_dir():  # skipped by the job (listed in result["skipped"])
                    continue
                sample = ds.read_sample(path, load_thickness=False)
                nodes: dict[str, Any] = {"sample": sample["name"]}
                for v in (1, 2):
                    geometry_dict = sample["geometry"][f"view{v}"]
                    geometry = CArmGeometry.from_dict(geometry_dict)
                    name = f"{run.prefix} pair {k} view {v}"
                    image = Volume(
                        sample[f"image{v}"][None].astype(np.float32), geometry.detector_ijk_to_ras()
                    )
                    node = node_from_volume(
                        self.scene,
                        image,
                        name,
                        attributes={
                            PROJECTION_MATRIX_ATTRIBUTE: format_projection_matrix(
                                sample["projection_matrices"][v - 1]
                            ),
                            GEOMETRY_ATTRIBUTE: geometry_dict,
                        },
                    )
                    markups = self._add_keypoints(f"{name} keypoints", sample["keypoints"], v, geometry)
                    for n in (node, markups):
                        set_provenance(n, {**provenance, "Sample": sample["name"], "View": v})
                    nodes[f"view{v}"], nodes[f"keypoints{v}"] = node, markups
                result["pairs"].append(nodes)
        return result

    def _add_model(self, name: str, tree: CoronaryTree) -> Any:
        """A model node holding the tree's centreline polydata (RAS mm)."""
        model = self.scene.AddNewNodeByClass("vtkMRMLModelNode", name)
        model.SetAndObservePolyData(tree.to_polydata())
        model.CreateDefaultDisplayNodes()
        return model

    def _add_keypoints(self, name: str, keypoints: dict[str, Any], view: int, geometry: CArmGeometry) -> Any:
        """A locked point list: the keypoints on detector ``view``, at their detector-plane RAS positions."""
        indices = np.flatnonzero(keypoints[f"in_field{view}"])
        positions = geometry.pixel_to_detector_ras(keypoints[f"uv{view}"][indices])
        markups = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        markups.CreateDefaultDisplayNodes()
        for n, (i, p) in enumerate(zip(indices, positions, strict=True)):
            markups.AddControlPoint(float(p[0]), float(p[1]), float(p[2]), str(int(i)))
            markups.SetNthControlPointDescription(
                n, f"{keypoints['kind'][i]} {keypoints['branch'][i]}".strip()
            )
        markups.SetLocked(True)  # ground truth: not to be dragged
        return markups
