"""Report helpers: figures and the gallery (the report files: test_evaluation_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest

from genalign.data.parts import make_objects
from genalign.evaluation.report import (
    histogram_figure,
    paired_scatter_figure,
    render_gallery,
    save_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_figures(tmp_path):
    rng = np.random.default_rng(0)
    base, tuned = rng.random(40), rng.random(40) * 0.5
    save_figure(histogram_figure(base, tuned, title="pen", xlabel="depth"), tmp_path / "h.png")
    save_figure(paired_scatter_figure(base, tuned, title="pen"), tmp_path / "s.png")
    for name in ("h.png", "s.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


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
