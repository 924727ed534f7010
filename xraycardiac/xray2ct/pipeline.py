"""CT volume and its uncertainty from a PA (+ lateral) radiograph with an x2ct model (CLS-DM).

The pipeline behind the ``x2ct-generate`` job (:mod:`xraycardiac.jobs.x2ct_generate`, whose docstring
describes the inputs and outputs a user gives and gets). :class:`GenerateConfig` holds the checked
parameters (the only place they are checked); :func:`generate_ct` does the work:

* views: radiographs as read by :func:`xraycardiac.radiograph.read_radiograph` (DICOM DX/CR, PNG/JPEG,
  ``xraycardiac drr`` NRRDs, .npy line integrals); blank / constant images are refused
  (:func:`~xraycardiac.xray2ct.input_stats.check_not_blank`); stored values are mapped to line integrals
  of mu (:mod:`xraycardiac.xray2ct.intensity`: log transform, polarity, display range and gamma, and for
  data of unknown scale an affine fit to the training views' quantiles), then divided by
  ``mu_water * drr_water_mm`` of the model's data config (the training views' scale); both views of
  the same size.
* geometry, in this order: a geometry JSON given for the view; the file's own (a ``drr`` NRRD header,
  a DICOM DX/CR/XA header), with the user's SID / SOD / pixel / view over it; for a picture, the user's
  SID / SOD / pixel; else the model's training view (data config SID, SOD, angle) about the PA
  isocentre (default RAS (0, 0, 0)) with a detector of the training detector's physical size split
  into the image's pixels (:func:`default_geometry`), with a warning. The report says, per view,
  which one was used and where it came from.
* out-of-distribution check: the views as the encoder sees them are scored against the model's input
  statistics (:mod:`xraycardiac.xray2ct.input_stats`, when shipped beside the weights); a score above
  the threshold is a warning (progress log and report), never a silent pass.
* the output cube is the model's (``grid``³ voxels of ``spacing_mm``, I = R, J = A, K = S) centred on
  the PA view's isocentre. Views are resampled to the model's view size S (:func:`resample_view`:
  block average for integer factors, else antialiased bilinear; pixel centres kept,
  ``u' = (u + 0.5) S / cols - 0.5``).
* outputs: the voxel-wise mean of the K decoded samples (HU, clipped to the model's HU window), the
  uncertainty (HU; K >= 2): the expected |error| of :mod:`xraycardiac.xray2ct.uncertainty` when the model
  has a calibration of its own weights, else the voxel-wise std of the samples (unbiased; the report's
  ``uncertainty`` says which), and the encoder's direct estimate, with a
  ``report.json`` summary and, with a reference CT, image metrics (:data:`METRICS_METHOD`).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.jsonutil import is_int, is_number
from xraycardiac.outputs import write_json_atomic

__all__ = [
    "DEFAULT_SAMPLES",
    "DEFAULT_STEPS",
    "MAX_SAMPLES",
    "MAX_STEPS",
    "METRICS_METHOD",
    "OUTPUTS",
    "PSNR_CAP_DB",
    "GenerateConfig",
    "default_geometry",
    "generate_ct",
    "ood_message",
    "prepare_views",
    "read_views",
    "resample_view",
    "window_metrics",
]

VIEWS = ("pa", "lateral")
DEFAULT_STEPS, MAX_STEPS = 20, 25
"""Sampler steps (default, most)."""
DEFAULT_SAMPLES, MAX_SAMPLES = 4, 64
"""Samples K (default, most); the uncertainty volume needs K >= 2."""
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


@dataclass(frozen=True)
class GenerateConfig:
    """The checked parameters of one generation.

    Attributes:
        model: x2ct bundle folder or installed model name.
        steps: sampler steps, 1..``MAX_STEPS``.
        samples: K, 1..``MAX_SAMPLES`` (K = 1: no uncertainty volume).
        seed: noise seed, >= 0 (same inputs, seed and device give the same volumes).
        device: "auto", "cpu", "cuda[:N]", "mps".

    Raises:
        ValueError: a parameter out of range, naming it (``steps: expected ...``).
    """

    model: str
    steps: int = DEFAULT_STEPS
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    device: str = "auto"
    intensity: str = "auto"
    invert: bool | None = None
    gamma: float | str | None = None
    sid_mm: float | None = None
    sod_mm: float | None = None
    pixel_mm: float | None = None
    view_pa: str | None = None
    view_lateral: str | None = None

    def intensity_options(self) -> Any:
        """The :class:`~xraycardiac.xray2ct.intensity.IntensityOptions` of these parameters."""
        from xraycardiac.xray2ct.intensity import IntensityOptions

        return IntensityOptions(self.intensity, self.invert, self.gamma)

    def geometry_overrides(self, view: str) -> dict[str, Any]:
        """The user's geometry values for ``view`` (None = not given), as ``read_radiograph`` takes them."""
        return {"view": getattr(self, f"view_{view}"), "sid_mm": self.sid_mm, "sod_mm": self.sod_mm,
                "pixel_spacing_mm": self.pixel_mm}  # fmt: skip

    def __post_init__(self) -> None:
        if not (isinstance(self.model, str) and self.model.strip()):
            got = self.model.strip() if isinstance(self.model, str) else self.model
            raise ValueError(f"model: expected an x2ct model name or bundle folder, got {got!r}")
        object.__setattr__(self, "model", self.model.strip())
        if not (is_int(self.steps) and 1 <= self.steps <= MAX_STEPS):
            raise ValueError(
                f"steps: expected an integer in 1..{MAX_STEPS} (sampler steps), got {self.steps}"
            )
        if not (is_int(self.samples) and 1 <= self.samples <= MAX_SAMPLES):
            raise ValueError(f"samples: expected an integer in 1..{MAX_SAMPLES} (K), got {self.samples}")
        if not is_int(self.seed, 0):
            raise ValueError(f"seed: expected an integer >= 0, got {self.seed}")
        if not isinstance(self.device, str):
            raise ValueError(f"device: expected a string, got {self.device!r}")
        self.intensity_options()  # checks intensity, invert, gamma
        for name in ("sid_mm", "sod_mm", "pixel_mm"):
            v = getattr(self, name)
            if v is not None and not (is_number(v) and v > 0):
                raise ValueError(f"{name}: expected a number > 0 (mm) or null (from the file), got {v!r}")
        from xraycardiac.geometry.dicom import VIEW_POSITIONS

        for name in ("view_pa", "view_lateral"):
            v = getattr(self, name)
            if v is not None and str(v).upper() not in VIEW_POSITIONS:
                raise ValueError(f"{name}: expected one of {sorted(VIEW_POSITIONS)} or null, got {v!r}")


