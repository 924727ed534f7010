"""Synthetic cardiac CT cases into a scene: MRML template in, the core ``cardiac-synth`` job, MRML out.

The synthesis is the core pipeline ``cardiac-synth`` (``xraycardiac.jobs.cardiac_synth``: the Mask
Generation Module deforms the template's labels, each mask gets an image by warping the template CT
or by the template-conditioned diffusion model, plus a confidence map), run in a separate process;
this file builds its job from scene nodes and imports the dataset it writes
(:mod:`xraycardiac.cardiac.synth`).

Template: no node = the procedural cardiac phantom of ``phantom_seed``. Otherwise a CT
(``template_volume``, scalar volume, HU) and its labels (``template_segmentation_or_labelmap``):

* a segmentation node: segments are matched to the cardiac label table BY NAME (``label_by_name``:
  key such as ``lv``, name such as ``LV blood pool``, or a TotalSegmentator class name such as
  ``heart`` or ``superior_vena_cava``; else the type of its terminology), case-insensitive; with
  ``label_mapping="totalsegmentator"`` the other segments of a whole-body segmentation, as the
  TotalSegmentator extension makes it, are left out) and exported onto the CT's
  grid (``ExportSegmentsToLabelmapNode`` with the CT as reference; its parent transform is applied)
  through a temporary label map node that is removed again, so the scene's nodes are unchanged;
* a label map node (or a scalar volume of integer labels) on exactly the CT's grid, of table values
  or mapped by ``label_mapping`` (a preset or JSON file, :mod:`xraycardiac.cardiac.label_maps`).

Outputs, per case ``i`` (file ``case_XXXXX``), in one subject-hierarchy folder
"CardiacSynth <template> seed <seed>" (names in use get Slicer's unique suffix):

* "CardiacSynth case i image": scalar volume, float32 HU, the template's grid and RAS geometry;
* "CardiacSynth case i labels": segmentation, one segment per label present, named as the template's
  segment (segmentation template) or as the table, coloured by the table;
* "CardiacSynth case i confidence": scalar volume, float32 in [0, 1] (1 for "warp"), window [0, 1].

Every node carries provenance attributes: ``Pipeline``, ``PackageVersion``, ``Device``, ``Seed``,
``Parameters`` (the job's), ``Template``, ``Case``, ``CaseSeed``, ``Renderer``, ``Quantity``; with a
TCDM model ``ModelName`` / ``ModelSha256``; with template nodes ``TemplateVolumeNode`` /
``TemplateLabelsNode`` (names) and ``SourceNode`` (the CT's ID); after an export ``ExportDir``. A
failed or cancelled job, or an output that is not what the job promises, adds no node.

Export ("Export dataset"): with ``export_dir`` (a new or empty folder) the whole dataset (nnU-Net /
MONAI layout: ``imagesTr/``, ``labelsTr/``, ``confidenceTr/``, ``cases/``, ``dataset.json``,
``datalist.json``, ``synth.json``, the template as NRRD) is copied there atomically (to a hidden
sibling, then renamed). With ``nnunet_dataset_id`` the export folder is an ``nnUNet_raw`` folder and
the dataset goes to its ``Dataset<ID>_<NAME>`` folder (``nnunet_dataset_name``, default
"CardiacSynth"), as ``xraycardiac cardiac synth --nnunet-raw --dataset-id --dataset-name`` does; an
ID another dataset there already uses is refused before the job starts. The job's own files are
deleted in every case.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from XRayCardiacCommonLib.jobs import JobLogic, JobRun, JobStatus
from XRayCardiacCommonLib.mrml_io import (
    describe_node,
    node_from_volume,
    removed_on_error,
    set_provenance,
    temporary_nodes,
    volume_from_node,
)

from CardiacSynthLib import (
    DEFAULT_DATASET_NAME,
    DEVICE_CHOICES,
    MAX_CASES,
    MAX_STRENGTH_MM,
    MAX_TEMPLATE_VOXELS,
    RENDERER_CHOICES,
)
from CardiacSynthLib.export import export_dataset, export_target
from xraycardiac.cardiac.label_maps import LabelMapping, apply_label_mapping, resolve_label_mapping
from xraycardiac.cardiac.labels import LABEL_TABLE, label_by_name, label_info
from xraycardiac.cardiac.mgm import MGMConfig
from xraycardiac.cardiac.synth import CardiacSynthConfig, dataset_label_values
from xraycardiac.io import read_volume
from xraycardiac.jsonutil import is_int
from xraycardiac.volume import Volume

__all__ = ["NAME_PREFIX", "PIPELINE", "CardiacSynthLogic", "CardiacSynthRun", "export_dataset"]

PIPELINE = "cardiac-synth"
NAME_PREFIX = "CardiacSynth"
IMAGE_PARAM = "template_volume"
LABELS_PARAM = "template_segmentation_or_labelmap"
GRID_ATOL_MM = 1e-3  # two grids are one when their IJK-to-RAS matrices agree to this (as the core checks)
MAX_STEPS = 1000
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _grid_text(volume: Volume) -> str:
    """Size, spacing and origin of a grid, for error messages."""
    m = volume.ijk_to_ras
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    return (
        f"size (I, J, K) {tuple(int(v) for v in volume.shape_ijk)} voxels, spacing "
        f"{np.array2string(spacing, precision=4)} mm, origin {np.array2string(m[:3, 3], precision=3)} mm"
    )


# ------------------------------------------------------------------------------------- parameters


def _job_params(
    n: Any,
    seed: Any,
    strength_mm: Any,
    renderer: Any,
    model: Any,
    steps: Any,
    device: Any,
    harmonise: Any = True,
) -> dict[str, Any]:
    """The ``cardiac-synth`` job parameters, checked here and by the core's own config."""
    if not is_int(n, numpy=True) or not 1 <= n <= MAX_CASES:
        raise ValueError(
            f"n: expected an integer from 1 to {MAX_CASES} cases, got {n!r} (larger sets: "
            "xraycardiac cardiac synth --n N --shard i/K)"
        )
    if not is_int(seed, numpy=True) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    if (
        not isinstance(strength_mm, int | float | np.number)
        or isinstance(strength_mm, bool)
        or not 0.0 <= float(strength_mm) <= MAX_STRENGTH_MM
    ):
        raise ValueError(
            f"strength_mm: expected a number from 0 to {MAX_STRENGTH_MM:g} mm, got {strength_mm!r}"
        )
    if renderer not in RENDERER_CHOICES:
        raise ValueError(f"renderer: expected one of {list(RENDERER_CHOICES)}, got {renderer!r}")
    model_text = str(model).strip() if model is not None else ""
    if renderer == "tcdm" and not model_text:
        raise ValueError(
            "model: renderer 'tcdm' needs a TCDM model: a name from 'xraycardiac models list', a run "
            "folder of 'xraycardiac train cardiac-tcdm' or a weights file"
        )
    if not is_int(steps, numpy=True) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps: expected an integer from 1 to {MAX_STEPS} sampler steps, got {steps!r}")
    device_text = device.strip().lower() if isinstance(device, str) else device
    if not isinstance(device_text, str) or not _DEVICE.match(device_text):
        raise ValueError(f"device: expected one of {list(DEVICE_CHOICES)} (or cuda:N), got {device!r}")
    params: dict[str, Any] = {
        "n": int(n),
        "seed": int(seed),
        "renderer": renderer,
        "steps": int(steps),
        "strength_mm": float(strength_mm),
        "device": device_text,
    }
    if not isinstance(harmonise, bool | np.bool_):
        raise ValueError(f"harmonise: expected true or false, got {harmonise!r}")
    if renderer == "tcdm":
        params["model"] = model_text
        params["hu_harmonise"] = params["texture_harmonise"] = bool(harmonise)
    # the job's own checks, now, so that a bad setting is reported before a process starts
    CardiacSynthConfig(
        n=params["n"], seed=params["seed"], renderer=renderer, model=params.get("model"),
        steps=params["steps"], mgm=replace(MGMConfig(), strength_mm=params["strength_mm"]),
        device=device_text, hu_harmonise=bool(harmonise), texture_harmonise=bool(harmonise),
    )  # fmt: skip
    return params


