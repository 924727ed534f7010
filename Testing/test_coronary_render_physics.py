"""Physics renderer of synthetic angiograms: contrast, monotonicity, noise statistics, backgrounds, errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from xraycardiac.coronary.synth.render_physics import (
    PhysicsRendererConfig,
    background_line_integral,
    clear_background_cache,
    contrast_to_noise,
    render_angiogram,
    render_angiogram_detailed,
)
from xraycardiac.geometry import CArmGeometry
from xraycardiac.projection import render_drr

# A coronary view: 512 x 512 pixels of 0.35 mm, magnification 1.47, centred on the heart of the
# chest phantom (where the procedural coronary trees live).
HEART_VIEW = CArmGeometry(
    sid_mm=1100.0, sod_mm=750.0, pixel_spacing_mm=(0.35, 0.35), isocenter_ras_mm=(-30.8, 25.5, -45.0)
)
# noise-free and unprocessed: the display is then a monotone function of the line integral
NOISE_FREE = dict(quantum_noise=False, electronic_noise_std=0.0, output_levels=None, range_compression=0.0)


def vessel_band(
    geometry: CArmGeometry, diameter_mm: float, row: float, cols: slice = slice(100, 412)
) -> np.ndarray:
    """Thickness map (mm) of a straight cylindrical vessel at the isocentre, along the columns at ``row``."""
    px_mm = geometry.pixel_spacing_mm[0] / geometry.magnification  # pixel size at the isocentre
    d = (np.arange(geometry.detector_rows) - row) * px_mm
    chord = 2.0 * np.sqrt(np.clip((diameter_mm / 2.0) ** 2 - d**2, 0.0, None))
    t = np.zeros((geometry.detector_rows, geometry.detector_cols), dtype=np.float32)
    t[:, cols] = chord[:, None]
    return t


def test_vessels_darker_than_local_background_cnr_above_3() -> None:
    g = HEART_VIEW
    t = vessel_band(g, 3.0, row=255.5)
    mask = t > 0.05
    flat = np.full(t.shape, 4.0, dtype=np.float32)  # ~200 mm of water
    cnr_flat = [
        contrast_to_noise(render_angiogram(t, g, None, s, background_mu=flat), mask) for s in range(5)
    ]
    cnr_anat = [contrast_to_noise(render_angiogram(t, g, None, s), mask) for s in range(5)]
    print(f"3 mm vessel CNR, flat background (noise only): {np.round(cnr_flat, 2)}")
    print(f"3 mm vessel CNR, procedural thorax (noise + anatomy): {np.round(cnr_anat, 2)}")
    assert min(cnr_flat) > 3.0, f"CNR against noise {cnr_flat} not all > 3"
    assert np.median(cnr_anat) > 3.0, f"median CNR on anatomy {np.median(cnr_anat):.2f} <= 3 ({cnr_anat})"
    assert min(cnr_anat) > 1.5, f"a vessel barely visible on anatomy: {cnr_anat}"


def test_intensity_monotone_in_thickness() -> None:
    g = HEART_VIEW.with_(detector_rows=384)
    diameters = [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]
    rows = [40.0 + 60.0 * n for n in range(len(diameters))]
    t = sum(vessel_band(g, d, r) for d, r in zip(diameters, rows, strict=True))
    flat = np.full(t.shape, 4.0, dtype=np.float32)
    for display in ("log", "linear"):
        img = render_angiogram(
            t, g, PhysicsRendererConfig(display=display, **NOISE_FREE), 3, background_mu=flat
        )
        centre = [float(img[int(round(r)), 200:312].mean()) for r in rows]
        values = [float(img[15, 200:312].mean()), *centre]  # no vessel, then 0.5 .. 5 mm
        assert np.all(np.diff(values) < 0), f"{display}: grey value by diameter {np.round(values, 4)}"
    # on the thorax: scaling every thickness up raises the line integral at every pixel (less
    # scatter too), and the display maps a larger line integral to a darker grey
    cfg = PhysicsRendererConfig(**NOISE_FREE)
    runs = [render_angiogram_detailed(k * t, g, cfg, 3) for k in (0.0, 0.5, 1.0, 2.0)]
    vessel = t > 0.5
    for lo, hi in zip(runs, runs[1:], strict=False):
        step = hi.line_integral - lo.line_integral
        assert step.min() > -1e-5, f"line integral fell by {-step.min():.3g} when vessels got thicker"
        assert step[vessel].min() > 1e-3, f"a vessel pixel darkened by only {step[vessel].min():.4f}"
    for r in runs:
        order = np.argsort(r.line_integral, axis=None)
        assert np.all(np.diff(r.image.ravel()[order]) <= 1e-6), "display not decreasing in the line integral"
    # within one vessel: along a thickness ramp the flat-background image never brightens
    ramp = np.zeros(flat.shape, dtype=np.float32)
    ramp[150:230, 50:460] = np.linspace(0.0, 6.0, 410, dtype=np.float32)[None, :]
    img = render_angiogram(ramp, g, PhysicsRendererConfig(**NOISE_FREE), 0, background_mu=flat)
    profile = img[190, 55:455]  # 5 px from the ends: the detector blur mixes in the surroundings
    assert np.all(np.diff(profile) <= 1e-6), (
        f"largest brightening along the ramp: {np.diff(profile).max():.3g}"
    )
    assert profile[-1] < profile[0] - 0.1, f"ramp contrast only {profile[0] - profile[-1]:.3f}"


def test_seeded_determinism_and_stream_independence() -> None:
    g = HEART_VIEW.with_(detector_rows=256, detector_cols=256, pixel_spacing_mm=(0.7, 0.7))
    t = vessel_band(g, 3.0, 127.5, slice(40, 216))
    cfg = PhysicsRendererConfig()
    a = render_angiogram_detailed(t, g, cfg, np.random.default_rng(11))
    b = render_angiogram_detailed(t, g, cfg, np.random.default_rng(11))
    c = render_angiogram(t, g, cfg, 12)
    assert np.array_equal(a.image, b.image) and a.draw == b.draw
    assert not np.array_equal(a.image, c), "different seeds gave the same image"
    # passing the background explicitly changes neither the sampled parameters nor the noise
    d = render_angiogram_detailed(t, g, cfg, np.random.default_rng(11), background_mu=a.background_mu)
    assert np.array_equal(a.image, d.image), f"max difference {np.abs(a.image - d.image).max()}"


def test_noise_std_follows_photon_count() -> None:
    g = HEART_VIEW.with_(detector_rows=256, detector_cols=256)
    flat = np.full((256, 256), 4.0, dtype=np.float32)
    blur = 0.8
    cfg = PhysicsRendererConfig(
        auto_exposure=False, electronic_noise_std=0.0, detector_blur_sigma_px=blur, scatter_fraction=0.3,
        gamma=1.0, output_levels=None,
    )  # fmt: skip
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    blur_gain = float(np.sqrt((ndimage.gaussian_filter(delta, blur) ** 2).sum()))  # white-noise std factor
    ratios = []
    for i0 in (2.0e4, 8.0e4, 3.2e5):
        r = render_angiogram_detailed(
            np.zeros_like(flat), g, replace(cfg, photons_per_pixel=i0), 5, background_mu=flat
        )
        std = float(r.image[32:-32, 32:-32].std())
        detected = i0 * np.exp(-4.0) / (1.0 - 0.3)  # primary + scatter
        predicted = blur_gain / np.sqrt(detected) / (r.window[1] - r.window[0])  # log display, gamma 1
        ratios.append(std / predicted)
        print(
            f"I0 {i0:.0f}: std {std:.5f}, predicted {predicted:.5f}, std * sqrt(I0) {std * np.sqrt(i0):.3f}"
        )
    assert np.allclose(ratios, 1.0, atol=0.2), (
        f"measured / predicted std {np.round(ratios, 3)} not within 20 %"
    )
    assert np.ptp(ratios) / np.mean(ratios) < 0.2, f"std * sqrt(I0) not constant within 20 %: {ratios}"


def test_output_in_unit_range_without_nan_and_8bit_levels() -> None:
    g = HEART_VIEW.with_(detector_rows=128, detector_cols=128, pixel_spacing_mm=(1.4, 1.4))
    t = np.zeros((128, 128), dtype=np.float32)
    t[40:60, :] = 100.0  # absurdly thick: saturates to black, must not produce NaN
    t[70:72, :] = 2.0
    cases = [
        (PhysicsRendererConfig(), None),
        (PhysicsRendererConfig(photons_per_pixel=1.0, electronic_noise_std=50.0), None),
        (PhysicsRendererConfig(display="linear", gamma=3.0), np.full((128, 128), 30.0, dtype=np.float32)),
        (
            PhysicsRendererConfig(auto_exposure=False, photons_per_pixel=10.0),
            np.zeros((128, 128), dtype=np.float32),
        ),
    ]
    for cfg, bg in cases:
        img = render_angiogram(t, g, cfg, 0, background_mu=bg)
        assert img.dtype == np.float32 and img.shape == (128, 128)
        assert np.all(np.isfinite(img)), f"{cfg}: NaN/inf in output"
        assert img.min() >= 0.0 and img.max() <= 1.0, f"{cfg}: range [{img.min()}, {img.max()}]"
        levels = img * 255.0
        assert np.allclose(levels, np.round(levels), atol=1e-4), "output not on 256 grey levels"
    img = render_angiogram(t, g, None, 1)
    assert img[40:60].mean() < img[90:].mean() - 0.05, "the thick slab is not darker than the rest"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mu_iodine_per_mm", (0.1, 0.05)),
        ("mu_iodine_per_mm", -0.01),
        ("background", "ct"),
        ("display", "sqrt"),
        ("photons_per_pixel", 0.0),
        ("scatter_fraction", 1.0),
        ("detector_blur_sigma_px", float("nan")),
        ("gamma", 0.0),
        ("window_percentiles", (5.0, 101.0)),
        ("output_levels", 1),
        ("phantom_seed", -1),
        ("phantom_shape", 8),
        ("drr_downsample", 0),
        ("electronic_noise_std", -1.0),
        ("quantum_noise", "yes"),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"PhysicsRendererConfig.{field}"):
        PhysicsRendererConfig(**{field: value})


def test_bad_inputs_name_the_argument() -> None:
    g = HEART_VIEW.with_(detector_rows=64, detector_cols=64)
    good = np.zeros((64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="thickness_mm.*shape"):
        render_angiogram(np.zeros((64, 65)), g, None, 0)
    with pytest.raises(ValueError, match="thickness_mm.*NaN"):
        render_angiogram(np.full((64, 64), np.nan), g, None, 0)
    with pytest.raises(ValueError, match="thickness_mm.*>= 0"):
        render_angiogram(-good - 1.0, g, None, 0)
    with pytest.raises(ValueError, match="background_mu.*shape"):
        render_angiogram(good, g, None, 0, background_mu=np.zeros((32, 32)))
    with pytest.raises(ValueError, match="mask is empty"):
        contrast_to_noise(good, good > 0)


@pytest.mark.parametrize("background", ["chest-drr", "procedural"])
def test_background_spine_at_centre_column_for_centred_ap(background: str) -> None:
    """AP view of a centred phantom: the spine (RAS x = 0) projects onto the centre column; moving
    the isocentre 30 mm to the patient's right moves it right by 30 mm x magnification."""
    for shift_mm in (0.0, 30.0):
        g = CArmGeometry(
            detector_rows=128, detector_cols=128, pixel_spacing_mm=(2.0, 2.0), sid_mm=1100.0, sod_mm=750.0,
            isocenter_ras_mm=(shift_mm, 0.0, 0.0),
        )  # fmt: skip
        expected = 63.5 + shift_mm * g.magnification / 2.0
        for seed in (0, 1):
            cfg = PhysicsRendererConfig(background=background, phantom_seed=seed)
            bg = background_line_integral(g, cfg, np.random.default_rng(seed))
            profile = bg[32:64].mean(axis=0)  # rows above the heart (z ~ 0..+44 mm at the isocentre)
            slope = np.gradient(profile)
            spine = (slope.argmax() + slope.argmin()) / 2.0  # between the steepest edges
            width = slope.argmin() - slope.argmax()
            print(
                f"{background} seed {seed} shift {shift_mm}: spine column {spine} (expected {expected}), width {width} px"
            )
            assert abs(spine - expected) <= 2.0, f"spine at column {spine}, expected {expected}"
            assert 10 <= width <= 40, f"spine band {width} px wide (vertebral body ~40 mm = ~29 px)"


