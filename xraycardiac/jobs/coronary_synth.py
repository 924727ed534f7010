"""Pipeline ``coronary-synth``: the job entry point of :func:`xraycardiac.coronary.synth.engine.synthesize`.

Parameters -> :class:`~xraycardiac.coronary.synth.config.SynthConfig` -> one ``synthesize`` call, into the
job's work folder or, given ``inputs.dataset``, into that folder in place (see the engine for the
format, randomness, resuming and sharding).

Job spec::

    {"pipeline": "coronary-synth",
     "inputs": {"dataset": "existing_dataset_dir",             # optional: write there, in place
                "labelmap": "coronary_labels.nrrd"},           # optional: the tree from a label map
     "params": {"left_label": 1, "right_label": 2,              # with inputs.labelmap only
                "trees": 10, "pairs_per_tree": 4, "renderer": "physics", "seed": 0, "shard": "0/1",
                "image_size": 512, "pixel_spacing_mm": null, "keypoint_spacing_mm": 5.0,
                "overlap_px": 3.0, "injection": "alternate", "voxel_mm": null, "device": "cpu",
                "resume": true, "renderer_config": {}, "phantom_config": {}},
     "output_dir": "out/"}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from xraycardiac.coronary.synth.config import SynthConfig
from xraycardiac.coronary.synth.engine import synthesize
from xraycardiac.jobs.registry import Progress, register
from xraycardiac.jobs.spec import JobSpec

__all__ = ["PARAMS", "config_from_params", "run_coronary_synth"]

PARAMS = (
    "trees",
    "pairs_per_tree",
    "renderer",
    "seed",
    "shard",
    "image_size",
    "pixel_spacing_mm",
    "keypoint_spacing_mm",
    "overlap_px",
    "injection",
    "voxel_mm",
    "device",
    "resume",
    "renderer_config",
    "phantom_config",
    "left_label",
    "right_label",
)


def config_from_params(params: Mapping[str, Any], labelmap: str | None = None) -> SynthConfig:
    """A :class:`SynthConfig` from job parameters (the names of ``PARAMS``, JSON values).

    Args:
        params: job parameters; ``left_label`` / ``right_label`` (null = skip that side) need ``labelmap``.
        labelmap: path of the job's ``inputs.labelmap``, or None.
    """
    keys = (
        "trees", "pairs_per_tree", "renderer", "seed", "injection", "image_size", "pixel_spacing_mm",
        "keypoint_spacing_mm", "overlap_px", "voxel_mm", "device", "renderer_config", "phantom_config",
    )  # fmt: skip
    kwargs = {k: params[k] for k in keys if k in params and params[k] is not None}
    for k in ("left_label", "right_label"):
        if k in params:
            if labelmap is None:
                raise ValueError(
                    f"params.{k}: applies to a label map input (inputs.labelmap), which is not given"
                )
            kwargs[k] = params[k]  # null (None) skips that side
    if labelmap is not None:
        kwargs["labelmap"] = labelmap
        kwargs.setdefault("trees", 1)  # a label map is one tree
    for k in ("image_size", "pixel_spacing_mm"):
        if isinstance(kwargs.get(k), list):
            kwargs[k] = tuple(kwargs[k])
    return SynthConfig(**kwargs)


@register("coronary-synth")
def run_coronary_synth(spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """Synthesize view pairs into the work folder, or into ``inputs.dataset`` in place (see the module)."""
    spec.check_param_names(PARAMS)
    unknown = sorted(set(spec.inputs) - {"dataset", "labelmap"})
    if unknown:
        raise ValueError(f"inputs: unknown input(s) {unknown}; coronary-synth takes 'dataset' and 'labelmap'")
    labelmap = str(spec.input_path("labelmap")) if "labelmap" in spec.inputs else None
    config = config_from_params(spec.params, labelmap)
    if config.device == "auto":
        from xraycardiac.runtime import select_device

        config = replace(config, device=str(select_device("auto")))
    shard = spec.param("shard", "0/1", str)
    resume = spec.param("resume", True, bool)
    in_place = "dataset" in spec.inputs
    target = spec.input_path("dataset") if in_place else work_dir
    summary = synthesize(config, target, shard=shard, resume=resume, progress=progress)
    summary["outputs"] = {} if in_place else {"dataset": "dataset.json"}
    if not in_place:  # the work folder becomes output_dir when the job succeeds
        summary["dataset_dir"] = str(Path(spec.output_dir))
    summary["in_place"] = in_place
    return summary