# --------------------------------------------------------------------------------------- template


def _image_volume(node: Any) -> Volume:
    """The template CT of ``node`` (world RAS), checked."""
    if (
        node is None
        or not hasattr(node, "IsA")
        or not node.IsA("vtkMRMLScalarVolumeNode")
        or node.IsA("vtkMRMLLabelMapVolumeNode")
    ):
        raise ValueError(
            f"{IMAGE_PARAM}: expected the template CT as a scalar volume node (HU), got {describe_node(node)}"
        )
    volume = volume_from_node(node, IMAGE_PARAM)
    i, j, k = (int(v) for v in volume.shape_ijk)
    if min(i, j, k) < 2 or i * j * k > MAX_TEMPLATE_VOXELS:
        raise ValueError(
            f"{IMAGE_PARAM}: {node.GetName()!r} has ({i}, {j}, {k}) voxels (I, J, K); the template must be "
            f"3D with at most {MAX_TEMPLATE_VOXELS:,} voxels: crop a CT around the heart and resample it "
            "to 1-2 mm (Crop Volume module) first"
        )
    if not np.all(np.isfinite(volume.array)):
        raise ValueError(f"{IMAGE_PARAM}: {node.GetName()!r} holds non-finite voxels (NaN or inf)")
    return volume


def _labelmap_labels(node: Any, image: Volume, image_node: Any, mapping: LabelMapping | None) -> Volume:
    """A label map node on the CT's grid (table values, or mapped by ``mapping``) as uint8 table labels."""
    labels = volume_from_node(node, LABELS_PARAM)
    same = labels.array.shape == image.array.shape and bool(
        np.allclose(labels.ijk_to_ras, image.ijk_to_ras, rtol=0.0, atol=GRID_ATOL_MM)
    )
    if not same:
        raise ValueError(
            f"{LABELS_PARAM}, {IMAGE_PARAM}: the label map {node.GetName()!r} and the template CT "
            f"{image_node.GetName()!r} are on different voxel grids ({_grid_text(labels)} vs "
            f"{_grid_text(image)}); resample the label map onto the CT, or import it into a segmentation "
            "(which is exported on the CT's grid)"
        )
    values = labels.array
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.rint(values))
        if bad.any():
            raise ValueError(
                f"{LABELS_PARAM}: {node.GetName()!r} holds non-integer values (e.g. {values[bad].flat[0]!r}); "
                "expected integer labels (a label map or a segmentation, not an image)"
            )
    values = values.astype(np.int64)
    if not np.any(values):
        raise ValueError(f"{LABELS_PARAM}: the label map {node.GetName()!r} is empty (no labelled voxel)")
    where = f"{LABELS_PARAM}: the label map {node.GetName()!r}"
    values = apply_label_mapping(values, mapping, labels.ijk_to_ras, where).labels
    return Volume(values.astype(np.uint8), image.ijk_to_ras.copy(), {"name": node.GetName()})


