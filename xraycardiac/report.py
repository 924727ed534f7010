"""A small self-contained HTML report: sections of text, tables and images (relative links)."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path


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
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #999;padding:3px 8px;"
        "text-align:right}th{background:#eee}figure{display:inline-block;margin:6px}"
        "img{width:256px;image-rendering:pixelated;border:1px solid #ccc}</style></head><body>",
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
            rel = os.path.relpath(img, path.parent)
            out.append(
                f"<figure><img src='{html.escape(rel)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    out.append(f"<hr><p><small>{html.escape(footer)}</small></p></body></html>")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(out))
    os.replace(tmp, path)
    return path
