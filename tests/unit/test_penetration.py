"""Inter-part penetration scorer: exact overlaps and depths worked out by hand.

Unit cube A = [0, 1]^3 (volume 1) against:
  B = [0.5, 1.5] x [0, 1]^2             A ∩ B = [0.5, 1] x [0, 1]^2, volume 0.5 -> 0.5
  [1, 2] x [0, 1]^2                      shares a face, no volume -> 0
  [3, 4] x [0, 1]^2                      disjoint boxes: culled by the broad phase
  [0.4, 0.6]^3                           inside A -> 1.0; depth 0.6: pushed out along an axis,
                                         the cube must move from x in [0.4, 0.6] to [1, 1.2]
  [0.9, 1.9] x [0.2, 0.8]^2              pushed 0.1 into A: slab of 0.1 * 0.36 = 0.036,
                                         over its volume 0.36 -> 0.1; depth 0.1
  [0.5, 1.5] x [-1, 2]^2                 pushed face first, wider than A: A ∩ B = [0.5, 1] x
                                         [0, 1]^2 -> 0.5 / 1; depth 0.5, though every vertex
                                         of A ∩ B lies on A's surface
and [0, 2]^2 x [0, 1] (volume 4) against [0.5, 2.5] x [0.25, 2.25] x [0, 3]:
  intersection 1.5 * 1.75 * 1 = 2.625 -> 2.625 / 4 = 0.65625, all exact in binary.

Edge on edge: the cube [-1, 1]^3 turned 45 degrees about x has a top edge along x at
z = sqrt 2; the same cube turned about y and centred at z = 2 sqrt 2 - d has a bottom edge
along y at z = sqrt 2 - d. Near the crossing A is {z <= sqrt 2 - |y|} and B is
{z >= sqrt 2 - d + |x|}, so A ∩ B has height d - |x| - |y| over the square |x| + |y| <= d:
volume 4 * d^3 / 6 = 2 d^3 / 3, over the cube's 8 -> d^3 / 12. The minimum translation is
d along z, the cross product of the two edges; every face normal needs more (along A's
(0, 1, 1) / sqrt 2, for one, the overlap is (1 + d) / sqrt 2).
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from genalign.config.base import ConfigError
from genalign.config.score import PenetrationConfig
from genalign.scorers import get_scorer, penetration
from genalign.scorers.penetration import PenetrationScorer, pool_pays, score_object, score_parts

ROOT = Path(__file__).resolve().parents[2]


def box(lo, hi):
    import trimesh

    return trimesh.creation.box(bounds=[lo, hi])


def turned_cube(axis, center, subdivisions=0):
    """The cube [-1, 1]^3 turned 45 degrees about `axis`, then moved to `center`."""
    import trimesh

    mesh = trimesh.creation.box(extents=(2, 2, 2))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 4, axis))
    mesh.apply_translation(center)
    for _ in range(subdivisions):
        mesh = mesh.subdivide()
    return mesh


def l_shape():
    """A non-convex part: [0, 2] x [0, 1]^2 (the foot) joined with [0, 1] x [1, 2] x [0, 1]."""
    import manifold3d
    import trimesh

    foot = manifold3d.Manifold.cube([2, 1, 1])
    arm = manifold3d.Manifold.cube([1, 1, 1]).translate([0, 1, 0])
    mesh = (foot + arm).to_mesh()
    return trimesh.Trimesh(np.asarray(mesh.vert_properties)[:, :3], np.asarray(mesh.tri_verts), process=False)


def reference():
    """Today's exact path, kept as benchmarks/penetration_reference.py."""
    spec = importlib.util.spec_from_file_location("penetration_reference", ROOT / "benchmarks" / "penetration_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UNIT = ([0, 0, 0], [1, 1, 1])


def score(meshes, **cfg):
    return score_object(meshes, PenetrationConfig(**cfg))


def test_half_overlap_is_exactly_half():
    result = score([box(*UNIT), box([0.5, 0, 0], [1.5, 1, 1])])
    assert result.status == "ok"
    assert result.score == 0.5
    assert result.detail["penetration_max"] == 0.5
    assert result.detail["pairs_checked"] == 1
    assert result.detail["fallback_pairs"] == 0
    assert result.detail["depth_max"] == 0.5


def test_exact_intersection_volume_2_625():
    result = score([box([0, 0, 0], [2, 2, 1]), box([0.5, 0.25, 0], [2.5, 2.25, 3])])
    assert result.score == 2.625 / 4.0


@pytest.mark.parametrize("broad_phase", [True, False])
def test_touching_boxes_score_zero(broad_phase):
    result = score([box(*UNIT), box([1, 0, 0], [2, 1, 1])], broad_phase=broad_phase)
    assert result.score == 0.0
    assert result.detail["pairs_culled"] == (1 if broad_phase else 0)
    assert result.detail["pairs_separated"] == (0 if broad_phase else 1)


def test_turned_parts_that_touch_are_separated_without_a_boolean(monkeypatch):
    # Two cubes turned 30 degrees about z, one against the other's face: their boxes
    # overlap, their faces meet up to rounding.
    import trimesh

    turn = trimesh.transformations.rotation_matrix(math.pi / 6, [0, 0, 1])
    a, b = box(*UNIT), box([1, 0, 0], [2, 1, 1])
    a.apply_transform(turn)
    b.apply_transform(turn)
    monkeypatch.setattr(penetration, "_exact_overlap", lambda *args: pytest.fail("boolean on touching parts"))
    result = score([a, b])
    assert result.score == 0.0
    assert result.detail["pairs_checked"] == 1 and result.detail["pairs_separated"] == 1


def test_separate_boxes_are_culled_by_the_broad_phase():
    result = score([box(*UNIT), box([3, 0, 0], [4, 1, 1])])
    assert result.score == 0.0
    assert result.detail["pairs_culled"] == 1
    assert result.detail["pairs_checked"] == 0


def test_nested_box_scores_one_with_depth_the_distance_to_push_it_out():
    result = score([box(*UNIT), box([0.4, 0.4, 0.4], [0.6, 0.6, 0.6])])
    assert result.score == 1.0
    assert result.detail["depth_max"] == pytest.approx(0.6, abs=1e-12)


def test_depth_of_a_box_pushed_in():
    result = score([box(*UNIT), box([0.9, 0.2, 0.2], [1.9, 0.8, 0.8])])
    assert result.score == pytest.approx(0.1, abs=1e-12)
    assert result.detail["depth_max"] == pytest.approx(0.1, abs=1e-12)
    assert "depth_max" not in score([box(*UNIT)], depth=False).detail


def test_depth_of_a_box_pushed_in_face_first():
    result = score([box(*UNIT), box([0.5, -1, -1], [1.5, 2, 2])])
    assert result.score == 0.5
    assert result.detail["depth_max"] == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("subdivisions", [0, 3])
def test_edge_on_edge_depth_comes_from_the_edges_cross_product(subdivisions):
    d = 0.1
    a = turned_cube([1, 0, 0], [0, 0, 0], subdivisions)
    b = turned_cube([0, 1, 0], [0, 0, 2 * math.sqrt(2) - d], subdivisions)
    result = score([a, b])
    assert result.detail["depth_max"] == pytest.approx(d, abs=1e-12)
    assert result.score == pytest.approx(d**3 / 12, rel=1e-12)


def test_depth_and_score_do_not_depend_on_the_triangulation():
    # 3 subdivisions: 768 triangles a cube, so the pair takes the clipping path.
    coarse = [turned_cube([1, 1, 0], [0, 0, 0]), turned_cube([0, 1, 1], [0.7, 1.2, 0.4])]
    fine = [m.subdivide().subdivide().subdivide() for m in coarse]
    a, b = score(coarse), score(fine)
    assert 0 < a.score < 1
    assert b.score == pytest.approx(a.score, abs=1e-12)
    assert b.detail["depth_max"] == pytest.approx(a.detail["depth_max"], abs=1e-12)


def test_depth_of_a_non_convex_part_is_its_deepest_intersection_vertex():
    # B pushed 0.2 into the end of the L's foot (x = 2): the vertices of A ∩ B on B's
    # face x = 1.8 are 0.2 from A's surface.
    pushed = score([l_shape(), box([1.8, 0.2, 0.2], [2.5, 0.8, 0.8])])
    assert pushed.score == pytest.approx(0.2 * 0.36 / 0.252, abs=1e-12)
    assert pushed.detail["depth_max"] == pytest.approx(0.2, abs=1e-12)
    # Pushed 0.5 in flush with the foot's sides: every vertex of A ∩ B = [1.5, 2] x [0, 1]^2
    # lies on both surfaces, so this measure reads 0 (the convex one would read 0.5).
    flush = score([l_shape(), box([1.5, 0, 0], [2.5, 1, 1])])
    assert flush.score == pytest.approx(0.5, abs=1e-12)
    assert flush.detail["depth_max"] == 0.0


def test_reduce_max_and_mean_over_all_pairs():
    # Pairs: (A, B) 0.5, (A, C) culled 0, (B, C) culled 0 -> max 0.5, mean 1/6.
    meshes = [box(*UNIT), box([0.5, 0, 0], [1.5, 1, 1]), box([5, 0, 0], [6, 1, 1])]
    assert score(meshes).score == 0.5
    assert score(meshes, reduce="mean").score == pytest.approx(0.5 / 3)
    assert score(meshes).detail["pairs_total"] == 3


def test_single_part_scores_zero():
    result = score([box(*UNIT)])
    assert result.score == 0.0
    assert result.detail["pairs_total"] == 0


def test_non_watertight_part_falls_back_to_voxels():
    holed = box(*UNIT)
    holed.update_faces(np.arange(len(holed.faces)) != 3)
    assert not holed.is_watertight
    result = score([holed, box([0.5, 0, 0], [1.5, 1, 1])])
    assert result.detail["fallback_pairs"] == 1
    assert result.detail["non_watertight_parts"] == 1
    # 64 cells over x in [0, 1.5]: 22 shared of 43 per box.
    assert result.score == pytest.approx(0.5, abs=0.02)


def test_degenerate_part_is_counted_and_scores_zero():
    flat = box([0.2, 0.2, 0.5], [0.8, 0.8, 0.5])
    result = score([box(*UNIT), flat])
    assert result.score == 0.0
    assert result.detail["degenerate_parts"] == 1
    assert result.detail["pairs_degenerate"] == 1


def random_primitives(rng, n, subdivisions=0):
    from genalign.models.part_codec import PartParams, part_mesh

    meshes = []
    for _ in range(n):
        mesh = part_mesh(PartParams(
            kind=str(rng.choice(["box", "cylinder"])),
            center=tuple(rng.uniform(-0.5, 0.5, 3)),
            half_extents=tuple(rng.uniform(0.05, 0.35, 3)),
            yaw=float(rng.uniform(0, math.pi)),
        ))
        for _ in range(subdivisions):
            mesh = mesh.subdivide()
        meshes.append(mesh)
    return meshes


def same_scores(new, old, tol):
    assert new.status == old.status == "ok"
    for key in ("penetration_max", "penetration_mean"):
        assert abs(new.detail[key] - old.detail[key]) <= tol, (key, new.detail[key], old.detail[key])
    for key in ("num_parts", "pairs_total", "pairs_checked", "pairs_culled", "pairs_degenerate",
                "fallback_pairs", "non_watertight_parts", "degenerate_parts"):
        assert new.detail[key] == old.detail[key], key
    assert new.detail["total_volume"] == pytest.approx(old.detail["total_volume"], rel=1e-12)


def test_pipeline_primitives_score_bit_for_bit_as_today():
    # Decoded boxes and 24-sided cylinders, convex and watertight: the boolean path.
    today = reference()
    rng = np.random.default_rng(0)
    overlapping = 0
    for _ in range(12):
        meshes = random_primitives(rng, int(rng.integers(2, 7)))
        new, old = score(meshes), today.score_object([m.copy() for m in meshes], PenetrationConfig())
        same_scores(new, old, 0.0)
        overlapping += old.score > 0
    assert overlapping >= 6


def test_large_convex_parts_score_as_today_to_rounding():
    # Subdivided twice: 192 to 1536 triangles a part, the clipping path for most pairs.
    today = reference()
    rng = np.random.default_rng(1)
    for _ in range(3):
        meshes = random_primitives(rng, 4, subdivisions=2)
        same_scores(score(meshes), today.score_object([m.copy() for m in meshes], PenetrationConfig()), 1e-12)


def test_non_convex_and_non_watertight_parts_score_as_today():
    today = reference()
    rng = np.random.default_rng(2)
    for k in range(6):
        meshes = random_primitives(rng, 3)
        ell = l_shape()
        ell.apply_translation(rng.uniform(-1.5, 0.0, 3))
        meshes.append(ell)
        if k % 2:  # a hole in one part: the voxel fallback
            meshes[0].update_faces(np.arange(len(meshes[0].faces)) != 0)
        new, old = score(meshes), today.score_object([m.copy() for m in meshes], PenetrationConfig())
        same_scores(new, old, 1e-12)
        assert new.detail["fallback_pairs"] == old.detail["fallback_pairs"]


def test_broad_phase_never_changes_scores_of_rotated_primitives():
    rng = np.random.default_rng(0)
    for _ in range(3):
        meshes = random_primitives(rng, 6)
        fast, slow = score(meshes), score(meshes, broad_phase=False)
        assert fast.detail["pairs_culled"] > 0
        for key in ("penetration_max", "penetration_mean", "depth_max"):
            assert fast.detail[key] == pytest.approx(slow.detail[key], abs=1e-12)


def test_detail_is_json_numbers():
    detail = score([box(*UNIT), box([0.5, 0, 0], [1.5, 1, 1])]).detail
    assert json.loads(json.dumps(detail)) == detail
    assert all(type(v) in (int, float) for v in detail.values())


# --- a score is a number only when it is one ---------------------------------------------


def with_vertex(mesh, index, value):
    import trimesh

    vertices = np.array(mesh.vertices)
    vertices[index] = value
    return trimesh.Trimesh(vertices, mesh.faces, process=False)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_part_with_a_non_finite_vertex_fails_with_the_reason(value):
    # A NaN box makes the broad phase drop every pair; it must not score 0.
    result = score([box(*UNIT), with_vertex(box(*UNIT), 3, [value, 0.0, 0.0])])
    assert result.status == "failed" and result.score is None
    assert "part 1" in result.error and "not finite" in result.error and "vertex 3" in result.error


def test_coordinates_whose_volume_overflows_fail_with_the_reason():
    huge = box(*UNIT)
    huge.vertices = huge.vertices * 1e200
    result = score([box(*UNIT), huge])
    assert result.status == "failed" and "1e+200" in result.error


def test_a_face_that_names_a_missing_vertex_fails_with_the_reason():
    cube = box(*UNIT)
    faces = np.array(cube.faces)
    faces[0, 0] = 99
    result = score_parts([(np.asarray(cube.vertices), faces)], PenetrationConfig())
    assert result.status == "failed" and "face indices span [0, 99]" in result.error


def glb_with_nan(path: Path, part: int) -> None:
    """A GLB of two boxes whose part `part` has a NaN first coordinate, written at the byte level."""
    from genalign.models.part_codec import save_glb

    save_glb([box(*UNIT), box([0.5, 0, 0], [1.5, 1, 1])], path)
    data = bytearray(path.read_bytes())
    (json_length,) = struct.unpack_from("<I", data, 12)
    doc = json.loads(data[20 : 20 + json_length])
    accessor = doc["accessors"][doc["meshes"][doc["nodes"][part]["mesh"]]["primitives"][0]["attributes"]["POSITION"]]
    view = doc["bufferViews"][accessor["bufferView"]]
    offset = 20 + json_length + 8 + view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    struct.pack_into("<f", data, offset, math.nan)
    path.write_bytes(bytes(data))


def test_score_files_marks_every_bad_file_failed_and_scores_the_rest(tmp_path, monkeypatch):
    from genalign.models.part_codec import save_glb

    good = tmp_path / "good.glb"
    save_glb([box(*UNIT), box([0.5, 0, 0], [1.5, 1, 1])], good)
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF this is not a binary gltf")
    truncated = tmp_path / "truncated.glb"
    truncated.write_bytes(good.read_bytes()[:-40])
    nan = tmp_path / "nan.glb"
    glb_with_nan(nan, part=1)
    missing = tmp_path / "missing.glb"
    crash = tmp_path / "crash.glb"
    save_glb([box(*UNIT)], crash)
    real = penetration.score_parts

    def crashing(parts, cfg):
        if len(parts) == 1:
            raise RuntimeError("boom")
        return real(parts, cfg)

    monkeypatch.setattr(penetration, "score_parts", crashing)
    scorer = PenetrationScorer(PenetrationConfig(workers=1))
    results = scorer.score_files([bad, good, missing, truncated, nan, crash])
    assert [r.status for r in results] == ["failed", "ok", "failed", "failed", "failed", "failed"]
    assert results[1].score == 0.5
    assert all(r.score is None for r in results if r.status == "failed")
    assert "bad.glb" in results[0].error and "not a binary glTF" in results[0].error
    assert "missing.glb: cannot open: No such file" in results[2].error
    assert "truncated" in results[3].error
    assert "nan.glb: part 1:" in results[4].error and "not finite" in results[4].error
    assert "crash.glb: scoring failed: RuntimeError: boom" in results[5].error


# --- workers --------------------------------------------------------------------------


def test_pool_pays_once_the_serial_remainder_exceeds_the_start_up():
    # 10 ms a file, 2 workers, 3 s to start: the pool saves half of N * 0.01 s, which
    # beats 3 s from N = 601 files.
    assert not pool_pays(0.01, 600, 2, 3.0)
    assert pool_pays(0.01, 601, 2, 3.0)
    # 4 workers save three quarters: from N = 401.
    assert not pool_pays(0.01, 400, 4, 3.0) and pool_pays(0.01, 401, 4, 3.0)
    assert not pool_pays(10.0, 10**6, 1, 0.0)


def test_the_scorer_decides_on_a_pool_after_timing_its_first_files():
    scorer = PenetrationScorer(PenetrationConfig(workers=2, worker_start_s=3.0))
    # Files 2 and 3 took 1 s each: 10 left would take 10 s here, 3 + 5 s in a pool.
    assert scorer._pool_now(3, 2.0, 10, 2)
    assert not scorer._pool_now(3, 2.0, 5, 2)  # 5 s here against 3 + 2.5 s
    assert not scorer._pool_now(2, 1.0, 100, 2)  # still timing
    assert not scorer._pool_now(3, 2.0, 10, 1)
    assert PenetrationScorer(PenetrationConfig(workers=2, worker_start_s=0.0))._pool_now(0, 0.0, 10, 2)


def test_a_small_batch_is_scored_in_this_process(tmp_path, monkeypatch):
    from genalign.models.part_codec import save_glb

    paths = []
    for i in range(6):
        paths.append(tmp_path / f"o{i}.glb")
        save_glb([box(*UNIT), box([0.5, 0, 0], [1.5, 1, 1])], paths[-1])
    monkeypatch.setattr(penetration, "ProcessPoolExecutor", lambda *a, **k: pytest.fail("started a pool"))
    results = PenetrationScorer(PenetrationConfig(workers=2)).score_files(paths)
    assert [r.score for r in results] == [0.5] * 6


# --- lookup and config ----------------------------------------------------------------


def test_get_scorer_builds_from_a_dict_and_lists_valid_names():
    scorer = get_scorer("penetration", {"reduce": "mean", "workers": 1})
    assert scorer.name == "penetration" and scorer.higher_is_better is False
    assert scorer.cfg.reduce == "mean"
    with pytest.raises(ValueError, match="penetration"):
        get_scorer("volume", {})
    with pytest.raises(ConfigError, match="valid keys"):
        get_scorer("penetration", {"resolution": 32})


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="workers"):
        PenetrationConfig.from_dict({"workers": 0})
    with pytest.raises(ConfigError, match="reduce"):
        PenetrationConfig.from_dict({"reduce": "median"})
    with pytest.raises(ConfigError, match="worker_start_s"):
        PenetrationConfig.from_dict({"worker_start_s": -1.0})


def test_corners_where_five_planes_meet():
    # Icosahedra: five faces at every corner. Subdivided three times (1280 triangles,
    # still 20 flat faces) they take the clipping path and must agree with the plain ones
    # and with today's boolean.
    import trimesh

    plain = [trimesh.creation.icosahedron(), trimesh.creation.icosahedron()]
    plain[1].apply_translation([1.2, 0.3, 0.1])
    fine = [m.subdivide().subdivide().subdivide() for m in plain]
    coarse, subdivided = score(plain), score(fine)
    old = reference().score_object([m.copy() for m in fine], PenetrationConfig())
    assert 0 < coarse.score < 1
    assert subdivided.score == pytest.approx(old.score, abs=1e-12)
    assert subdivided.score == pytest.approx(coarse.score, abs=1e-12)
    assert subdivided.detail["depth_max"] == pytest.approx(coarse.detail["depth_max"], abs=1e-12)
