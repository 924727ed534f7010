"""Calibrated uncertainty of a generated CT: the expected absolute error (HU) per voxel.

The spread of K diffusion samples alone stays at a few tens of HU whatever the input and says nothing
about the size of the error. The map written as ``uncertainty.nrrd`` is instead a linear combination of
per-voxel signals (:data:`FEATURES`, :func:`uncertainty_features`), each a voxel-wise volume:

* ``sample_std``: the standard deviation of the K decoded samples (HU; unbiased, K >= 2);
* ``direct_gap``: |diffusion mean - the encoder's direct estimate| (HU): the two heads disagree where
  the views leave the CT undetermined;
* ``local_std``: the standard deviation of the mean CT in the 3³ neighbourhood of each voxel (HU):
  edges and small structures are where a 4 mm generated CT is wrong first;
* ``view_residual``: input consistency. The mean CT is re-projected with the views' geometry (our DRR
  projector, the model's DRR scale) and compared with the views the encoder saw; the part of the
  signed residual the volume cannot explain locally is removed, and the absolute remainder is
  back-projected along the rays (each voxel takes it at the pixel it projects to, summed over the
  views; view units = line integral / (mu_water * drr_water_mm)): where the CT disagrees with what was
  seen. A real radiograph holds tissue outside the cube (shoulders, arms, abdomen, the table): its line
  integrals add a broad, smooth or step-like field to every ray through it, which the cube's DRR cannot
  have and which would read as disagreement everywhere along those rays (block Spearman of the raw
  residual vs |error| ~0 on whole-body phantom radiographs). The residual's local background, its
  median over a window of :data:`RESIDUAL_MEDIAN_MM` at the isocentre (the median keeps the edges of
  such fields, e.g. collimation and body outline, out of the remainder, which a Gaussian or polynomial
  fit does not), is that part; a disagreement smaller than about half the window survives.

  Its form is chosen per model (:data:`RESIDUAL_CANDIDATES`, a :func:`parse_view_residual` spec:
  ``"none"``, no residual term; ``"raw"``, |r|; ``"median:<mm>"``, the median removed): :func:`calibrate`
  with ``residual="auto"`` fits every candidate on the same generations and keeps the one whose map ranks
  the error best on a case left out of the fit (:func:`select_view_residual`). The calibration records
  it (:attr:`UncertaintyCalibration.view_residual`) and the map is computed with that form; one view's
  residual, back-projected along its rays, localises little, and a model may be better without it.

``uncertainty = intercept + sum_f weight_f * feature_f`` (HU), with non-negative weights fitted by
:func:`calibrate` (non-negative least squares, :func:`scipy.optimize.nnls`) on 8³-block means of
calibration phantoms (a cache split the model was not trained on, e.g. ``val``; never test data, never
the real CT): block means of the map equal the fitted model exactly, so the map reads as "expected
|error| in HU" at block scale. The fit is stored beside the model (``<model>.uncertainty.json`` beside
packaged weights, ``uncertainty.json`` in a bundle folder; :class:`UncertaintyCalibration`) with the
command that made it (``xraycardiac x2ct calibrate-uncertainty``) and the sha256s of the parts it was
fitted for. A model without a calibration of its own parts gets the plain sample std, and the report
says so (:func:`describe_method`).

:func:`block_spearman` and :func:`reliability_table` are the checks the benchmark reports
(``benchmarks/x2ct_uncertainty.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.outputs import read_format_json, write_json_atomic

__all__ = [
    "BLOCK",
    "FEATURES",
    "FORMAT",
    "RESIDUAL_CANDIDATES",
    "RESIDUAL_DEFAULT",
    "RESIDUAL_MEDIAN_MM",
    "UncertaintyCalibration",
    "block_means",
    "block_spearman",
    "calibrate",
    "case_features",
    "calibrated_uncertainty",
    "describe_method",
    "find_calibration",
    "fit_calibration",
    "parse_view_residual",
    "reliability_table",
    "select_view_residual",
    "uncertainty_features",
    "view_residual",
    "view_size_geometries",
]

FORMAT = "xraycardiac.x2ct_uncertainty"
FEATURES = ("sample_std", "direct_gap", "local_std", "view_residual")
FEATURE_UNITS = {"sample_std": "HU", "direct_gap": "HU", "local_std": "HU", "view_residual": "view units"}
BLOCK = 8
"""Side (voxels) of the blocks the calibration is fitted on and the rank check is made on."""
PARTS = ("autoencoder", "encoder", "ldm")
RESIDUAL_MEDIAN_MM = 55.0
"""Side (mm at the isocentre) of the median window whose value is removed from the signed view residual as
what tissue outside the volume adds (module docstring); 11 pixels of the demo views (5.2 mm at the
isocentre). Chosen on the val splits of the phantom and whole-body caches (leave-one-case-out block
Spearman of the calibrated map), never on the real CT. The default form (``"median:55"``) where a model
has no calibration to say otherwise."""
RESIDUAL_DEFAULT = f"median:{RESIDUAL_MEDIAN_MM:g}"
RESIDUAL_CANDIDATES = (
    "none",
    "raw",
    "median:25",
    "median:35",
    "median:45",
    "median:55",
    "median:65",
    "median:85",
)
"""The view-residual forms ``calibrate(residual="auto")`` chooses from (:func:`parse_view_residual`)."""


def parse_view_residual(spec: str) -> tuple[str, float | None]:
    """(form, median window mm) of a view-residual spec: ``"none"`` (no residual term), ``"raw"`` (|r|) or
    ``"median:<mm>"`` (|r - its median over a window of that side at the isocentre|, mm > 0).

    Raises:
        ValueError: anything else (naming the value and what is allowed).
    """
    text = str(spec).strip().lower()
    if text in ("none", "raw"):
        return text, None
    form, _, mm = text.partition(":")
    try:
        value = float(mm)
    except ValueError:
        value = float("nan")
    if form != "median" or not np.isfinite(value) or value <= 0:
        raise ValueError(f"view residual {spec!r}: expected 'none', 'raw' or 'median:<window mm > 0>'")
    return "median", value


def block_means(volume: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Means of the ``block``³ blocks of a (K, J, I) volume (sides cut to multiples of ``block``), raveled."""
    from xraycardiac.metrics.image import block_means as means

    return means(volume, block).ravel()