def _terminology_name(segment: Any) -> str | None:
    """The type's meaning of a segment's terminology (``...~SCT^80891009^Heart~...`` -> ``Heart``)."""
    tag = vtk.mutable("")
    if not segment.GetTag("TerminologyEntry", tag) or not str(tag):
        return None
    fields = str(tag).split("~")
    parts = fields[2].split("^") if len(fields) > 2 else []
    return parts[2] if len(parts) > 2 and parts[2] else None


def _segment_values(node: Any, mapping: LabelMapping | None) -> tuple[list[str], list[str], list[int]]:
    """(segment IDs, names, table values) of the segments matched by name (or terminology) to the table.

    With a whole-body mapping (``totalsegmentator``) the segments that match nothing (the other
    organs of a TotalSegmentator segmentation) are left out; otherwise they are an error.
    """
    segmentation = node.GetSegmentation()
    count = segmentation.GetNumberOfSegments() if segmentation is not None else 0
    if count == 0:
        raise ValueError(f"{LABELS_PARAM}: segmentation {node.GetName()!r} has no segment")
    ids, names, values, unknown = [], [], [], []
    for segment_id in (segmentation.GetNthSegmentID(i) for i in range(count)):
        segment = segmentation.GetSegment(segment_id)
        value = None
        for candidate in (segment.GetName(), _terminology_name(segment)):
            try:
                value = label_by_name(candidate).value if candidate else None
            except ValueError:
                continue
            break
        if value is None:
            unknown.append(segment.GetName())
            continue
        ids.append(segment_id)
        names.append(segment.GetName())
        values.append(value)
    if unknown and not (mapping is not None and mapping.others_to_background):
        raise ValueError(
            f"{LABELS_PARAM}: segment name(s) {unknown} of segmentation {node.GetName()!r} are not in the "
            "cardiac label table; rename each segment to a table key or name ("
            + ", ".join(f"{e.key} ({e.name})" for e in LABEL_TABLE)
            + "), or, for a whole-body TotalSegmentator segmentation, choose label mapping 'totalsegmentator' "
            "(its other organs are left out)"
        )
    if not ids:
        raise ValueError(
            f"{LABELS_PARAM}: no segment of segmentation {node.GetName()!r} is a cardiac structure "
            f"(segments: {unknown})"
        )
    return ids, names, values


