"""Physics renderer of synthetic coronary angiograms: Beer-Lambert on a vessel path-length map.

One cine frame is simulated at a single effective photon energy (monochromatic model), per
detector pixel, in this order:

1. line integral ``L = B + mu_iodine * t``: ``B`` the background (patient without contrast; see
   below), ``t`` the path length in mm through the contrast-filled lumen (``VesselProjection.
   thickness_mm``) and ``mu_iodine`` the *excess* attenuation of contrast-filled blood over the soft
   tissue it displaces (``B`` already counts tissue along the whole ray);
2. primary photons ``P = I0 exp(-L)``; with ``auto_exposure`` the tube output is set, like a C-arm's
   automatic exposure control, so that a pixel of median background detects ``photons_per_pixel``
   (``I0 = photons_per_pixel * exp(median B)``), otherwise ``I0 = photons_per_pixel``; both scaled
   by the pixel's area over that of a ``photons_pixel_mm`` pixel (binned or larger pixels collect
   more photons, so a 128-pixel frame of the same field is not 16x noisier per area);
3. scatter ``S = SPR * (c mean(P) + (1 - c) lowpass(P))``: a uniform share ``c`` and a broad
   Gaussian low-pass of the primary (``scatter_sigma_mm`` at the detector), ``SPR = f / (1 - f)``
   for a mean scatter fraction ``f = S / (S + P)``;
4. quantum noise ``Poisson(P + S)``; detector blur (Gaussian, ``detector_blur_sigma_px``, the
   scintillator's light spread, which blurs the quantum noise too); additive electronic noise
   (Gaussian, in detected-photon units);
5. display: ``-log(counts / I0)`` ("log", the usual logarithmic look-up table) or the raw intensity
   ("linear"), after dynamic range compression (a share ``range_compression`` of a broad low-pass
   of the noise-free log image is subtracted, so the heart shadow, lungs and spine no longer take
   most of the grey levels and vessels stand out as on processed clinical frames); a window from percentiles of the same image without noise (so the display does not
   depend on the noise draw), vessels DARK on a brighter background; a gamma; quantisation to
   ``output_levels`` grey levels (clinical archives keep 512 x 512 x 8-bit frames, Vano et al.,
   J Digit Imaging 2011;24:331).

Defaults and where they come from (assumptions, written down so they can be changed):

* ``mu_iodine_per_mm`` (0.05, 0.10) /mm: iodine mass attenuation is 7.61 cm^2/g at 60 keV and
  3.51 cm^2/g at 80 keV (NIST XCOM, Hubbell & Seltzer NISTIR 5632), ~5.0 cm^2/g at 70 keV by
  log-log interpolation; 300-350 mgI/ml injected and diluted ~1:1 to 1:2 by blood gives ~100-200
  mgI/ml in the lumen, i.e. 0.05-0.10 /mm at ~70 keV (0.06-0.12 /mm at 65 keV), the effective
  energy of a 70-90 kVp cardiac beam hardened by the chest.
* ``photons_per_pixel`` (400, 1500) detected: cine frames at ~0.1-0.3 uGy detector air kerma
  (entrance ~20-600 uGy/frame, Vano et al., Phys Med Biol 2005;50:5731, times ~0.1-0.5 %
  transmission through patient and grid), ~3.4e4 photons/mm^2/uGy at 60 keV (air mu_en/rho =
  0.0304 cm^2/g), ~0.12 mm^2 pixels, ~70 % absorbed in CsI.
* ``scatter_fraction`` (0.25, 0.45): cardiac imaging with an anti-scatter grid, ~20 cm of tissue.
* ``detector_blur_sigma_px`` (0.6, 1.0): CsI flat panels at 0.3-0.4 mm (binned) pixels.

Backgrounds (:func:`background_line_integral`):

* ``"procedural"``: an analytic thorax ray-traced in closed form for the same C-arm geometry
  (:func:`xraycardiac.phantoms.thorax_analytic.thorax_line_integrals`; the
  chest phantom's layout in its RAS frame: elliptic torso, two lungs with diaphragm domes carved
  out, the heart ellipsoid of the coronary phantom, descending aorta, vertebral column with discs,
  cortical shell and posterior arch, twelve pairs of rib arcs) plus 2D lung texture and a smooth
  soft-tissue modulation. numpy/scipy only; ~0.2-0.3 s at 512 x 512 on 2 CPU cores. Anatomy and vessels agree for a
  procedural coronary tree (both live in the chest phantom's frame), and both views of a pair see
  the same patient when they get the same background generator state.
* ``"chest-drr"``: the DRR (:func:`xraycardiac.projection.render_drr`) of a seeded voxel chest phantom
  (:func:`xraycardiac.phantoms.chest.make_chest_phantom`, coarse: 64^3 voxels of 6 mm) for the SAME
  geometry, rendered at 1/``drr_downsample`` of the detector resolution and upsampled (a 6 mm voxel
  spans ~25 pixels, so nothing is lost); phantoms and DRRs are cached in the process, keyed by
  (seed, geometry). At 512 x 512 on 2 CPU cores: ~0.4-0.5 s for a new seed and view (phantom
  ~0.15 s, DRR ~0.1 s), ~0.3 s for a new view of a cached phantom, ~0 s from the cache.

A whole 512 x 512 frame takes ~0.3-0.4 s with the procedural background and ~0.08 s on top of a
given or cached background (2 CPU cores).

Randomness: ``rng`` is split into three independent streams (parameters, background, noise), so
passing a precomputed ``background_mu`` changes neither the sampled parameters nor the noise.
Same config, inputs and generator state -> identical image.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from xraycardiac.geometry import CArmGeometry
from xraycardiac.jsonutil import is_int
from xraycardiac.projection import render_drr

__all__ = [
    "AngiogramRendering",
    "PhysicsRendererConfig",
    "RenderDraw",
    "background_line_integral",
    "clear_background_cache",
    "contrast_to_noise",
    "render_angiogram",
    "render_angiogram_detailed",
]

BACKGROUNDS = ("procedural", "chest-drr")
DISPLAYS = ("log", "linear")
_MIN_COUNT = 0.5  # detected photons: floor before the log (a pixel with no photon)
_PROCEDURAL_DOWNSAMPLE = 2  # the analytic thorax is smooth at 2 detector pixels


# (name, lowest lo, highest hi) of the fields given as a number or a (lo, hi) range
_RANGE_FIELDS = (
    ("mu_iodine_per_mm", 0.0, 10.0),
    ("photons_per_pixel", 1.0, math.inf),
    ("detector_blur_sigma_px", 0.0, 50.0),
    ("scatter_fraction", 0.0, 0.95),
    ("gamma", 0.05, 20.0),
    ("window_percentiles", 0.0, 100.0),
)
_NUMBER_FIELDS = (
    ("electronic_noise_std", 0.0, math.inf),
    ("scatter_uniform_share", 0.0, 1.0),
    ("scatter_sigma_mm", 1e-3, math.inf),
    ("window_margin", 0.0, 1.0),
    ("window_min_width", 1e-3, math.inf),
    ("range_compression", 0.0, 1.0),
    ("range_compression_sigma_mm", 1e-3, math.inf),
    ("phantom_spacing_mm", 0.5, 50.0),
    ("lung_texture_std", 0.0, 1.0),
)


def _as_range(name: str, value: Any, lo_min: float, hi_max: float = math.inf) -> tuple[float, float]:
    """Normalise a number or a (lo, hi) pair to a float pair with lo_min <= lo <= hi <= hi_max."""
    pair = (value, value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    try:
        lo, hi = (float(v) for v in pair)
        ok = math.isfinite(lo) and math.isfinite(hi) and lo_min <= lo <= hi <= hi_max
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"PhysicsRendererConfig.{name}: expected a number or a (lo, hi) pair with "
            f"{lo_min} <= lo <= hi <= {hi_max}, got {value!r}"
        )
    return lo, hi


@dataclass(frozen=True)
class PhysicsRendererConfig:
    """How one synthetic angiogram is rendered (see the module docstring for the model and sources).

    Range fields accept a number or a (lo, hi) pair; each rendering draws uniformly from them.

    Attributes:
        mu_iodine_per_mm: excess linear attenuation of contrast-filled blood over soft tissue at the
            effective energy, 1/mm; default (0.05, 0.10) (~100-200 mgI/ml at ~70 keV).
        background: "procedural" (analytic thorax, fast) or "chest-drr" (DRR of a voxel chest
            phantom for the same geometry).
        photons_per_pixel: detected photons per pixel behind the median background with
            ``auto_exposure``, else the incident (unattenuated) count I0; default (400, 1500).
        photons_pixel_mm: detector pixel size (mm) that ``photons_per_pixel`` refers to; pixels of
            another size get photons in proportion to their area; None = per pixel, any size.
        auto_exposure: scale I0 so the median background pixel detects ``photons_per_pixel``.
        quantum_noise: draw Poisson noise; False renders the noise-free expectation.
        electronic_noise_std: std of the additive detector noise in detected-photon units; 0 = none;
            default 3.
        detector_blur_sigma_px: Gaussian detector blur, pixels; default (0.6, 1.0); 0 = none.
        scatter_fraction: mean S / (S + P) over the image, in [0, 0.95]; default (0.25, 0.45).
        scatter_uniform_share: share of the scatter that is spatially uniform, [0, 1]; default 0.5.
        scatter_sigma_mm: sigma of the low-pass scatter kernel at the detector plane, mm; default 30.
        display: "log" (logarithmic look-up table) or "linear" (intensity).
        range_compression: share in [0, 1] of the slowly varying log image (anatomy: heart shadow,
            lungs, spine) removed before windowing, as the dynamic range compression of clinical
            angiography image processing does; 0 = none; default 0.75.
        range_compression_sigma_mm: sigma of that low-pass at the detector plane, mm; default 10.
        gamma: display gamma applied to the windowed [0, 1] image (> 1 darkens mid-tones);
            default (0.8, 1.25).
        window_percentiles: (low, high) percentiles (0-100) of the noise-free log image that map
            to white and black; default (0.5, 99.5).
        window_margin: the window is widened by this fraction of its width on each side; default 0.05.
        window_min_width: smallest window width in line-integral (log) units; default 0.5.
        output_levels: number of grey levels of the output (256 = 8-bit-like); None keeps floats.
        phantom_seed: seed of the chest phantom ("chest-drr"); None draws it from the background
            generator in [0, phantom_pool_size). Give both views of a pair the same seed.
        phantom_pool_size: number of distinct phantoms drawn when ``phantom_seed`` is None
            (bounded so the cache is reused); default 16.
        phantom_shape: phantom voxels per axis ("chest-drr"); default 64.
        phantom_spacing_mm: phantom voxel size, mm; default 6 (64 x 6 mm = 384 mm holds the chest).
        drr_downsample: the DRR is rendered at 1/this of the detector resolution and upsampled
            (cubic); default 4.
        lung_texture_std: "procedural" lung texture std in line-integral units per 100 mm of lung
            along the ray; default 0.05.
    """

    mu_iodine_per_mm: tuple[float, float] = (0.05, 0.10)
    background: str = "procedural"
    photons_per_pixel: tuple[float, float] = (400.0, 1500.0)
    photons_pixel_mm: float | None = 0.35
    auto_exposure: bool = True
    quantum_noise: bool = True
    electronic_noise_std: float = 3.0
    detector_blur_sigma_px: tuple[float, float] = (0.6, 1.0)
    scatter_fraction: tuple[float, float] = (0.25, 0.45)
    scatter_uniform_share: float = 0.5
    scatter_sigma_mm: float = 30.0
    display: str = "log"
    gamma: tuple[float, float] = (0.8, 1.25)
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    window_margin: float = 0.05
    window_min_width: float = 0.5
    range_compression: float = 0.75
    range_compression_sigma_mm: float = 10.0
    output_levels: int | None = 256
    phantom_seed: int | None = None
    phantom_pool_size: int = 16
    phantom_shape: int = 64
    phantom_spacing_mm: float = 6.0
    drr_downsample: int = 4
    lung_texture_std: float = 0.05

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"PhysicsRendererConfig.{name}: expected {expected}, got {getattr(self, name)!r}"
                )

        for name, lo, hi in _RANGE_FIELDS:
            object.__setattr__(self, name, _as_range(name, getattr(self, name), lo, hi))
        check("background", self.background in BACKGROUNDS, f"one of {BACKGROUNDS}")
        check("display", self.display in DISPLAYS, f"one of {DISPLAYS}")
        for name, lo, hi in _NUMBER_FIELDS:
            v = getattr(self, name)
            check(
                name,
                isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi,
                f"a number in [{lo}, {hi}]",
            )
        for name, lo in (("phantom_pool_size", 1), ("phantom_shape", 16), ("drr_downsample", 1)):
            check(name, is_int(getattr(self, name)) and getattr(self, name) >= lo, f"an integer >= {lo}")
        v = self.photons_pixel_mm
        check(
            "photons_pixel_mm",
            v is None or (isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf),
            "None or a pixel size > 0 (mm)",
        )
        for name, lo in (("phantom_seed", 0), ("output_levels", 2)):
            v = getattr(self, name)
            check(name, v is None or (is_int(v) and v >= lo), f"None or an integer >= {lo}")
        for name in ("auto_exposure", "quantum_noise"):
            check(name, isinstance(getattr(self, name), bool), "True or False")


@dataclass(frozen=True)
class RenderDraw:
    """The values drawn from the config's ranges for one rendering (provenance)."""

    mu_iodine_per_mm: float
    photons_per_pixel: float
    detector_blur_sigma_px: float
    scatter_fraction: float
    gamma: float

    @classmethod
    def sample(cls, config: PhysicsRendererConfig, rng: np.random.Generator) -> RenderDraw:
        """Draw each field uniformly from the config range of the same name (in field order)."""
        return cls(**{name: float(rng.uniform(*getattr(config, name))) for name in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, float]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass
class AngiogramRendering:
    """One rendered frame and what made it. Images are (rows, cols) float32.

    Attributes:
        image: display image in [0, 1], vessels dark.
        background_mu: background line integral B (unitless).
        line_integral: estimated ``-log(counts / I0)`` after noise and blur (unitless).
        draw: the sampled parameters.
        i0: incident photons per pixel (after auto exposure).
        window: (low, high) line integrals mapped to white and black (after range compression).
    """

    image: np.ndarray
    background_mu: np.ndarray
    line_integral: np.ndarray
    draw: RenderDraw
    i0: float
    window: tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------------


def _render_coarse(geometry: CArmGeometry, factor: int, render: Any) -> np.ndarray:
    """Render on a detector ``factor`` times coarser and resample cubically to the full grid.

    ``render(coarse_geometry)`` returns (rows_c, cols_c) or (C, rows_c, cols_c); the coarse detector
    lies in the same plane with the same principal point and covers the full one. Returns float32
    (rows, cols) or (C, rows, cols), clipped at 0.
    """
    rows, cols = geometry.detector_rows, geometry.detector_cols
    if factor == 1:
        return np.clip(np.asarray(render(geometry), dtype=np.float32), 0.0, None)
    rc, cc = -(-rows // factor), -(-cols // factor)
    sr, sc = geometry.pixel_spacing_mm
    coarse = geometry.with_(detector_rows=rc, detector_cols=cc, pixel_spacing_mm=(sr * factor, sc * factor))
    small = np.asarray(render(coarse), dtype=np.float64)
    # fine pixel (u, v) sits at coarse (U, V) = centre + (fine offset from centre) / factor
    v = (rc - 1) / 2.0 + (np.arange(rows) - (rows - 1) / 2.0) / factor
    u = (cc - 1) / 2.0 + (np.arange(cols) - (cols - 1) / 2.0) / factor
    coords = np.meshgrid(v, u, indexing="ij")
    out = [ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in small.reshape(-1, rc, cc)]
    return np.clip(np.stack(out).reshape(small.shape[:-2] + (rows, cols)), 0.0, None).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _chest_phantom_ct(seed: int, shape: int, spacing_mm: float) -> Any:
    """The seeded coarse chest phantom CT (cached)."""
    # Imported on first use (no cycle: phantoms import anatomy, not coronary): xraycardiac.phantoms's
    # __init__ loads every phantom, the cardiac one included, which a renderer import need not pay for.
    from xraycardiac.phantoms.chest import ChestPhantomConfig, make_chest_phantom

    cfg = ChestPhantomConfig(shape_ijk=(shape,) * 3, spacing_mm=spacing_mm, seed=seed)
    return make_chest_phantom(cfg)[0]


@functools.lru_cache(maxsize=32)
def _chest_drr(
    seed: int, geometry: CArmGeometry, shape: int, spacing_mm: float, downsample: int
) -> np.ndarray:
    """Read-only DRR line integral of the chest phantom for one view (cached)."""
    ct = _chest_phantom_ct(seed, shape, spacing_mm)
    out = _render_coarse(geometry, downsample, lambda g: render_drr(ct, g).array[0])
    out.flags.writeable = False
    return out


def clear_background_cache() -> None:
    """Forget the cached chest phantoms and DRRs of this process."""
    _chest_phantom_ct.cache_clear()
    _chest_drr.cache_clear()


def _procedural_background(
    geometry: CArmGeometry, config: PhysicsRendererConfig, rng: np.random.Generator
) -> np.ndarray:
    """Analytic thorax for this view with seeded anatomy, plus lung texture and soft-tissue modulation."""
    # Imported on first use, like the chest phantom (see _chest_phantom_ct).
    from xraycardiac.phantoms.thorax_analytic import thorax_line_integrals

    a, b = rng.uniform(150.0, 180.0), rng.uniform(100.0, 125.0)  # torso semi-axes (chest phantom ranges)
    fat = rng.uniform(6.0, 20.0)
    dome_r = 125.0 - 195.0 * rng.uniform(0.9, 1.1)
    anatomy = {
        "a": a, "b": b, "ac": a - fat - 12.0, "bc": b - fat - 22.0, "cy": 10.0,
        "z_apex": 125.0, "dome_r": dome_r, "dome_l": dome_r - 15.0,
        "heart_scale": rng.uniform(0.95, 1.05), "heart_shift": rng.uniform(-5.0, 5.0, 3),
        "spine_phase_mm": rng.uniform(0.0, 27.0), "rib_spacing": rng.uniform(22.0, 28.0),
        "z_rib1": 130.0 + rng.uniform(-8.0, 8.0),
    }  # fmt: skip
    rows, cols = geometry.detector_rows, geometry.detector_cols
    bg, lung = _render_coarse(
        geometry, _PROCEDURAL_DOWNSAMPLE, lambda g: np.stack(thorax_line_integrals(g, anatomy))
    )
    # lung markings: band-passed noise at ~1 and ~3 mm (at the isocentre), scaled by the lung path
    px_mm = float(np.mean(geometry.pixel_spacing_mm)) / geometry.magnification
    texture = np.zeros((rows, cols), dtype=np.float32)
    for scale_mm in (1.0, 3.0):
        t = ndimage.gaussian_filter(rng.standard_normal((rows, cols), dtype=np.float32), scale_mm / px_mm)
        texture += t / max(float(t.std()), 1e-12)
    bg = bg + config.lung_texture_std / math.sqrt(2.0) * texture * lung / 100.0
    # smooth soft-tissue thickness modulation, +-3 % over ~1/4 of the field
    field = ndimage.zoom(rng.standard_normal((6, 6)), (rows / 6.0, cols / 6.0), order=3, mode="nearest")
    bg = bg * (1.0 + 0.03 * field[:rows, :cols] / max(float(field.std()), 1e-12))
    return np.clip(bg, 0.0, None).astype(np.float32)


def background_line_integral(
    geometry: CArmGeometry, config: PhysicsRendererConfig, rng: np.random.Generator
) -> np.ndarray:
    """Line integral of mu (unitless) through the patient without contrast, for one C-arm view.

    Args:
        geometry: the view (the same one the vessel thickness map was projected with).
        config: ``background`` picks "procedural" or "chest-drr" (see the module docstring).
        rng: draws the anatomy (procedural) or the phantom seed (chest-drr, when
            ``config.phantom_seed`` is None).

    Returns:
        (rows, cols) float32 array >= 0 (detector_rows, detector_cols), a new writable array.
    """
    if config.background == "chest-drr":
        seed = (
            config.phantom_seed
            if config.phantom_seed is not None
            else int(rng.integers(config.phantom_pool_size))
        )
        return np.array(
            _chest_drr(
                seed, geometry, config.phantom_shape, float(config.phantom_spacing_mm), config.drr_downsample
            )
        )
    return _procedural_background(geometry, config, rng)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _lowpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass of a (rows, cols) image for a broad sigma, computed on a block-averaged copy."""
    f = max(1, int(sigma_px // 4))
    rows, cols = image.shape
    pr, pc = -(-rows // f) * f, -(-cols // f) * f
    padded = np.pad(image, ((0, pr - rows), (0, pc - cols)), mode="edge")
    small = padded.reshape(pr // f, f, pc // f, f).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / f, mode="nearest")
    coords = np.meshgrid(
        (np.arange(rows) - (f - 1) / 2.0) / f, (np.arange(cols) - (f - 1) / 2.0) / f, indexing="ij"
    )
    return ndimage.map_coordinates(small, coords, order=1, mode="nearest")


def _check_image(name: str, value: Any, shape: tuple[int, int]) -> np.ndarray:
    """A finite, non-negative float32 (rows, cols) array, or a ValueError naming the parameter."""
    if hasattr(value, "array") and hasattr(value, "ijk_to_ras"):  # a K = 1 Volume (e.g. render_drr's)
        value = value.array[0] if value.array.ndim == 3 and value.array.shape[0] == 1 else value.array
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (detector rows, cols), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    if arr.min() < 0:
        raise ValueError(f"{name}: expected values >= 0, got a minimum of {float(arr.min()):.4g}")
    return arr


def render_angiogram_detailed(
    thickness_mm: np.ndarray,
    geometry: CArmGeometry,
    config: PhysicsRendererConfig | None = None,
    rng: np.random.Generator | int | None = None,
    background_mu: np.ndarray | None = None,
) -> AngiogramRendering:
    """Render one angiogram frame and return it with its parameters (see :func:`render_angiogram`)."""
    cfg = config if config is not None else PhysicsRendererConfig()
    shape = (geometry.detector_rows, geometry.detector_cols)
    t = _check_image("thickness_mm", thickness_mm, shape)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    rng_params, rng_bg, rng_noise = gen.spawn(3)
    draw = RenderDraw.sample(cfg, rng_params)
    if background_mu is None:
        bg = background_line_integral(geometry, cfg, rng_bg)
    else:
        bg = _check_image("background_mu", background_mu, shape)

    line = bg.astype(np.float64) + draw.mu_iodine_per_mm * t
    area = 1.0
    if cfg.photons_pixel_mm is not None:
        area = float(np.prod(geometry.pixel_spacing_mm)) / cfg.photons_pixel_mm**2
    i0 = draw.photons_per_pixel * area * (math.exp(float(np.median(bg))) if cfg.auto_exposure else 1.0)
    primary = i0 * np.exp(-line)
    spr = draw.scatter_fraction / (1.0 - draw.scatter_fraction)
    sigma_px = cfg.scatter_sigma_mm / float(np.mean(geometry.pixel_spacing_mm))
    c = cfg.scatter_uniform_share
    expected = primary + spr * (c * primary.mean() + (1.0 - c) * _lowpass(primary, sigma_px))

    counts = rng_noise.poisson(expected).astype(np.float64) if cfg.quantum_noise else expected.copy()
    blur = draw.detector_blur_sigma_px
    if blur > 0:
        counts = ndimage.gaussian_filter(counts, blur, mode="nearest")
        expected = ndimage.gaussian_filter(expected, blur, mode="nearest")
    if cfg.electronic_noise_std > 0:
        counts += rng_noise.normal(0.0, cfg.electronic_noise_std, shape)
    measured = -np.log(np.maximum(counts, _MIN_COUNT) / i0)
    reference = -np.log(np.maximum(expected, _MIN_COUNT) / i0)  # noise-free: sets the window
    shown, reference = measured, reference
    if cfg.range_compression > 0:  # subtract the same noise-free low-pass from both: noise untouched
        sigma_drc = cfg.range_compression_sigma_mm / float(np.mean(geometry.pixel_spacing_mm))
        slow = cfg.range_compression * _lowpass(reference, sigma_drc)
        shown, reference = measured - slow, reference - slow

    lo, hi = (float(x) for x in np.percentile(reference, cfg.window_percentiles))
    margin = cfg.window_margin * (hi - lo)
    lo, hi = lo - margin, hi + margin
    if hi - lo < cfg.window_min_width:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - 0.5 * cfg.window_min_width, mid + 0.5 * cfg.window_min_width
    if cfg.display == "log":
        v = (hi - shown) / (hi - lo)
    else:  # linear in intensity, same window expressed as intensities
        v = (np.exp(-shown) - math.exp(-hi)) / (math.exp(-lo) - math.exp(-hi))
    v = np.clip(v, 0.0, 1.0) ** draw.gamma
    if cfg.output_levels is not None:
        v = np.round(v * (cfg.output_levels - 1)) / (cfg.output_levels - 1)
    return AngiogramRendering(
        image=v.astype(np.float32),
        background_mu=bg,
        line_integral=measured.astype(np.float32),
        draw=draw,
        i0=float(i0),
        window=(lo, hi),
    )


def render_angiogram(
    thickness_mm: np.ndarray,
    geometry: CArmGeometry,
    config: PhysicsRendererConfig | None = None,
    rng: np.random.Generator | int | None = None,
    background_mu: np.ndarray | None = None,
) -> np.ndarray:
    """Render a synthetic coronary angiogram from a vessel path-length map (vessels dark).

    Args:
        thickness_mm: (rows, cols) path length in mm through the contrast-filled lumen along each
            detector ray (``VesselProjection.thickness_mm``), >= 0.
        geometry: the C-arm view the thickness map was projected with (detector size, pixel
            spacing, and for the background the pose).
        config: renderer settings; ``PhysicsRendererConfig()`` if None.
        rng: a numpy Generator or an integer seed (None: fresh entropy, not reproducible).
        background_mu: (rows, cols) background line integral (unitless, >= 0), e.g. from
            :func:`background_line_integral`, or the K = 1 ``Volume`` of ``render_drr(ct, geometry)``
            for a CT of your own; None renders ``config.background`` for this geometry.

    Returns:
        (rows, cols) float32 image in [0, 1].

    Raises:
        ValueError: a map of the wrong shape, with NaN/inf or negative values (names the argument).
    """
    return render_angiogram_detailed(thickness_mm, geometry, config, rng, background_mu).image


def contrast_to_noise(
    image: np.ndarray, mask: np.ndarray, gap_px: float = 2.0, ring_px: float = 8.0
) -> float:
    """Contrast-to-noise ratio of dark vessels against their local background.

    The background is the ring of pixels at a distance in (gap_px, gap_px + ring_px] from the mask
    (the gap keeps blurred vessel edges out). Its local mean ``b(x)`` is a normalised Gaussian
    convolution of the ring (sigma = ring_px), so slow anatomy (heart border, spine) is followed
    rather than counted as noise::

        CNR = mean over the mask of (b - image)  /  std over the ring of (image - b)

    Positive when the vessels are darker than their surroundings.

    Args:
        image: (rows, cols) image.
        mask: (rows, cols) bool vessel mask.
        gap_px, ring_px: ring geometry in pixels.

    Returns:
        The CNR (+-inf if the ring is perfectly flat and the vessels differ).

    Raises:
        ValueError: shapes differ, the mask is empty, or the ring has fewer than 10 pixels.
    """
    img = np.asarray(image, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if img.shape != m.shape or img.ndim != 2:
        raise ValueError(f"contrast_to_noise: image {img.shape} and mask {m.shape} must be the same 2D shape")
    if not m.any():
        raise ValueError("contrast_to_noise: mask is empty (no vessel pixel)")
    dist = ndimage.distance_transform_edt(~m)
    ring = (dist > gap_px) & (dist <= gap_px + ring_px)
    if ring.sum() < 10:
        raise ValueError(
            f"contrast_to_noise: only {int(ring.sum())} background pixels around the mask (need 10)"
        )
    weight = ndimage.gaussian_filter(ring.astype(np.float64), ring_px, mode="constant")
    local = ndimage.gaussian_filter(np.where(ring, img, 0.0), ring_px, mode="constant")
    local /= np.maximum(weight, 1e-12)
    contrast = float(np.mean(local[m] - img[m]))
    noise = float(np.std(img[ring] - local[ring]))
    if noise == 0.0:
        return math.copysign(math.inf, contrast) if contrast != 0 else 0.0
    return contrast / noise
