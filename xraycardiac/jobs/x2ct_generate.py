"""Pipeline ``x2ct-generate``: a CT volume and its uncertainty from a PA (+ lateral) radiograph (CLS-DM).

The job checks the spec (parameters -> :class:`xraycardiac.xray2ct.pipeline.GenerateConfig`), reads the
views and hands them to :func:`xraycardiac.xray2ct.pipeline.generate_ct`: resample them to the model's
view size, run the x2ct model (X-ray encoder -> K latent samples by DDIM / rectified-flow sampling ->
autoencoder decoder), write the voxel-wise mean, the uncertainty map (calibrated expected |error|, or
the standard deviation over the K samples) and the encoder's direct estimate, and, with a reference CT, image metrics.

Job spec::

    {"pipeline": "x2ct-generate",
     "inputs": {"pa": "pa.nrrd", "lateral": "lateral.nrrd",                  # lateral: biplanar models
                "geometry_pa": "pa.geometry.json", "geometry_lateral": "lateral.geometry.json",  # optional
                "reference": "ct.nrrd"},                                      # optional
     "params": {"model": "x2ct-demo", "steps": 20, "samples": 4, "seed": 0, "device": "auto"},
     "output_dir": "out/"}

Inputs:

* ``pa`` (required), ``lateral`` (biplanar models only): radiographs as they come
  (:func:`xraycardiac.radiograph.read_radiograph`): DICOM DX/CR (geometry, polarity, rescale, window
  and intensity relationship from the header), PNG/JPEG/TIFF (8/16-bit grey; a colour picture is
  refused), one-slice volumes (NRRD, NIfTI, MetaImage) or ``.npy`` arrays of **line integrals of mu**
  (what ``xraycardiac drr`` / the ``drr`` job write; a ``drr`` NRRD carries its view in its header,
  which is used). Stored values are mapped to line integrals by
  :mod:`xraycardiac.xray2ct.intensity`. Both views must have the same size; a blank or constant
  image is refused. Any other input name is refused.
* ``geometry_pa`` / ``geometry_lateral`` (optional): ``CArmGeometry.to_dict()`` JSON of each view; its
  detector must be the image's rows x cols; it wins over the file's. Without any geometry (none given,
  none in the file) the model's training view about RAS (0, 0, 0) is **assumed, with a warning**;
  the report's ``views.<view>.geometry`` says what was used and where it came from.
* ``reference`` (optional): a CT (HU) to score the result against.

The output cube is the model's (``grid``³ voxels of ``spacing_mm``, axis-aligned, I = R, J = A,
K = S) centred on the PA view's isocentre (``CArmGeometry.isocenter``: isocentre minus table offset).
Views are resampled to the model's view size S (block average for integer factors, else antialiased
bilinear); their projection matrices are rescaled with them (pixel centres kept:
``u' = (u + 0.5) S / cols - 0.5``).

Params: ``model`` (required; bundle folder or installed name), ``steps`` (sampler steps, 1..25,
default 20), ``samples`` (K, 1..64, default 4; the uncertainty needs K >= 2: with K = 1 no
uncertainty.nrrd is written), ``seed`` (>= 0, default 0; same inputs, seed and device give the same
volumes), ``device`` ("auto", "cpu", "cuda[:N]", "mps").
Reading params (null = from the file): ``intensity`` ("auto", "line-integral", "log", "linear",
"display"), ``invert`` (true: values fall as attenuation rises, MONOCHROME1), ``gamma`` (display gamma
of a picture, a number or "auto"), ``sid_mm``, ``sod_mm``, ``pixel_mm`` (detector pixel at the
detector), ``view_pa`` / ``view_lateral`` ("PA", "AP", "LL", "RL"): the user's geometry, over the
file header's (a picture needs SID, SOD and pixel together).

Outputs: ``ct.nrrd`` (voxel-wise mean of the K decoded samples, HU, clipped to the model's HU
window), ``uncertainty.nrrd`` (HU: the expected |error| of the model's calibrated uncertainty,
:mod:`xraycardiac.xray2ct.uncertainty`, when the model ships a calibration of its own weights, else the
voxel-wise standard deviation over the K samples (unbiased); the report's ``uncertainty`` says which),
``direct.nrrd`` (the encoder's direct CT estimate, no diffusion, HU), all on the cube's ijk_to_ras
with provenance in the header (``xraycardiac_*`` keys), and ``report.json`` (the summary: model,
sha256s, params, mode, per view the reading, intensity mapping and geometry source, the
out-of-distribution score (``input_check``), timing, peak memory and, with a reference, metrics; see
``METRICS_METHOD``). Progress: one event per sampler step (``step``, ``steps`` extras).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xraycardiac.jobs.inputs import read_geometry_input
from xraycardiac.jobs.registry import Progress, register
from xraycardiac.jobs.spec import JobSpec
from xraycardiac.xray2ct.pipeline import (
    DEFAULT_SAMPLES,
    DEFAULT_STEPS,
    MAX_SAMPLES,
    MAX_STEPS,
    METRICS_METHOD,
    OUTPUTS,
    PSNR_CAP_DB,
    VIEWS,
    GenerateConfig,
    generate_ct,
    read_views,
)

__all__ = [
    "DEFAULT_SAMPLES",
    "DEFAULT_STEPS",
    "INPUTS",
    "MAX_SAMPLES",
    "MAX_STEPS",
    "METRICS_METHOD",
    "OUTPUTS",
    "PARAMS",
    "PIPELINE",
    "PSNR_CAP_DB",
    "READING_PARAMS",
    "run_x2ct_generate",
]

PIPELINE = "x2ct-generate"
INPUTS = ("pa", "lateral", "geometry_pa", "geometry_lateral", "reference")
PARAMS = ("model", "steps", "samples", "seed", "device", "intensity", "invert", "gamma", "sid_mm", "sod_mm",
          "pixel_mm", "view_pa", "view_lateral")  # fmt: skip
READING_PARAMS = PARAMS[5:]
"""How the radiographs are read (intensity, polarity, gamma) and the user's geometry values."""


