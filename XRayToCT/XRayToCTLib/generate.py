"""Generate a CT from a PA (+ lateral) radiograph node: MRML in, the core ``x2ct-generate`` job, MRML out.

The work is the core pipeline ``x2ct-generate`` (:mod:`xraycardiac.jobs.x2ct_generate`: X-ray encoder
-> K latent diffusion samples -> decoder; CLS-DM), run in a separate process; this file checks the
nodes, writes them as the job's inputs and imports its outputs.

Inputs. The PA (and, for a biplanar model, the lateral) radiograph is a one-slice scalar volume node
holding the **line integral of mu** (what "Simulate radiographs" adds). Its C-arm geometry is taken
from the node attribute ``XRayCardiac.Geometry`` (a ``CArmGeometry.to_dict()`` JSON, written by
"Simulate radiographs", "Synthetic angiograms" and the DICOM XA reader); a node without it is read
with the model's training view about RAS (0, 0, 0) (the job's default), and the run says so
(``GenerateRun.geometry``). An optional reference CT (HU) is scored against the result.

Outputs (``import_results``; names start with ``"<PA node name> CT"``, made unique in the scene):

* "... CT": the voxel-wise mean of the K samples, HU, on the model's cube (``grid``³ voxels of
  ``spacing_mm``, axis-aligned, centred on the PA view's isocentre), placed in RAS by the file's
  ijk_to_ras;
* "... CT uncertainty" (K >= 2 only), HU: the expected |error| of the model's calibrated uncertainty
  (``xraycardiac.xray2ct.uncertainty``) when the model ships a calibration of its own weights, else the
  voxel-wise standard deviation over the K samples; its ``Content`` attribute says which (the report's
  ``uncertainty``);
* "... CT direct" (``add_direct``): the X-ray encoder's direct estimate, HU;
* "... CT metrics" (with a reference): a table node, one row per metric (PSNR dB, SSIM 3D, SSIM
  slice-wise, MAE HU) and one column per volume (CT, direct estimate); the window and method are in
  the table's attributes (``XRayCardiac.MetricsWindowHU``, ``XRayCardiac.MetricsMethod``).

Every added node carries provenance (``Pipeline``, ``PackageVersion``, ``ModelName``, ``ModelVersion``,
``ModelSha256`` (bundle.json's), ``ModelFilesSha256``, ``Seed``, ``Steps``, ``Samples``, ``Device``,
``Parameters``, ``GeometrySource``, ``SourceNodes``). A failed job or an output that is not what the
job promises adds no node.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import vtk
from XRayCardiacCommonLib.jobs import JobLogic, JobRun, JobStatus
from XRayCardiacCommonLib.mrml_io import (
    GEOMETRY_ATTRIBUTE,
    node_from_volume,
    node_geometry,
    removed_on_error,
    set_provenance,
    volume_from_node,
)

from xraycardiac.io import read_volume, require_3d
from xraycardiac.jobs.x2ct_generate import (
    DEFAULT_SAMPLES,
    DEFAULT_STEPS,
    MAX_SAMPLES,
    MAX_STEPS,
    OUTPUTS,
    PIPELINE,
    READING_PARAMS,
)
from xraycardiac.volume import Volume
from xraycardiac.xray2ct.pipeline import GenerateConfig
from XRayToCTLib import X2CT_DEFAULT_MODEL
from XRayToCTLib.choices import DEVICE_CHOICES

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_SAMPLES",
    "DEFAULT_STEPS",
    "GEOMETRY_DEFAULT",
    "GEOMETRY_FROM_NODE",
    "MAX_SAMPLES",
    "MAX_STEPS",
    "METRIC_ROWS",
    "PIPELINE",
    "GenerateCTLogic",
    "GenerateResult",
    "GenerateRun",
    "describe_result",
    "installed_x2ct_models",
    "resolve_model",
]

BUNDLE_FORMAT = "xraycardiac.x2ct_bundle"
"""``config.format`` of an x2ct model's manifest entry (``xraycardiac.xray2ct.bundle``, not imported
here: it imports torch, which the Slicer process need not load)."""

GEOMETRY_FROM_NODE = "node"
GEOMETRY_DEFAULT = "default"
METRIC_ROWS = (
    ("PSNR", "psnr_db", "dB"),
    ("SSIM 3D", "ssim_3d", ""),
    ("SSIM slice-wise", "ssim_slicewise", ""),
    ("MAE", "mae_hu", "HU"),
)
"""Rows of the metrics table: (label, key in the report's metrics, unit)."""

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_MIN_PIXELS = 8


# ------------------------------------------------------------------------------------------ model


def resolve_model(model: str) -> dict[str, Any]:
    """Check that ``model`` names an x2ct model, without loading it (no torch).

    The lookup is the core's (``xraycardiac.models.locate_model``, which ``xray2ct.bundle.load_bundle``
    uses too): a folder's ``model.json`` or the manifest entry of a name, bundle.json's sha256 checked.

    Args:
        model: a bundle folder (``xraycardiac x2ct bundle --out``) or the name of an installed bundle
            (``xraycardiac x2ct install``).

    Returns:
        ``{"model": what to hand to the job, "name", "version", "mode": "biplanar" | "single" | None,
        "grid", "spacing_mm"}`` from the bundle's manifest entry (the parts' sha256s are checked by the job).

    Raises:
        ValueError: naming ``model``: empty, not a bundle folder, unknown name, or not an x2ct model.
    """
    from xraycardiac.models import locate_model

    text = model.strip() if isinstance(model, str) else ""
    if not text:
        raise ValueError(f"model: expected an x2ct model name or bundle folder, got {model!r}")
    path = Path(text).expanduser()
    folder = path.is_dir()
    if not folder and (len(path.parts) > 1 or path.exists()):
        raise ValueError(f"model: {text} is not a bundle folder (no such folder)")
    try:
        entry = locate_model(path if folder else text, "model").entry or {}
    except (FileNotFoundError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    config = entry.get("config") or {}
    if config.get("format") != BUNDLE_FORMAT:
        raise ValueError(
            f"model: {entry.get('name')!r} is not an x2ct model (its entry's config.format is "
            f"{config.get('format')!r}, expected {BUNDLE_FORMAT!r})"
        )
    return {"model": str(path.resolve()) if folder else text, "name": entry.get("name"),
            "version": entry.get("version"), "mode": config.get("mode"), "grid": config.get("grid"),
            "spacing_mm": config.get("spacing_mm")}  # fmt: skip


def installed_x2ct_models() -> list[str]:
    """Names of the installed (or packaged) x2ct models, sorted; [] when there are none."""
    from xraycardiac.models import list_models

    return sorted({e.name for e in list_models() if (e.config or {}).get("format") == BUNDLE_FORMAT})


# ------------------------------------------------------------------------------------------- runs


@dataclass
class GenerateRun(JobRun):
    """A started ``x2ct-generate`` job and what is needed to import its results.

    Attributes:
        params: the job parameters (model, steps, samples, seed, device).
        model: ``resolve_model``'s dict.
        geometry: view ("pa", "lateral") -> ``GEOMETRY_FROM_NODE`` (the node's XRayCardiac.Geometry)
            or ``GEOMETRY_DEFAULT`` (the model's training view; PA about RAS (0, 0, 0)).
        source_ids: input name ("pa", "lateral", "reference") -> MRML node ID.
        prefix: start of the output node names.
        add_direct: also import the encoder's direct estimate.
    """

    params: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    geometry: dict[str, str] = field(default_factory=dict)
    source_ids: dict[str, str] = field(default_factory=dict)
    prefix: str = "Generated"
    add_direct: bool = False

    def geometry_text(self) -> str:
        """E.g. ``"PA geometry from the node; lateral geometry: the model's default view"``."""
        parts = []
        for view, source in self.geometry.items():
            label = "PA" if view == "pa" else "lateral"
            if source == GEOMETRY_FROM_NODE:
                parts.append(f"{label} geometry from the node")
            else:
                parts.append(f"{label} geometry: the model's default view (no {GEOMETRY_ATTRIBUTE})")
        return "; ".join(parts)


@dataclass
class GenerateResult:
    """What ``import_results`` added.

    Attributes:
        ct: the CT volume node (HU).
        uncertainty: the std volume node (HU), None for K = 1.
        direct: the direct-estimate volume node (HU), None unless asked for.
        table: the metrics table node, None without a reference.
        report: the job's report.json dict (timing, metrics, geometry, model).
        geometry: ``GenerateRun.geometry``.
        text: ``describe_result(...)``, one paragraph for the panel.
    """

    ct: Any
    uncertainty: Any = None
    direct: Any = None
    table: Any = None
    report: dict[str, Any] = field(default_factory=dict)
    geometry: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def nodes(self) -> list[Any]:
        """The added nodes (CT first)."""
        return [n for n in (self.ct, self.uncertainty, self.direct, self.table) if n is not None]


def describe_result(report: dict[str, Any], geometry_text: str = "") -> str:
    """A short text for the panel: cube, samples x steps, device, timing and (with a reference) metrics."""
    params, cube, timing = report.get("params", {}), report.get("cube", {}), report.get("timing_s", {})
    lines = [
        f"CT {cube.get('grid')}³ voxels of {cube.get('spacing_mm')} mm, model {report.get('model', {}).get('name')}: "
        f"{params.get('samples')} sample(s) x {params.get('steps')} steps on {report.get('device')} in "
        f"{timing.get('total', float('nan')):.1f} s (model load {timing.get('load', float('nan')):.1f} s, "
        f"sampling {timing.get('generate', float('nan')):.1f} s, {timing.get('per_step', float('nan')):.2f} s/step)."
    ]
    if report.get("uncertainty") is None:
        lines.append("No uncertainty volume: it needs 2 samples or more.")
    else:
        lines.append(f"Uncertainty: {report['uncertainty']}.")
    if geometry_text:
        lines.append(geometry_text + ".")
    for view, record in (report.get("views") or {}).items():
        if isinstance(record, dict) and record.get("geometry"):
            lines.append(f"{view} geometry used: {record['geometry']}.")
    check = report.get("input_check_text")
    if check:
        flagged = (report.get("input_check") or {}).get("flagged")
        lines.insert(0, check + "." if flagged else "")
        if not flagged:
            lines.append(check + ".")
    metrics = report.get("metrics")
    if metrics:
        m = metrics["ct"]
        lo, hi = metrics.get("window_hu", [None, None])
        capped = " (capped)" if m.get("psnr_capped") else ""
        lines.append(
            f"Against the reference ({metrics.get('reference')}, window [{lo:g}, {hi:g}] HU): "
            f"PSNR {m['psnr_db']:.2f} dB{capped}, SSIM {m['ssim_3d']:.3f} (3D) / {m['ssim_slicewise']:.3f} "
            f"(slice-wise), MAE {m['mae_hu']:.1f} HU."
        )
    return " ".join(line for line in lines if line)


def _radiograph(node: Any, name: str) -> Volume:
    """A one-slice scalar volume node as a ``Volume``; a ValueError naming ``name`` and the node otherwise."""
    if node is not None and hasattr(node, "IsA") and node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"{name}: {node.GetName()!r} is a label map; select a radiograph (scalar volume)")
    volume = volume_from_node(node, name)
    slices, rows, cols = volume.array.shape
    if slices != 1:
        raise ValueError(
            f"{name}: {node.GetName()!r} is a 3D volume of {slices} slices ({cols} x {rows} x {slices} voxels), "
            "not a radiograph; select a one-slice (2D) X-ray image"
        )
    if min(rows, cols) < _MIN_PIXELS:
        raise ValueError(f"{name}: {node.GetName()!r} is {rows} x {cols} pixels; need >= 8 x 8")
    if not np.all(np.isfinite(volume.array)):
        raise ValueError(f"{name}: {node.GetName()!r} holds non-finite values")
    return volume


def _int_in(value: Any, name: str, lo: int, hi: int | None, what: str) -> int:
    """``value`` as an int in [lo, hi]; a ValueError naming ``name`` otherwise (bools refused)."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and math.isfinite(value) and value == int(value):
        value, ok = int(value), True
    if not ok or value < lo or (hi is not None and value > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: expected an integer in {allowed} ({what}), got {value!r}")
    return int(value)


class GenerateCTLogic(JobLogic[GenerateRun, GenerateResult]):
    """Start ``x2ct-generate`` jobs on radiograph nodes and import their results (``JobLogic``)."""

    def start(
        self,
        pa_node: Any,
        lateral_node: Any = None,
        model: str = X2CT_DEFAULT_MODEL,
        steps: int = DEFAULT_STEPS,
        samples: int = DEFAULT_SAMPLES,
        seed: int = 0,
        device: str = "auto",
        reference_node: Any = None,
        add_direct: bool = False,
        reading: dict[str, Any] | None = None,
    ) -> GenerateRun:
        """Check the nodes and parameters, write the inputs and start the job; returns at once.

        The scene is not changed.

        Args:
            pa_node: the PA radiograph: a one-slice scalar volume node (line integral of mu), with
                ``XRayCardiac.Geometry`` when its C-arm geometry is known (else the model's default view).
            lateral_node: the lateral radiograph (biplanar models), the size of ``pa_node``; None for a
                single-view model.
            model: x2ct model name or bundle folder (``resolve_model``).
            steps: sampler steps, 1..``MAX_STEPS``.
            samples: K, 1..``MAX_SAMPLES``; the uncertainty volume needs K >= 2.
            seed: >= 0; the same inputs, seed and device give the same volumes.
            device: ``auto``, ``cpu``, ``cuda`` (``cuda:N`` and ``mps`` are accepted too).
            reference_node: optional CT (HU, 3D scalar volume) to score the result against.
            add_direct: also import the encoder's direct estimate.
            reading: how to read nodes that are not line integrals with a geometry (``READING_PARAMS``,
                the job's: ``intensity`` "auto"/"line-integral"/"log"/"linear"/"display", ``invert``,
                ``gamma``; ``sid_mm``, ``sod_mm``, ``pixel_mm`` for a node without
                ``XRayCardiac.Geometry``, e.g. a radiograph loaded from a PNG); None values are left out.

        Returns:
            The run; ``run.geometry`` says, per view, whether the node's geometry or the default is used.

        Raises:
            ValueError: naming the parameter (``pa_node``, ``lateral_node``, ``reference_node``,
                ``model``, ``steps``, ``samples``, ``seed``, ``device``): a 3D volume or a label map
                as a radiograph, views of different sizes, a geometry unlike its image, an unknown
                model, a lateral view missing for a biplanar model (or given to a single-view one).
        """
        volumes: dict[str, Volume] = {"pa": _radiograph(pa_node, "pa_node")}
        if lateral_node is not None:
            if lateral_node is pa_node:
                raise ValueError(
                    f"lateral_node: {pa_node.GetName()!r} is also the PA view; select the lateral view"
                )
            volumes["lateral"] = _radiograph(lateral_node, "lateral_node")
            (r1, c1), (r2, c2) = volumes["pa"].array.shape[1:], volumes["lateral"].array.shape[1:]
            if (r1, c1) != (r2, c2):
                raise ValueError(
                    f"lateral_node: {lateral_node.GetName()!r} is {r2} x {c2} pixels but pa_node "
                    f"{pa_node.GetName()!r} is {r1} x {c1}; the two views must have the same size"
                )
        nodes = {"pa": pa_node, "lateral": lateral_node}
        geometries: dict[str, dict[str, Any]] = {}
        for view, volume in volumes.items():
            data = node_geometry(nodes[view], f"{view}_node", volume.array.shape[1:])
            if data is not None:
                geometries[f"geometry_{view}"] = data
        if reference_node is not None:
            if reference_node.IsA("vtkMRMLLabelMapVolumeNode"):
                raise ValueError(
                    f"reference_node: {reference_node.GetName()!r} is a label map; select a CT (HU)"
                )
            volumes["reference"] = require_3d(
                volume_from_node(reference_node, "reference_node"), "reference_node"
            )
        resolved = resolve_model(model)
        mode = resolved["mode"]
        if mode == "biplanar" and lateral_node is None:
            raise ValueError(
                f"lateral_node: model {resolved['name']!r} is biplanar (PA + lateral); select the lateral "
                "radiograph, or choose a single-view model"
            )
        if mode == "single" and lateral_node is not None:
            raise ValueError(
                f"lateral_node: model {resolved['name']!r} takes the PA view only; clear the lateral "
                "radiograph, or choose a biplanar model"
            )
        steps = _int_in(steps, "steps", 1, MAX_STEPS, "sampler steps")
        samples = _int_in(samples, "samples", 1, MAX_SAMPLES, "K, the number of samples")
        seed = _int_in(seed, "seed", 0, None, "noise seed")
        device_text = device.strip().lower() if isinstance(device, str) else ""
        if not _DEVICE.match(device_text):
            raise ValueError(
                f"device: expected one of {list(DEVICE_CHOICES)} (or cuda:N, mps), got {device!r}"
            )
        params = {"model": resolved["model"], "steps": steps, "samples": samples, "seed": seed,
                  "device": device_text}  # fmt: skip
        unknown = sorted(set(reading or {}) - set(READING_PARAMS))
        if unknown:
            raise ValueError(f"reading: unknown option(s) {unknown}; allowed: {list(READING_PARAMS)}")
        params.update({k: v for k, v in (reading or {}).items() if v is not None})
        try:  # the core's one check of these values, before anything starts
            GenerateConfig(**params)
        except ValueError as exc:
            raise ValueError(f"reading: {exc}") from None
        views = ("pa", "lateral") if lateral_node is not None else ("pa",)
        geometry = {
            v: GEOMETRY_FROM_NODE if f"geometry_{v}" in geometries else GEOMETRY_DEFAULT for v in views
        }
        sources = {"pa": pa_node, "lateral": lateral_node, "reference": reference_node}
        return self.start_job(
            PIPELINE,
            params,
            input_nodes=volumes,
            run_type=GenerateRun,
            json_inputs=geometries,
            params=params,
            model=resolved,
            geometry=geometry,
            source_ids={k: n.GetID() for k, n in sources.items() if n is not None},
            prefix=f"{pa_node.GetName()} CT",
            add_direct=bool(add_direct),
        )

    def run(
        self,
        pa_node: Any,
        lateral_node: Any = None,
        timeout_s: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
        **options: Any,
    ) -> GenerateResult:
        """``start``, wait (blocking) and ``import_results``: for scripts and tests.

        Args:
            options: ``start``'s other arguments.

        Raises:
            everything ``start`` and ``import_results`` raise; TimeoutError after ``timeout_s``.
        """
        run = self.start(pa_node, lateral_node, **options)
        return self.wait_and_import(run, timeout_s=timeout_s, on_update=on_update)

    # ------------------------------------------------------------------------------------ import

    def _add_nodes(self, run: GenerateRun, status: JobStatus) -> GenerateResult:
        """The nodes of a done job (module docstring), for ``import_results``.

        Raises:
            ValueError: an output file is not what the job promises (names the file).
        """
        root, summary = Path(status.output_dir or ""), status.summary or {}
        report = summary if summary.get("outputs") else _read_report(root)
        outputs = report.get("outputs") or {}
        cube = report.get("cube") or {}
        grid = cube.get("grid")
        expected = np.asarray(cube.get("ijk_to_ras", np.full((4, 4), np.nan)), dtype=np.float64)
        wanted = ["ct", "uncertainty"] + (["direct"] if run.add_direct else [])
        volumes = {}
        for key in wanted:
            if key == "uncertainty" and key not in outputs:
                continue  # K = 1: the job writes no uncertainty (and says so in the report)
            volumes[key] = _read_output(root, outputs.get(key, OUTPUTS[key]), grid, expected)
        model = report.get("model") or {}
        from_nodes = all(g == GEOMETRY_FROM_NODE for g in run.geometry.values())
        used = {
            v: r["geometry"]
            for v, r in (report.get("views") or {}).items()
            if isinstance(r, dict) and "geometry" in r
        }
        provenance = {
            "Pipeline": PIPELINE,
            "ModelName": model.get("name", run.model.get("name")),
            "ModelVersion": model.get("version", run.model.get("version")),
            "ModelSha256": model.get("bundle_sha256"),
            "ModelFilesSha256": model.get("sha256"),
            "Seed": run.params["seed"],
            "Steps": run.params["steps"],
            "Samples": run.params["samples"],
            "Device": report.get("device", run.params["device"]),
            "Parameters": run.params,
            "GeometrySource": run.geometry,
            "SourceNodes": run.source_ids,
            "InputCheck": report.get("input_check_text"),
            "GeometryUsed": used,
        }
        if report.get("xraycardiac_version"):  # the version that ran the job
            provenance["PackageVersion"] = report["xraycardiac_version"]
        names = {
            "ct": run.prefix,
            "uncertainty": f"{run.prefix} uncertainty",
            "direct": f"{run.prefix} direct",
        }
        contents = {"ct": "mean of the samples (HU)", "direct": "encoder direct estimate (HU)",
                    "uncertainty": report.get("uncertainty") or "std over the samples (HU)"}  # fmt: skip
        added: dict[str, Any] = {}
        with removed_on_error(self.scene):
            for key, volume in volumes.items():
                node = node_from_volume(self.scene, volume, self.scene.GenerateUniqueName(names[key]))
                added[key] = node
                set_provenance(node, {**provenance, "Content": contents[key]})
            metrics = report.get("metrics")
            if run.source_ids.get("reference") and metrics:
                table = self._add_metrics_table(
                    self.scene.GenerateUniqueName(f"{run.prefix} metrics"), metrics
                )
                added["table"] = table
                set_provenance(table, {**provenance, "Content": "image metrics against the reference CT"})
        return GenerateResult(
            ct=added["ct"],
            uncertainty=added.get("uncertainty"),
            direct=added.get("direct"),
            table=added.get("table"),
            report=report,
            geometry=dict(run.geometry),
            # the report says which geometry each view used (node, user values or ASSUMED); the run's
            # node-based text is kept where it is true (every view's geometry from its node)
            text=describe_result(report, run.geometry_text() if not used or from_nodes else ""),
        )

    def _add_metrics_table(self, name: str, metrics: dict[str, Any]) -> Any:
        """A table node: Metric, CT, Direct estimate, Unit; one row per ``METRIC_ROWS`` entry.

        On an error the caller (``_add_nodes``) removes it with every other node it added.
        """
        for volume in ("ct", "direct"):
            missing = [
                key
                for _, key, _ in METRIC_ROWS
                if not isinstance((metrics.get(volume) or {}).get(key), int | float)
            ]
            if missing:
                raise ValueError(f"{OUTPUTS['report']}: metrics.{volume} lacks {missing}")
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        columns: list[tuple[str, Any, list[Any]]] = [
            ("Metric", vtk.vtkStringArray(), [label for label, _, _ in METRIC_ROWS]),
            ("CT", vtk.vtkDoubleArray(), [float(metrics["ct"][key]) for _, key, _ in METRIC_ROWS]),
            (
                "Direct estimate",
                vtk.vtkDoubleArray(),
                [float(metrics["direct"][key]) for _, key, _ in METRIC_ROWS],
            ),
            ("Unit", vtk.vtkStringArray(), [unit for _, _, unit in METRIC_ROWS]),
        ]
        for column_name, array, values in columns:
            array.SetName(column_name)
            array.SetNumberOfValues(len(values))
            for i, value in enumerate(values):
                array.SetValue(i, value)
            table.AddColumn(array)
        table.SetAttribute("XRayCardiac.MetricsWindowHU", json.dumps(metrics.get("window_hu")))
        table.SetAttribute("XRayCardiac.MetricsMethod", str(metrics.get("method", "")))
        table.SetAttribute("XRayCardiac.PsnrCapped", json.dumps(bool(metrics["ct"].get("psnr_capped"))))
        return table


def _read_report(root: Path) -> dict[str, Any]:
    path = root / OUTPUTS["report"]
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{PIPELINE} output {path.name}: unreadable ({exc})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{PIPELINE} output {path.name}: expected a JSON object")
    return report


def _read_output(root: Path, name: str, grid: Any, ijk_to_ras: np.ndarray) -> Volume:
    """An output volume, checked: the cube's shape and ijk_to_ras (from the report), finite values."""
    path = root / str(name)
    try:
        volume = read_volume(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{PIPELINE} output {path.name}: unreadable ({exc})") from None
    shape = tuple(volume.array.shape)
    if not isinstance(grid, int) or shape != (grid, grid, grid):
        raise ValueError(
            f"{PIPELINE} output {path.name}: shape {shape}, expected the {grid}³ cube of the report"
        )
    if not np.allclose(volume.ijk_to_ras, ijk_to_ras, atol=1e-3):
        raise ValueError(f"{PIPELINE} output {path.name}: its ijk_to_ras differs from the report's cube")
    if not np.all(np.isfinite(volume.array)):
        raise ValueError(f"{PIPELINE} output {path.name}: holds non-finite values")
    return volume
