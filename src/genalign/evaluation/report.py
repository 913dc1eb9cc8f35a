"""Presentation of an evaluation: plots, galleries, and the cell formats and page style
that the report writer (genalign.evaluation.contract) uses.

    >>> save_figure(histogram_figure(base, tuned, title="penetration", xlabel="score"), path)
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genalign.storage import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from genalign.models.part_codec import PartParams

# Colours of the two models in every plot (matplotlib tab10 blue and orange).
BASE_COLOR = "#1f77b4"
TUNED_COLOR = "#ff7f0e"


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4g}"


def _change(base: float, tuned: float) -> str:
    """Relative change "-43%"; the absolute difference when the base is zero."""
    if math.isnan(base) or math.isnan(tuned):
        return "n/a"
    if tuned == base:
        return "0%"
    if base == 0.0:
        return f"{tuned - base:+.4g}"
    return f"{100.0 * (tuned - base) / abs(base):+.0f}%"


def fixed_width_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """Header, a rule, then one line per row; the first column left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in cells)])


_STYLE = (
    "<style>body{font-family:sans-serif;margin:2em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}"
    "td+td{text-align:right;font-family:monospace}img{max-width:100%}</style>"
)


def _new_figure(width: float, height: float) -> Figure:
    # A bare Figure on an Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def histogram_figure(
    base: Sequence[float], tuned: Sequence[float], *, title: str, xlabel: str
) -> Figure:
    """Overlaid histograms of a per-sample metric for the base and tuned models."""
    b, t = _finite(base), _finite(tuned)
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    both = np.concatenate([b, t])
    # Shared bins so the two histograms compare bin for bin.
    bins = np.histogram_bin_edges(both, bins=30) if both.size else 10
    for x, name, color in ((b, "base", BASE_COLOR), (t, "tuned", TUNED_COLOR)):
        label = f"{name} (n={x.size}, mean={np.mean(x):.4g})" if x.size else f"{name} (n=0)"
        ax.hist(x, bins=bins, alpha=0.55, color=color, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend()
    fig.tight_layout()
    return fig


def paired_scatter_figure(base: Sequence[float], tuned: Sequence[float], *, title: str) -> Figure:
    """Tuned vs base value per condition, with the y = x line (below it: tuned is lower)."""
    b = np.asarray(base, dtype=np.float64)
    t = np.asarray(tuned, dtype=np.float64)
    if b.shape != t.shape:
        raise ValueError(f"paired_scatter_figure: {b.size} base values vs {t.size} tuned")
    keep = np.isfinite(b) & np.isfinite(t)
    b, t = b[keep], t[keep]
    fig = _new_figure(5.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(b, t, s=14, alpha=0.7, color=TUNED_COLOR)
    if b.size:
        lo, hi = float(min(b.min(), t.min())), float(max(b.max(), t.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle="--")
    ax.set_title(title)
    ax.set_xlabel("base")
    ax.set_ylabel("tuned")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write a figure as a PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())


def render_gallery(
    objects: Sequence[Sequence[PartParams]],
    labels: Sequence[str],
    path: Path,
    *,
    columns: int = 8,
    size: int = 96,
) -> None:
    """A PNG grid of rendered objects, each with its label underneath."""
    from PIL import Image, ImageDraw

    from genalign.render.parts_image import png_bytes, render_object

    if len(objects) != len(labels):
        raise ValueError(f"render_gallery: {len(objects)} objects but {len(labels)} labels")
    if not objects:
        raise ValueError(f"render_gallery: nothing to draw into {path}")
    label_h = 14  # the default PIL bitmap font is 11 px tall
    cols = min(columns, len(objects))
    rows = math.ceil(len(objects) / cols)
    sheet = Image.new("RGB", (cols * size, rows * (size + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    max_chars = max(1, size // 6)  # the default font is about 6 px a character
    for i, (parts, label) in enumerate(zip(objects, labels)):
        x, y = (i % cols) * size, (i // cols) * (size + label_h)
        sheet.paste(Image.fromarray(render_object(list(parts), size)), (x, y))
        draw.text((x + 2, y + size), str(label)[:max_chars], fill=(0, 0, 0))
    atomic_write_bytes(Path(path), png_bytes(np.asarray(sheet)))