def _config(spec: JobSpec) -> GenerateConfig:
    """The parameters, typed (``spec.param``) and checked once (``GenerateConfig``); errors name params.<key>."""
    spec.check_param_names(PARAMS)
    values = {
        "model": spec.param("model", kind=str),
        "steps": spec.param("steps", DEFAULT_STEPS, int),
        "samples": spec.param("samples", DEFAULT_SAMPLES, int),
        "seed": spec.param("seed", 0, int),
        "device": spec.param("device", "auto", str),
        "intensity": spec.param("intensity", "auto", str),
        **{k: spec.params.get(k) for k in READING_PARAMS[1:]},  # checked by GenerateConfig
    }
    try:
        return GenerateConfig(**values)
    except ValueError as exc:
        raise ValueError(f"params.{exc}") from None


def _check_input_names(spec: JobSpec) -> None:
    """Refuse unknown input names (e.g. an unknown view label) and a geometry without its view."""
    unknown = sorted(set(spec.inputs) - set(INPUTS))
    if unknown:
        raise ValueError(
            f"inputs.{unknown[0]}: unknown input (views are 'pa' and 'lateral'); allowed inputs: {list(INPUTS)}"
        )
    if "pa" not in spec.inputs:
        raise ValueError("inputs.pa: required (the PA radiograph, a one-slice volume file or a .npy image)")
    if "geometry_lateral" in spec.inputs and "lateral" not in spec.inputs:
        raise ValueError("inputs.geometry_lateral: given without inputs.lateral")


@register(PIPELINE)
def run_x2ct_generate(spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """CT, uncertainty and direct estimate from one or two radiographs (module docstring)."""
    config = _config(spec)
    _check_input_names(spec)
    progress("reading the views", 0.0)
    radiographs = read_views(config, {v: spec.input_path(v) for v in VIEWS if v in spec.inputs})

    def read_geometry(view: str, shape: tuple[int, int]) -> Any:
        key = f"geometry_{view}"
        return read_geometry_input(spec, key, shape, view) if key in spec.inputs else None

    reference = spec.input_path("reference") if "reference" in spec.inputs else None
    return generate_ct(config, radiographs, work_dir, progress, read_geometry, reference, PIPELINE)