def block_spearman(uncertainty: np.ndarray, abs_error: np.ndarray, block: int = BLOCK) -> float:
    """Spearman rank correlation of block-mean uncertainty and block-mean |error| (0 for a constant map)."""
    from scipy.stats import spearmanr

    u, e = block_means(uncertainty, block), block_means(abs_error, block)
    if np.ptp(u) == 0 or np.ptp(e) == 0:
        return 0.0
    return float(spearmanr(u, e)[0])


def reliability_table(
    uncertainty: Sequence[np.ndarray], abs_error: Sequence[np.ndarray], bins: int = 5, block: int = BLOCK
) -> list[dict[str, float]]:
    """Blocks of all volumes pooled, binned by uncertainty quantile: mean uncertainty vs mean |error| (HU).

    Returns:
        One row per bin: {"bin", "blocks", "uncertainty_lo_hu", "uncertainty_hi_hu", "mean_uncertainty_hu",
        "mean_abs_error_hu"}; a calibrated map has the last two close and increasing.
    """
    u = np.concatenate([block_means(x, block) for x in uncertainty])
    e = np.concatenate([block_means(x, block) for x in abs_error])
    edges = np.quantile(u, np.linspace(0.0, 1.0, bins + 1))
    which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        if m.any():
            rows.append({"bin": b + 1, "blocks": int(m.sum()), "uncertainty_lo_hu": round(float(edges[b]), 1),
                         "uncertainty_hi_hu": round(float(edges[b + 1]), 1),
                         "mean_uncertainty_hu": round(float(u[m].mean()), 1),
                         "mean_abs_error_hu": round(float(e[m].mean()), 1)})  # fmt: skip
    return rows


