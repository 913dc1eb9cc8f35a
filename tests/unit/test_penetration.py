"""Inter-part penetration scorer: exact overlaps of boxes worked out by hand.

Unit cube A = [0, 1]^3 (volume 1) against:
  B = [0.5, 1.5] x [0, 1]^2             A ∩ B = [0.5, 1] x [0, 1]^2, volume 0.5 -> 0.5
  [1, 2] x [0, 1]^2                      shares a face, no volume -> 0
  [3, 4] x [0, 1]^2                      disjoint boxes: culled by the broad phase
  [0.4, 0.6]^3                           inside A -> 1.0; its vertices are 0.4 from ∂A
  [0.9, 1.9] x [0.2, 0.8]^2              pushed 0.1 into A: slab of 0.1 * 0.36 = 0.036,
                                         over its volume 0.36 -> 0.1; depth 0.1
and [0, 2]^2 x [0, 1] (volume 4) against [0.5, 2.5] x [0.25, 2.25] x [0, 3]:
  intersection 1.5 * 1.75 * 1 = 2.625 -> 2.625 / 4 = 0.65625, all exact in binary.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from genalign.config.base import ConfigError
from genalign.config.score import PenetrationConfig
from genalign.scorers import get_scorer
from genalign.scorers.penetration import PenetrationScorer, score_object


def box(lo, hi):
    import trimesh

    return trimesh.creation.box(bounds=[lo, hi])


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


def test_exact_intersection_volume_2_625():
    result = score([box([0, 0, 0], [2, 2, 1]), box([0.5, 0.25, 0], [2.5, 2.25, 3])])
    assert result.score == 2.625 / 4.0


@pytest.mark.parametrize("broad_phase", [True, False])
def test_touching_boxes_score_zero(broad_phase):
    result = score([box(*UNIT), box([1, 0, 0], [2, 1, 1])], broad_phase=broad_phase)
    assert result.score == 0.0
    assert result.detail["pairs_culled"] == (1 if broad_phase else 0)


def test_separate_boxes_are_culled_by_the_broad_phase():
    result = score([box(*UNIT), box([3, 0, 0], [4, 1, 1])])
    assert result.score == 0.0
    assert result.detail["pairs_culled"] == 1
    assert result.detail["pairs_checked"] == 0


def test_nested_box_scores_one_with_depth_to_the_outer_surface():
    result = score([box(*UNIT), box([0.4, 0.4, 0.4], [0.6, 0.6, 0.6])])
    assert result.score == 1.0
    assert result.detail["depth_max"] == pytest.approx(0.4, abs=1e-12)


def test_depth_of_a_box_pushed_in():
    result = score([box(*UNIT), box([0.9, 0.2, 0.2], [1.9, 0.8, 0.8])])
    assert result.score == pytest.approx(0.1, abs=1e-12)
    assert result.detail["depth_max"] == pytest.approx(0.1, abs=1e-12)
    assert "depth_max" not in score([box(*UNIT)], depth=False).detail


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


def test_broad_phase_never_changes_scores_of_rotated_primitives():
    from genalign.models.part_codec import PartParams, part_mesh

    rng = np.random.default_rng(0)
    for _ in range(3):
        parts = [
            PartParams(
                kind=str(rng.choice(["box", "cylinder"])),
                center=tuple(rng.uniform(-0.6, 0.6, 3)),
                half_extents=tuple(rng.uniform(0.05, 0.3, 3)),
                yaw=float(rng.uniform(0, math.pi)),
            )
            for _ in range(6)
        ]
        meshes = [part_mesh(p) for p in parts]
        fast, slow = score(meshes), score(meshes, broad_phase=False)
        assert fast.detail["pairs_culled"] > 0
        for key in ("penetration_max", "penetration_mean", "depth_max"):
            assert fast.detail[key] == pytest.approx(slow.detail[key], abs=1e-12)


def test_detail_is_json_numbers():
    detail = score([box(*UNIT), box([0.5, 0, 0], [1.5, 1, 1])]).detail
    assert json.loads(json.dumps(detail)) == detail
    assert all(type(v) in (int, float) for v in detail.values())


def test_score_files_marks_unreadable_glbs_failed(tmp_path):
    from genalign.models.part_codec import save_glb

    good = tmp_path / "good.glb"
    save_glb([box(*UNIT), box([0.5, 0, 0], [1.5, 1, 1])], good)
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF this is not a binary gltf")
    missing = tmp_path / "missing.glb"
    scorer = PenetrationScorer(PenetrationConfig(workers=1))
    results = scorer.score_files([bad, good, missing])
    assert [r.status for r in results] == ["failed", "ok", "failed"]
    assert results[0].score is None and "bad.glb" in results[0].error
    assert results[1].score == 0.5
    assert "missing.glb" in results[2].error




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
