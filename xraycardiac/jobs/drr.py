"""Pipeline ``drr``: simulate radiographs of a CT for one or more C-arm views.

Job spec::

    {"pipeline": "drr",
     "inputs": {"ct": "ct.nrrd", "labels": "labels.nrrd"},      # labels optional
     "params": {"views": [{"name": "PA", "preset": "pa"},
                          {"name": "LAO30", "primary_angle_deg": 30, "secondary_angle_deg": 0,
                           "sid_mm": 1200, "sod_mm": 800, "detector_rows": 256,
                           "detector_cols": 256, "pixel_spacing_mm": [0.6, 0.6],
                           "isocenter_ras_mm": null}],             # null = centre of the CT
                "device": "auto", "step_mm": null},
     "output_dir": "out/"}

Outputs, per view ``<name>``: ``<name>.nrrd`` (the DRR, a K = 1 volume on the detector plane in RAS
with the detector pixel spacing; value = line integral of mu), ``<name>.png`` (preview, bone
bright), ``<name>.geometry.json`` (the :class:`CArmGeometry` fields and its 3x4 projection
matrix) and, with a label map, ``<name>.labels.nrrd`` (slice k = path length in mm through label
``label_ids[k]``, listed in the NRRD's ``xraycardiac_label_ids`` and in the summary).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.geometry import CArmGeometry
from xraycardiac.jobs.registry import Progress, register
from xraycardiac.jobs.spec import JobSpec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ALLOWED_PARAMS = {"views", "device", "step_mm", "overwrite", "seed"}


def view_geometry(view: dict[str, Any], ct_center_ras: np.ndarray) -> CArmGeometry:
    """Turn one ``params.views`` entry into a :class:`CArmGeometry`.

    Args:
        view: ``{"name": ..., "preset": "pa"|"lateral", **overrides}`` or the CArmGeometry fields.
        ct_center_ras: used when ``isocenter_ras_mm`` is absent or null.

    Raises:
        ValueError: naming the view and the bad field.
    """
    if not isinstance(view, dict):
        raise ValueError(f"params.views: each view must be an object, got {view!r}")
    fields = dict(view)
    name = fields.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"params.views: view name must be letters, digits, '_', '.', '-' (got {name!r})")
    if fields.get("isocenter_ras_mm") is None:
        fields["isocenter_ras_mm"] = tuple(float(x) for x in ct_center_ras)
    try:
        preset = fields.pop("preset", None)
        if preset is not None:
            return CArmGeometry.preset(str(preset).lower(), **fields)
        return CArmGeometry.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"params.views[{name}]: {e}") from e


def _png_window(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [1.0, 99.8])
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


@register("drr")
def run_drr(spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """Render the views of ``params.views`` of ``inputs.ct`` (and project ``inputs.labels``)."""
    from xraycardiac import __version__
    from xraycardiac.io import read_volume, require_3d, require_label_map, write_png, write_volume
    from xraycardiac.projection import DRRConfig, project_labels, render_drr
    from xraycardiac.runtime import select_device

    unknown = sorted(set(spec.params) - _ALLOWED_PARAMS)
    if unknown:
        raise ValueError(f"drr: unknown parameter(s) {unknown}; allowed: {sorted(_ALLOWED_PARAMS)}")
    if "ct" not in spec.inputs:
        raise ValueError("drr: inputs.ct (the CT volume file) is required")
    views = spec.params.get("views")
    if not isinstance(views, list) or not views:
        raise ValueError("drr: params.views must be a non-empty list of views")
    config = DRRConfig(step_mm=spec.params.get("step_mm"))
    device = select_device(str(spec.params.get("device", "auto")))

    progress("reading CT", 0.0)
    ct = require_3d(read_volume(spec.inputs["ct"]), "inputs.ct")
    labels = None
    if "labels" in spec.inputs:
        labels = require_3d(read_volume(spec.inputs["labels"]), "inputs.labels")
        if labels.array.shape != ct.array.shape or not np.allclose(
            labels.ijk_to_ras, ct.ijk_to_ras, atol=1e-3
        ):
            raise ValueError("drr: inputs.labels must lie on the same voxel grid as inputs.ct")
        label_ids = require_label_map(labels, "inputs.labels (--labels)")  # before any rendering
    geometries = [view_geometry(v, ct.center_ras()) for v in views]
    names = [g.name for g in geometries]
    if len(set(names)) != len(names):
        raise ValueError(f"drr: view names must be unique, got {names}")

    summary: dict[str, Any] = {"views": {}, "device": str(device), "xraycardiac_version": __version__}
    parts = len(geometries) * (2 if labels is not None else 1)  # progress: one part per rendering

    def within(stage: str, part: int, name: str):
        return lambda f: progress(stage, (part + f) / parts, view=name)

    for n, geometry in enumerate(geometries):
        part = n * parts // len(geometries)
        progress(f"rendering {geometry.name}", part / parts, view=geometry.name)
        drr = render_drr(
            ct, geometry, config, str(device), within(f"rendering {geometry.name}", part, geometry.name)
        )
        drr.meta.update({"source_ct": Path(spec.inputs["ct"]).name, "xraycardiac_version": __version__})
        files = {"image": f"{geometry.name}.nrrd", "png": f"{geometry.name}.png"}
        write_volume(drr, work_dir / files["image"])
        write_png(drr.array[0], work_dir / files["png"], window=_png_window(drr.array[0]))
        record = geometry.to_dict()
        if labels is not None:
            stage = f"projecting labels {geometry.name}"
            lengths, ids = project_labels(
                labels,
                geometry,
                label_ids,
                config=config,
                device=str(device),
                progress=within(stage, part + 1, geometry.name),
            )
            from xraycardiac.volume import Volume

            stack = Volume(lengths, geometry.detector_ijk_to_ras(), meta={"label_ids": ids, "unit": "mm"})
            files["labels"] = f"{geometry.name}.labels.nrrd"
            write_volume(stack, work_dir / files["labels"])
            files["label_ids"] = ids
        files["geometry"] = f"{geometry.name}.geometry.json"
        (work_dir / files["geometry"]).write_text(json.dumps(record, indent=2))
        summary["views"][geometry.name] = files
    progress("done", 1.0)
    return summary