def view_residual(
    mean_hu: np.ndarray, ijk_to_ras: np.ndarray, views: np.ndarray, geometries: Sequence[Any],
    data_config: Any, median_mm: float | None = RESIDUAL_MEDIAN_MM,
) -> np.ndarray:  # fmt: skip
    """|r - median of r over a median_mm window|, r = DRR of the mean CT - view, back-projected along the
    rays and summed over the views (module docstring).

    Args:
        mean_hu: (K, J, I) the generated CT (HU).
        ijk_to_ras: (4, 4) of its cube.
        views: (V, S, S) the views as the encoder saw them (view units).
        geometries: V :class:`~xraycardiac.geometry.CArmGeometry` with S x S detectors (the views' own).
        data_config: the model's data config (``drr_water_mm``, ``drr_step_mm``).
        median_mm: side of the median window at the isocentre (mm; odd pixel count >= 3); None: the raw
            |r| (what tissue outside the volume lights up).

    Returns:
        (K, J, I) float32, view units.
    """
    from scipy import ndimage

    from xraycardiac.projection import MU_WATER_PER_MM
    from xraycardiac.projection.drr import DRRConfig, render_drr
    from xraycardiac.volume import Volume

    scale = 1.0 / (MU_WATER_PER_MM * data_config.drr_water_mm)
    vol = Volume(np.asarray(mean_hu, dtype=np.float32), np.asarray(ijk_to_ras, dtype=np.float64), {})
    nk, nj, ni = vol.array.shape
    kk, jj, ii = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    pts = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1).reshape(-1, 4) @ vol.ijk_to_ras.T
    out = np.zeros(vol.array.shape, dtype=np.float64)
    for view, geom in zip(views, geometries, strict=True):
        drr = render_drr(vol, geom, DRRConfig(step_mm=data_config.drr_step_mm)).array[0] * scale
        res = drr - np.asarray(view, dtype=np.float64)
        if median_mm is not None:
            iso_mm = min(geom.pixel_spacing_mm) * geom.sod_mm / geom.sid_mm
            size = max(3, 2 * int(round(median_mm / iso_mm / 2.0)) + 1)
            res = res - ndimage.median_filter(res, size=size, mode="nearest")
        res = np.abs(res)
        uvw = pts @ geom.projection_matrix().T
        rows, cols = uvw[:, 1] / uvw[:, 2], uvw[:, 0] / uvw[:, 2]
        out += ndimage.map_coordinates(res, [rows, cols], order=1, mode="nearest").reshape(out.shape)
    return out.astype(np.float32)