def _segmentation_labels(
    scene: Any, node: Any, image: Volume, image_node: Any, mapping: LabelMapping | None
) -> tuple[Volume, dict[int, str]]:
    """A segmentation node as uint8 table labels on the CT's grid, and value -> the template's segment name."""
    ids, names, values = _segment_values(node, mapping)
    # the export also adds a display node and a colour table (and subject hierarchy in a bare scene)
    with temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass(
            "vtkMRMLLabelMapVolumeNode", f"{node.GetName()} (temporary export)"
        )
        segment_ids = vtk.vtkStringArray()
        for segment_id in ids:
            segment_ids.InsertNextValue(segment_id)
        # labels 1..len(ids) in the order of segment_ids, resampled onto the CT's grid
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            node, segment_ids, labelmap, image_node
        )
        if not exported:
            raise ValueError(
                f"{LABELS_PARAM}: segmentation {node.GetName()!r} could not be exported onto the grid of "
                f"{image_node.GetName()!r}"
            )
        data = labelmap.GetImageData()
        if data is None or data.GetNumberOfPoints() == 0 or data.GetPointData().GetScalars() is None:
            array = np.zeros(image.array.shape, dtype=np.uint8)  # empty segments export no voxels at all
        else:
            array = np.array(slicer.util.arrayFromVolume(labelmap), copy=True)
    if array.shape != image.array.shape:
        raise ValueError(
            f"{LABELS_PARAM}: exporting segmentation {node.GetName()!r} gave a grid of {array.shape} voxels, "
            f"not the CT's {image.array.shape}"
        )
    out = np.zeros(array.shape, dtype=np.uint8)
    for index, value in enumerate(values, start=1):
        out[array == index] = value
    if not out.any():
        raise ValueError(
            f"{LABELS_PARAM}: segmentation {node.GetName()!r} is empty inside the template CT "
            f"{image_node.GetName()!r} (no labelled voxel on its grid)"
        )
    segment_names: dict[int, str] = {}
    for name, value in zip(names, values, strict=True):
        segment_names.setdefault(value, name)
    return Volume(out, image.ijk_to_ras.copy(), {"name": node.GetName()}), segment_names


# -------------------------------------------------------------------------------------------- run


@dataclass
class CardiacSynthRun(JobRun):
    """A started ``cardiac-synth`` job and what is needed to import its results.

    Attributes:
        params: the job parameters (``n``, ``seed``, ``renderer``, ``steps``, ``strength_mm``,
            ``device``; ``model`` for "tcdm"; ``phantom_seed`` for the phantom template).
        template: what the template is, e.g. ``"phantom seed 0"`` or the CT node's name.
        source: provenance of the template nodes (``TemplateVolumeNode``, ``TemplateLabelsNode``:
            names; ``SourceNode``: the CT's ID); empty for the phantom.
        segment_names: label value -> the template's segment name (segmentation template only).
        export_dir: where the dataset is copied on import, or None.
    """

    params: dict[str, Any]
    template: str
    source: dict[str, Any] = field(default_factory=dict)
    segment_names: dict[int, str] = field(default_factory=dict)
    export_dir: Path | None = None


