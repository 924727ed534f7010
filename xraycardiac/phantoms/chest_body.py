"""Whole-body chest phantom for radiograph training: the chest phantom plus the anatomy a film shows.

:func:`make_body_phantom` draws a :class:`~xraycardiac.phantoms.chest.ChestPhantomConfig` with wide
habitus ranges (torso size, subcutaneous fat, heart size and position) on a grid that holds the whole
torso (default 416 x 416 x 448 mm: 104 x 104 x 112 voxels of 4 mm, RAS centred on the origin, as the
chest phantom), then adds, located from the chest phantom's own label map (heart, airways, sternum,
lungs):

- heart chambers: an interventricular septum and an atrioventricular plane (myocardium) splitting the
  blood pool, a thicker left-ventricular wall, and the two atria (left: posterior-superior of the base;
  right: the right heart border) as blood pools, labelled heart;
- pulmonary trunk from the right-ventricular outflow up to its bifurcation under the aortic arch, and the
  left and right pulmonary arteries to the hila (blood; label ``pulmonary_arteries``);
- clavicles from the manubrium to the shoulders (label ``clavicles``) and scapulae: triangular plates
  on the posterior chest wall with a glenoid (label ``scapulae``);
- breast tissue on about half the cases: two anterior hemi-ellipsoids of fat and glandular tissue
  (label ``breast``);
- contrast on about half the cases: blood (heart, aorta, pulmonary arteries) at 180..450 HU, else
  35..55 HU.

The added structures are painted on the chest phantom's CT and blurred like it (2 mm partial volume).
Same seed and grid -> bit-identical output. Nothing here is fitted to any real CT.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
from scipy import ndimage

from xraycardiac.phantoms.chest import HU, LABELS, ChestPhantomConfig, make_chest_phantom
from xraycardiac.volume import Volume

__all__ = ["BODY_EXTENT_MM", "BODY_LABELS", "make_body_phantom"]

BODY_LABELS: dict[str, int] = {
    **LABELS,
    "pulmonary_arteries": 9,
    "clavicles": 10,
    "scapulae": 11,
    "breast": 12,
}
"""The chest phantom's labels plus the structures added here."""

BODY_EXTENT_MM = (416.0, 416.0, 448.0)
"""Default field (x, y, z) in mm: the whole torso of the widest habitus (104 x 104 x 112 voxels of 4 mm)."""

_HABITUS = dict(
    torso_half_width_mm=(140.0, 195.0),
    torso_half_depth_mm=(100.0, 135.0),
    fat_thickness_mm=(4.0, 30.0),
    heart_scale=(0.85, 1.2),
    heart_shift_mm=(-15.0, 15.0),
    lung_height_scale=(0.85, 1.15),
    rib_spacing_mm=(20.0, 29.0),
)
_CONTRAST_HU = (180.0, 450.0)
_PLAIN_BLOOD_HU = (35.0, 55.0)
_CLAVICLE_HU, _SCAPULA_HU = 700.0, 550.0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _sweep(mask: np.ndarray, ras_kji: tuple[np.ndarray, ...], knots: np.ndarray, radius: float) -> None:
    """Set ``mask`` True within ``radius`` mm of the polyline through ``knots`` (N, 3) RAS mm."""
    x, y, z = ras_kji
    for p0, p1 in zip(knots[:-1], knots[1:], strict=True):
        lo, hi = np.minimum(p0, p1) - radius - 4.0, np.maximum(p0, p1) + radius + 4.0
        sl = tuple(
            slice(int(np.searchsorted(c, lo[a])), int(np.searchsorted(c, hi[a], side="right")))
            for a, c in ((2, z), (1, y), (0, x))
        )
        if any(s.start >= s.stop for s in sl):
            continue
        dx, dy, dz = (
            x[sl[2]][None, None] - p0[0],
            y[sl[1]][None, :, None] - p0[1],
            z[sl[0]][:, None, None] - p0[2],
        )
        d = p1 - p0
        t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
        mask[sl] |= (dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dz - t * d[2]) ** 2 <= radius**2


def _centroid(mask: np.ndarray, ras_kji: tuple[np.ndarray, ...]) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    x, y, z = ras_kji
    return np.array([x[i].mean(), y[j].mean(), z[k].mean()])