def uncertainty_features(
    samples_hu: np.ndarray, direct_hu: np.ndarray, ijk_to_ras: np.ndarray, views: np.ndarray,
    geometries: Sequence[Any], data_config: Any, residual: str = RESIDUAL_DEFAULT,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The :data:`FEATURES` of one generation (module docstring), each (K, J, I) float32.

    Args:
        samples_hu: (N, K, J, I) the decoded samples (HU), N >= 2.
        direct_hu: (K, J, I) the encoder's direct estimate (HU).
        ijk_to_ras, views, geometries, data_config: as :func:`view_residual`.
        residual: the view residual's form (:func:`parse_view_residual`; the calibration's
            :attr:`UncertaintyCalibration.view_residual`); ``"none"`` gives zeros (not computed).

    Raises:
        ValueError: fewer than 2 samples, an unknown residual form.
    """
    from scipy import ndimage

    s = np.asarray(samples_hu, dtype=np.float64)
    if s.ndim != 4 or s.shape[0] < 2:
        raise ValueError(f"samples_hu: expected (N >= 2, K, J, I) samples, got shape {s.shape}")
    mean = s.mean(axis=0)
    local_var = (
        ndimage.uniform_filter(mean**2, 3, mode="nearest")
        - ndimage.uniform_filter(mean, 3, mode="nearest") ** 2
    )
    feats = {
        "sample_std": s.std(axis=0, ddof=1),
        "direct_gap": np.abs(mean - np.asarray(direct_hu, dtype=np.float64)),
        "local_std": np.sqrt(np.clip(local_var, 0.0, None)),
        "view_residual": _residual_feature(mean, ijk_to_ras, views, geometries, data_config, residual),
    }
    return {k: np.asarray(v, dtype=np.float32) for k, v in feats.items()}


def _residual_feature(
    mean_hu: np.ndarray, ijk_to_ras: np.ndarray, views: np.ndarray, geometries: Sequence[Any],
    data_config: Any, residual: str,
) -> np.ndarray:  # fmt: skip
    """The ``view_residual`` feature in the form ``residual`` (zeros for ``"none"``)."""
    form, median_mm = parse_view_residual(residual)
    if form == "none":
        return np.zeros(np.shape(mean_hu), dtype=np.float32)
    return view_residual(mean_hu, ijk_to_ras, views, geometries, data_config, median_mm=median_mm)


@dataclass(frozen=True)
class UncertaintyCalibration:
    """Weights of the calibrated uncertainty of one model (module docstring).

    Attributes:
        intercept_hu: HU.
        weights: per feature (:data:`FEATURES`), HU per feature unit (:data:`FEATURE_UNITS`), >= 0.
        parts_sha256: {part: sha256} of the bundle parts the fit was made for.
        source: cache, split, cases, samples, steps, seed, command, block, the fit's own figures, and
            the view residual's form (``view_residual``: "none" / "raw" / "median", with
            ``view_residual_median_mm``; a file with the window alone is "median").
    """

    intercept_hu: float
    weights: dict[str, float]
    parts_sha256: dict[str, str]
    source: dict[str, Any]

    @property
    def view_residual(self) -> str | None:
        """The recorded view-residual spec (:func:`parse_view_residual`), or None when the file records
        none this version can compute (then the calibration must not be used)."""
        form = self.source.get("view_residual", "median")  # files with the window alone: the median form
        mm = self.source.get("view_residual_median_mm")
        if not isinstance(form, str):
            return None
        spec = f"median:{mm:g}" if form == "median" and isinstance(mm, (int, float)) else form
        try:
            parse_view_residual(spec)
        except ValueError:
            return None
        return str(spec)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (with ``format`` and the feature names and units)."""
        return {"format": FORMAT, "version": 1, "features": list(FEATURES), "units": FEATURE_UNITS,
                **asdict(self)}  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UncertaintyCalibration:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: unreadable, or not this format / these features (naming the file).
        """
        d = read_format_json(path, "uncertainty calibration", FORMAT, FEATURES, "x2ct calibrate-uncertainty")
        return cls(float(d["intercept_hu"]), {k: float(v) for k, v in d["weights"].items()},
                   dict(d["parts_sha256"]), dict(d["source"]))  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON (atomically)."""
        write_json_atomic(Path(path), self.to_dict(), indent=1, allow_nan=False, default=None)
        return Path(path)


def calibrated_uncertainty(
    features: Mapping[str, np.ndarray], calibration: UncertaintyCalibration
) -> np.ndarray:
    """``intercept + sum weight * feature`` (HU), (K, J, I) float32."""
    out = np.full(np.shape(features[FEATURES[0]]), calibration.intercept_hu, dtype=np.float64)
    for name in FEATURES:
        out += calibration.weights[name] * np.asarray(features[name], dtype=np.float64)
    return out.astype(np.float32)


