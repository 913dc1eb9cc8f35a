"""Presentation of an evaluation: before/after tables, plots, galleries, Markdown and HTML.

The evaluate stage computes metrics for the base and the tuned model and hands them
here as rows `(metric, base, tuned)`. The HTML report embeds its PNGs as base64 data
URIs so it is one standalone file the Kubeflow UI can show.

    >>> print(before_after_table([("penetration_mean", 0.021, 0.012)],
    ...                          lower_is_better={"penetration_mean": True}))
"""

from __future__ import annotations

import base64
import html
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

Row = tuple[str, float, float]

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


def _verdict(name: str, base: float, tuned: float, lower_is_better: dict[str, bool]) -> str:
    if name not in lower_is_better or math.isnan(base) or math.isnan(tuned) or base == tuned:
        return ""
    improved = (tuned < base) == lower_is_better[name]
    return "better" if improved else "worse"


def _cells(rows: Sequence[Row], lower_is_better: dict[str, bool] | None) -> list[list[str]]:
    lower = lower_is_better or {}
    cells = []
    for name, base, tuned in rows:
        base, tuned = float(base), float(tuned)
        change = _change(base, tuned)
        verdict = _verdict(name, base, tuned, lower)
        cells.append([name, _fmt(base), _fmt(tuned), f"{change} {verdict}".strip()])
    return cells


_HEADER = ["metric", "base", "tuned", "change"]


def before_after_table(
    rows: Sequence[Row], *, lower_is_better: dict[str, bool] | None = None
) -> str:
    """A fixed-width terminal table: metric | base | tuned | change.

    `lower_is_better` maps a metric name to its direction; metrics named there get
    "better" or "worse" after their change.
    """
    cells = _cells(rows, lower_is_better)
    widths = [max(len(r[i]) for r in [_HEADER, *cells]) for i in range(4)]

    def line(r: list[str]) -> str:
        # The metric name left-aligned, numbers right-aligned.
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(_HEADER), rule, *(line(r) for r in cells)])


def markdown_report(
    title: str,
    table_rows: Sequence[Row],
    images: dict[str, str],
    notes: Sequence[str],
    *,
    lower_is_better: dict[str, bool] | None = None,
) -> str:
    """A Markdown summary: title, metric table, images (name -> relative PNG path), notes."""
    lines = [f"# {title}", "", "| " + " | ".join(_HEADER) + " |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in _cells(table_rows, lower_is_better)]
    for name, rel in images.items():
        lines += ["", f"## {name}", "", f"![{name}]({rel})"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


_STYLE = (
    "<style>body{font-family:sans-serif;margin:2em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}"
    "td+td{text-align:right;font-family:monospace}img{max-width:100%}</style>"
)


def html_report(
    title: str,
    table_rows: Sequence[Row],
    images: dict[str, str],
    notes: Sequence[str],
    *,
    root: Path,
    lower_is_better: dict[str, bool] | None = None,
) -> str:
    """A standalone HTML page; PNGs (paths relative to `root`) embedded as data URIs."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in _HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
        for r in _cells(table_rows, lower_is_better)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        _STYLE,
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
    ]
    for name, rel in images.items():
        path = Path(root) / rel
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"html_report: image {name!r} at {path}: {e}") from e
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts += [f"<h2>{esc(name)}</h2>", f'<img alt="{esc(name)}" src="{uri}">']
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{esc(n)}</li>" for n in notes), "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


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