def make_body_phantom(
    seed: int, spacing_mm: float = 4.0, shape_ijk: tuple[int, int, int] | None = None
) -> tuple[Volume, Volume]:
    """A whole-body chest CT (HU) and its label map (:data:`BODY_LABELS`); see the module docstring.

    Args:
        seed: non-negative integer; draws the habitus, contrast, breast and the chest phantom's seed.
        spacing_mm: isotropic voxel size (mm).
        shape_ijk: grid (I, J, K); None = :data:`BODY_EXTENT_MM` / ``spacing_mm`` (rounded up), which
            holds every habitus.

    Returns:
        (ct, labels) as :func:`~xraycardiac.phantoms.chest.make_chest_phantom` returns them (grid centre
        at RAS 0); ``meta["body_json"]`` holds the drawn contrast, breast and structure parameters.

    Raises:
        ValueError: a negative or non-integer seed, or a bad grid (from ChestPhantomConfig).
    """
    if not (isinstance(seed, int | np.integer) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    contrast = bool(rng.random() < 0.5)
    blood = float(rng.uniform(*(_CONTRAST_HU if contrast else _PLAIN_BLOOD_HU)))
    if shape_ijk is None:
        shape_ijk = tuple(int(np.ceil(e / spacing_mm - 1e-6)) for e in BODY_EXTENT_MM)
    cfg = ChestPhantomConfig(
        shape_ijk=tuple(int(n) for n in shape_ijk), spacing_mm=float(spacing_mm),
        seed=int(rng.integers(0, 2**31 - 1)), blood_pool_hu=blood, **_HABITUS,
    )  # fmt: skip
    ct, lab = make_chest_phantom(cfg)
    hu0 = np.asarray(ct.array, dtype=np.float32)
    hu, labels = hu0.copy(), np.asarray(lab.array).copy()
    params = json.loads(ct.meta["parameters_json"])
    a, b, fat = params["torso_half_width_mm"], params["torso_half_depth_mm"], params["fat_thickness_mm"]
    s = float(spacing_mm)
    x, y, z = ((np.arange(n) - (n - 1) / 2.0) * s for n in cfg.shape_ijk)
    ras = (x, y, z)
    X, Y, Z = x[None, None, :], y[None, :, None], z[:, None, None]
    lungs = labels == LABELS["lungs"]
    body = {"contrast": contrast, "blood_pool_hu": blood}

    # ---- heart chambers (the chest phantom's heart is one ellipsoid with one blood pool) ----
    heart = labels == LABELS["heart"]
    hc = _centroid(heart, ras)
    k, j, i = np.nonzero(heart)
    pts = np.stack([x[i], y[j], z[k]], axis=1) - hc
    u = np.linalg.eigh(pts.T @ pts)[1][:, -1]
    u = u if u[2] < 0 else -u  # base -> apex: inferior
    length = float(np.abs(pts @ u).max())
    n_sep = _unit(np.array([-0.5, -1.0, 0.0]) - np.dot([-0.5, -1.0, 0.0], u) * u)  # RV -> LV
    depth = ndimage.distance_transform_edt(heart) * s
    along = (X - hc[0]) * u[0] + (Y - hc[1]) * u[1] + (Z - hc[2]) * u[2]
    across = (X - hc[0]) * n_sep[0] + (Y - hc[1]) * n_sep[1] + (Z - hc[2]) * n_sep[2]
    sep_offset = float(rng.uniform(-12.0, -4.0))  # the septum bows toward the right ventricle
    wall = heart & (
        (np.abs(across - sep_offset) <= 4.5)
        | (np.abs(along + 0.35 * length) <= 3.0)
        | ((across > sep_offset) & (depth <= 11.0))
        | (depth <= 5.0)
    )
    pool = heart & ~wall
    base = hc - 0.6 * length * u
    atria = np.zeros_like(heart)
    for centre, semi in (
        (base + [-8.0, -30.0, 12.0], np.array([32.0, 20.0, 22.0]) * rng.uniform(0.85, 1.15)),  # left
        (base + [38.0, 8.0, -12.0], np.array([24.0, 26.0, 30.0]) * rng.uniform(0.85, 1.15)),  # right
    ):
        q = (
            ((X - centre[0]) / semi[0]) ** 2
            + ((Y - centre[1]) / semi[1]) ** 2
            + ((Z - centre[2]) / semi[2]) ** 2
        )
        atria |= (q <= 1.0) & ~lungs & (labels != LABELS["spine"]) & (labels != LABELS["airways"])
    new_heart = atria & ~heart
    depth_a = ndimage.distance_transform_edt(atria | heart) * s
    labels[new_heart] = LABELS["heart"]
    hu[new_heart] = HU["myocardium"]
    hu[(atria & (depth_a > 3.0)) | pool] = blood
    hu[wall] = HU["myocardium"]

    # ---- pulmonary trunk and arteries ----
    airways = labels == LABELS["airways"]
    ka, ja, ia = np.nonzero(airways)
    ax_, ay_, az_ = x[ia], y[ja], z[ka]
    central = np.abs(ax_) <= 6.0
    z_carina = float(az_[central].min()) if central.any() else float(hc[2] + 60.0)
    hila = {}
    for side in (1.0, -1.0):
        sel = side * ax_ > 12.0
        far = np.argmax(side * ax_ * sel) if sel.any() else None
        hila[side] = (
            np.array([ax_[far], ay_[far], az_[far]])
            if far is not None
            else np.array([side * 60.0, 0.0, z_carina - 25])
        )
    rvot = base + [-12.0, 28.0, 8.0]
    bif = np.array([-18.0, float(np.mean(ay_[central])) + 12.0 if central.any() else hc[1], z_carina - 8.0])
    pa = np.zeros_like(heart)
    _sweep(pa, ras, np.array([rvot, rvot + [-6.0, 4.0, 22.0], bif]), float(rng.uniform(11.0, 15.0)))
    for side, r in ((-1.0, 9.5), (1.0, 9.0)):
        _sweep(pa, ras, np.array([bif, (bif + hila[side]) / 2 + [0.0, -4.0, 4.0], hila[side]]), r)
    pa &= ~lungs & ~airways & (labels != LABELS["spine"]) & ~heart & (labels != LABELS["aorta"])
    labels[pa] = BODY_LABELS["pulmonary_arteries"]
    hu[pa] = blood

    # ---- clavicles and scapulae ----
    sternum = (labels == LABELS["ribs"]) & (np.abs(X) <= 16.0) & (Y > 0)
    st = _centroid(sternum, ras) if sternum.any() else np.array([0.0, b - fat - 15.0, 110.0])
    z_st = float(z[np.nonzero(sternum)[0].max()]) if sternum.any() else 110.0
    z_apex = float(z[np.nonzero(lungs)[0].max()])
    clav, scap = np.zeros_like(heart), np.zeros_like(heart)
    lift = float(rng.uniform(5.0, 30.0))
    for side in (1.0, -1.0):
        knots = np.array([
            [side * 22.0, st[1] - 2.0, z_st + 4.0],
            [side * 0.45 * a, st[1] - 12.0, z_st + 10.0 + 0.4 * lift],
            [side * (a - fat - 25.0), 0.2 * b - 30.0, z_st + 12.0 + lift],
        ])  # fmt: skip
        _sweep(clav, ras, knots, 7.0)
        # Scapula: triangle in (x, z) lying on the posterior chest wall.
        xm, xl = side * 65.0, side * (a - fat - 25.0)
        top, bottom = z_apex + 15.0, z_apex - float(rng.uniform(120.0, 160.0))
        ex = np.abs(X) + 0 * Z
        t = (Z - bottom) / (top - bottom)  # 0 at the inferior angle, 1 at the top
        inner = 75.0 + (abs(xm) - 75.0) * t
        outer = 85.0 + (abs(xl) - 85.0) * t
        ys = -(b - fat - 6.0) * np.sqrt(np.clip(1.0 - (X / (a - fat)) ** 2, 0.0, 1.0))
        plate = (t >= 0) & (t <= 1) & (ex >= inner) & (ex <= outer) & (np.abs(Y - ys) <= 4.0) & (side * X > 0)
        scap |= plate
        _sweep(
            scap,
            ras,
            np.array([[xl, 0.1 * b - 40.0, top - 8.0], [xl * 0.97, 0.1 * b - 30.0, top - 20.0]]),
            14.0,
        )
    body_mask = labels != LABELS["air"]
    for mask, name, value in ((clav, "clavicles", _CLAVICLE_HU), (scap, "scapulae", _SCAPULA_HU)):
        mask &= body_mask & ~lungs & (labels != LABELS["ribs"])
        labels[mask] = BODY_LABELS[name]
        hu[mask] = value

    # ---- breast tissue ----
    breast = np.zeros_like(heart)
    if rng.random() < 0.5:
        glandular = float(rng.uniform(0.1, 0.6))
        semi = np.array([rng.uniform(50.0, 80.0), rng.uniform(25.0, 70.0), rng.uniform(45.0, 70.0)])
        zc = hc[2] + float(rng.uniform(-10.0, 30.0))
        for side in (1.0, -1.0):
            xc = side * 0.42 * a
            yc = b * np.sqrt(max(1.0 - (xc / a) ** 2, 0.0)) - 10.0
            q = ((X - xc) / semi[0]) ** 2 + ((Y - yc) / semi[1]) ** 2 + ((Z - zc) / semi[2]) ** 2
            breast |= (q <= 1.0) & (Y >= yc - 5.0) & ~body_mask
        labels[breast] = BODY_LABELS["breast"]
        hu[breast] = HU["fat"] + glandular * 140.0
        body.update(breast_glandular_fraction=glandular, breast_semi_axes_mm=[float(v) for v in semi])

    # Partial volume of the added structures only (the chest phantom is blurred and noisy already).
    sigma = cfg.smoothing_sigma_mm / s
    hu = hu0 + ndimage.gaussian_filter(hu - hu0, sigma, mode="nearest") if sigma > 0 else hu
    np.clip(hu, -1024.0, 3071.0, out=hu)
    body.update(septum_offset_mm=sep_offset, clavicle_lift_mm=lift, chest_config=asdict(cfg))
    meta = {**ct.meta, "generator": "xraycardiac.phantoms.chest_body", "body_json": json.dumps(body)}
    ct = Volume(array=hu.astype(np.float32), ijk_to_ras=ct.ijk_to_ras, meta={**meta, "quantity": "HU"})
    lv = Volume(array=labels, ijk_to_ras=lab.ijk_to_ras,
                meta={**meta, "quantity": "label", "labels_json": json.dumps(BODY_LABELS)})  # fmt: skip
    return ct, lv
