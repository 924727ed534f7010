"""Appearance randomisation of synthetic angiograms: scenes (what is imaged) and randomised looks.

The vessel segmentation network (:mod:`xraycardiac.coronary.vessel_seg`) must not learn our physics
renderer's look as a shortcut, so its training images are drawn from many appearance families. A
:class:`VesselScene` is what is imaged: the vessel path-length map of a procedural coronary tree in
one C-arm view, its ground-truth mask and projected centreline, and the background line integral of
the anatomy behind it at the SAME view angles. :func:`render_randomised` then draws one look
(:class:`AppearanceConfig` lists the families; each draw picks one member of each):

* **background** (``backgrounds``): ``"chest-phantom"`` (DRR of the voxel chest phantom,
  :mod:`xraycardiac.phantoms.chest`, for the view's own angles), ``"procedural"`` (the analytic
  thorax), ``"lowfreq"`` (random low-frequency fields only); every background also gets a random
  low-frequency field on top. ``"real-ct"`` (DRR of the real chest CT of
  :mod:`xraycardiac.data.fixtures`) is made by :func:`make_scene` but is the HELD-OUT family of
  the benchmark: the default training config never uses it.
* **vessel profile** (``profiles``): ``"beer-lambert"`` (``mu * path length``: elliptic profile),
  ``"flat"`` (uniform contrast over the mask, hard edge), ``"blurred-edge"`` (the flat profile
  blurred by sigma 0.5-1.5 px); held out: ``"halo"`` (Beer-Lambert after unsharp masking with a
  bright overshoot around each vessel, as edge-enhancing clinical processing leaves it).
* **contrast**: iodine excess attenuation 0.04-0.14 /mm (or the same contrast range for flat
  profiles), i.e. faint to dense injections.
* **noise** (``noises``): ``"poisson"`` (quantum noise at 300-5000 photons per pixel plus
  electronic noise) or ``"gaussian"`` (additive white noise in the display); held out:
  ``"correlated"`` (1/f-coloured noise times a multiplicative speckle).
* **scatter** 0-50 % (uniform + low-pass share), **blur** sigma 0-1.5 px and **motion blur** (a
  line kernel of 0-6 px in a random direction), **display**: log or linear, random window
  percentiles, gamma 0.6-1.6, quantisation; **inverted polarity** (bright vessels) with
  probability ``p_invert``; **catheters** (1-2 smooth radio-opaque tubes of 1.5-2.5 mm that are
  NOT vessels: a hard negative); **collimator edges** (1-2 straight shutters; vessels behind a
  shutter are removed from the label, since nothing can see them).
* **pixel and image size**: :func:`make_scene` takes any detector size (256-1024 in the training
  bank) and pixel size; training crops are further rescaled by ``zoom`` (0.6-1.6), so vessels
  span 2-20 pixels.

The diffusion renderer (:mod:`xraycardiac.coronary.synth.render_diffusion`) remains one more
appearance source (held out in the benchmark). Everything is numpy/scipy; a 192 px draw takes
~10 ms, a 512 px one ~0.1 s (2 CPU cores). Same scene, config and generator state -> same image.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from xraycardiac.geometry import CArmGeometry

__all__ = [
    "BACKGROUNDS",
    "HELD_OUT_NOISES",
    "HELD_OUT_PROFILES",
    "NOISES",
    "PROFILES",
    "AppearanceConfig",
    "VesselScene",
    "crop_scene",
    "make_scene",
    "render_randomised",
    "with_background",
]

BACKGROUNDS = ("chest-phantom", "procedural", "lowfreq", "real-ct")
PROFILES = ("beer-lambert", "flat", "blurred-edge")
HELD_OUT_PROFILES = ("halo",)
NOISES = ("poisson", "gaussian")
HELD_OUT_NOISES = ("correlated",)


@dataclass(frozen=True)
class AppearanceConfig:
    """Which appearance families :func:`render_randomised` draws from (module docstring).

    Attributes:
        profiles: vessel profiles, from ``PROFILES + HELD_OUT_PROFILES``.
        noises: noise models, from ``NOISES + HELD_OUT_NOISES``.
        mu_per_mm: (lo, hi) iodine excess attenuation, 1/mm.
        p_invert: probability of bright vessels on a dark background.
        p_catheter: probability of 1-2 catheters in the image.
        p_collimator: probability of 1-2 collimator shutters.
        p_motion_blur: probability of a motion-blur line kernel.
        lowfreq_amplitude: (lo, hi) std of the random low-frequency field, line-integral units.
    """

    profiles: tuple[str, ...] = PROFILES
    noises: tuple[str, ...] = NOISES
    mu_per_mm: tuple[float, float] = (0.04, 0.14)
    p_invert: float = 0.2
    p_catheter: float = 0.4
    p_collimator: float = 0.3
    p_motion_blur: float = 0.3
    lowfreq_amplitude: tuple[float, float] = (0.0, 0.3)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("profiles", PROFILES + HELD_OUT_PROFILES),
            ("noises", NOISES + HELD_OUT_NOISES),
        ):
            value = tuple(getattr(self, name))
            if not value or not set(value) <= set(allowed):
                raise ValueError(
                    f"AppearanceConfig.{name}: expected a non-empty subset of {allowed}, got {value!r}"
                )
            object.__setattr__(self, name, value)
        for name in ("mu_per_mm", "lowfreq_amplitude"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not (0.0 <= lo <= hi and math.isfinite(hi)):
                raise ValueError(
                    f"AppearanceConfig.{name}: expected (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}"
                )
            object.__setattr__(self, name, (lo, hi))
        for name in ("p_invert", "p_catheter", "p_collimator", "p_motion_blur"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"AppearanceConfig.{name}: expected a probability in [0, 1], got {v!r}")


@dataclass
class VesselScene:
    """What one view images, before any appearance is drawn. Images are (rows, cols).

    Attributes:
        thickness_mm: float32 path length through the contrast-filled lumen, mm.
        mask: bool ground-truth vessel mask (``thickness_mm`` > 0.05 mm).
        centreline_px: (N, 2) float (u = column, v = row) projected centreline points (every
            0.5 mm of the opacified tree) that lie on the mask.
        background_mu: float32 line integral of the anatomy behind (>= 0), or None (lowfreq only).
        background: the source of ``background_mu`` (one of ``BACKGROUNDS``).
        geometry: the view.
        tree_centre_ras: (3,) centroid of the opacified tree, RAS mm (where the heart is).
    """

    thickness_mm: np.ndarray
    mask: np.ndarray
    centreline_px: np.ndarray
    background_mu: np.ndarray | None
    background: str
    geometry: CArmGeometry | None = None
    tree_centre_ras: np.ndarray | None = None


@functools.lru_cache(maxsize=1)
def _real_ct() -> tuple[Any, np.ndarray]:
    """The real chest CT at 3 mm and its heart centroid (RAS mm), read once per process."""
    from xraycardiac.data.fixtures import label_ids, load_real_ct

    ct, labels, names = load_real_ct(downsample_mm=3.0)
    heart = np.isin(labels.array, label_ids(names, "heart"))
    kji = np.argwhere(heart).mean(axis=0)
    ijk = np.array([kji[2], kji[1], kji[0], 1.0])
    return ct, (np.asarray(labels.ijk_to_ras) @ ijk)[:3]


def _background(source: str, geometry: CArmGeometry, tree_centre: np.ndarray, seed: int) -> np.ndarray | None:
    """Background line integral of ``source`` for ``geometry`` (None for "lowfreq")."""
    from xraycardiac.coronary.synth.render_physics import PhysicsRendererConfig, background_line_integral

    rng = np.random.default_rng(seed)
    if source == "lowfreq":
        return None
    if source in ("chest-phantom", "procedural"):
        kind = "chest-drr" if source == "chest-phantom" else "procedural"
        return background_line_integral(geometry, PhysicsRendererConfig(background=kind), rng)
    from xraycardiac.projection import render_drr

    ct, heart = _real_ct()
    # the real patient's heart takes the place of the phantom's: same angles, same offset from the heart
    iso = heart + (geometry.isocenter - tree_centre) + rng.uniform(-10.0, 10.0, 3)
    g = geometry.with_(isocenter_ras_mm=tuple(float(x) for x in iso), table_offset_ras_mm=(0.0, 0.0, 0.0))
    factor = 4
    rows, cols = geometry.detector_rows, geometry.detector_cols
    coarse = g.with_(
        detector_rows=-(-rows // factor), detector_cols=-(-cols // factor),
        pixel_spacing_mm=tuple(s * factor for s in g.pixel_spacing_mm),
    )  # fmt: skip
    small = render_drr(ct, coarse).array[0].astype(np.float32)
    big = ndimage.zoom(small, (rows / small.shape[0], cols / small.shape[1]), order=3, mode="nearest")
    return np.clip(big[:rows, :cols], 0.0, None).astype(np.float32)


def make_scene(
    seed: int,
    size_px: int = 512,
    pixel_mm: float | None = None,
    background: str = "chest-phantom",
    voxel_mm: float = 0.3,
) -> VesselScene:
    """One procedural coronary tree seen in one standard view, with the anatomy behind it.

    Args:
        seed: seeds the tree (``CoronaryPhantomConfig(seed=seed)``; even = left, odd = right
            injection), the view and the background.
        size_px: detector rows = cols (256-1024 in the training bank).
        pixel_mm: detector pixel size, mm; None scales 0.35 mm at 512 px to the same field.
        background: one of ``BACKGROUNDS`` ("real-ct" reads the CT of ``xraycardiac.data.fixtures``).
        voxel_mm: voxel size of the rasterised vessel tube, mm.

    Returns:
        The :class:`VesselScene`.

    Raises:
        ValueError: an unknown ``background`` or a size below 32 px.
    """
    from xraycardiac.coronary.synth.projection import project_vessels
    from xraycardiac.coronary.synth.views import ViewSamplingConfig, sample_view_pair
    from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree

    if background not in BACKGROUNDS:
        raise ValueError(f"make_scene: background must be one of {BACKGROUNDS}, got {background!r}")
    if not (isinstance(size_px, int) and size_px >= 32):
        raise ValueError(f"make_scene: size_px must be an integer >= 32, got {size_px!r}")
    px = pixel_mm if pixel_mm is not None else 0.35 * 512 / size_px
    tree = make_coronary_tree(CoronaryPhantomConfig(seed=int(seed)))
    trees = (int(seed) % 2,)
    side = ("left", "right")[trees[0]]
    centre = np.asarray(tree.points)[np.isin(tree.tree, trees)].mean(axis=0)
    views = ViewSamplingConfig(detector_rows=size_px, detector_cols=size_px, pixel_spacing_mm=(px, px))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    g = sample_view_pair(side, rng, views, centre)[int(rng.integers(2))]
    proj = project_vessels(tree, g, voxel_mm=voxel_mm, trees=trees)
    dense = tree.resampled(0.5)
    uv = g.project(np.asarray(dense.points)[np.isin(dense.tree, trees)])
    ij = np.round(uv).astype(int)
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < size_px) & (ij[:, 1] >= 0) & (ij[:, 1] < size_px)
    uv, ij = uv[inside], ij[inside]
    on = proj.mask[ij[:, 1], ij[:, 0]]
    scene = VesselScene(proj.thickness_mm.astype(np.float32), proj.mask, uv[on], None, "lowfreq", g, centre)
    return with_background(scene, background, int(seed) + 1_000_003)


def with_background(scene: VesselScene, background: str, seed: int) -> VesselScene:
    """The same scene (tree, view) with the anatomy of ``background`` behind it (one of ``BACKGROUNDS``).

    Raises:
        ValueError: an unknown ``background``, or a crop (no geometry) with a background other than "lowfreq".
    """
    from dataclasses import replace

    if background not in BACKGROUNDS:
        raise ValueError(f"with_background: background must be one of {BACKGROUNDS}, got {background!r}")
    if background != "lowfreq" and (scene.geometry is None or scene.tree_centre_ras is None):
        raise ValueError(
            "with_background: the scene has no geometry (a crop); make the background on the scene"
        )
    bg = _background(background, scene.geometry, scene.tree_centre_ras, int(seed))
    return replace(scene, background_mu=bg, background=background)


def crop_scene(
    scene: VesselScene, rng: np.random.Generator, size_px: int, zoom: float = 1.0, p_vessel: float = 0.8
) -> VesselScene:
    """A ``size_px`` square of the scene rescaled by ``zoom`` (> 1 magnifies), often centred near vessels.

    The crop is ``size_px / zoom`` source pixels, resampled (thickness and background linearly,
    the mask as thickness > 0.05 mm after resampling); a share ``p_vessel`` of crops is centred
    near a random vessel pixel, the rest anywhere. The centreline is dropped (crops train, scenes are scored).
    """
    rows, cols = scene.mask.shape
    src = int(round(size_px / zoom))
    src = min(src, rows, cols)
    ys, xs = np.nonzero(scene.mask)
    if len(ys) and rng.uniform() < p_vessel:
        k = int(rng.integers(len(ys)))
        cy, cx = ys[k] + rng.integers(-src // 4, src // 4 + 1), xs[k] + rng.integers(-src // 4, src // 4 + 1)
    else:
        cy, cx = rng.integers(rows), rng.integers(cols)
    y0 = int(np.clip(cy - src // 2, 0, rows - src))
    x0 = int(np.clip(cx - src // 2, 0, cols - src))
    box = (slice(y0, y0 + src), slice(x0, x0 + src))

    def resize(a: np.ndarray, order: int) -> np.ndarray:
        if src == size_px:
            return a
        out = ndimage.zoom(a, size_px / src, order=order, mode="nearest", grid_mode=True)
        return out[:size_px, :size_px]

    thick = resize(scene.thickness_mm[box], 1)
    bg = None if scene.background_mu is None else resize(scene.background_mu[box], 1)
    return VesselScene(thick.astype(np.float32), thick > 0.05, np.zeros((0, 2)), bg, scene.background, None)


def _lowfreq(shape: tuple[int, int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random field of std ``amplitude`` (a few cells of cubic noise across the image)."""
    cells = int(rng.integers(2, 7))
    coarse = rng.standard_normal((cells, cells))
    field = ndimage.zoom(coarse, (shape[0] / cells, shape[1] / cells), order=3, mode="nearest")
    field = field[: shape[0], : shape[1]]
    field = np.pad(field, ((0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])), mode="edge")
    return (amplitude * field / max(float(field.std()), 1e-9)).astype(np.float64)


