"""Synthetic coronary angiograms into a scene: the core ``coronary-synth`` job, MRML out.

The synthesis itself is the core pipeline ``coronary-synth`` (``xraycardiac.jobs.coronary_synth``:
a procedural coronary tree from a seed, K clinically used C-arm view pairs, physics rendering,
ground-truth keypoints), run in a separate process; this file only starts it and imports the
dataset it writes (format: :mod:`xraycardiac.coronary.dataset`). One run makes one tree (phantom
seed = ``seed``) and K pairs of it. For each pair k and view v it adds:

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
``Sample``). Pairs the job skips (the tree outside the field of view) add no node and are
reported in the result.

Input from a coronary segmentation / label map is not offered yet: the job's trees are procedural.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from XRayCardiacCommonLib.jobs import JobHandle, JobStatus
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    PROJECTION_MATRIX_ATTRIBUTE,
    format_projection_matrix,
    node_from_volume,
    set_provenance,
)

from xraycardiac.coronary import dataset as ds
from xraycardiac.coronary.tree import CoronaryTree
from xraycardiac.geometry import CArmGeometry
from xraycardiac.volume import Volume
from XRayCoronaryReconLib import DEVICE_CHOICES, INJECTION_CHOICES, MAX_PAIRS

__all__ = ["PIPELINE", "SyntheticAngiogramsLogic", "SyntheticRun"]

PIPELINE = "coronary-synth"
_TREE_INDEX = 0  # one run = one tree (index 0, phantom seed = seed)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass
class SyntheticRun:
    """A started ``coronary-synth`` job and what is needed to import its results.

    Attributes:
        job: the running job (owns its temporary folder).
        params: the job parameters.
        prefix: start of the output node names, e.g. ``"Synthetic angio seed 7"``.
    """

    job: JobHandle
    params: dict[str, Any] = field(default_factory=dict)
    prefix: str = "Synthetic angio"

    def poll(self) -> JobStatus:
        """Non-blocking progress update."""
        return self.job.poll()


class SyntheticAngiogramsLogic:
    """Start ``coronary-synth`` jobs and import their view pairs, keypoints and centreline.

    Args:
        scene: the ``vtkMRMLScene`` receiving the outputs.
        python: interpreter for the job process; None chooses PythonSlicer inside Slicer,
            ``sys.executable`` elsewhere.
    """

    def __init__(self, scene: Any, python: str | None = None) -> None:
        self.scene = scene
        self.python = python

    def start(
        self,
        seed: int = 0,
        pairs: int = 1,
        injection: str = "left",
        image_size: int = 512,
        device: str = "auto",
    ) -> SyntheticRun:
        """Check the parameters and start the job; returns at once (the scene is not changed).

        Args:
            seed: phantom seed of the procedural tree, integer >= 0 (the same seed gives the same
                tree, views and images).
            pairs: number of view pairs K, 1..``MAX_PAIRS``.
            injection: ``"left"`` or ``"right"``: the opacified coronary tree (and its standard views).
            image_size: square detector size in pixels, 64..2048; the pixel size scales so that the
                field of view stays that of a 512-pixel detector (~150-200 mm).
            device: ``auto``, ``cpu`` or ``cuda`` (projection ray marcher).

        Raises:
            ValueError: naming the bad parameter, its value and what is allowed.
        """
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
        if not _is_int(pairs) or not 1 <= pairs <= MAX_PAIRS:
            raise ValueError(f"pairs: expected an integer from 1 to {MAX_PAIRS}, got {pairs!r}")
        if injection not in INJECTION_CHOICES:
            raise ValueError(f"injection: expected one of {list(INJECTION_CHOICES)}, got {injection!r}")
        if not _is_int(image_size) or not 64 <= image_size <= 2048:
            raise ValueError(f"image_size: expected an integer from 64 to 2048 pixels, got {image_size!r}")
        device_text = device.strip().lower() if isinstance(device, str) else device
        if device_text not in DEVICE_CHOICES:
            raise ValueError(f"device: expected one of {list(DEVICE_CHOICES)}, got {device!r}")
        params: dict[str, Any] = {
            "trees": 1,
            "pairs_per_tree": int(pairs),
            "renderer": "physics",
            "seed": int(seed),
            "injection": injection,
            "image_size": int(image_size),
            "device": device_text,
        }
        job = JobHandle.start(PIPELINE, {}, params, python=self.python)
        return SyntheticRun(job=job, params=params, prefix=f"Synthetic angio seed {int(seed)}")

    def import_results(self, run: SyntheticRun) -> dict[str, Any]:
        """Add a finished job's nodes to the scene (see the module docstring), then delete its files.

        Returns:
            ``{"pairs": [{"view1", "view2", "keypoints1", "keypoints2": node, "sample": name}, ...],
            "centreline": model node, "skipped": [{"sample", "reason"}, ...]}``, pairs in order.

        Raises:
            JobError: the job failed (the message says why). JobCancelled: it was cancelled.
            FileNotFoundError / ValueError: an output file is not what the job promises.
            On any error no node is added.
        """
        try:
            status = run.job.result()
            return self._add_nodes(run, status)
        finally:
            run.job.cleanup()

    def cancel(self, run: SyntheticRun) -> None:
        """Stop the job and delete its files; the scene is not changed."""
        run.job.cleanup()

    def run(
        self,
        seed: int = 0,
        pairs: int = 1,
        injection: str = "left",
        image_size: int = 512,
        device: str = "auto",
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
    ) -> dict[str, Any]:
        """``start``, wait (blocking) and ``import_results``: for scripts and tests.

        Raises:
            everything ``start`` and ``import_results`` raise; TimeoutError after ``timeout_s``.
        """
        run = self.start(seed, pairs, injection, image_size, device)
        try:
            run.job.wait(timeout_s=timeout_s, on_update=on_update)
        except BaseException:
            self.cancel(run)
            raise
        return self.import_results(run)

    # ------------------------------------------------------------------------------------ import

    def _add_nodes(self, run: SyntheticRun, status: JobStatus) -> dict[str, Any]:
        root = Path(status.output_dir or "")
        summary = status.summary or {}
        provenance: dict[str, Any] = {
            "Pipeline": PIPELINE,
            "Device": summary.get("config", {}).get("device", run.params.get("device")),
            "Seed": run.params["seed"],
            "Parameters": run.params,
        }
        if summary.get("xraycardiac_version"):  # the version that ran the job
            provenance["PackageVersion"] = summary["xraycardiac_version"]
        tree = CoronaryTree.load_json(ds.tree_dir(root, _TREE_INDEX) / "tree.json")
        added: list[Any] = []
        result: dict[str, Any] = {
            "pairs": [],
            "centreline": None,
            "skipped": summary.get("skipped_pairs", []),
        }
        try:
            model = self._add_model(f"{run.prefix} centreline", tree)
            added.append(model)
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
                    added.append(node)
                    markups = self._add_keypoints(f"{name} keypoints", sample["keypoints"], v, geometry)
                    added.append(markups)
                    for n in (node, markups):
                        set_provenance(n, {**provenance, "Sample": sample["name"], "View": v})
                    nodes[f"view{v}"], nodes[f"keypoints{v}"] = node, markups
                result["pairs"].append(nodes)
        except BaseException:
            for node in added:
                self._remove(node)
            raise
        return result

    def _add_model(self, name: str, tree: CoronaryTree) -> Any:
        """A model node holding the tree's centreline polydata (RAS mm)."""
        model = self.scene.AddNewNodeByClass("vtkMRMLModelNode", name)
        try:
            model.SetAndObservePolyData(tree.to_polydata())
            model.CreateDefaultDisplayNodes()
        except BaseException:
            self._remove(model)
            raise
        return model

    def _add_keypoints(self, name: str, keypoints: dict[str, Any], view: int, geometry: CArmGeometry) -> Any:
        """A locked point list: the keypoints on detector ``view``, at their detector-plane RAS positions."""
        indices = np.flatnonzero(keypoints[f"in_field{view}"])
        positions = geometry.pixel_to_detector_ras(keypoints[f"uv{view}"][indices])
        markups = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        try:
            markups.CreateDefaultDisplayNodes()
            for n, (i, p) in enumerate(zip(indices, positions, strict=True)):
                markups.AddControlPoint(float(p[0]), float(p[1]), float(p[2]), str(int(i)))
                markups.SetNthControlPointDescription(
                    n, f"{keypoints['kind'][i]} {keypoints['branch'][i]}".strip()
                )
            markups.SetLocked(True)  # ground truth: not to be dragged
        except BaseException:
            self._remove(markups)
            raise
        return markups

    def _remove(self, node: Any) -> None:
        displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        for display in displays:
            if display is not None:
                self.scene.RemoveNode(display)
        self.scene.RemoveNode(node)
