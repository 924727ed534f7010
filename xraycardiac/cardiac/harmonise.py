"""What the TCDM renderer does after sampling so that a case keeps its template's intensities and texture.

The demo TCDM learned its intensity and texture prior from procedural phantoms (flat structures plus
~45 HU white noise). Given a template unlike them (the real chest CT), it pulls the template's HU toward
its phantoms' (blood pool -22..-26 HU) and paints its phantoms' white noise over the template's finer,
correlated texture (noise power 2-8x the template's in the blood pool above 0.1 cycles/mm, 15-73x in
soft tissue). The user asked for their template; both steps bring the case back to it, per structure,
with nothing fitted on any data set:

* :func:`harmonise_hu` (``hu_harmonise``): each structure's mean HU to the warped template's, by a
  correction smoothed within the structure (``HU_HARMONISE_SIGMA_MM``).
* :func:`harmonise_texture` (``texture_harmonise``): the model's deviation from the warped template is
  split at ``TEXTURE_SIGMA_MM`` into two fine bands, scaled per region (each structure and the
  background, split into air, fat, soft tissue and enhanced blood / bone) so that the case's power in
  each band is the template's own, never more than the model's, and the structure-scale rest, kept. What the model changes at the scale of
  structures stays; the texture is the template's.

Both act on the voxels the model's image is kept on (``weight``: the TCDM renderer's ``1 - window
blend``) and record what they did per structure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "HU_HARMONISE_SIGMA_MM",
    "TEXTURE_SIGMA_MM",
    "TEXTURE_TISSUE_HU",
    "harmonise_hu",
    "harmonise_texture",
    "texture_regions",
]

HU_HARMONISE_SIGMA_MM = 5.0
"""``hu_harmonise``: the Gaussian (standard deviation, mm) over which the per-structure HU correction is
smoothed: 2 voxels at the demo's 2.5 mm, so the correction holds structure-scale offsets (a chamber's
mean) and the diffusion's texture and noise above ~0.1 cycles/mm stay. A design choice, not fitted."""


