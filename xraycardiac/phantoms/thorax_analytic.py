"""Closed-form ray tracer of an analytic thorax: line integrals of mu for a C-arm view.

The thorax is the chest phantom's layout (``xraycardiac.phantoms.chest``) made of quadrics in
patient **RAS** millimetres: an elliptic torso cylinder along z, two lungs (each a vertical elliptic
cylinder cut by an ellipsoid up to the apex and by the lung base plane) with the diaphragm domes, the heart and (left) the descending aorta
carved out, the heart ellipsoid of the coronary phantom (``CoronaryPhantomConfig``'s default heart,
scaled and shifted), a vertebral column (bodies with a cortical shell and discs by level, posterior
arch) and twelve pairs of rib arcs sloping down anteriorly. Each ray from the X-ray source to a
detector pixel centre is intersected with the quadrics analytically and the path lengths (mm)
are weighted by multiples of water's attenuation (``MU_WATER_PER_MM``, 1/mm): soft tissue 1 along
the whole torso chord, lungs -0.85 on top of it, bone +0.09 to +0.86 (cancellous, cortical, rib).
The result is the background line integral B (unitless) of the physics renderer
(``xraycardiac.coronary.synth.render_physics``), whose lung texture scales with the lung path length.
numpy only; smooth enough to be traced at half the detector resolution and upsampled.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from xraycardiac.geometry import CArmGeometry
from xraycardiac.phantoms.coronary import CoronaryPhantomConfig
from xraycardiac.phantoms.heart import HeartEllipsoid
from xraycardiac.projection import MU_WATER_PER_MM

__all__ = ["thorax_line_integrals"]


def _interval(src: np.ndarray, dirs: np.ndarray, center: Any, axes: np.ndarray, semi: Any) -> np.ndarray:
    """(2, R) ray parameters t in [0, 1] where rays ``src + t dirs`` ((3,) and (3, R)) are inside an ellipsoid.

    The ellipsoid is ``{center + axes.T @ (semi * s) : |s| <= 1}`` (``axes`` rows are unit vectors);
    an infinite semi-axis makes it a cylinder. Rays that miss get the empty interval (0, 0).
    """
    m = np.asarray(axes, dtype=np.float64) / np.asarray(semi, dtype=np.float64)[:, None]
    o = m @ (src - np.asarray(center, dtype=np.float64))
    # (3, 3) @ (3, R) written out: numpy's matmul is ~50x slower for such thin shapes
    d = [sum(m[k, j] * dirs[j] for j in range(3) if m[k, j] != 0.0) for k in range(3)]
    d = [dk if isinstance(dk, np.ndarray) else np.zeros(dirs.shape[1]) for dk in d]
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = 2.0 * (d[0] * o[0] + d[1] * o[1] + d[2] * o[2])
    disc = b * b - 4.0 * a * (o @ o - 1.0)
    hit = (disc > 0.0) & (a > 1e-12)
    sq = np.sqrt(np.where(hit, disc, 0.0))
    a2 = np.where(hit, 2.0 * a, 1.0)
    t = np.clip(np.stack([(-b - sq) / a2, (-b + sq) / a2]), 0.0, 1.0)
    return np.where(hit, t, 0.0)


def _overlap(*intervals: np.ndarray) -> np.ndarray:
    """(R,) length in t of the intersection of (2, R) intervals."""
    lo = np.max([iv[0] for iv in intervals], axis=0)
    hi = np.min([iv[1] for iv in intervals], axis=0)
    return np.clip(hi - lo, 0.0, None)


def _minus(base: np.ndarray, carves: list[np.ndarray]) -> np.ndarray:
    """(R,) length in t of ``base`` minus the union of ``carves`` (inclusion-exclusion; all convex)."""
    out = base[1] - base[0]
    for n in range(1, len(carves) + 1):
        for combo in itertools.combinations(carves, n):
            out = out + (-1) ** n * _overlap(base, *combo)
    return np.clip(out, 0.0, None)


def thorax_line_integrals(geometry: CArmGeometry, anatomy: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Ray-trace the analytic thorax for one C-arm view, in closed form (see the module docstring).

    Args:
        geometry: the view; every detector pixel centre gets one ray from the source.
        anatomy: the patient, RAS mm: ``a``, ``b`` torso semi-axes (x, y); ``ac``, ``bc`` pleural
            cavity semi-axes; ``cy`` cavity centre y; ``z_apex`` lung apex z; ``dome_r``, ``dome_l``
            right / left diaphragm dome z; ``heart_scale`` factor on the heart's semi-axes;
            ``heart_shift`` (3,) heart offset; ``spine_phase_mm`` z phase of the vertebral levels
            (period 27 mm); ``rib_spacing`` z step between rib pairs; ``z_rib1`` z of the first rib
            posteriorly.

    Returns:
        (line_integral, lung_mm): (rows, cols) float64 arrays (detector_rows, detector_cols): the
        line integral of mu (unitless, >= 0) and the path length through the lungs, mm.
    """

    rows, cols = geometry.detector_rows, geometry.detector_cols
    vv, uu = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    src = geometry.source_position
    dirs = np.ascontiguousarray(
        (geometry.pixel_to_detector_ras(np.stack([uu.ravel(), vv.ravel()], axis=1)) - src).T
    )
    length = np.sqrt((dirs * dirs).sum(axis=0))  # (R,) mm per unit t
    eye, inf, mu = np.eye(3), math.inf, MU_WATER_PER_MM
    a, b, ac, bc, cy = (anatomy[k] for k in ("a", "b", "ac", "bc", "cy"))

    body = _interval(src, dirs, (0, 0, 0), eye, (a, b, inf))
    # heart: the coronary phantom's default ellipsoid (procedural trees lie on it)
    hc = CoronaryPhantomConfig()
    h = HeartEllipsoid.from_long_axis(hc.heart_center_ras_mm, hc.heart_long_axis_ras, hc.heart_semi_axes_mm)
    heart = _interval(src, dirs, h.center_ras_mm + anatomy["heart_shift"], h.axes_ras,
                      anatomy["heart_scale"] * h.semi_axes_mm)  # fmt: skip
    y_vb = cy - bc + 5.0  # vertebral body centre (y)
    aorta = _interval(src, dirs, (-32.0, y_vb + 8.0, 0.0), eye, (11.0, 11.0, inf))
    lung_mm = np.zeros(dirs.shape[1])
    for side, dome in ((1.0, anatomy["dome_r"]), (-1.0, anatomy["dome_l"])):
        z_base, z_apex = dome - 40.0, anatomy["z_apex"]
        cyl = _interval(src, dirs, (side * 0.56 * ac, cy, 0), eye, (0.46 * ac, bc, inf))
        cap = _interval(src, dirs, (side * 0.56 * ac, cy, z_base), eye, (0.6 * ac, 1.2 * bc, z_apex - z_base))
        slab = _interval(src, dirs, (0, 0, z_base + 1e4), eye, (inf, inf, 1e4))  # z >= z_base
        lung = np.stack(
            [np.max([cyl[0], cap[0], slab[0]], axis=0), np.min([cyl[1], cap[1], slab[1]], axis=0)]
        )
        lung[1] = np.maximum(lung[1], lung[0])
        diaphragm = _interval(src, dirs, (side * 0.45 * ac, cy + 0.15 * bc, dome - 70.0), eye,
                              (0.75 * ac, 1.1 * bc, 70.0))  # fmt: skip
        carves = [diaphragm, heart] + ([aorta] if side < 0 else [])
        lung_mm += _minus(lung, carves) * length

    # vertebral column: bodies (cancellous, cortical shell) and discs by level; posterior arch
    vb_out = _interval(src, dirs, (0, y_vb, 0), eye, (20.0, 16.0, inf))
    vb_in = _interval(src, dirs, (0, y_vb, 0), eye, (17.0, 13.0, inf))
    z_mid = src[2] + 0.5 * (vb_out[0] + vb_out[1]) * dirs[2]
    phase = np.mod(z_mid - anatomy["spine_phase_mm"], 27.0)
    is_body = np.clip(np.minimum(phase, 21.0 - phase) + 0.5, 0.0, 1.0)  # 1 in a body, 0 in a disc
    arch_out = _interval(src, dirs, (0, y_vb - 23.0, 0), eye, (15.0, 15.0, inf))
    arch_in = _interval(src, dirs, (0, y_vb - 23.0, 0), eye, (7.0, 7.0, inf))
    z_arch = src[2] + 0.5 * (arch_out[0] + arch_out[1]) * dirs[2]
    arch_phase = np.mod(z_arch - anatomy["spine_phase_mm"], 27.0)
    in_level = np.clip(np.minimum(arch_phase - 3.0, 19.0 - arch_phase) + 0.5, 0.0, 1.0)
    chord_vb, chord_in = (vb_out[1] - vb_out[0]) * length, (vb_in[1] - vb_in[0]) * length
    spine = mu * (
        chord_vb * (0.09 + 0.19 * is_body)
        + (chord_vb - chord_in) * 0.52 * is_body
        + ((arch_out[1] - arch_out[0]) - (arch_in[1] - arch_in[0])) * length * 0.65 * in_level
    )

    # ribs: arcs on an elliptic shell outside the pleural cavity, sloping down anteriorly
    outer = _interval(src, dirs, (0, cy, 0), eye, (ac + 10.0, bc + 10.0, inf))
    inner = _interval(src, dirs, (0, cy, 0), eye, (ac + 2.0, bc + 2.0, inf))
    hits_inner = inner[1] > inner[0]
    segments = (
        np.stack([outer[0], np.where(hits_inner, inner[0], outer[1])]),
        np.stack([np.where(hits_inner, inner[1], 0.0), np.where(hits_inner, outer[1], 0.0)]),
    )
    ribs = np.zeros(dirs.shape[1])
    for seg in segments:
        p = src[:, None] + 0.5 * (seg[0] + seg[1]) * dirs  # (3, R) segment midpoints
        theta = np.abs(np.arctan2(p[0], -(p[1] - cy)))  # 0 posterior midline, pi anterior
        member = np.zeros(dirs.shape[1])
        for n in range(12):
            th1 = {10: 1.7, 11: 1.3}.get(n, 2.5)
            frac = np.clip((theta - 0.35) / (th1 - 0.35), 0.0, 1.0)
            z_rib = anatomy["z_rib1"] - n * anatomy["rib_spacing"] - 60.0 * frac**1.2
            along = np.clip(np.minimum(theta - 0.35, th1 - theta) * 40.0 + 0.5, 0.0, 1.0)
            member = np.maximum(member, np.clip(5.75 - np.abs(p[2] - z_rib), 0.0, 1.0) * along)
        ribs += 0.86 * mu * (seg[1] - seg[0]) * length * member

    total = mu * (body[1] - body[0]) * length - 0.85 * mu * lung_mm + spine + ribs
    return np.clip(total, 0.0, None).reshape(rows, cols), lung_mm.reshape(rows, cols)