def fit_calibration(
    features: Sequence[Mapping[str, np.ndarray]], abs_errors: Sequence[np.ndarray], block: int = BLOCK
) -> tuple[float, dict[str, float]]:
    """(intercept HU, weights) >= 0 fitting block-mean |error| by NNLS on block-mean features.

    Raises:
        ValueError: no volumes, or different numbers of feature sets and error volumes.
    """
    from scipy.optimize import nnls

    if not features or len(features) != len(abs_errors):
        raise ValueError(
            f"features / abs_errors: expected as many (>= 1), got {len(features)} / {len(abs_errors)}"
        )
    x = np.concatenate([np.stack([np.ones(block_means(f[FEATURES[0]], block).size)]
                                 + [block_means(f[n], block) for n in FEATURES], axis=1)
                        for f in features])  # fmt: skip
    y = np.concatenate([block_means(e, block) for e in abs_errors])
    norm = np.maximum(np.abs(x).max(axis=0), 1e-12)  # conditioning only; undone below
    coef, _ = nnls(x / norm, y)
    coef = coef / norm
    return float(coef[0]), {n: float(c) for n, c in zip(FEATURES, coef[1:], strict=True)}


def select_view_residual(
    features: Mapping[str, Sequence[Mapping[str, np.ndarray]]], abs_errors: Sequence[np.ndarray],
    block: int = BLOCK,
) -> tuple[str, dict[str, list[float]]]:  # fmt: skip
    """The view-residual form whose calibrated map ranks the error best on a case left out of the fit.

    For each form, each case in turn is left out, the weights are fitted on the others
    (:func:`fit_calibration`) and the block Spearman of that case's map vs its |error| is taken; the form
    with the highest mean over the cases wins (ties: the first given).

    Args:
        features: {residual spec: the cases' features computed with it}, the same cases for every spec.
        abs_errors: the cases' |error| (HU).

    Returns:
        (chosen spec, {spec: the left-out block Spearman of each case}).

    Raises:
        ValueError: fewer than 2 cases, or feature lists of another length.
    """
    if len(abs_errors) < 2 or any(len(f) != len(abs_errors) for f in features.values()):
        raise ValueError(f"choosing the view residual needs >= 2 cases with features for every form, got "
                         f"{len(abs_errors)} cases and {[len(f) for f in features.values()]} feature sets")  # fmt: skip
    scores: dict[str, list[float]] = {}
    for spec, feats in features.items():
        scores[spec] = []
        for i, (f, e) in enumerate(zip(feats, abs_errors, strict=True)):
            rest = [j for j in range(len(feats)) if j != i]
            a, w = fit_calibration([feats[j] for j in rest], [abs_errors[j] for j in rest], block)
            left_out = calibrated_uncertainty(f, UncertaintyCalibration(a, w, {}, {}))
            scores[spec].append(block_spearman(left_out, e, block))
    best = max(scores, key=lambda k: float(np.mean(scores[k])))  # max keeps the first of equal means
    return best, scores


