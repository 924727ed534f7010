"""From stored pixel values to what the X-ray encoder expects: line integrals of mu, in view units.

The encoder was trained on DRRs: line integrals of mu divided by ``mu_water * drr_water_mm``, values
that rise with attenuation, on an absolute scale. A radiograph as stored is one of
(:data:`xraycardiac.radiograph.ENCODINGS`):

* ``line-integral`` (``xraycardiac drr`` NRRDs, ``.npy``): used as is; the scale is absolute.
* ``linear`` (DICOM PixelIntensityRelationship LIN: the beam intensity I, values falling as attenuation
  rises, i.e. ``inverted``; not inverted: ``I = max - value``): ``L = -ln(I / I0)`` with
  I0 the 99.9th percentile of I (the unattenuated beam: the view must show some air); the scale is
  absolute (natural log of a transmission), the offset rests on that I0.
* ``log`` (LOG: a logarithm of I of unknown base and offset): ``x = value`` (or ``-value`` when
  inverted); an affine map to line integrals is fitted (below).
* ``display`` (PNG / JPEG, DICOM "for presentation"): ``d = (value - low) / (high - low)`` in the display
  range, ``1 - d`` when inverted (MONOCHROME1), then the display gamma undone, ``x = d ** (1 / gamma)``;
  an affine map is fitted.

**Polarity** comes from the file (MONOCHROME1, PixelIntensityRelationshipSign) or the user
(``invert``); a PNG has none, so it is taken as MONOCHROME2 (bone bright) unless ``invert`` says
otherwise, and a wrong polarity shows in the out-of-distribution score.

**The affine fit** (log and display data, whose scale is unknown): ``a x + b`` with ``a > 0`` by least
squares between the quantiles of ``x`` (on the model's view grid) and the training views' mean
quantile function (:class:`xraycardiac.xray2ct.input_stats.InputStats`), over the quantiles that are not
clipped (pixels at the display range's ends are saturated: their values are lost). With ``gamma``
"auto" the gamma is fitted too (a grid of 41 values in [0.4, 2.5], the one with the smallest quantile
misfit); the estimate is reported.

**What cannot be undone**: saturated pixels (a gain that clips: the clipped fraction is reported), the
8-bit quantisation, and any display processing that is not a global monotone map (unsharp masking,
local contrast equalisation); an unknown gamma is estimated, not known; the absolute scale of log and
display data is the training views' (a patient much larger or smaller than the training phantoms
gets a scale too small or too large).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xraycardiac.radiograph import ENCODINGS, Radiograph

__all__ = ["GAMMA_GRID", "IntensityOptions", "fit_to_reference", "relative_attenuation"]

GAMMA_GRID = np.exp(np.linspace(math.log(0.4), math.log(2.5), 41))
_SATURATED = 1e-6  # display values within this of 0 or 1 count as clipped


@dataclass(frozen=True)
class IntensityOptions:
    """How stored values are to be read.

    Attributes:
        encoding: "auto" (the file's) or one of :data:`~xraycardiac.radiograph.ENCODINGS`.
        invert: None (the file's polarity), or True / False (values fall / rise with attenuation).
        gamma: display data: the gamma the picture was made with (display = linear ** gamma), or
            "auto" (estimated), or None (auto for display data).

    Raises:
        ValueError: an unknown encoding, or a gamma that is not a finite number > 0 or "auto".
    """

    encoding: str = "auto"
    invert: bool | None = None
    gamma: float | str | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ("auto", *ENCODINGS):
            raise ValueError(f"intensity: expected 'auto' or one of {list(ENCODINGS)}, got {self.encoding!r}")
        if self.invert is not None and not isinstance(self.invert, bool):
            raise ValueError(f"invert: expected true, false or null (from the file), got {self.invert!r}")
        g = self.gamma
        if (
            g is not None
            and g != "auto"
            and not (isinstance(g, int | float) and not isinstance(g, bool) and math.isfinite(g) and g > 0)
        ):
            raise ValueError(f"gamma: expected a number > 0 or 'auto', got {g!r}")


def relative_attenuation(r: Radiograph, options: IntensityOptions) -> tuple[np.ndarray, dict[str, Any]]:
    """Stored values -> values that rise with attenuation (module docstring), and what was done.

    Returns:
        (rows, cols) float64 ``x`` and a record: ``encoding``, ``inverted``, ``absolute`` (x is a line
        integral of mu already), ``saturated`` (low, high fractions of clipped pixels), ``gamma``
        ("auto", a number or None) and ``steps`` (the transform in words).
    """
    encoding = r.encoding if options.encoding == "auto" else options.encoding
    inverted = r.inverted if options.invert is None else options.invert
    v = r.pixels
    rec: dict[str, Any] = {"encoding": encoding, "inverted": inverted, "absolute": False, "saturated": [0.0, 0.0],
                           "gamma": None, "steps": []}  # fmt: skip
    if encoding == "line-integral":
        x = (v.max() - v) if inverted else v
        rec["absolute"] = not inverted
        rec["steps"].append(
            "line integrals of mu as stored" + (", inverted (max - value)" if inverted else "")
        )
        return x, rec
    if encoding == "linear":
        intensity = v if inverted else (v.max() - v)  # inverted (the natural LIN): values ~ beam intensity
        i0 = float(np.quantile(intensity, 0.999))
        if i0 <= 0:
            raise ValueError(
                f"inputs: {r.name}: a transmission image whose brightest pixels are {i0:g}; no beam"
            )
        x = -np.log(np.clip(intensity, i0 * 1e-6, None) / i0)
        rec["absolute"] = True
        rec["steps"].append(f"transmission: L = -ln(I / I0), I0 = 99.9th percentile = {i0:g}")
        return x, rec
    if encoding == "log":
        rec["steps"].append("log data: x = -value" if inverted else "log data: x = value")
        return (-v if inverted else v), rec
    lo, hi = r.display_range if r.display_range is not None else (float(v.min()), float(v.max()))
    if hi <= lo:
        raise ValueError(f"inputs: {r.name}: display range [{lo:g}, {hi:g}] is empty")
    d = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    if inverted:
        d = 1.0 - d
    rec["saturated"] = [float(np.mean(d <= _SATURATED)), float(np.mean(d >= 1.0 - _SATURATED))]
    rec["steps"].append(
        f"display values scaled from [{lo:g}, {hi:g}] to [0, 1]" + (", inverted" if inverted else "")
    )
    gamma = "auto" if options.gamma is None else options.gamma
    rec["gamma"] = gamma
    if gamma != "auto":
        d = d ** (1.0 / float(gamma))
        rec["steps"].append(f"display gamma {float(gamma):g} undone")
    return d, rec


def _affine_misfit(q: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(a, b, rms) of the least-squares ``a q + b ~ ref``; a <= 0 is no fit (inf)."""
    qc = q - q.mean()
    den = float(qc @ qc)
    if den <= 0:
        return 0.0, float(ref.mean()), math.inf
    a = float(qc @ (ref - ref.mean())) / den
    b = float(ref.mean() - a * q.mean())
    if a <= 0:
        return a, b, math.inf
    return a, b, float(np.sqrt(np.mean((a * q + b - ref) ** 2)))


def fit_to_reference(
    x: np.ndarray, ref_quantiles: np.ndarray, rec: dict[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit ``a x' + b`` (x' = x ** (1 / gamma) with an "auto" gamma) to the reference quantile function.

    Args:
        x: (S, S) relative attenuation on the model's view grid (:func:`relative_attenuation`, resampled).
        ref_quantiles: (101,) the training views' mean quantile function, view units.
        rec: the record of :func:`relative_attenuation`; updated with ``scale``, ``offset``,
            ``gamma_estimate``, ``quantile_rms`` and ``quantile_range``.

    Returns:
        The view in view units, and the record.
    """
    lo_sat, hi_sat = rec.get("saturated", [0.0, 0.0])
    k0 = int(math.ceil(100 * lo_sat)) + 1
    k1 = int(math.floor(100 * (1.0 - hi_sat))) - 1
    k0, k1 = min(k0, 40), max(k1, 60)  # keep at least the middle fifth
    ref = np.asarray(ref_quantiles, dtype=np.float64)[k0 : k1 + 1]
    qs = np.linspace(k0 / 100, k1 / 100, k1 - k0 + 1)
    gammas = GAMMA_GRID if rec.get("gamma") == "auto" else np.array([1.0])
    best = (math.inf, 1.0, 0.0, 1.0)
    xc = np.clip(x, 0.0, None) if rec.get("gamma") == "auto" else x
    for g in gammas:
        xg = xc ** (1.0 / g) if g != 1.0 else xc
        a, b, rms = _affine_misfit(np.quantile(xg, qs), ref)
        if rms < best[0]:
            best = (rms, a, b, float(g))
    rms, a, b, g = best
    if not math.isfinite(rms):
        raise ValueError(
            "the image's values do not rise with attenuation anywhere: it cannot be mapped to line integrals"
        )
    if rec.get("gamma") == "auto":
        rec["gamma_estimate"] = round(g, 4)
        rec["steps"].append(f"display gamma estimated: {g:.3g}")
        xc = xc ** (1.0 / g) if g != 1.0 else xc
    rec.update(scale=round(a, 6), offset=round(b, 6), quantile_rms=round(rms, 5), quantile_range=[k0, k1])
    rec["steps"].append(
        f"scale fitted to the training views' quantiles {k0}..{k1} %: view = {a:.4g} x + {b:.4g} (rms {rms:.3g})"
    )
    return a * xc + b, rec