def harmonise_hu(
    image: np.ndarray, reference: np.ndarray, labels: np.ndarray, weight: np.ndarray, sigma_vox: Any
) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Bring each structure's mean HU to the reference's by a smooth additive correction.

    For each label ``v`` > 0 of ``labels`` (voxels ``M``), with residual ``r = image - reference`` (HU)
    and weights ``W = weight`` on ``M`` (0 elsewhere), the correction on ``M`` is
    ``c = -G(W r) / G(W) + k``: the residual's local weighted mean (normalised Gaussian smoothing within
    the structure, so neighbouring structures do not leak in), plus the constant ``k`` that makes the
    weighted mean of ``r + c`` over ``M`` exactly 0. Detail finer than ``sigma_vox`` is the image's.

    Args:
        image: the model's image, HU.
        reference: what it should match on average per structure (the warped template), HU, same shape.
        labels: the label map (0 = background, left alone), same shape.
        weight: in [0, 1]: how much of each voxel's image is kept afterwards (the TCDM renderer's
            ``1 - window blend``: beyond the window the template replaces the image, so those voxels do
            not count), same shape.
        sigma_vox: the Gaussian's standard deviation in voxels (a number or one per axis).

    Returns:
        (image + correction as float32, ``{str(v): {"before_hu", "after_hu"}}``: the weighted mean of
        image - reference over each structure before and after).
    """
    from scipy import ndimage

    out = np.asarray(image, np.float64).copy()
    residual = out - reference
    stats: dict[str, dict[str, float]] = {}
    for v in np.unique(labels):
        inside = labels == v
        if v == 0 or float(weight[inside].sum()) <= 1e-6:
            continue
        w = np.where(inside, weight, 0.0)
        num = ndimage.gaussian_filter(w * residual, sigma_vox, mode="nearest")
        den = ndimage.gaussian_filter(w, sigma_vox, mode="nearest")
        wm, rm = w[inside], residual[inside]
        c = -num[inside] / np.maximum(den[inside], 1e-12)
        c += -float(np.sum(wm * (rm + c))) / float(wm.sum())
        out[inside] += c
        stats[str(int(v))] = {
            "before_hu": float(np.sum(wm * rm) / wm.sum()),
            "after_hu": float(np.sum(wm * (rm + c)) / wm.sum()),
        }
    return out.astype(np.float32), stats


TEXTURE_SIGMA_MM = (1.25, 2.5, 5.0)
"""``texture_harmonise``: the Gaussians (standard deviations, mm) that split the model's deviation from the
warped template into bands: finer than 2.5 mm (one voxel at the demo's 2.5 mm), 2.5-5 mm, and the
structure scale beyond 5 mm (``HU_HARMONISE_SIGMA_MM``), which is kept as the model made it. The demo
TCDM's noise power exceeds the real CT's from ~0.1 cycles/mm up (2-8x in the blood pool, 15-73x in soft
tissue: ``benchmarks/README.md``), which the two finer bands cover. A design choice, not fitted."""

TEXTURE_TISSUE_HU = ((-np.inf, -400.0), (-400.0, -20.0), (-20.0, 200.0), (200.0, np.inf))
"""Each label (the background 0 included) is split by the reference's HU into air / lung, fat, soft
tissue (muscle, myocardium, unenhanced blood) and enhanced blood / bone, each with its own texture: a
label such as TotalSegmentator's one-piece heart holds both the contrast-filled blood pool and the wall,
whose boundary is not texture."""

MIN_TEXTURE_VOXELS = 27
"""A region's texture is measured on its interior (:func:`_interior`); with fewer interior voxels in the
case or the template its fine part is left as the model made it (recorded)."""


def texture_regions(reference: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The regions :func:`harmonise_texture` treats separately: each label (0 included) split into the
    :data:`TEXTURE_TISSUE_HU` classes of ``reference`` (HU), as ``{name: boolean mask}`` (non-empty ones)."""
    out = {}
    for v in np.unique(labels):
        for lo, hi in TEXTURE_TISSUE_HU:
            region = (labels == v) & (reference >= lo) & (reference < hi)
            if region.any():
                out[f"label {int(v)}, {lo:g}..{hi:g} HU"] = region
    return out


def _bands(image: np.ndarray, weight: np.ndarray, sigmas_vox: tuple[Any, ...]) -> list[np.ndarray]:
    """``image``'s bands between successive Gaussian smoothings normalised by ``weight`` (the region's
    voxels, each as much as it counts: :func:`harmonise_texture`); 0 where ``weight`` is 0."""
    from scipy import ndimage

    w = np.asarray(weight, np.float64)
    den = [np.maximum(ndimage.gaussian_filter(w, s, mode="nearest"), 1e-12) for s in sigmas_vox]
    levels = [image] + [
        ndimage.gaussian_filter(w * image, s, mode="nearest") / g
        for s, g in zip(sigmas_vox, den, strict=True)
    ]
    return [np.where(w > 0, levels[k] - levels[k + 1], 0.0) for k in range(len(sigmas_vox))]


def _interior(region: np.ndarray) -> np.ndarray:
    """``region`` eroded by two voxels (past a partial-volume edge), or by one where two leave fewer than
    :data:`MIN_TEXTURE_VOXELS`."""
    from scipy import ndimage

    deep = ndimage.binary_erosion(region, iterations=2)
    return deep if deep.sum() >= MIN_TEXTURE_VOXELS else ndimage.binary_erosion(region)


def harmonise_texture(
    image: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    template_image: np.ndarray,
    template_labels: np.ndarray,
    weight: np.ndarray,
    sigmas_vox: tuple[Any, ...],
) -> tuple[np.ndarray, dict[str, dict[str, list[float]]]]:
    """Give the model's image its template's fine-scale texture, region by region and band by band.

    Within each region ``R`` of :func:`texture_regions`, ``G_k`` is a Gaussian of ``sigmas_vox[k]``
    normalised within ``R`` and weighted by ``weight`` (the edges of neighbouring structures are not
    texture, and the voxels the window blend replaces, e.g. contrast above the model's window, do
    not spread into their neighbours) and a signal ``x``
    splits into bands ``B_0(x) = x - G_0 x``, ``B_k(x) = G_(k-1) x - G_k x`` and the rest ``G_last x``.
    With ``d = image - reference``, ``R`` gets ``reference + G_last d + sum_k a_k B_k(d)``, ``a_k =
    sqrt(clip((P_T - P_ref) / P_d, 0, 1))``, where ``P`` is the mean square of band ``k`` over the
    region's interior (two voxels eroded past partial-volume edges, one for thin regions; voxels with
    ``weight`` 1): ``P_T`` of the template in its own
    region of that name, ``P_ref`` of the reference (the warped template), ``P_d`` of ``d``. So where the
    model added more than the template has, the case's power in the band is the template's (``a`` < 1),
    and never more than the model's own (``a`` <= 1); the structure-scale rest is the model's. Each
    band is taken minus its ``weight``-weighted mean over the region, so the region's weighted mean HU
    (set by :func:`harmonise_hu`) does not move.

    Args:
        image: the model's image, HU.
        reference: the warped template the model was asked to render, HU, same shape.
        labels: the case's label map, same shape.
        template_image: the template's own image, HU (any shape).
        template_labels: its label map, same shape as ``template_image``.
        weight: in [0, 1], how much of each voxel's image is kept afterwards (``harmonise_hu``'s).
        sigmas_vox: the Gaussians' standard deviations in voxels, increasing (each a number or one per
            axis).

    Returns:
        (the image as float32, ``{region: {"scale", "band_hu_template", "band_hu_before",
        "band_hu_after"}}``, one entry per band: ``a_k`` and the band's RMS over the region's interior (HU)
        of the template, of the image before and after; scales 1 and RMS values NaN for a region with
        fewer than :data:`MIN_TEXTURE_VOXELS` interior voxels in the case or the template).
    """

    img = np.asarray(image, np.float64)
    ref = np.asarray(reference, np.float64)
    tpl = np.asarray(template_image, np.float64)
    tpl_regions = texture_regions(tpl, np.asarray(template_labels))
    out = img.copy()
    n = len(sigmas_vox)
    stats: dict[str, dict[str, list[float]]] = {}
    for name, region in texture_regions(ref, labels).items():
        if not region.any():
            continue
        inner = _interior(region & (weight >= 1.0))
        inner_t = _interior(tpl_regions.get(name, np.zeros(tpl.shape, bool)))
        if inner.sum() < MIN_TEXTURE_VOXELS or inner_t.sum() < MIN_TEXTURE_VOXELS:
            nan = [float("nan")] * n
            stats[name] = {
                "scale": [1.0] * n,
                "band_hu_template": nan,
                "band_hu_before": nan,
                "band_hu_after": nan,
            }
            continue

        def power(x: np.ndarray, where: np.ndarray, mask: np.ndarray) -> list[float]:
            return [float(np.mean(band[mask] ** 2)) for band in _bands(x, where, sigmas_vox)]

        kept = np.where(region, weight, 0.0)  # voxels the window blend replaces do not enter the smoothing
        bands_d = _bands(img - ref, kept, sigmas_vox)
        p_t, p_ref = power(tpl, tpl_regions[name], inner_t), power(ref, kept, inner)
        p_d = [float(np.mean(band[inner] ** 2)) for band in bands_d]
        scale = [
            float(np.sqrt(np.clip((t - r) / max(d, 1e-12), 0.0, 1.0)))
            for t, r, d in zip(p_t, p_ref, p_d, strict=True)
        ]
        for a, band in zip(scale, bands_d, strict=True):
            # each band minus its weighted mean over the region: the step never moves a region's mean,
            # which hu_harmonise has set (a thin region's band is biased by its partial-volume rim)
            centred = band[region] - float(np.sum(kept * band)) / max(float(kept.sum()), 1e-12)
            out[region] -= (1.0 - a) * centred
        stats[name] = {
            "scale": scale, "band_hu_template": [float(np.sqrt(p)) for p in p_t],
            "band_hu_before": [float(np.sqrt(p)) for p in power(img, kept, inner)],
            "band_hu_after": [float(np.sqrt(p)) for p in power(out, kept, inner)],
        }  # fmt: skip
    return out.astype(np.float32), stats
