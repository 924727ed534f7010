"""Pipeline ``cardiac-synth``: synthetic cardiac CT cases (image, label map, confidence) from a template.

Job spec::

    {"pipeline": "cardiac-synth",
     "inputs": {"template_image": "image.nrrd", "template_labels": "labels.nrrd"},  # or none: phantom
     "params": {"n": 4, "seed": 0, "renderer": "warp" | "tcdm", "model": null, "steps": 20,
                "ssv_steps": [10, 20, 50], "start_strength": 0.5, "strength_mm": 4.0, "phantom_seed": 0, "phantom_grid": 64,
                "hu_harmonise": true, "texture_harmonise": true, "label_mapping": null, "clean_mask": true, "device": "auto"},
     "output_dir": "out/"}

Without template inputs the template is the procedural cardiac phantom of ``phantom_seed`` on a
``phantom_grid``^3 grid over its 160 mm field of view (64: 2.5 mm voxels; a TCDM needs its own grid).
``label_mapping`` is passed to :func:`xraycardiac.cardiac.templates.load_template`: None (table
values), a preset (``"totalsegmentator"``, ``"totalsegmentator_heartchambers"``, ``"mmwhs"``,
``"imagecas"``), a ``.json`` mapping file, or ``{"file value": table value or name, "*": "background"}``
(:mod:`xraycardiac.cardiac.label_maps`); the values a whole-body preset sent to background are in
the result's ``dropped_labels``. ``clean_mask`` (default true) removes specks, tunnels and cavities
of the mapped mask (:func:`xraycardiac.cardiac.templates.clean_label_map`). The output folder is the dataset of
:func:`xraycardiac.cardiac.synth.synthesize_dataset` (``imagesTr/``, ``labelsTr/``,
``confidenceTr/``, ``cases/``, ``records/``, ``dataset.json``, ``datalist.json``, ``synth.json``) plus
``template_image.nrrd`` / ``template_labels.nrrd`` (the template as used). ``hu_harmonise`` / ``texture_harmonise``
(tcdm, default true): :class:`xraycardiac.cardiac.synth.CardiacSynthConfig`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from xraycardiac.jobs.registry import Progress, register
from xraycardiac.jobs.spec import JobSpec
from xraycardiac.jsonutil import is_int

PIPELINE = "cardiac-synth"
_ALLOWED_PARAMS = {
    "n", "seed", "renderer", "model", "steps", "ssv_steps", "start_strength", "strength_mm", "phantom_seed", "phantom_grid",
    "label_mapping", "clean_mask", "hu_harmonise", "texture_harmonise",
    "device",
}  # fmt: skip


def _template(spec: JobSpec) -> Any:
    from xraycardiac.cardiac.templates import load_template, template_from_phantom

    has = [k in spec.inputs for k in ("template_image", "template_labels")]
    if any(has) and not all(has):
        raise ValueError(
            "cardiac-synth: inputs.template_image and inputs.template_labels go together (the image and "
            "its label map on one grid); give both, or neither for the phantom template"
        )
    if all(has):
        mapping = spec.params.get("label_mapping")
        if mapping is not None and not isinstance(mapping, str | dict):
            raise ValueError(
                "cardiac-synth: params.label_mapping must be a preset name, a .json mapping file or an object "
                f'{{"<file value>": <table value or name>}}, got {mapping!r}'
            )
        clean = spec.params.get("clean_mask", True)
        if not isinstance(clean, bool):
            raise ValueError(f"cardiac-synth: params.clean_mask must be true or false, got {clean!r}")
        return load_template(
            spec.inputs["template_image"], spec.inputs["template_labels"], mapping, clean=clean
        )
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

    grid = spec.params.get("phantom_grid", 64)
    if not (is_int(grid) and 16 <= grid <= 256):
        raise ValueError(f"cardiac-synth: params.phantom_grid must be an integer in 16..256, got {grid!r}")
    fov_mm = 160.0  # the phantom's default field of view (64 x 2.5 mm)
    config = CardiacPhantomConfig(seed=int(spec.params.get("phantom_seed", 0)), shape_ijk=(grid,) * 3,
                                  spacing_mm=fov_mm / grid)  # fmt: skip
    return template_from_phantom(config)


@register(PIPELINE)
def run_cardiac_synth(spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """Make ``params.n`` synthetic cases from the template (module docstring)."""
    from xraycardiac import __version__
    from xraycardiac.cardiac.mgm import MGMConfig
    from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset
    from xraycardiac.io import write_volume

    p = spec.params
    unknown = sorted(set(p) - _ALLOWED_PARAMS)
    if unknown:
        raise ValueError(f"cardiac-synth: unknown parameter(s) {unknown}; allowed: {sorted(_ALLOWED_PARAMS)}")
    mgm = MGMConfig()
    if p.get("strength_mm") is not None:
        mgm = replace(mgm, strength_mm=float(p["strength_mm"]))
    config = CardiacSynthConfig(
        n=p.get("n", 4), seed=p.get("seed", 0), renderer=p.get("renderer", "warp"), model=p.get("model"),
        steps=p.get("steps", 20), ssv_steps=tuple(p.get("ssv_steps", (10, 20, 50))), mgm=mgm,
        start_strength=p.get("start_strength", 0.5), hu_harmonise=p.get("hu_harmonise", True),
        texture_harmonise=p.get("texture_harmonise", True),
        device=str(p.get("device", "auto")),
    )  # fmt: skip
    progress("loading the template", 0.0)
    template = _template(spec)
    summary = synthesize_dataset(
        template, work_dir, config,
        progress=lambda stage, fraction, **extra: progress(stage, 0.02 + 0.97 * fraction, **extra),
    )  # fmt: skip
    write_volume(template.image, work_dir / "template_image.nrrd")  # after: the dataset needs an empty folder
    write_volume(template.labels, work_dir / "template_labels.nrrd")
    progress("done", 1.0)
    return {
        "pipeline": PIPELINE,
        "xraycardiac_version": __version__,
        "template": template.name,
        "labels": template.labels_present,
        "dropped_labels": template.meta.get("dropped_labels", []),
        **summary,
        "outputs": {"datalist": "datalist.json", "dataset": "dataset.json", "synth": "synth.json",
                    "template_image": "template_image.nrrd", "template_labels": "template_labels.nrrd"},
    }  # fmt: skip
