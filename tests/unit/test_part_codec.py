"""Part codec: latent round trips, robustness to arbitrary latents, GLB round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genalign.models.part_codec import (
    MAX_HALF_EXTENT,
    MAX_PARTS,
    MIN_HALF_EXTENT,
    PART_TOKENS,
    TOKEN_DIM,
    PartParams,
    decode_object,
    decode_part,
    decode_parts,
    encode_object,
    encode_part,
    load_glb,
    part_mesh,
    save_glb,
)

BOX = PartParams("box", (0.1, -0.2, 0.3), (0.4, 0.05, 0.25), 0.3)
CYL = PartParams("cylinder", (-0.5, 0.6, 0.0), (0.12, 0.3, 0.12), 0.0)


def _close(a: PartParams, b: PartParams) -> None:
    assert a.kind == b.kind
    np.testing.assert_allclose(a.center, b.center, atol=1e-6)
    np.testing.assert_allclose(a.half_extents, b.half_extents, rtol=1e-5)
    assert math.isclose(a.yaw, b.yaw, abs_tol=1e-6)


def test_constants():
    assert (PART_TOKENS, TOKEN_DIM, MAX_PARTS) == (4, 4, 8)


@pytest.mark.parametrize("p", [BOX, CYL])
def test_part_round_trip(p):
    z = encode_part(p)
    assert z.shape == (PART_TOKENS, TOKEN_DIM) and z.dtype == np.float32
    _close(decode_part(z), p)


def test_equivalent_shapes_encode_identically():
    turned = PartParams("box", BOX.center, BOX.half_extents, BOX.yaw + math.pi)
    np.testing.assert_allclose(encode_part(turned), encode_part(BOX), atol=1e-6)
    spun = PartParams("cylinder", CYL.center, CYL.half_extents, 1.1)
    np.testing.assert_array_equal(encode_part(spun), encode_part(CYL))


def test_kind_sign_and_object_round_trip():
    z = encode_object([BOX, CYL, BOX])
    assert z.shape == (3, PART_TOKENS, TOKEN_DIM)
    assert z[0, 3, 0] == 1.0 and z[1, 3, 0] == -1.0
    for a, b in zip(decode_parts(z), [BOX, CYL, BOX]):
        _close(a, b)


def test_dict_round_trip_and_strict_keys():
    assert PartParams.from_dict(BOX.to_dict()) == BOX
    with pytest.raises(ValueError, match="keys"):
        PartParams.from_dict({**BOX.to_dict(), "color": 1})
    with pytest.raises(ValueError, match="kind"):
        PartParams("sphere", (0, 0, 0), (1, 1, 1), 0.0)


def test_random_latents_decode_to_valid_meshes():
    rng = np.random.default_rng(0)
    latent = rng.normal(scale=3.0, size=(MAX_PARTS, PART_TOKENS, TOKEN_DIM))
    latent[0] = 0.0  # all-zero part: kind tie, zero orientation pair
    latent[1] *= 100.0  # far out of range: clamped
    for p in decode_parts(latent):
        assert MIN_HALF_EXTENT <= min(p.half_extents)
        assert max(p.half_extents) <= MAX_HALF_EXTENT + 1e-12
    for mesh in decode_object(latent):
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.volume > 0


def test_part_mesh_geometry():
    box = part_mesh(BOX)
    assert len(box.faces) == 12
    assert math.isclose(box.volume, 8 * 0.4 * 0.05 * 0.25, rel_tol=1e-9)
    cyl = part_mesh(CYL)
    # Axis along y: the y extent is the height, x and z the diameter.
    np.testing.assert_allclose(cyl.bounds[:, 1], [0.3, 0.9], atol=1e-9)
    assert math.isclose(cyl.bounds[1, 0] - cyl.bounds[0, 0], 0.24, rel_tol=1e-9)
    assert cyl.is_watertight and cyl.volume > 0


def test_glb_round_trip_keeps_order(tmp_path):
    parts = [
        PartParams("box", (0.1 * i, 0.0, 0.0), (0.02 + 0.01 * i, 0.05, 0.03), 0.1 * i)
        for i in range(9)
    ] + [CYL]
    meshes = [part_mesh(p) for p in parts]
    path = tmp_path / "obj.glb"
    save_glb(meshes, path)
    loaded = load_glb(path)
    assert len(loaded) == 10
    for a, b in zip(meshes, loaded):
        assert len(a.faces) == len(b.faces)
        np.testing.assert_allclose(np.sort(a.vertices, 0), np.sort(b.vertices, 0), atol=1e-6)
        assert b.is_watertight
        assert math.isclose(a.volume, b.volume, rel_tol=1e-5)


def test_load_glb_errors_name_the_file(tmp_path):
    good = tmp_path / "good.glb"
    save_glb([part_mesh(BOX)], good)
    data = good.read_bytes()
    bad = tmp_path / "bad.glb"
    for damaged in (b"", b"not a glb", data[:100], data[: len(data) // 2]):
        bad.write_bytes(damaged)
        with pytest.raises(ValueError, match="bad.glb"):
            load_glb(bad)
