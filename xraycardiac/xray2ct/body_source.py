"""Training views like real radiographs: whole-body DRRs with randomised acquisition (cache source ``body:``).

The cache's ``phantom:`` source renders the cropped CT cube, whose box edges show in the views; a
radiograph has none. A ``body:<k>`` case instead renders the whole
:func:`~xraycardiac.phantoms.chest_body.make_body_phantom` (seed from (cache seed, k)) with the library's
DRR projector (:func:`xraycardiac.projection.render_drr`), while the CT target stays the cache's cube
(:func:`~xraycardiac.xray2ct.data.prepare_ct`) about the isocentre. Drawn per case (uniform unless said):

* **patient offset**: the isocentre (= cube centre) is the lungs' centroid + (-25..25 mm) per axis;
* **geometry**: SID 1000..1800 mm (both views); per view the isocentre-to-detector gap 150..450 mm;
  a square detector of 350..600 mm split into the cache's ``image_size`` pixels (rendered at 2 x
  that and block-averaged, as :func:`~xraycardiac.xray2ct.pipeline.resample_view` does at inference);
* **heel effect**: incident intensity ``1 + h (2 v / rows - 1)`` along the image rows, h in -0.15..0.15;
* **scatter**: scatter-to-primary ratio 0..0.6 of the Gaussian-blurred primary (sigma 30..80 mm at the
  detector), flat-field normalised by ``1 + spr`` (air stays about 0);
* **quantum noise**: 10^4.5..10^6 photons per unattenuated pixel (Gaussian approximation of Poisson);
* **collimation** on a quarter of the views: 0..12 % of the field per side read as unexposed (the
  view's 99.5th percentile, bright as bone after the log).

Line integrals after all that: ``-ln((P + S + noise) / (1 + spr))`` clipped at 0, P = heel x exp(-L). The
drawn values are returned (and stored in the case file as ``acquisition`` JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from xraycardiac.geometry import CArmGeometry
from xraycardiac.projection import DRRConfig, render_drr
from xraycardiac.volume import Volume

__all__ = ["BODY_RANGES", "acquisition_geometries", "degrade_view", "draw_acquisition", "render_body_case"]

BODY_RANGES: dict[str, tuple[float, float]] = {
    "offset_mm": (-25.0, 25.0),
    "sid_mm": (1000.0, 1800.0),
    "gap_mm": (150.0, 450.0),
    "detector_mm": (350.0, 600.0),
    "heel": (-0.15, 0.15),
    "scatter_to_primary": (0.0, 0.6),
    "scatter_sigma_mm": (30.0, 80.0),
    "log10_photons": (4.5, 6.0),
    "collimation_fraction": (0.0, 0.12),
}
"""The drawn acquisition ranges (module docstring); collimation on ``COLLIMATION_P`` of the views."""
COLLIMATION_P = 0.25
OVERSAMPLE = 2


def draw_acquisition(rng: np.random.Generator, views: Sequence[str]) -> dict[str, Any]:
    """One case's acquisition: ``offset_mm`` (3,), ``sid_mm``, ``detector_mm`` and per view a dict."""
    r = BODY_RANGES

    def u(name: str) -> float:
        return float(rng.uniform(*r[name]))

    acq: dict[str, Any] = {"offset_mm": [float(v) for v in rng.uniform(*r["offset_mm"], size=3)],
                           "sid_mm": u("sid_mm"), "detector_mm": u("detector_mm"), "views": {}}  # fmt: skip
    for v in views:
        col = rng.random() < COLLIMATION_P
        acq["views"][v] = {
            "gap_mm": u("gap_mm"), "heel": u("heel"), "scatter_to_primary": u("scatter_to_primary"),
            "scatter_sigma_mm": u("scatter_sigma_mm"), "photons": 10.0 ** u("log10_photons"),
            "collimation": [float(c) for c in rng.uniform(*r["collimation_fraction"], size=4)] if col else None,
        }  # fmt: skip
    return acq