class CardiacSynthLogic(JobLogic[CardiacSynthRun, dict[str, Any]]):
    """Start ``cardiac-synth`` jobs from scene nodes and import their cases as nodes (``JobLogic``)."""

    def start(
        self,
        template_volume: Any = None,
        template_segmentation_or_labelmap: Any = None,
        n: int = 4,
        seed: int = 0,
        strength_mm: float = 4.0,
        renderer: str = "warp",
        model: str | None = None,
        steps: int = 20,
        harmonise: bool = True,
        device: str = "auto",
        export_dir: str | os.PathLike[str] | None = None,
        phantom_seed: int = 0,
        label_mapping: str | None = None,
        nnunet_dataset_id: int | None = None,
        nnunet_dataset_name: str = DEFAULT_DATASET_NAME,
    ) -> CardiacSynthRun:
        """Check the parameters and start the job; returns at once (the scene is not changed).

        Args:
            template_volume: the template CT, a ``vtkMRMLScalarVolumeNode`` in HU; None (together with
                ``template_segmentation_or_labelmap``) for the procedural phantom.
            template_segmentation_or_labelmap: its labels: a ``vtkMRMLSegmentationNode`` whose segment
                names are label-table keys or names, or a ``vtkMRMLLabelMapVolumeNode`` of table values
                on the CT's grid (module docstring).
            n: number of cases, 1..``MAX_CASES``.
            seed: integer >= 0; case i's deformation is drawn from ``SeedSequence([seed, i])``.
            strength_mm: largest magnitude of the random deformation's velocity field, mm (0..100).
            renderer: ``"warp"`` (the template CT deformed) or ``"tcdm"`` (diffusion model ``model``).
            model: "tcdm": model name (``xraycardiac models list``), run folder or weights file.
            steps: "tcdm": DDIM steps of each image, 1..1000.
            harmonise: "tcdm": bring each structure's mean HU and fine texture to the template's (the
                job's ``hu_harmonise`` and ``texture_harmonise``; False: the model's raw image).
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            export_dir: None / "" for no export, else a new or empty folder that receives a copy of
                the dataset when the results are imported; with ``nnunet_dataset_id`` the nnUNet_raw
                folder that receives it as ``Dataset<ID>_<NAME>``.
            phantom_seed: integer >= 0, the phantom's seed when there is no template node.
            label_mapping: how the template labels map to the table
                (:func:`xraycardiac.cardiac.label_maps.resolve_label_mapping`): None / "" (label maps
                hold table values; segments matched by name), a preset (``"totalsegmentator"``: the
                non-cardiac values or segments of a whole-body map are left out, ...) or a JSON file.
            nnunet_dataset_id: None (plain folder export) or the nnU-Net dataset ID, 1..999, not used by
                another dataset in ``export_dir``.
            nnunet_dataset_name: the nnU-Net dataset name: letters, digits, ``_`` and ``-``.

        Raises:
            ValueError: naming the bad parameter, its value and what is allowed: a template CT without
                labels (or the reverse), another node type, the CT and label map on different grids
                (both nodes named), an empty mask, label values or segment names not in the table.
        """
        params = _job_params(n, seed, strength_mm, renderer, model, steps, device, harmonise)
        target = export_target(export_dir, nnunet_dataset_id, nnunet_dataset_name)
        labels_node = template_segmentation_or_labelmap
        if template_volume is None and labels_node is None:
            if not is_int(phantom_seed, numpy=True) or phantom_seed < 0:
                raise ValueError(f"phantom_seed: expected an integer >= 0, got {phantom_seed!r}")
            params["phantom_seed"] = int(phantom_seed)
            return self.start_job(
                PIPELINE,
                params,
                run_type=CardiacSynthRun,
                params=params,
                template=f"phantom_seed{int(phantom_seed)}",
                export_dir=target,
            )
        if template_volume is None:
            raise ValueError(
                f"{IMAGE_PARAM}: template labels {describe_node(labels_node)} were given without their CT; "
                "select the template CT, or neither for the phantom template"
            )
        if labels_node is None:
            raise ValueError(
                f"{LABELS_PARAM}: the template CT {describe_node(template_volume)} needs its segmentation or "
                "label map; select it, or neither for the phantom template"
            )
        image = _image_volume(template_volume)
        mapping = resolve_label_mapping(label_mapping or None)
        segment_names: dict[int, str] = {}
        if not hasattr(labels_node, "IsA"):
            raise ValueError(
                f"{LABELS_PARAM}: expected a segmentation or label map node, got {describe_node(labels_node)}"
            )
        if labels_node.IsA("vtkMRMLSegmentationNode"):
            labels, segment_names = _segmentation_labels(
                self.scene, labels_node, image, template_volume, mapping
            )
        elif labels_node.IsA("vtkMRMLScalarVolumeNode"):
            labels = _labelmap_labels(labels_node, image, template_volume, mapping)
        else:
            raise ValueError(
                f"{LABELS_PARAM}: expected a segmentation node or a label map volume node, got "
                f"{describe_node(labels_node)}"
            )
        return self.start_job(
            PIPELINE,
            params,
            input_nodes={"template_image": image, "template_labels": labels},
            run_type=CardiacSynthRun,
            params=params,
            template=template_volume.GetName(),
            source={
                **({"LabelMapping": mapping.name} if mapping is not None else {}),
                "TemplateVolumeNode": template_volume.GetName(),
                "TemplateLabelsNode": labels_node.GetName(),
                "SourceNode": template_volume.GetID(),
            },
            segment_names=segment_names,
            export_dir=target,
        )

    def run(
        self,
        template_volume: Any = None,
        template_segmentation_or_labelmap: Any = None,
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """``start``, wait (blocking) and ``import_results``: for scripts and tests.

        Args:
            options: ``start``'s other arguments (``n``, ``seed``, ``renderer``, ``export_dir``, ...).

        Raises:
            everything ``start`` and ``import_results`` raise; TimeoutError after ``timeout_s``.
        """
        run = self.start(template_volume, template_segmentation_or_labelmap, **options)
        return self.wait_and_import(run, timeout_s=timeout_s, on_update=on_update)

    # ------------------------------------------------------------------------------------ import

    def _add_nodes(self, run: CardiacSynthRun, status: JobStatus) -> dict[str, Any]:
        """A done job's cases in a subject-hierarchy folder (module docstring), exported if asked.

        Returns:
            ``{"cases": [{"name": "case_00000", "image", "labels", "confidence": node}, ...],
            "folder": subject-hierarchy folder item ID, "export_dir": str or None,
            "template": run.template}``, cases in order.

        Raises:
            FileNotFoundError / ValueError: an output file is not what the job promises.
            ValueError / OSError: the export folder is no longer empty, or the copy failed.
        """
        root = Path(status.output_dir or "")
        summary = status.summary or {}
        entries = _read_datalist(root, run.params["n"])
        file_values = dataset_label_values(root)
        provenance: dict[str, Any] = {
            "Pipeline": PIPELINE,
            "Device": run.params["device"],
            "Seed": run.params["seed"],
            "Renderer": run.params["renderer"],
            "Parameters": run.params,
            "Template": run.template,
            **run.source,
        }
        if summary.get("xraycardiac_version"):  # the version that ran the job
            provenance["PackageVersion"] = summary["xraycardiac_version"]
        folder_name = f"{NAME_PREFIX} {run.template} seed {run.params['seed']}"
        result: dict[str, Any] = {"cases": [], "folder": None, "export_dir": None, "template": run.template}
        quantities = {"image": "HU", "labels": "label", "confidence": "confidence [0, 1]"}
        with removed_on_error(self.scene):
            try:  # the folder goes first: removing it needs the hierarchy node, which may be new
                hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
                folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), folder_name)
                result["folder"] = folder
                for i, entry in enumerate(entries):
                    case = Path(entry["label"]).name.split(".")[0]
                    info = _read_json(root / "cases" / f"{case}.json")
                    case_provenance = {**provenance, "Case": case, "CaseSeed": info.get("case_seed")}
                    model = info.get("model")
                    if isinstance(model, dict):
                        case_provenance["ModelName"] = model.get("model")
                        case_provenance["ModelSha256"] = model.get("sha256")
                    nodes = self._add_case(
                        f"{NAME_PREFIX} case {i}", *_read_case(root, entry, file_values), run.segment_names
                    )
                    for key, node in nodes.items():
                        set_provenance(node, {**case_provenance, "Quantity": quantities[key]})
                        item = hierarchy.GetItemByDataNode(node)
                        if item:
                            hierarchy.SetItemParent(item, folder)
                        else:
                            hierarchy.CreateItem(folder, node)
                    result["cases"].append({"name": case, **nodes})
                if run.export_dir is not None:
                    exported = str(export_dataset(status.output_dir or "", run.export_dir))
                    result["export_dir"] = exported
                    for case in result["cases"]:
                        for key in quantities:
                            set_provenance(case[key], {"ExportDir": exported})
            except BaseException:
                self._remove_folder(result["folder"])
                raise
        return result

    def _add_case(
        self, base: str, image: Volume, labels: Volume, confidence: Volume, segment_names: dict[int, str]
    ) -> dict[str, Any]:
        """The image, labels and confidence nodes of one case (names start with ``base``)."""
        image_node = node_from_volume(self.scene, image, self.scene.GenerateUniqueName(f"{base} image"))
        labels_node = self._add_segmentation(
            self.scene.GenerateUniqueName(f"{base} labels"), labels, image_node, segment_names
        )
        confidence_node = node_from_volume(
            self.scene, confidence, self.scene.GenerateUniqueName(f"{base} confidence")
        )
        display = confidence_node.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
        return {"image": image_node, "labels": labels_node, "confidence": confidence_node}

    def _add_segmentation(
        self, name: str, labels: Volume, image_node: Any, segment_names: dict[int, str]
    ) -> Any:
        """A segmentation node of ``labels`` (one segment per value), named and coloured from the table.

        On an error the caller (``_add_nodes``) removes every node added since it started.
        """
        with temporary_nodes(self.scene) as keep:
            segmentation_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentation_node.CreateDefaultDisplayNodes()
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(image_node)
            labelmap = node_from_volume(
                self.scene, labels, f"{name} (temporary import)", node_class="vtkMRMLLabelMapVolumeNode"
            )
            imported = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmap, segmentation_node
            )
            # the temporary label map goes with its display node; a hierarchy node made on the way stays
            displays = range(segmentation_node.GetNumberOfDisplayNodes())
            keep += [segmentation_node, *(segmentation_node.GetNthDisplayNode(i) for i in displays)]
            keep.append(slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene))
        if not imported:
            raise ValueError(f"{name}: the case's label map could not be imported into a segmentation")
        segmentation = segmentation_node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            entry = label_info(segment.GetLabelValue())
            segment.SetName(segment_names.get(entry.value, entry.name))
            segment.SetColor(*(c / 255.0 for c in entry.color_rgb))
        return segmentation_node

    def _remove_folder(self, folder: int | None) -> None:
        """Remove a subject-hierarchy folder item made by ``_add_nodes`` (its data nodes stay)."""
        if not folder:
            return
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if hierarchy is not None and hierarchy.GetItemName(folder):
            hierarchy.RemoveItem(folder, False, False)