def default_geometry(config: Any, view: str, shape: tuple[int, int], centre: Any) -> Any:
    """The model's training view about ``centre``, its detector split into ``shape`` pixels."""
    from xraycardiac.xray2ct.data import view_geometries

    side = config.image_size * config.detector_pixel_mm
    base = view_geometries(config, centre)[view]
    return base.with_(detector_rows=shape[0], detector_cols=shape[1],
                      pixel_spacing_mm=(side / shape[0], side / shape[1]))  # fmt: skip


def resample_view(image: np.ndarray, p: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
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
    from xraycardiac.runtime import peak_rss_mb

    out: dict[str, Any] = {"process_peak_rss_mb": None}
    try:
        out["process_peak_rss_mb"] = round(peak_rss_mb(), 1)
    except (ImportError, OSError):  # Windows has no resource module
        pass
    if getattr(device, "type", "") == "cuda":
        import torch

        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def window_metrics(pred_hu: np.ndarray, ref_hu: np.ndarray, window: tuple[float, float]) -> dict[str, Any]:
    """PSNR (dB, capped at ``PSNR_CAP_DB``), SSIM 3D and slice-wise, MAE (HU) in the HU ``window``."""
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


def _reference_on_cube(path: Path, config: Any, a: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, str]:
    """The reference CT in HU on the output cube, and how it got there ("as is" / "resampled")."""
    from xraycardiac.io import read_volume, require_3d
    from xraycardiac.xray2ct.data import prepare_ct

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


def read_views(config: GenerateConfig, paths: Mapping[str, str | Path]) -> dict[str, Any]:
    """The radiographs of ``paths`` ("pa", "lateral" -> file), read with the user's geometry values."""
    from xraycardiac.radiograph import read_radiograph

    return {v: read_radiograph(paths[v], v, config.geometry_overrides(v)) for v in VIEWS if v in paths}


def _geometries(
    config: Any, views: Sequence[str], radiographs: Mapping[str, Any], read_geometry: Callable[..., Any]
) -> tuple[dict[str, Any], dict[str, str], np.ndarray]:
    """Per view: its geometry, where it came from (module docstring), and the cube centre (RAS mm)."""
    geoms: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for view in views:
        r = radiographs[view]
        given = read_geometry(view, r.pixels.shape)
        if given is not None:
            geoms[view], sources[view] = given, f"geometry JSON given for the view (inputs.geometry_{view})"
        elif r.geometry is not None:
            geoms[view], sources[view] = r.geometry, r.geometry_source
    centre = geoms["pa"].isocenter if "pa" in geoms else np.zeros(3)
    for view in views:
        if view not in geoms:
            geoms[view] = default_geometry(config, view, radiographs[view].pixels.shape, centre)
            sources[view] = (
                f"ASSUMED: the model's training view (SID {config.sid_mm:g} mm, SOD {config.sod_mm:g} mm, "
                f"detector {config.image_size * config.detector_pixel_mm:.0f} mm) about RAS "
                f"({', '.join(f'{c:g}' for c in centre)}); the file gave none "
                f"({radiographs[view].geometry_source}): give --geometry-{view} or --sid-mm/--sod-mm/--pixel-mm"
            )
    return geoms, sources, centre


def prepare_views(
    bundle: Any, radiographs: Mapping[str, Any], config: GenerateConfig, read_geometry: Callable[..., Any],
    progress: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Radiographs -> the encoder's input: views (V, S, S) in view units, projection matrices, the cube.

    Returns:
        {"views": (V, S, S) float64, "matrices": (V, 3, 4), "centre": (3,), "records": {view: dict}
        (reading, intensity and geometry of each view), "ood": the score or None, "stats_source"}.

    Raises:
        ValueError: a blank / constant view; data of unknown scale for a model without input statistics.
    """
    from xraycardiac.projection import MU_WATER_PER_MM
    from xraycardiac.xray2ct.input_stats import check_not_blank, find_input_stats, score_views
    from xraycardiac.xray2ct.intensity import fit_to_reference, relative_attenuation

    data_config = bundle.data_config
    for view in bundle.views:
        check_not_blank(radiographs[view].pixels, view, radiographs[view].name)
    stats, stats_source = find_input_stats(bundle.source["folder"], bundle.source["model"], data_config)
    geoms, sources, centre = _geometries(data_config, bundle.views, radiographs, read_geometry)
    size = bundle.view_size
    scale = 1.0 / (MU_WATER_PER_MM * data_config.drr_water_mm)
    views, mats, records = [], [], {}
    for view in bundle.views:
        r = radiographs[view]
        x, rec = relative_attenuation(r, config.intensity_options())
        image, p = resample_view(x, geoms[view].projection_matrix(), size)
        if rec["absolute"]:
            image = image * scale
        elif stats is None:
            raise ValueError(
                f"inputs.{view}: {r.name} holds {rec['encoding']} values of unknown scale, and {stats_source}; "
                "give line integrals (an xraycardiac drr NRRD, a .npy) or a model with input statistics"
            )
        else:
            image, rec = fit_to_reference(image, np.asarray(stats.quantiles[view]), rec)
        views.append(image)
        mats.append(p)
        records[view] = {**r.describe(), "geometry": sources[view], "intensity": rec}
        if sources[view].startswith("ASSUMED") and progress is not None:
            progress.log(f"{view}: geometry {sources[view]}", level="warning")
    ood = score_views(dict(zip(bundle.views, views, strict=True)), stats) if stats is not None else None
    if ood is not None and ood["flagged"]:
        ood["hint"] = _ood_hint(bundle.views, views, stats, score_views)
    return {"views": np.stack(views), "matrices": np.stack(mats), "centre": centre, "records": records,
            "geometries": geoms, "ood": ood, "stats_source": stats_source}  # fmt: skip


def _ood_hint(
    names: Sequence[str], views: Sequence[np.ndarray], stats: Any, score: Callable[..., Any]
) -> str:
    """What an out-of-distribution input may be: inverted polarity when the flipped views score in range."""
    flipped = {n: v.max() + v.min() - v for n, v in zip(names, views, strict=True)}
    if not score(flipped, stats)["flagged"]:
        return "the views look inverted (MONOCHROME1 / bone dark?): try --invert (or --no-invert)"
    return (
        "the views are unlike the model's training radiographs (another geometry, collimation, processing, "
        "noise, or not a chest radiograph); the CT will be unreliable"
    )


def ood_message(ood: Mapping[str, Any] | None, stats_source: str) -> str:
    """One line for consoles and panels: the out-of-distribution verdict."""
    if ood is None:
        return f"input check: not done ({stats_source})"
    worst = max(ood["views"].items(), key=lambda kv: kv[1]["score"])
    head = "WARNING: input unlike the training data" if ood["flagged"] else "input check: in range"
    text = (f"{head} (score {ood['score']:.1f}, threshold {ood['threshold']:.1f}; worst: "
            f"{worst[0]} {worst[1]['worst_feature']})")  # fmt: skip
    return text + (f": {ood['hint']}" if ood.get("hint") else "")


def _uncertainty(
    bundle: Any, result: Any, prepared: Mapping[str, Any], ijk_to_ras: np.ndarray, std_hu: np.ndarray
) -> tuple[np.ndarray, str]:
    """(uncertainty map in HU, what it is): the model's calibrated map when it has a calibration of its
    own weights (:mod:`xraycardiac.xray2ct.uncertainty`), else the std over the samples."""
    from xraycardiac.xray2ct import uncertainty as unc
    from xraycardiac.xray2ct.data import unit_to_hu

    cal, source = unc.find_calibration(
        bundle.source["folder"], bundle.source["model"], bundle.source["sha256"]
    )
    if cal is None:
        return std_hu.astype(np.float32), unc.describe_method(None, source)
    window = bundle.data_config.hu_window
    geoms = unc.view_size_geometries([prepared["geometries"][v] for v in bundle.views], bundle.view_size)
    feats = unc.uncertainty_features(
        unit_to_hu(result.samples[:, 0, 0].float().cpu().numpy(), window),
        unit_to_hu(result.direct[0, 0].float().cpu().numpy(), window),
        ijk_to_ras, prepared["views"], geoms, bundle.data_config, cal.view_residual,
    )  # fmt: skip
    return unc.calibrated_uncertainty(feats, cal), unc.describe_method(cal, source)


def generate_ct(
    config: GenerateConfig,
    radiographs: Mapping[str, Any],
    out_dir: Path,
    progress: Any,
    read_geometry: Callable[[str, tuple[int, int]], Any] = lambda view, shape: None,
    reference: Path | None = None,
    pipeline: str = "x2ct-generate",
) -> dict[str, Any]:
    """Write ct.nrrd, direct.nrrd, uncertainty.nrrd (K >= 2) and report.json to ``out_dir``.

    Args:
        config: the checked parameters.
        radiographs: "pa" (and "lateral" for a biplanar model): :class:`xraycardiac.radiograph.Radiograph`
            (:func:`read_views`).
        out_dir: an existing, empty folder.
        progress: ``progress(stage, fraction, **extras)`` and ``progress.log(message, level=...)``
            (the job runner's ``Progress``); one event per sampler step (``step``, ``steps`` extras).
        read_geometry: ``(view, shape) -> CArmGeometry`` given for the view (a geometry JSON), or None.
        reference: a CT (HU) to score the result against, or None.
        pipeline: the name written in the report.

    Returns:
        The summary written as report.json.

    Raises:
        ValueError: views of different sizes, a model that takes the other number of views, a blank
            or constant view, data of unknown scale for a model without input statistics.
    """
    import torch

    from xraycardiac import __version__
    from xraycardiac.io import write_volume
    from xraycardiac.runtime import select_device
    from xraycardiac.volume import Volume
    from xraycardiac.xray2ct.bundle import load_bundle
    from xraycardiac.xray2ct.data import cube_ijk_to_ras, unit_to_hu

    t_start = time.monotonic()
    params = asdict(config)
    if "lateral" in radiographs and radiographs["lateral"].pixels.shape != radiographs["pa"].pixels.shape:
        (r1, c1), (r2, c2) = radiographs["pa"].pixels.shape, radiographs["lateral"].pixels.shape
        raise ValueError(
            f"inputs.lateral: {r2} x {c2} pixels but inputs.pa is {r1} x {c1}; the views must have the same size"
        )
    device = select_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.monotonic()
    progress("loading the model", 0.05)
    bundle = load_bundle(config.model, device=device)
    t_load = time.monotonic() - t0
    name = bundle.source["model"]
    if bundle.mode == "biplanar" and "lateral" not in radiographs:
        raise ValueError(
            f"inputs.lateral: model {name!r} is biplanar (PA + lateral); give inputs.lateral too, or "
            "choose a single-view model"
        )
    if bundle.mode == "single" and "lateral" in radiographs:
        raise ValueError(
            f"inputs.lateral: model {name!r} is a single-view (PA only) model; remove inputs.lateral "
            "(and geometry_lateral), or choose a biplanar model"
        )
    data_config = bundle.data_config
    prepared = prepare_views(bundle, radiographs, config, read_geometry, progress)
    centre, size = prepared["centre"], bundle.view_size
    progress.log(ood_message(prepared["ood"], prepared["stats_source"]),
                 level="warning" if (prepared["ood"] or {}).get("flagged") else "info")  # fmt: skip
    a = cube_ijk_to_ras(data_config, centre)
    x = torch.from_numpy(prepared["views"].astype(np.float32))[None].to(device)
    mats = prepared["matrices"]

    steps, k = config.steps, config.samples
    progress(f"sampling ({k} samples, {steps} steps)", 0.1, step=0, steps=steps)
    t0 = time.monotonic()

    def on_step(i: int, n: int) -> None:
        progress(f"sampling step {i}/{n}", 0.1 + 0.8 * i / n, step=i, steps=n)

    result = bundle.generate(x, mats, a, n_samples=k, steps=steps, seed=config.seed, progress=on_step)
    t_generate = time.monotonic() - t0

    progress("writing the volumes", 0.92)
    t0 = time.monotonic()
    window = tuple(data_config.hu_window)
    half = (window[1] - window[0]) / 2.0
    ct_hu = unit_to_hu(result.mean[0, 0].cpu().numpy(), window)
    direct_hu = unit_to_hu(result.direct[0, 0].cpu().numpy(), window)
    meta = {"model": name, "model_version": bundle.source["version"],
            "model_sha256": bundle.source["bundle_sha256"], "seed": config.seed, "steps": steps,
            "samples": k, "hu_window": list(window), "xraycardiac_version": __version__,
            "intended_use": "research only, not for clinical use"}  # fmt: skip
    outputs = dict(OUTPUTS)
    write_volume(
        Volume(ct_hu, a, {**meta, "quantity": "HU", "content": "mean of the samples"}),
        out_dir / OUTPUTS["ct"],
    )
    write_volume(Volume(direct_hu, a, {**meta, "quantity": "HU", "content": "encoder direct estimate"}),
                 out_dir / OUTPUTS["direct"])  # fmt: skip
    method, t_unc = None, 0.0
    if result.std is not None:
        t1 = time.monotonic()
        unc_hu, method = _uncertainty(bundle, result, prepared, a, (result.std[0, 0].cpu().numpy() * half))
        t_unc = time.monotonic() - t1
        write_volume(Volume(unc_hu, a, {**meta, "quantity": "HU", "content": method}),
                     out_dir / OUTPUTS["uncertainty"])  # fmt: skip
    else:
        outputs.pop("uncertainty")
        progress.log(
            "samples = 1: no uncertainty volume (the std over samples needs K >= 2)", level="warning"
        )
    t_write = time.monotonic() - t0

    metrics = None
    if reference is not None:
        progress("scoring against the reference", 0.95)
        ref_hu, how = _reference_on_cube(reference, data_config, a, centre)
        metrics = {
            "ct": window_metrics(ct_hu, ref_hu, window),
            "direct": window_metrics(direct_hu, ref_hu, window),
            "window_hu": list(window),
            "data_range_hu": window[1] - window[0],
            "reference": how,
            "method": METRICS_METHOD,
        }
    summary = {
        "pipeline": pipeline,
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
        "views": {v: {**prepared["records"][v], "resampled_to": [size, size]} for v in bundle.views},
        "input_check": prepared["ood"],
        "input_check_text": ood_message(prepared["ood"], prepared["stats_source"]),
        "cube": {
            "grid": data_config.grid,
            "spacing_mm": data_config.spacing_mm,
            "centre_ras_mm": [float(c) for c in centre],
            "ijk_to_ras": a.tolist(),
            "hu_window": list(window),
        },  # fmt: skip
        "uncertainty": method,
        "timing_s": {
            "load": round(t_load, 3),
            "generate": round(t_generate, 3),
            "per_step": round(t_generate / steps, 4),
            "uncertainty": round(t_unc, 3),
            "write": round(t_write - t_unc, 3),
            "total": round(time.monotonic() - t_start, 3),
        },  # fmt: skip
        "peak_memory": _peak_memory(device),
        "metrics": metrics,
        "outputs": outputs,
    }
    write_json_atomic(out_dir / OUTPUTS["report"], summary, indent=2, allow_nan=False, default=None)
    progress("done", 1.0)
    return summary