def degrade_view(
    lines: np.ndarray, view: dict[str, Any], pixel_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Heel effect, scatter, quantum noise and collimation on one view of line integrals (module docstring).

    Args:
        lines: (rows, cols) line integrals of mu (dimensionless, >= 0).
        view: one view's entry of :func:`draw_acquisition`.
        pixel_mm: detector pixel size (mm), for the scatter kernel.
        rng: draws the noise.

    Returns:
        (rows, cols) float64 line integrals, >= 0.
    """
    rows, cols = lines.shape
    heel = 1.0 + view["heel"] * (2.0 * (np.arange(rows) + 0.5) / rows - 1.0)
    primary = heel[:, None] * np.exp(-np.asarray(lines, dtype=np.float64))
    spr = view["scatter_to_primary"]
    total = primary + spr * ndimage.gaussian_filter(
        primary, view["scatter_sigma_mm"] / pixel_mm, mode="nearest"
    )
    n0 = view["photons"]
    total = total + np.sqrt(np.maximum(total, 0.0) / n0) * rng.standard_normal(total.shape)
    out = np.maximum(-np.log(np.maximum(total, 1.0 / n0) / (1.0 + spr)), 0.0)
    if view["collimation"] is not None:
        top, bottom, left, right = (
            int(round(f * n)) for f, n in zip(view["collimation"], (rows, rows, cols, cols), strict=True)
        )
        keep = np.zeros(out.shape, dtype=bool)
        keep[top : rows - bottom, left : cols - right] = True
        out[~keep] = np.percentile(out, 99.5)
    return out


def acquisition_geometries(
    acquisition: dict[str, Any], centre_ras: Sequence[float], views: Sequence[str], image_size: int
) -> dict[str, CArmGeometry]:
    """The views' C-arm geometries of a drawn acquisition (:func:`draw_acquisition`, as stored in a case).

    Args:
        acquisition: ``sid_mm``, ``detector_mm`` and per view ``gap_mm`` (isocentre to detector).
        centre_ras: the isocentre (RAS mm; the cube's centre).
        views: view names ("pa", "lateral").
        image_size: pixels per side of the detector.
    """
    c = tuple(float(v) for v in np.asarray(centre_ras, dtype=np.float64).reshape(3))
    pixel = acquisition["detector_mm"] / image_size
    sid = acquisition["sid_mm"]
    return {
        v: CArmGeometry.preset(v, sid_mm=sid, sod_mm=sid - acquisition["views"][v]["gap_mm"], isocenter_ras_mm=c,
                               detector_rows=image_size, detector_cols=image_size, pixel_spacing_mm=(pixel, pixel))
        for v in views
    }  # fmt: skip


def render_body_case(
    ct: Volume,
    lungs_centre: Sequence[float],
    views: Sequence[str],
    image_size: int,
    seed_sequence: Any,
    step_mm: float | None = None,
) -> dict[str, Any]:
    """Whole-body views of ``ct`` with a drawn acquisition (module docstring).

    Args:
        ct: the whole body phantom (HU).
        lungs_centre: RAS mm the patient offset is added to.
        views: view names ("pa", "lateral").
        image_size: pixels per side of the returned views.
        seed_sequence: ``np.random.SeedSequence`` (or seed) of the draws.
        step_mm: DRR ray step (None: the projector's default).

    Returns:
        ``centre`` (3,) RAS mm of the isocentre and cube, ``geometries`` {view: CArmGeometry at
        ``image_size``}, ``lines`` (V, S, S) float32 line integrals, ``acquisition`` (the draws).
    """
    rng = np.random.default_rng(seed_sequence)
    acq = draw_acquisition(rng, views)
    centre = np.asarray(lungs_centre, dtype=np.float64) + acq["offset_mm"]
    geoms = acquisition_geometries(acq, centre, views, image_size)
    images = []
    for v, g in geoms.items():
        n, p = image_size * OVERSAMPLE, g.pixel_spacing_mm[0] / OVERSAMPLE
        fine = g.with_(detector_rows=n, detector_cols=n, pixel_spacing_mm=(p, p))
        hi = np.asarray(render_drr(ct, fine, DRRConfig(step_mm=step_mm), device="cpu").array[0], np.float64)
        lines = hi.reshape(image_size, OVERSAMPLE, image_size, OVERSAMPLE).mean(axis=(1, 3))
        images.append(degrade_view(lines, acq["views"][v], g.pixel_spacing_mm[0], rng))
    return {
        "centre": centre,
        "geometries": geoms,
        "lines": np.stack(images).astype(np.float32),
        "acquisition": acq,
    }
