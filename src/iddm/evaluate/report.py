"""Self-contained reports: Markdown tables and HTML pages with every image embedded as a ``data:`` URI.

An HTML report written here loads no external resource (no scripts, fonts, styles or images from a
network or from other files), so it can be mailed, archived or opened offline as a single file.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["fmt", "html_document", "html_image", "html_table", "json_safe", "markdown_table", "png_data_uri"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.6em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 8px 0 16px 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eee; }
figure { display: inline-block; margin: 4px 10px 10px 0; vertical-align: top; }
figcaption { font-size: 0.8em; color: #555; max-width: 420px; }
img { image-rendering: pixelated; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; }
"""


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (``nan``, ``inf``) replaced by ``None``, so it is valid JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table: ``digits`` decimals, ``–`` for ``None``/``nan``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isinf(value):
        return "∞"
    return f"{float(value):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table of already formatted cells (escaped here)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_data_uri(image: np.ndarray, max_side: int = 768) -> str:
    """A ``data:image/png;base64,...`` URI of an RGB ``uint8`` ``(H, W, 3)`` image, downscaled to ``max_side``."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"Expected an RGB uint8 image (H, W, 3), got {array.dtype} {array.shape}.")
    picture = Image.fromarray(array)
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def html_image(image: np.ndarray, caption: str, min_width: int = 256, max_side: int = 768) -> str:
    """A ``<figure>`` with the image embedded; small images are shown enlarged (pixelated) to ``min_width``."""
    uri = png_data_uri(image, max_side=max_side)
    height, width = image.shape[:2]
    scale = min(max_side / max(height, width), 1.0)
    shown = max(round(width * scale), min(min_width, width * 8))
    return (
        f'<figure><img src="{uri}" width="{shown}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def html_document(title: str, body: str) -> str:
    """A complete HTML5 page with inline CSS; ``body`` is trusted HTML built by this module's helpers."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
