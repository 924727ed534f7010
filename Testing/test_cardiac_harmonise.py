"""The TCDM renderer's texture step (:func:`xraycardiac.cardiac.harmonise.harmonise_texture`) on volumes
whose texture is known: a template with fine correlated texture, a "model image" that is the template
plus white noise and a smooth change."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from xraycardiac.cardiac.harmonise import harmonise_texture, texture_regions

SIGMAS = (1.0, 2.0)  # voxels
SIGMA = SIGMAS[0]  # the finest band, where the check measures


def _fine_rms(image: np.ndarray, mask: np.ndarray) -> float:
    """RMS of the image minus its Gaussian smoothing, on the mask's interior eroded past the edge."""
    fine = image - ndimage.gaussian_filter(image, SIGMA, mode="nearest")
    return float(np.sqrt(np.mean(fine[ndimage.binary_erosion(mask, iterations=4)] ** 2)))


def _case(noise_hu: float, texture_hu: float, seed: int = 0):
    """Labels: a 'chamber' (1) of 300 HU in a soft-tissue background of 40 HU, 32³. The template has
    correlated texture of ``texture_hu`` RMS; the model image adds white noise of ``noise_hu`` and a
    smooth +30 HU ramp along one axis (a structure-scale change the model made)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[:32, :32, :32]
    labels = (((k - 16) ** 2 + (j - 16) ** 2 + (i - 16) ** 2) < 9**2).astype(np.uint8)
    base = np.where(labels == 1, 300.0, 40.0)
    texture = ndimage.gaussian_filter(rng.normal(size=base.shape), 1.5)
    texture *= texture_hu / texture.std()
    template = base + texture
    ramp = 30.0 * i / 31.0
    image = template + ramp + rng.normal(scale=noise_hu, size=base.shape)
    return image, template, labels, ramp


def test_white_noise_brought_to_the_template_texture_smooth_change_kept() -> None:
    image, template, labels, ramp = _case(noise_hu=45.0, texture_hu=8.0)
    weight = np.ones_like(image)
    out, stats = harmonise_texture(image, template, labels, template, labels, weight, SIGMAS)
    for v, name in ((1, "label 1, 200..inf HU"), (0, "label 0, -20..200 HU")):
        region = labels == v
        want = _fine_rms(template, region)
        assert _fine_rms(image, region) > 3 * want  # the model's noise dominates before
        assert abs(_fine_rms(out, region) - want) < 0.2 * want, (name, stats[name])
        assert all(0.0 <= a < 0.3 for a in stats[name]["scale"])
        # the structure-scale change is kept: the smoothed difference from the template is the ramp's
        inner = ndimage.binary_erosion(region, iterations=3)
        smooth = ndimage.gaussian_filter(out - template, 3.0, mode="nearest")
        assert np.abs(smooth - ndimage.gaussian_filter(ramp, 3.0, mode="nearest"))[inner].mean() < 3.0
        assert abs(float(out[region].mean() - image[region].mean())) < 0.01  # the region's mean is kept
    assert (
        set(stats)
        == set(texture_regions(template, labels))
        == {"label 0, -20..200 HU", "label 1, 200..inf HU"}
    )


def test_a_model_finer_than_the_template_is_left_alone() -> None:
    """The step never adds texture: where the template is rougher than the model's image, scale 1."""
    image, template, labels, _ = _case(noise_hu=0.0, texture_hu=8.0)
    rough = template + np.random.default_rng(1).normal(scale=40.0, size=template.shape)
    out, stats = harmonise_texture(image, template, labels, rough, labels, np.ones_like(image), SIGMAS)
    assert stats["label 1, 200..inf HU"]["scale"] == [1.0, 1.0] == stats["label 0, -20..200 HU"]["scale"]
    np.testing.assert_allclose(out, image, atol=1e-3)


def test_voxels_the_window_blend_replaces_do_not_count_and_small_regions_are_recorded() -> None:
    image, template, labels, _ = _case(noise_hu=45.0, texture_hu=8.0)
    labels = labels.copy()
    labels[0, 0, :2] = 7  # a two-voxel structure: no interior
    weight = np.ones_like(image)
    weight[labels == 1] = 0.5  # all of the chamber blended with the template afterwards
    out, stats = harmonise_texture(image, template, labels, template, labels, weight, SIGMAS)
    for name in ("label 1, 200..inf HU", "label 7, -20..200 HU"):
        assert stats[name]["scale"] == [1.0, 1.0] and np.isnan(stats[name]["band_hu_after"]).all()
    np.testing.assert_allclose(out[labels == 1], image[labels == 1], atol=1e-3)
    assert max(stats["label 0, -20..200 HU"]["scale"]) < 0.3


def test_voxels_beyond_the_window_do_not_spread_into_their_neighbours() -> None:
    """Contrast above the model's window: the model's image there is far off (clipped) and the window
    blend replaces it (weight 0). The kept voxels next to it come out as if it were not there."""
    image, template, labels, _ = _case(noise_hu=45.0, texture_hu=8.0)
    weight = np.ones_like(image)
    plain, _ = harmonise_texture(image, template, labels, template, labels, weight, SIGMAS)
    hot_template, hot_image = template.copy(), image.copy()
    block = (slice(14, 18),) * 3  # inside the chamber
    hot_template[block] = 2500.0  # contrast the model cannot render...
    hot_image[block] = 1000.0  # ...so its image is clipped there
    weight[block] = 0.0
    hot, _ = harmonise_texture(hot_image, hot_template, labels, template, labels, weight, SIGMAS)
    kept = weight > 0
    assert np.abs(hot - plain)[kept].max() < 5.0, np.abs(hot - plain)[kept].max()  # 268 HU before weighting


def test_no_region_mean_moves_not_even_a_thin_rim() -> None:
    """A 2-voxel wall between the chamber and the background, whose model image is the template shifted
    by one voxel (an edge the model put elsewhere) plus noise: scaling the bands must not move any
    region's mean, which hu_harmonise has set."""
    rng = np.random.default_rng(3)
    k, j, i = np.mgrid[:32, :32, :32]
    r2 = (k - 16) ** 2 + (j - 16) ** 2 + (i - 16) ** 2
    labels = np.where(r2 < 7**2, 1, np.where(r2 < 9**2, 2, 0)).astype(np.uint8)
    template = np.choose(labels, [40.0, 350.0, 120.0]) + ndimage.gaussian_filter(
        rng.normal(size=labels.shape), 1
    )
    image = np.roll(template, 1, axis=2) + rng.normal(scale=45.0, size=labels.shape)
    out, stats = harmonise_texture(image, template, labels, template, labels, np.ones_like(image), SIGMAS)
    for name, region in texture_regions(template, labels).items():
        if name in stats and stats[name]["scale"] != [1.0] * len(SIGMAS):
            assert abs(float(out[region].mean() - image[region].mean())) < 0.01, name
