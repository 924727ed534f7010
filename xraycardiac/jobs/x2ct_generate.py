"""Pipeline ``x2ct-generate``: a CT volume and its uncertainty from a PA (+ lateral) radiograph (CLS-DM).

Steps: read the views (and their C-arm geometry), resample them to the model's view size, run the
x2ct model (:func:`xraycardiac.xray2ct.bundle.load_bundle`: X-ray encoder -> K latent samples by
DDIM / rectified-flow sampling -> autoencoder decoder), write the voxel-wise mean, the voxel-wise
standard deviation over the K samples and the encoder's direct estimate, and, with a reference CT,
image metrics.

Job spec::

    {"pipeline": "x2ct-generate",
     "inputs": {"pa": "pa.nrrd", "lateral": "lateral.nrrd",                  # lateral: biplanar models
                "geometry_pa": "pa.geometry.json", "geometry_lateral": "lateral.geometry.json",  # optional
                "reference": "ct.nrrd"},                                      # optional
     "params": {"model": "x2ct-demo", "steps": 20, "samples": 4, "seed": 0, "device": "auto"},
     "output_dir": "out/"}

Inputs:

* ``pa`` (required), ``lateral`` (biplanar models only): radiographs as one-slice volumes (NRRD,
  NIfTI, MetaImage: K = 1) or ``.npy`` arrays (rows, cols) (or (1, rows, cols)), holding the **line
  integral of mu** (dimensionless), what ``xraycardiac drr`` / the ``drr`` job write. They are
  divided by ``mu_water * drr_water_mm`` of the model's data config (the training views' scale).
  Both views must have the same size. A 3D volume is refused. Any other input name is refused.
* ``geometry_pa`` / ``geometry_lateral`` (optional): ``CArmGeometry.to_dict()`` JSON of each view; its
  detector must be the image's rows x cols. Default: the model's training view (data config SID,
  SOD, angle) about the PA isocentre (PA default: RAS (0, 0, 0)), with a detector of the same
  physical size as the training detector (``image_size * detector_pixel_mm``) split into the image's
  pixels.
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

Outputs: ``ct.nrrd`` (voxel-wise mean of the K decoded samples, HU, clipped to the model's HU
window), ``uncertainty.nrrd`` (voxel-wise standard deviation over the K samples (unbiased), HU),
``direct.nrrd`` (the encoder's direct CT estimate, no diffusion, HU), all on the cube's ijk_to_ras
with provenance in the header (``xraycardiac_*`` keys), and ``report.json`` (the summary: model,
sha256s, params, mode, geometry, timing, peak memory and, with a reference, metrics; see
``METRICS_METHOD``). Progress: one event per sampler step (``step``, ``steps`` extras).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.jobs.inputs import read_geometry_input, read_view
from xraycardiac.jobs.registry import Progress, register
from xraycardiac.jobs.spec import JobSpec

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
    "run_x2ct_generate",
]

PIPELINE = "x2ct-generate"
VIEW_INPUTS = ("pa", "lateral")
INPUTS = ("pa", "lateral", "geometry_pa", "geometry_lateral", "reference")
PARAMS = ("model", "steps", "samples", "seed", "device")
DEFAULT_STEPS, MAX_STEPS = 20, 25
DEFAULT_SAMPLES, MAX_SAMPLES = 4, 64
PSNR_CAP_DB = 100.0
OUTPUTS = {
    "ct": "ct.nrrd",
    "uncertainty": "uncertainty.nrrd",
    "direct": "direct.nrrd",
    "report": "report.json",
}
METRICS_METHOD = (
    "reference CT used as is when it lies on the output cube (same shape and ijk_to_ras), else resampled "
    "onto it with xraycardiac.xray2ct.data.prepare_ct (trilinear, Gaussian anti-aliasing when coarser, "
    "air outside); both volumes clipped to the model's HU window [lo, hi]; data_range = hi - lo HU; "
    "PSNR = 10 log10(data_range^2 / MSE) (capped at 100 dB, identical volumes give inf; psnr_capped "
    "says so); SSIM 3D: skimage structural_similarity on the volume, 7^3 uniform window, K1 0.01, K2 0.03; "
    "slice-wise SSIM: mean of 2D SSIMs (7 x 7 window) over the axial slices (array axis 0 = K = S); "
    "MAE in HU on the clipped values (xraycardiac.metrics.image.hu_window_metrics)"
)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary sibling and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _params(spec: JobSpec) -> dict[str, Any]:
    """The checked parameters with their defaults."""
    spec.check_param_names(PARAMS)
    model = spec.param("model", kind=str).strip()
    if not model:
        raise ValueError("params.model: expected an x2ct model name or bundle folder, got ''")
    steps = spec.param("steps", DEFAULT_STEPS, int)
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"params.steps: expected an integer in 1..{MAX_STEPS} (sampler steps), got {steps}")
    samples = spec.param("samples", DEFAULT_SAMPLES, int)
    if not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"params.samples: expected an integer in 1..{MAX_SAMPLES} (K), got {samples}")
    seed = spec.param("seed", 0, int)
    if seed < 0:
        raise ValueError(f"params.seed: expected an integer >= 0, got {seed}")
    device = spec.param("device", "auto", str)
    return {"model": model, "steps": steps, "samples": samples, "seed": seed, "device": device}


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


def _default_geometry(config: Any, view: str, shape: tuple[int, int], centre: Any) -> Any:
    """The model's training view about ``centre``, its detector split into ``shape`` pixels."""
    from xraycardiac.xray2ct.data import view_geometries

    side = config.image_size * config.detector_pixel_mm
    base = view_geometries(config, centre)[view]
    return base.with_(detector_rows=shape[0], detector_cols=shape[1],
                      pixel_spacing_mm=(side / shape[0], side / shape[1]))  # fmt: skip


