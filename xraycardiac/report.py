"""A small self-contained HTML report: sections of text, tables and images (relative links).

Each image is shown at its natural width between ``MIN_IMAGE_PX`` and the page width (wide figures
such as match pictures get a row of their own), and links to the full-size PNG: click to enlarge.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from xraycardiac.outputs import write_bytes_atomic

MIN_IMAGE_PX = 300  # small previews (64-256 px) are scaled up to this width, pixelated
PAGE_PX = 1100


@dataclass
class Section:
    """One report section: a title, paragraphs, tables (header + rows) and images (path, caption)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)


def write_report(path: str | Path, title: str, sections: list[Section], footer: str = "") -> Path:
    """Write the report atomically; image paths are made relative to the report's folder."""
    path = Path(path)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>body{{font-family:sans-serif;max-width:{PAGE_PX}px;margin:auto}}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #999;padding:3px 8px;"
        "text-align:right}th{background:#eee}figure{display:inline-block;margin:6px;vertical-align:top}"
        "figcaption{max-width:100%}img{max-width:100%;height:auto;image-rendering:pixelated;"
        "border:1px solid #ccc}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        for header, rows in s.tables:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</table>")
        for img, caption in s.images:
            rel = html.escape(os.path.relpath(img, path.parent))
            width = min(PAGE_PX - 20, max(MIN_IMAGE_PX, _png_width(img)))
            out.append(
                f"<figure style='width:{width}px'><a href='{rel}' title='open the full-size image'>"
                f"<img src='{rel}' width='{width}' alt='{html.escape(caption)}'></a>"
                f"<figcaption>{html.escape(caption)} (click to enlarge)</figcaption></figure>"
            )
    out.append(f"<hr><p><small>{html.escape(footer)}</small></p></body></html>")
    return write_bytes_atomic("\n".join(out).encode("utf-8"), path)


def _png_width(path: str | Path) -> int:
    """Pixel width of an image file (0 if it cannot be read: the minimum width is used)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0])
    except OSError:
        return 0
