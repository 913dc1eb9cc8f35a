"""Report helpers: before/after table, Markdown and HTML pages, figures, gallery."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from genalign.data.parts import make_objects
from genalign.evaluation.report import (
    before_after_table,
    histogram_figure,
    html_report,
    markdown_report,
    paired_scatter_figure,
    render_gallery,
    save_figure,
)

ROWS = [
    ("penetration_mean", 0.021, 0.012),
    ("win_rate", 0.5, 0.61),
    ("zero_base", 0.0, 0.2),
    ("unchanged", 1.0, 1.0),
    ("missing", math.nan, 0.0),
]
LOWER = {"penetration_mean": True, "win_rate": False, "zero_base": True}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_before_after_table_format():
    table = before_after_table(ROWS, lower_is_better=LOWER)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "change"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    # (0.012 - 0.021) / 0.021 = -42.9% -> "-43%"; (0.61 - 0.5) / 0.5 = +22%.
    assert lines[2].split() == ["penetration_mean", "0.021", "0.012", "-43%", "better"]
    assert lines[3].split() == ["win_rate", "0.5", "0.61", "+22%", "better"]
    # A zero base has no relative change: the absolute difference is shown.
    assert lines[4].split() == ["zero_base", "0", "0.2", "+0.2", "worse"]
    assert lines[5].split() == ["unchanged", "1", "1", "0%"]
    assert lines[6].split() == ["missing", "nan", "0", "n/a"]
    # Fixed width: numbers right-aligned, so the base column ends at the same place.
    base_end = lines[0].index("base") + len("base")
    assert all(line[:base_end].endswith(("0.021", "0.5")) for line in lines[2:4])


def test_table_without_directions_has_no_verdict():
    table = before_after_table(ROWS[:1])
    assert "better" not in table and "-43%" in table


def test_markdown_report():
    md = markdown_report("part-dpo", ROWS, {"penetration": "plots/pen.png"}, ["n = 32"])
    assert md.startswith("# part-dpo\n")
    assert "| penetration_mean | 0.021 | 0.012 | -43% |" in md
    assert "![penetration](plots/pen.png)" in md
    assert "- n = 32" in md


def test_figures_and_html_embed_png(tmp_path):
    rng = np.random.default_rng(0)
    base, tuned = rng.random(40), rng.random(40) * 0.5
    save_figure(histogram_figure(base, tuned, title="pen", xlabel="depth"), tmp_path / "h.png")
    save_figure(paired_scatter_figure(base, tuned, title="pen"), tmp_path / "s.png")
    assert (tmp_path / "h.png").read_bytes().startswith(PNG_MAGIC)
    page = html_report(
        "part-dpo <tiny>",
        ROWS,
        {"hist": "h.png", "scatter": "s.png"},
        ["a & b"],
        root=tmp_path,
        lower_is_better=LOWER,
    )
    assert page.count('src="data:image/png;base64,') == 2
    uri = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(uri) == (tmp_path / "h.png").read_bytes()
    assert "part-dpo &lt;tiny&gt;" in page and "a &amp; b" in page
    assert "<td>-43% better</td>" in page
    with pytest.raises(ValueError, match="missing.png"):
        html_report("t", ROWS, {"x": "missing.png"}, [], root=tmp_path)


def test_paired_scatter_needs_pairs():
    with pytest.raises(ValueError, match="3 base values vs 2 tuned"):
        paired_scatter_figure([1, 2, 3], [1, 2], title="x")


def test_render_gallery(tmp_path):
    from PIL import Image

    objs = make_objects(5, seed=0)
    path = tmp_path / "gallery.png"
    render_gallery([o.parts for o in objs], [o.category for o in objs], path, columns=3, size=48)
    img = Image.open(path)
    assert img.size == (3 * 48, 2 * (48 + 14))
    with pytest.raises(ValueError, match="labels"):
        render_gallery([objs[0].parts], [], path)