def _catheter(shape: tuple[int, int], rng: np.random.Generator, px_per_mm: float) -> np.ndarray:
    """Path length (mm) of 1-2 smooth radio-opaque tubes entering from an image edge."""
    rows, cols = shape
    out = np.zeros(shape)
    for _ in range(int(rng.integers(1, 3))):
        n = 60
        start = np.array([rng.uniform(0, cols), rows * rng.choice([-0.05, 1.05])])
        heading = rng.uniform(0, 2 * np.pi)
        turn = np.cumsum(rng.normal(0.0, 0.08, n))
        step = max(rows, cols) / n * rng.uniform(0.6, 1.2)
        pts = start + np.cumsum(np.stack([np.cos(heading + turn), np.sin(heading + turn)], 1) * step, 0)
        line = np.zeros(shape, dtype=bool)
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            k = int(np.ceil(np.hypot(*(b - a)))) + 1
            u = np.round(np.linspace(a[0], b[0], k)).astype(int)
            v = np.round(np.linspace(a[1], b[1], k)).astype(int)
            ok = (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
            line[v[ok], u[ok]] = True
        radius_px = rng.uniform(0.75, 1.25) * px_per_mm
        d = ndimage.distance_transform_edt(~line)
        out += 2.0 * np.sqrt(np.clip(radius_px**2 - d**2, 0.0, None)) / px_per_mm
    return out


def _shutters(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Bool map of the pixels behind 1-2 straight collimator shutters (covering up to 20 % each)."""
    rows, cols = shape
    vv, uu = np.mgrid[0:rows, 0:cols]
    hidden = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        angle = rng.uniform(0, 2 * np.pi)
        n = np.array([np.cos(angle), np.sin(angle)])
        proj = (uu - cols / 2) * n[0] + (vv - rows / 2) * n[1]
        limit = np.abs(n).dot([cols / 2, rows / 2]) * rng.uniform(0.6, 0.95)
        hidden |= proj > limit
    return hidden


def render_randomised(
    scene: VesselScene, config: AppearanceConfig | None = None, rng: np.random.Generator | int | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One randomised look of a scene (module docstring for the families).

    Args:
        scene: the :class:`VesselScene` (or a crop of one).
        config: the families to draw from (default: the training families).
        rng: generator or seed.

    Returns:
        (image float32 in [0, 1], label bool mask (vessels not hidden by a shutter), draw: the
        choices made, JSON-ready).
    """
    cfg = config or AppearanceConfig()
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    shape = scene.mask.shape
    geometry_px = scene.geometry.pixel_spacing_mm[0] if scene.geometry is not None else 0.35
    px_per_mm = 1.0 / geometry_px
    profile = str(gen.choice(cfg.profiles))
    noise = str(gen.choice(cfg.noises))
    mu = float(gen.uniform(*cfg.mu_per_mm))
    draw: dict[str, Any] = {
        "background": scene.background,
        "profile": profile,
        "noise": noise,
        "mu_per_mm": mu,
    }

    bg = np.zeros(shape) if scene.background_mu is None else scene.background_mu.astype(np.float64)
    if scene.background_mu is not None:
        bg = bg * gen.uniform(0.7, 1.3)
    bg = bg + _lowfreq(shape, gen, float(gen.uniform(*cfg.lowfreq_amplitude)))
    mask_f = scene.mask.astype(np.float64)
    typical_mm = 2.5  # flat profiles get the contrast of a 2.5 mm vessel
    if profile == "beer-lambert":
        vessel = mu * scene.thickness_mm.astype(np.float64)
    elif profile == "flat":
        vessel = mu * typical_mm * mask_f
    elif profile == "blurred-edge":
        vessel = mu * typical_mm * ndimage.gaussian_filter(mask_f, gen.uniform(0.5, 1.5))
    else:  # "halo": unsharp masking of the Beer-Lambert profile, bright overshoot beside each vessel
        vessel = mu * scene.thickness_mm.astype(np.float64)
        vessel = vessel + gen.uniform(0.5, 1.5) * (
            vessel - ndimage.gaussian_filter(vessel, gen.uniform(2.0, 5.0))
        )
    line = bg + vessel
    if gen.uniform() < cfg.p_catheter:
        line = line + mu * gen.uniform(1.0, 3.0) * _catheter(shape, gen, px_per_mm)
        draw["catheter"] = True
    label = scene.mask.copy()
    if gen.uniform() < cfg.p_collimator:
        hidden = _shutters(shape, gen)
        line = np.where(hidden, line + gen.uniform(2.0, 5.0), line)
        label &= ~hidden
        draw["collimator"] = True

    # detection: primary + scatter, then the noise model
    primary = np.exp(-(line - np.median(line)))
    scatter = gen.uniform(0.0, 0.5)
    expected = primary + scatter / (1 - scatter) * (
        0.5 * primary.mean() + 0.5 * ndimage.gaussian_filter(primary, 20.0)
    )
    if noise == "poisson":
        photons = float(np.exp(gen.uniform(np.log(300.0), np.log(5000.0))))
        counts = gen.poisson(expected * photons) / photons + gen.normal(0.0, 2.0 / photons, shape)
    else:
        counts = expected.copy()
    blur = gen.uniform(0.0, 1.5)
    if blur > 0.2:
        counts = ndimage.gaussian_filter(counts, blur)
    if gen.uniform() < cfg.p_motion_blur:
        length = int(gen.integers(2, 7))
        kernel = np.zeros((2 * length + 1, 2 * length + 1))
        a = gen.uniform(0, np.pi)
        t = np.linspace(-length, length, 4 * length + 1)
        kernel[np.round(length + t * np.sin(a)).astype(int), np.round(length + t * np.cos(a)).astype(int)] = 1
        counts = ndimage.convolve(counts, kernel / kernel.sum(), mode="nearest")
        draw["motion_blur_px"] = length
    counts = np.maximum(counts, 1e-4)
    shown = -np.log(counts) if gen.uniform() < 0.7 else -counts  # log or linear display (vessels high)
    if gen.uniform() < 0.6:  # dynamic range compression
        shown = shown - gen.uniform(0.3, 0.9) * ndimage.gaussian_filter(shown, gen.uniform(10.0, 40.0))
    lo, hi = np.percentile(shown, [gen.uniform(0.0, 5.0), gen.uniform(95.0, 100.0)])
    v = np.clip((hi - shown) / max(hi - lo, 1e-9), 0.0, 1.0)  # vessels dark
    if noise == "gaussian":
        v = v + gen.normal(0.0, gen.uniform(0.01, 0.05), shape)
    elif noise == "correlated":
        white = gen.standard_normal(shape)
        f = np.fft.fftfreq(shape[0])[:, None] ** 2 + np.fft.fftfreq(shape[1])[None, :] ** 2
        pink = np.real(np.fft.ifft2(np.fft.fft2(white) / np.maximum(np.sqrt(f), 1.0 / max(shape))))
        v = v + gen.uniform(0.02, 0.06) * pink / max(float(pink.std()), 1e-9)
        v = v * (1.0 + gen.uniform(0.03, 0.1) * gen.standard_normal(shape))
    v = np.clip(v, 0.0, 1.0) ** gen.uniform(0.6, 1.6)
    if gen.uniform() < cfg.p_invert:
        v = 1.0 - v
        draw["inverted"] = True
    v = np.round(v * 255.0) / 255.0
    return v.astype(np.float32), label, draw