def _resample(image: np.ndarray, p: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image resampled to size x size, its projection matrix); pixel centres kept (align_corners False).

    Integer down-sampling factors average pixel blocks (``area``); other sizes use antialiased bilinear
    interpolation. Values are line integrals per ray, so averaging (not summing) is right.
    """
    import torch
    import torch.nn.functional as F

    rows, cols = image.shape
    if (rows, cols) == (size, size):
        return image, p
    t = torch.from_numpy(image.astype(np.float32))[None, None]
    if rows % size == 0 and cols % size == 0:  # integer factors: the exact box average
        out = F.interpolate(t, size=(size, size), mode="area")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    su, sv = size / cols, size / rows
    scale = np.array([[su, 0.0, 0.5 * su - 0.5], [0.0, sv, 0.5 * sv - 0.5], [0.0, 0.0, 1.0]])
    return out[0, 0].double().numpy(), scale @ p


def _peak_memory(device: Any) -> dict[str, Any]:
    """Peak resident memory of this process (MB) and, on CUDA, the peak allocated GPU memory (MB)."""
    out: dict[str, Any] = {"process_peak_rss_mb": None}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["process_peak_rss_mb"] = round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
    except (ImportError, OSError):  # Windows has no resource module
        pass
    if getattr(device, "type", "") == "cuda":
        import torch

        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _metrics(pred_hu: np.ndarray, ref_hu: np.ndarray, window: tuple[float, float]) -> dict[str, Any]:
    from xraycardiac.metrics.image import hu_window_metrics

    m = hu_window_metrics(pred_hu, ref_hu, window)
    psnr = float(m["psnr_db"])
    return {
        "psnr_db": min(psnr, PSNR_CAP_DB),
        "psnr_capped": not psnr < PSNR_CAP_DB,
        "ssim_3d": float(m["ssim_3d"]),
        "ssim_slicewise": float(m["ssim_slicewise"]),
        "mae_hu": float(m["mae_hu"]),
    }


def _reference_on_cube(
    spec: JobSpec, config: Any, a: np.ndarray, centre: np.ndarray
) -> tuple[np.ndarray, str]:
    """The reference CT in HU on the output cube, and how it got there ("as is" / "resampled")."""
    from xraycardiac.io import read_volume, require_3d
    from xraycardiac.xray2ct.data import prepare_ct

    path = spec.input_path("reference")
    try:
        ref = require_3d(read_volume(path), "inputs.reference")
    except FileNotFoundError:
        raise FileNotFoundError(f"inputs.reference: {path} does not exist") from None
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("inputs.reference") else f"inputs.reference: {msg}") from None
    g = config.grid
    if ref.array.shape == (g, g, g) and np.allclose(ref.ijk_to_ras, a, atol=1e-4):
        return np.asarray(ref.array, dtype=np.float32), "as is"
    return prepare_ct(ref, config, centre).array, "resampled"


@register(PIPELINE)
def run_x2ct_generate(spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """CT, uncertainty and direct estimate from one or two radiographs (module docstring)."""
    import torch

    from xraycardiac import __version__
    from xraycardiac.io import write_volume
    from xraycardiac.projection import MU_WATER_PER_MM
    from xraycardiac.runtime import select_device
    from xraycardiac.volume import Volume
    from xraycardiac.xray2ct.bundle import load_bundle
    from xraycardiac.xray2ct.data import cube_ijk_to_ras, unit_to_hu

    t_start = time.monotonic()
    params = _params(spec)
    _check_input_names(spec)
    progress("reading the views", 0.0)
    images = {v: read_view(spec.input_path(v), v) for v in VIEW_INPUTS if v in spec.inputs}
    if "lateral" in images and images["lateral"].shape != images["pa"].shape:
        (r1, c1), (r2, c2) = images["pa"].shape, images["lateral"].shape
        raise ValueError(
            f"inputs.lateral: {r2} x {c2} pixels but inputs.pa is {r1} x {c1}; the views must have the same size"
        )
    device = select_device(params["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.monotonic()
    progress("loading the model", 0.05)
    bundle = load_bundle(params["model"], device=device)
    t_load = time.monotonic() - t0
    name = bundle.source["model"]
    if bundle.mode == "biplanar" and "lateral" not in images:
        raise ValueError(
            f"inputs.lateral: model {name!r} is biplanar (PA + lateral); give inputs.lateral too, or "
            "choose a single-view model"
        )
    if bundle.mode == "single" and "lateral" in images:
        raise ValueError(
            f"inputs.lateral: model {name!r} is a single-view (PA only) model; remove inputs.lateral "
            "(and geometry_lateral), or choose a biplanar model"
        )
    config = bundle.data_config
    geoms: dict[str, Any] = {}
    given: dict[str, bool] = {}
    for view in bundle.views:
        key = f"geometry_{view}"
        given[view] = key in spec.inputs
        if given[view]:
            geoms[view] = read_geometry_input(spec, key, images[view].shape, view)
    centre = geoms["pa"].isocenter if "pa" in geoms else np.zeros(3)
    for view in bundle.views:
        if view not in geoms:
            geoms[view] = _default_geometry(config, view, images[view].shape, centre)
    size = bundle.view_size
    scale = 1.0 / (MU_WATER_PER_MM * config.drr_water_mm)
    views, mats = [], []
    for view in bundle.views:
        image, p = _resample(images[view], geoms[view].projection_matrix(), size)
        views.append(image * scale)
        mats.append(p)
    a = cube_ijk_to_ras(config, centre)
    x = torch.from_numpy(np.stack(views).astype(np.float32))[None].to(device)

    steps, k = params["steps"], params["samples"]
    progress(f"sampling ({k} samples, {steps} steps)", 0.1, step=0, steps=steps)
    t0 = time.monotonic()

    def on_step(i: int, n: int) -> None:
        progress(f"sampling step {i}/{n}", 0.1 + 0.8 * i / n, step=i, steps=n)

    result = bundle.generate(
        x, np.stack(mats), a, n_samples=k, steps=steps, seed=params["seed"], progress=on_step
    )
    t_generate = time.monotonic() - t0

    progress("writing the volumes", 0.92)
    t0 = time.monotonic()
    window = tuple(config.hu_window)
    half = (window[1] - window[0]) / 2.0
    ct_hu = unit_to_hu(result.mean[0, 0].cpu().numpy(), window)
    direct_hu = unit_to_hu(result.direct[0, 0].cpu().numpy(), window)
    meta = {"model": name, "model_version": bundle.source["version"],
            "model_sha256": bundle.source["bundle_sha256"], "seed": params["seed"], "steps": steps,
            "samples": k, "hu_window": list(window), "xraycardiac_version": __version__,
            "intended_use": "research only, not for clinical use"}  # fmt: skip
    outputs = dict(OUTPUTS)
    write_volume(
        Volume(ct_hu, a, {**meta, "quantity": "HU", "content": "mean of the samples"}),
        work_dir / OUTPUTS["ct"],
    )
    write_volume(Volume(direct_hu, a, {**meta, "quantity": "HU", "content": "encoder direct estimate"}),
                 work_dir / OUTPUTS["direct"])  # fmt: skip
    if result.std is not None:
        std_hu = (result.std[0, 0].cpu().numpy() * half).astype(np.float32)
        write_volume(Volume(std_hu, a, {**meta, "quantity": "HU", "content": "std over the samples"}),
                     work_dir / OUTPUTS["uncertainty"])  # fmt: skip
    else:
        outputs.pop("uncertainty")
        progress.log(
            "samples = 1: no uncertainty volume (the std over samples needs K >= 2)", level="warning"
        )
    t_write = time.monotonic() - t0

    metrics = None
    if "reference" in spec.inputs:
        progress("scoring against the reference", 0.95)
        ref_hu, how = _reference_on_cube(spec, config, a, centre)
        metrics = {
            "ct": _metrics(ct_hu, ref_hu, window),
            "direct": _metrics(direct_hu, ref_hu, window),
            "window_hu": list(window),
            "data_range_hu": window[1] - window[0],
            "reference": how,
            "method": METRICS_METHOD,
        }
    summary = {
        "pipeline": PIPELINE,
        "xraycardiac_version": __version__,
        "model": {
            "name": name,
            "version": bundle.source["version"],
            "folder": bundle.source["folder"],
            "mode": bundle.mode,
            "bundle_sha256": bundle.source["bundle_sha256"],
            "sha256": bundle.source["sha256"],
        },  # fmt: skip
        "params": params,
        "device": str(device),
        "views": {
            v: {
                "file": Path(spec.inputs[v]).name,
                "shape": list(images[v].shape),
                "geometry": "given" if given[v] else "default",
                "resampled_to": [size, size],
            }
            for v in bundle.views
        },  # fmt: skip
        "cube": {
            "grid": config.grid,
            "spacing_mm": config.spacing_mm,
            "centre_ras_mm": [float(c) for c in centre],
            "ijk_to_ras": a.tolist(),
            "hu_window": list(window),
        },  # fmt: skip
        "uncertainty": "std over samples (unbiased), HU" if result.std is not None else None,
        "timing_s": {
            "load": round(t_load, 3),
            "generate": round(t_generate, 3),
            "per_step": round(t_generate / steps, 4),
            "write": round(t_write, 3),
            "total": round(time.monotonic() - t_start, 3),
        },  # fmt: skip
        "peak_memory": _peak_memory(device),
        "metrics": metrics,
        "outputs": outputs,
    }
    _write_json(work_dir / OUTPUTS["report"], summary)
    progress("done", 1.0)
    return summary