# ----------------------------------------------------------------------------------- output files


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the job's output")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc


def _read_datalist(root: Path, n: int) -> list[dict[str, str]]:
    """The ``n`` training entries of ``datalist.json``, each with its three files present."""
    path = root / "datalist.json"
    data = _read_json(path)
    entries = data.get("training") if isinstance(data, dict) else None
    if not isinstance(entries, list) or len(entries) != n:
        count = len(entries) if isinstance(entries, list) else "no"
        raise ValueError(f"{path}: expected {n} training cases, found {count}")
    for entry in entries:
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("image", "label", "confidence")
        ):
            raise ValueError(f"{path}: a training entry lacks image / label / confidence: {entry!r}")
        for key in ("image", "label", "confidence"):
            if not (root / entry[key]).is_file():
                raise FileNotFoundError(f"{root / entry[key]}: listed in {path} but missing")
    return entries


def _read_case(
    root: Path, entry: dict[str, str], file_values: dict[int, int]
) -> tuple[Volume, Volume, Volume]:
    """(image HU float32, table labels uint8, confidence float32) of one case, checked against each other.

    ``file_values`` maps the file's consecutive label values to table values (``dataset_label_values``).
    """
    image = read_volume(root / entry["image"])
    labels = read_volume(root / entry["label"])
    confidence = read_volume(root / entry["confidence"])
    for key, volume in (("label", labels), ("confidence", confidence)):
        same = volume.array.shape == image.array.shape and bool(
            np.allclose(volume.ijk_to_ras, image.ijk_to_ras, rtol=0.0, atol=GRID_ATOL_MM)
        )
        if not same:
            raise ValueError(f"{root / entry[key]}: not on the grid of {root / entry['image']}")
    values = labels.array
    if values.dtype.kind == "f" and not np.array_equal(values, np.rint(values)):
        raise ValueError(f"{root / entry['label']}: holds non-integer labels")
    unknown = sorted({int(v) for v in np.unique(values)} - set(file_values) - {0})
    if unknown:
        raise ValueError(
            f"{root / entry['label']}: label values {unknown} are not in the dataset's label_values "
            f"{sorted(file_values)} (synth.json)"
        )
    lut = np.zeros(256, dtype=np.uint8)
    for file_value, table_value in file_values.items():
        lut[file_value] = table_value
    c = confidence.array
    if not np.all(np.isfinite(c)) or c.min() < 0.0 or c.max() > 1.0:
        raise ValueError(f"{root / entry['confidence']}: confidence outside [0, 1] (or not finite)")
    return (
        Volume(image.array.astype(np.float32), image.ijk_to_ras),
        Volume(lut[values.astype(np.uint8)], image.ijk_to_ras),
        Volume(c.astype(np.float32), image.ijk_to_ras),
    )
