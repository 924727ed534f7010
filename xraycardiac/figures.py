"""Report figures drawn with Pillow: a CT slice beside its label overlay with a named colour legend, and
orthographic views of 3D centrelines with mm axes and a scale bar.

Pillow only (already a dependency for PNG previews): no plotting library is pulled in for two figure
types. Every figure is written atomically (temp file, then rename) and upsampled so that a 64-voxel
slice is still readable at its natural size in the HTML report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xraycardiac.outputs import atomic_path

# Colours for label maps that have no colour table of their own (the chest phantom, the grouped real CT).
FALLBACK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (220, 40, 40), (240, 228, 66), (0, 158, 115),
    (204, 121, 167), (0, 114, 178), (213, 94, 0), (150, 150, 150), (120, 60, 200),
)  # fmt: skip
FONT_PX = 15


def _font(size: int = FONT_PX):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _save(canvas, path: str | os.PathLike[str]) -> Path:
    """Save a PIL image as PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _grey_rgb(image2d: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """(rows, cols) values -> (rows, cols, 3) uint8 grey with ``window`` = (low, high) mapped to 0..255."""
    lo, hi = float(window[0]), float(window[1])
    g = np.clip((np.asarray(image2d, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def label_overlay_png(
    image2d: np.ndarray,
    labels2d: np.ndarray,
    legend: Sequence[tuple[int, str, tuple[int, int, int]]],
    path: str | os.PathLike[str],
    window: Sequence[float] = (-1000.0, 600.0),
    titles: tuple[str, str] = ("CT", "CT + labels"),
    min_side_px: int = 320,
    alpha: float = 0.45,
) -> Path:
    """Write ``CT | CT with labels overlaid | colour legend`` as one PNG.

    The plain CT stays beside the overlay so the labels never hide the anatomy; the legend names
    each label value shown (values absent from the slice are listed greyed out).

    Args:
        image2d: (rows, cols) CT slice, HU, already oriented for display (row 0 at the top).
        labels2d: (rows, cols) integer label slice on the same pixels.
        legend: (value, name, (r, g, b)) per label to show; other non-zero values are drawn grey.
        path: destination .png.
        window: (low, high) HU mapped to black..white.
        titles: captions above the two panels.
        min_side_px: the slice is upsampled by an integer factor until its shorter side is at least this.
        alpha: opacity of the label colours, 0..1.

    Returns:
        The written path.

    Raises:
        ValueError: the two slices differ in shape or are not 2D.
    """
    from PIL import Image, ImageDraw

    image2d, labels2d = np.asarray(image2d), np.asarray(labels2d)
    if image2d.ndim != 2 or image2d.shape != labels2d.shape:
        raise ValueError(
            f"label_overlay_png: image {image2d.shape} and labels {labels2d.shape} must be the same 2D shape"
        )
    scale = max(1, int(np.ceil(min_side_px / min(image2d.shape))))
    grey = _grey_rgb(image2d, window)
    colour = grey.astype(np.float64).copy()
    for value, _, rgb in legend:
        m = labels2d == value
        colour[m] = (1 - alpha) * colour[m] + alpha * np.asarray(rgb, dtype=np.float64)
    other = (labels2d != 0) & ~np.isin(labels2d, [v for v, _, _ in legend])
    colour[other] = (1 - alpha) * colour[other] + alpha * 128.0
    panels = [
        Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.Resampling.NEAREST)
        for a in (grey, colour.round().astype(np.uint8))
    ]
    font = _font()
    w, h = panels[0].size
    pad, top, row = 10, 26, 22
    present = set(np.unique(labels2d).tolist())
    legend_w = 20 + max((int(font.getlength(n)) for _, n, _ in legend), default=60) + 40
    height = max(top + h + pad, top + row * (len(legend) + 1) + pad)
    canvas = Image.new("RGB", (pad + 2 * (w + pad) + legend_w, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        x = pad + n * (w + pad)
        canvas.paste(panel, (x, top))
        draw.text((x, 4), title, fill=(0, 0, 0), font=font)
    x0 = pad + 2 * (w + pad)
    draw.text((x0, 4), "labels", fill=(0, 0, 0), font=font)
    for n, (value, name, rgb) in enumerate(legend):
        y = top + n * row
        shown = value in present
        draw.rectangle([x0, y + 2, x0 + 16, y + 16], fill=tuple(rgb) if shown else (235, 235, 235),
                       outline=(0, 0, 0))  # fmt: skip
        draw.text((x0 + 24, y), f"{name}" + ("" if shown else " (not in slice)"),
                  fill=(0, 0, 0) if shown else (150, 150, 150), font=font)  # fmt: skip
    return _save(canvas, path)


def legend_from_names(names: dict[int, str]) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, name, colour) for a ``{value: name}`` table without colours (0 = background is skipped)."""
    items = sorted((v, n) for v, n in names.items() if v != 0)
    return [(v, n, FALLBACK_COLOURS[k % len(FALLBACK_COLOURS)]) for k, (v, n) in enumerate(items)]


def _nice_step_mm(span_mm: float) -> float:
    """A 1/2/5 x 10^k tick step giving about four ticks over ``span_mm``."""
    raw = max(span_mm, 1e-6) / 4.0
    base = 10.0 ** np.floor(np.log10(raw))
    return float(min((m * base for m in (1.0, 2.0, 5.0, 10.0)), key=lambda s: abs(s - raw)))


def draw_centrelines_3d(
    truth_ras_mm: np.ndarray,
    reconstruction_ras_mm: np.ndarray,
    path: str | os.PathLike[str],
    panel_px: int = 360,
    margin_mm: float = 5.0,
) -> Path:
    """Write three orthographic views (frontal, lateral, axial) of a 3D centreline over the truth.

    Each panel has its two RAS axes drawn with mm tick labels and a scale bar; all panels share one
    mm-per-pixel scale, so lengths compare across panels. Truth grey, reconstruction red.

    Args:
        truth_ras_mm: (N, 3) true centreline points, RAS mm.
        reconstruction_ras_mm: (K, 3) reconstructed points, RAS mm.
        path: destination .png.
        panel_px: size of each square plotting area, pixels.
        margin_mm: space kept around the points, mm.

    Returns:
        The written path.
    """
    from PIL import Image, ImageDraw

    truth = np.asarray(truth_ras_mm, dtype=np.float64).reshape(-1, 3)
    rec = np.asarray(reconstruction_ras_mm, dtype=np.float64).reshape(-1, 3)
    both = np.concatenate([truth, rec]) if len(rec) else truth
    lo, hi = both.min(axis=0) - margin_mm, both.max(axis=0) + margin_mm
    span = float((hi - lo).max())
    centre = (lo + hi) / 2
    lo, hi = centre - span / 2, centre + span / 2
    px_per_mm = panel_px / span
    # (title, horizontal axis, its sign on screen, vertical axis, axis names): radiological display,
    # patient's right on the left of the frontal and axial views, anterior on the left of the lateral
    # view (a left lateral radiograph), head up, anterior up in the axial view.
    views = (
        ("frontal (seen from the front)", 0, -1, 2, ("R <- x (mm) -> L", "S")),
        ("lateral (seen from the left)", 1, -1, 2, ("A <- y (mm) -> P", "S")),
        ("axial (seen from the feet)", 0, -1, 1, ("R <- x (mm) -> L", "A")),
    )
    font, small = _font(), _font(12)
    left, top, bottom, gap = 56, 30, 70, 24
    canvas = Image.new("RGB", (left + 3 * (panel_px + gap + left) - left, top + panel_px + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    step = _nice_step_mm(span)
    for n, (title, hx, hsign, vx, (hname, vname)) in enumerate(views):
        x0 = left + n * (panel_px + gap + left)

        def to_px(p: np.ndarray, x0: int = x0, hx: int = hx, hsign: int = hsign, vx: int = vx) -> np.ndarray:
            h = (p[:, hx] - lo[hx]) if hsign > 0 else (hi[hx] - p[:, hx])
            return np.stack([x0 + h * px_per_mm, top + (hi[vx] - p[:, vx]) * px_per_mm], axis=1)

        draw.rectangle([x0, top, x0 + panel_px, top + panel_px], outline=(0, 0, 0))
        draw.text((x0, 6), title, fill=(0, 0, 0), font=font)
        for axis, horizontal in ((hx, True), (vx, False)):
            first = np.ceil(lo[axis] / step) * step
            for t in np.arange(first, hi[axis] + 1e-6, step):
                if horizontal:
                    u = x0 + ((t - lo[axis]) if hsign > 0 else (hi[axis] - t)) * px_per_mm
                    draw.line([(u, top + panel_px), (u, top + panel_px + 5)], fill=(0, 0, 0))
                    draw.text((u - 12, top + panel_px + 7), f"{t:.0f}", fill=(0, 0, 0), font=small)
                else:
                    v = top + (hi[axis] - t) * px_per_mm
                    draw.line([(x0 - 5, v), (x0, v)], fill=(0, 0, 0))
                    draw.text((x0 - 44, v - 7), f"{t:.0f}", fill=(0, 0, 0), font=small)
        draw.text((x0 + panel_px / 2 - 50, top + panel_px + 24), hname, fill=(0, 0, 0), font=small)
        draw.text((x0 - 52, top - 18), f"{vname} (mm)", fill=(0, 0, 0), font=small)
        for points, colour, r in ((truth, (160, 160, 160), 2.5), (rec, (220, 0, 0), 1.5)):
            for u, v in to_px(points):
                draw.ellipse([u - r, v - r, u + r, v + r], fill=colour)
        bar_px = step * px_per_mm  # scale bar: one tick step
        bx, by = x0 + 10, top + panel_px - 14
        draw.line([(bx, by), (bx + bar_px, by)], fill=(0, 0, 0), width=3)
        draw.text((bx, by - 18), f"{step:g} mm", fill=(0, 0, 0), font=small)
    draw.text((left, top + panel_px + 46), "grey: true centreline   red: reconstruction   (RAS, mm)",
              fill=(0, 0, 0), font=small)  # fmt: skip
    return _save(canvas, path)