def calibrate(
    model: str, cases: Sequence[Any], data: Mapping[str, Any], samples: int = 4, steps: int = 20,
    seed: int = 0, command: str = "", residual: str = "auto",
) -> UncertaintyCalibration:  # fmt: skip
    """Fit :class:`UncertaintyCalibration` for ``model`` on calibration phantoms.

    Each case is generated as ``x2ct generate`` does (``samples`` K, ``steps``, ``seed``) from its cached
    views at the training geometry; its features and |error| against the cached CT (both clipped to the
    HU window) are pooled over the cases and fitted (:func:`fit_calibration`). With ``residual="auto"``
    every form of :data:`RESIDUAL_CANDIDATES` is computed on the same generations and the one
    :func:`select_view_residual` picks is fitted; the choice and every form's left-out Spearman are
    recorded.

    Args:
        model: x2ct bundle folder or installed name.
        cases: :class:`~xraycardiac.xray2ct.evaluate.EvalCase` of a split the model was not trained on
            (``load_cache_cases(cache, "val")``; several caches pooled, e.g. cube DRRs and whole-body
            radiographs of a ``body:`` cache, each case with its own view geometry).
        data: where the cases come from ({"cache": folder(s), "split"}), recorded in the calibration.
        samples, steps, seed: the sampler, as ``x2ct generate`` will run it.
        command: the command line, recorded.
        residual: ``"auto"`` or a :func:`parse_view_residual` spec (the form used, not chosen).

    Raises:
        ValueError: no cases, samples < 2, a model that does not fit the cases, an unknown residual,
            ``"auto"`` with fewer than 2 cases.
    """
    import torch

    from xraycardiac.xray2ct.bundle import load_bundle

    if samples < 2:
        raise ValueError(f"samples: the sample std needs K >= 2, got {samples}")
    if not cases:
        raise ValueError("cases: expected at least one calibration case, got none")
    specs = list(RESIDUAL_CANDIDATES) if residual == "auto" else [residual]
    for spec in specs:
        parse_view_residual(spec)
    if residual == "auto" and len(cases) < 2:
        raise ValueError(
            f"residual 'auto' chooses on cases left out of the fit: needs >= 2 cases, got {len(cases)}"
        )
    bundle = load_bundle(model)
    by_spec: dict[str, list[dict[str, np.ndarray]]] = {spec: [] for spec in specs}
    errors, spearman = [], []
    for case in cases:
        fs, mean_hu, _ = case_features(bundle, case, samples, steps, seed, residuals=specs)
        window = bundle.data_config.hu_window
        errors.append(np.abs(mean_hu - np.clip(case.truth_hu, *window)))
        for spec in specs:
            by_spec[spec].append(fs[spec])
    selection: dict[str, Any] = {}
    if residual == "auto":
        residual, scores = select_view_residual(by_spec, errors)
        selection = {"view_residual_selection": {
            "rule": "highest mean leave-one-case-out block Spearman of the calibrated map",
            "loo_block_spearman_mean": {k: round(float(np.mean(v)), 3) for k, v in scores.items()},
            "loo_block_spearman_min": {k: round(float(np.min(v)), 3) for k, v in scores.items()}}}  # fmt: skip
    form, median_mm = parse_view_residual(residual)
    feats = by_spec[residual]
    intercept, weights = fit_calibration(feats, errors)
    cal = UncertaintyCalibration(intercept, weights, dict(bundle.source["sha256"]), {})
    for f, e in zip(feats, errors, strict=True):
        spearman.append(block_spearman(calibrated_uncertainty(f, cal), e))
    source = {"model": bundle.source["model"], "version": bundle.source["version"], **dict(data),
              "cases": len(cases), "samples": samples, "steps": steps, "seed": seed,
              "block": BLOCK, "view_residual": form, "view_residual_median_mm": median_mm, **selection,
              "command": command,
              "threads": torch.get_num_threads(),
              "calibration_block_spearman": [round(s, 3) for s in spearman],
              "calibration_mean_abs_error_hu": round(float(np.mean([e.mean() for e in errors])), 1)}  # fmt: skip
    return UncertaintyCalibration(round(intercept, 6), {k: round(v, 6) for k, v in weights.items()},
                                  cal.parts_sha256, source)  # fmt: skip


def view_size_geometries(geometries: Sequence[Any], size: int) -> list[Any]:
    """The geometries with their detector split into ``size`` x ``size`` pixels (as ``resample_view``)."""
    out = []
    for g in geometries:
        sr, sc = g.pixel_spacing_mm
        out.append(g.with_(detector_rows=size, detector_cols=size,
                           pixel_spacing_mm=(sr * g.detector_rows / size, sc * g.detector_cols / size)))  # fmt: skip
    return out


