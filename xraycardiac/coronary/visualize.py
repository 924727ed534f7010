"""Pictures of view pairs: two images side by side with correspondences drawn as lines.

3D centrelines are drawn by :func:`xraycardiac.figures.draw_centrelines_3d`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xraycardiac.outputs import atomic_path


def draw_matches(
    image1: np.ndarray,
    image2: np.ndarray,
    x1: np.ndarray,
    x2: np.ndarray,
    path: str | Path,
    ambiguous: np.ndarray | None = None,
    max_lines: int = 200,
    incorrect: np.ndarray | None = None,
) -> Path:
    """Write a PNG with ``image1 | image2`` and one line per match, atomically.

    Args:
        image1, image2: (rows, cols) images in [0, 1] (rows may differ; the shorter is padded).
        x1, x2: (M, 2) pixels (u = column, v = row) of the M matched points in image 1 and image 2.
        path: destination .png.
        ambiguous: optional (M,) bool; ambiguous matches are drawn orange, the others green.
        max_lines: at most this many lines, evenly subsampled, so the picture stays readable.
        incorrect: optional (M,) bool; these matches are drawn red (wins over ``ambiguous``).

    Returns:
        The written path.
    """
    from PIL import Image, ImageDraw

    a = (np.clip(np.asarray(image1, dtype=np.float64), 0, 1) * 255).astype(np.uint8)
    b = (np.clip(np.asarray(image2, dtype=np.float64), 0, 1) * 255).astype(np.uint8)
    rows = max(a.shape[0], b.shape[0])
    canvas = Image.new("RGB", (a.shape[1] + b.shape[1], rows))
    canvas.paste(Image.fromarray(a).convert("RGB"), (0, 0))
    canvas.paste(Image.fromarray(b).convert("RGB"), (a.shape[1], 0))
    draw = ImageDraw.Draw(canvas)
    n = len(x1)
    keep = np.linspace(0, n - 1, min(n, max_lines)).round().astype(int) if n else []
    for m in keep:
        colour = (255, 150, 0) if ambiguous is not None and ambiguous[m] else (0, 220, 0)
        if incorrect is not None and incorrect[m]:
            colour = (230, 30, 30)
        (u1, v1), (u2, v2) = x1[m], x2[m]
        draw.line([(float(u1), float(v1)), (float(u2) + a.shape[1], float(v2))], fill=colour, width=1)
        for u, v in ((u1, v1), (u2 + a.shape[1], v2)):
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], outline=colour)
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        canvas.save(tmp, format="PNG")
    return path
