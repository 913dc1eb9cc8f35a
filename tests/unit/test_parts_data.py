"""Procedural part objects (contact without penetration, coverage) and their renderer."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from genalign.data.parts import (
    CATEGORIES,
    make_objects,
    object_from_dict,
    object_to_dict,
)
from genalign.models.part_codec import (
    MAX_HALF_EXTENT,
    MIN_HALF_EXTENT,
    PartParams,
    decode_parts,
    encode_object,
    part_mesh,
)
from genalign.render.parts_image import render_object, save_png

N_OBJECTS = 200


@pytest.fixture(scope="module")
def objects():
    return make_objects(N_OBJECTS, seed=0)


@pytest.fixture(scope="module")
def meshes(objects):
    return [[part_mesh(p) for p in o.parts] for o in objects]


def _manifold(mesh):
    import manifold3d

    return manifold3d.Manifold(
        manifold3d.Mesh(
            vert_properties=np.asarray(mesh.vertices, dtype=np.float32),
            tri_verts=np.asarray(mesh.faces, dtype=np.uint32),
        )
    )


def _inflated(p: PartParams, eps: float) -> PartParams:
    return dataclasses.replace(p, half_extents=tuple(h + eps for h in p.half_extents))


def test_deterministic_and_prefix_stable():
    a, b = make_objects(12, seed=3), make_objects(12, seed=3)
    assert a == b
    assert make_objects(5, seed=3) == a[:5]
    assert make_objects(12, seed=4) != a


def test_coverage_of_categories_and_part_counts(objects):
    cats = collections.Counter(o.category for o in objects)
    counts = {len(o.parts) for o in objects}
    assert set(cats) == set(CATEGORIES)
    assert counts == set(range(2, 9))
    assert len({o.id for o in objects}) == N_OBJECTS


def test_objects_fit_the_unit_cube_and_codec_range(objects, meshes):
    for o, ms in zip(objects, meshes):
        verts = np.concatenate([m.vertices for m in ms])
        assert verts.min() >= -1 - 1e-9 and verts.max() <= 1 + 1e-9, o.id
        assert math.isclose(verts[:, 1].min(), -1.0, abs_tol=1e-9), o.id  # rests on the floor
        halves = np.array([p.half_extents for p in o.parts])
        assert MIN_HALF_EXTENT <= halves.min() and halves.max() <= MAX_HALF_EXTENT, o.id


def test_parts_touch_but_never_penetrate(objects, meshes):
    """Exact mesh booleans: every pair's overlap is ~0, every part meets another.

    Contact: a part grown by 1e-3 overlaps a touching neighbour by about contact area
    x 1e-3 (>= ~1e-6 for the smallest leg), while separate parts stay disjoint.
    """
    for o, ms in zip(objects, meshes):
        solids = [_manifold(m) for m in ms]
        grown = [_manifold(part_mesh(_inflated(p, 1e-3))) for p in o.parts]
        touched = [False] * len(solids)
        for i, j in itertools.combinations(range(len(solids)), 2):
            overlap = (solids[i] ^ solids[j]).volume()
            assert overlap < 1e-6, (o.id, i, j, overlap)
            if (grown[i] ^ solids[j]).volume() > 1e-8:
                touched[i] = touched[j] = True
        assert all(touched), (o.id, touched)


def test_codec_round_trips_dataset_objects(objects):
    for o in objects[:50]:
        for p, q in zip(o.parts, decode_parts(encode_object(o.parts))):
            assert p.kind == q.kind
            np.testing.assert_allclose(q.center, p.center, atol=1e-6)
            np.testing.assert_allclose(q.half_extents, p.half_extents, rtol=1e-5)
            assert math.isclose(q.yaw, p.yaw, abs_tol=1e-5), (o.id, p.yaw, q.yaw)


def test_json_round_trip(objects):
    for o in objects[:20]:
        assert object_from_dict(json.loads(json.dumps(object_to_dict(o)))) == o
    with pytest.raises(ValueError, match="keys"):
        object_from_dict({"id": "x", "parts": []})


def test_render_shape_dtype_and_content(objects, tmp_path):
    img = render_object(objects[0].parts, size=32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img != 255).any(axis=2).sum() > 20  # the object covers some pixels
    empty = render_object([], size=16)
    assert (empty == 255).all()
    save_png(img, tmp_path / "a.png")
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), img)
    with pytest.raises(ValueError, match="three_quarter"):
        render_object(objects[0].parts, view="nope")


def test_render_tells_dimensions_apart():
    top = PartParams("box", (0.0, -0.2, 0.0), (0.6, 0.04, 0.4), 0.0)
    leg = PartParams("cylinder", (0.0, -0.62, 0.0), (0.05, 0.38, 0.05), 0.0)
    wide = dataclasses.replace(top, half_extents=(0.9, 0.04, 0.4))
    a = render_object([top, leg]).astype(int)
    b = render_object([wide, leg]).astype(int)
    assert np.abs(a - b).sum(axis=2).astype(bool).sum() >= 10  # >= 10 pixels differ
    # The part order shows as colour.
    c = render_object([leg, top]).astype(int)
    assert not np.array_equal(a, c)


def test_render_cylinder_and_yawed_box_silhouettes():
    """Front view of a cylinder is a rectangle; a box turned 90 deg swaps its width."""
    cyl = PartParams("cylinder", (0.0, 0.0, 0.0), (0.5, 0.5, 0.5), 0.0)
    img = render_object([cyl], size=32, view="front", supersample=1)
    covered = (img != 255).any(axis=2)
    cols = np.flatnonzero(covered.any(axis=0))
    rows = np.flatnonzero(covered.any(axis=1))
    assert abs(len(cols) - len(rows)) <= 2  # 1 x 1 square, seen from z = 3.9
    box = PartParams("box", (0.0, 0.0, 0.0), (0.8, 0.2, 0.1), 0.0)
    turned = dataclasses.replace(box, yaw=math.pi / 2)
    w0 = (render_object([box], view="front") != 255).any(axis=2).any(axis=0).sum()
    w1 = (render_object([turned], view="front") != 255).any(axis=2).any(axis=0).sum()
    assert w0 > 3 * w1