def test_chest_drr_background_matches_full_resolution_drr_and_is_cached() -> None:
    from xraycardiac.phantoms.chest import ChestPhantomConfig, make_chest_phantom

    clear_background_cache()
    g = HEART_VIEW.with_(
        detector_rows=160, detector_cols=160, pixel_spacing_mm=(1.1, 1.1), primary_angle_deg=-30.0
    )
    cfg = PhysicsRendererConfig(background="chest-drr", phantom_seed=4)
    bg = background_line_integral(g, cfg, np.random.default_rng(0))
    ct = make_chest_phantom(ChestPhantomConfig(shape_ijk=(64, 64, 64), spacing_mm=6.0, seed=4))[0]
    direct = render_drr(ct, g).array[0]
    err = np.abs(bg - direct)
    print(f"coarse-then-upsampled DRR vs direct: median |err| {np.median(err):.4f}, max {err.max():.4f}")
    assert np.median(err) < 0.01 and err.max() < 0.15, f"median {np.median(err):.4f}, max {err.max():.4f}"
    original = bg.copy()
    bg[:] = -1.0  # the caller's copy: must not reach the cache
    again = background_line_integral(g, cfg, np.random.default_rng(0))
    assert np.array_equal(again, original), "the cached background was changed through a returned array"
    # with phantom_seed None the seed comes from the generator, within the pool
    pooled = PhysicsRendererConfig(background="chest-drr", phantom_pool_size=1)
    assert np.array_equal(background_line_integral(g, pooled, np.random.default_rng(9)),
                          background_line_integral(g, replace(pooled, phantom_seed=0), np.random.default_rng(1)))  # fmt: skip


def test_range_compression_gives_vessels_more_grey_levels_on_the_thorax() -> None:
    """Dynamic range compression: the same vessel spans more of the display's grey range on anatomy."""
    g = HEART_VIEW
    t = vessel_band(g, 3.0, row=255.5)
    vessel = t > 1.0
    dist = ndimage.distance_transform_edt(~vessel)
    ring = (dist > 3) & (dist < 10)
    contrast = {}
    for k in (0.0, 0.75):
        cfg = PhysicsRendererConfig(**{**NOISE_FREE, "range_compression": k})
        img = render_angiogram(t, g, cfg, 5)
        contrast[k] = float(img[ring].mean() - img[vessel].mean())
    print(f"3 mm vessel: grey-level contrast {contrast}")
    assert contrast[0.0] > 0 and contrast[0.75] > 1.5 * contrast[0.0], contrast