def case_features(
    bundle: Any,
    case: Any,
    samples: int,
    steps: int,
    seed: int,
    residuals: Sequence[str] = (RESIDUAL_DEFAULT,),
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray, dict[str, float]]:
    """({residual spec: features}, mean HU, seconds {"generate", "uncertainty"}) of one
    :class:`~xraycardiac.xray2ct.evaluate.EvalCase` (views at the training geometry about its centre), one
    generation for every view-residual form in ``residuals`` (the seconds: of the first)."""
    import time

    import torch

    from xraycardiac.xray2ct.data import unit_to_hu, view_geometries

    order = [case.view_names.index(v) for v in bundle.views]
    views = np.ascontiguousarray(case.views[order], dtype=np.float32)
    x = torch.from_numpy(views)[None].to(next(bundle.encoder.parameters()).device)
    t0 = time.perf_counter()
    with torch.no_grad():
        r = bundle.generate(x, case.projection_matrices[order], case.ijk_to_ras, n_samples=samples,
                            steps=steps, seed=seed)  # fmt: skip
    t1 = time.perf_counter()
    window = bundle.data_config.hu_window
    s = unit_to_hu(r.samples[:, 0, 0].float().cpu().numpy(), window)
    direct = unit_to_hu(r.direct[0, 0].float().cpu().numpy(), window)
    if case.geometries is not None:  # the views' own (a drawn acquisition, a clinical geometry)
        geoms = [case.geometries[i] for i in order]
    else:
        geoms = [view_geometries(case.config, case.centre_ras)[v] for v in bundle.views]
    geoms = view_size_geometries(geoms, bundle.view_size)
    f = uncertainty_features(s, direct, case.ijk_to_ras, views, geoms, bundle.data_config, residuals[0])
    seconds = {"generate": t1 - t0, "uncertainty": time.perf_counter() - t1}
    out = {residuals[0]: f}
    for spec in residuals[1:]:
        out[spec] = {**f, "view_residual": _residual_feature(s.astype(np.float64).mean(axis=0), case.ijk_to_ras, views, geoms,
                                                             bundle.data_config, spec)}  # fmt: skip
    return out, unit_to_hu(r.mean[0, 0].float().cpu().numpy(), window), seconds


def find_calibration(
    folder: str | os.PathLike[str], model: str, parts_sha256: Mapping[str, str]
) -> tuple[UncertaintyCalibration | None, str]:
    """(the model's calibration, where from) or (None, why not): ``<model>.uncertainty.json`` or
    ``uncertainty.json`` in the model's folder, fitted for these parts' sha256s."""
    folder = Path(folder)
    for path in (folder / f"{model}.uncertainty.json", folder / "uncertainty.json"):
        if path.is_file():
            cal = UncertaintyCalibration.load(path)
            if {p: cal.parts_sha256.get(p) for p in PARTS} != {p: parts_sha256.get(p) for p in PARTS}:
                return None, (f"{path} was fitted for other weights (parts sha256 differ); rerun "
                              "xraycardiac x2ct calibrate-uncertainty for this model")  # fmt: skip
            if cal.view_residual is None:
                return None, (f"{path} was fitted for another view_residual (view_residual "
                              f"{cal.source.get('view_residual')!r}, median window "
                              f"{cal.source.get('view_residual_median_mm')} mm; this version computes 'none', "
                              "'raw' or 'median' with a window); rerun xraycardiac x2ct calibrate-uncertainty")  # fmt: skip
            if cal.view_residual == "none" and cal.weights.get("view_residual", 0.0) != 0.0:
                return None, (f"{path} records view_residual 'none' but weighs it "
                              f"{cal.weights['view_residual']}; rerun xraycardiac x2ct calibrate-uncertainty")  # fmt: skip
            return cal, str(path)
    return (
        None,
        f"no uncertainty calibration beside model {model!r} (xraycardiac x2ct calibrate-uncertainty makes it)",
    )


def describe_method(calibration: UncertaintyCalibration | None, source: str) -> str:
    """One line for the report and the volume's provenance: what the uncertainty map is."""
    if calibration is None:
        return f"std over samples (unbiased), HU; NOT calibrated to the error: {source}"
    terms = " + ".join(f"{calibration.weights[n]:.4g} {n}" for n in FEATURES)
    s = calibration.source
    cache = " + ".join(s["cache"]) if isinstance(s.get("cache"), list) else s.get("cache")
    return (f"expected |error|, HU: {calibration.intercept_hu:.4g} + {terms} (xraycardiac.xray2ct.uncertainty; "
            f"fitted on {s.get('cases')} {s.get('split')} cases of {cache}, K {s.get('samples')}, "
            f"{s.get('steps')} steps; view residual {calibration.view_residual}; {source})")  # fmt: skip
