"""Geometry guard metrics: voxel IoU, Chamfer distance, part volumes.

Expected values: a cube of side 1 against the same cube at half size (same centre) has
IoU (1/2)^3 = 0.125 and volume ratio 0.125; a cylinder fills pi/4 of its bounding box.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from genalign.evaluation.geometry import (
    chamfer_distance,
    guard_metrics,
    part_volumes,
    volume_iou,
    voxelize,
)


def box(lo, hi):
    import trimesh

    return trimesh.creation.box(bounds=[lo, hi])


def chair():
    """Eight boxes: four legs, a seat, a back and two arm rests; parts touch."""
    legs = [box([x, 0, z], [x + 0.1, 0.5, z + 0.1]) for x in (0, 0.5) for z in (0, 0.5)]
    seat = box([0, 0.5, 0], [0.6, 0.6, 0.6])
    back = box([0, 0.6, 0.5], [0.6, 1.2, 0.6])
    arms = [box([x, 0.6, 0], [x + 0.1, 0.8, 0.5]) for x in (0, 0.5)]
    return [*legs, seat, back, *arms]


def shrunk(meshes, factor):
    out = []
    for m in meshes:
        m = m.copy()
        centre = m.bounds.mean(0)
        m.apply_translation(-centre)
        m.apply_scale(factor)
        m.apply_translation(centre)
        out.append(m)
    return out


def test_identical_objects_have_iou_one_and_chamfer_zero():
    assert volume_iou(chair(), chair()) == 1.0
    assert chamfer_distance(chair(), chair()) == 0.0


def test_half_size_cube_iou_and_volume_ratio():
    big = [box([-0.5] * 3, [0.5] * 3)]
    small = [box([-0.25] * 3, [0.25] * 3)]
    assert volume_iou(small, big, resolution=32) == pytest.approx(0.125, abs=0.01)
    metrics = guard_metrics(small, big)
    assert metrics["volume_ratio"] == pytest.approx(0.125)


def test_shrunken_or_scattered_parts_score_worse():
    gt = chair()
    for factor in (0.9, 0.6):
        pred = shrunk(gt, factor)
        metrics = guard_metrics(pred, gt)
        assert metrics["volume_iou"] < 1.0
        assert metrics["volume_ratio"] == pytest.approx(factor**3)
        assert metrics["chamfer"] > 0.0
    assert volume_iou(shrunk(gt, 0.6), gt) < volume_iou(shrunk(gt, 0.9), gt)
    scattered = [m.copy().apply_translation([1.5 * i, 0, 0]) for i, m in enumerate(gt)]
    assert volume_iou(scattered, gt) < 0.3
    assert chamfer_distance(scattered, gt) > chamfer_distance(shrunk(gt, 0.9), gt)


def test_guard_metrics_keys_and_json():
    metrics = guard_metrics(chair()[:6], chair())
    assert set(metrics) == {"volume_iou", "chamfer", "part_count", "part_count_gt", "volume_ratio"}
    assert metrics["part_count"] == 6 and metrics["part_count_gt"] == 8
    assert json.loads(json.dumps(metrics)) == metrics


def test_part_volumes_are_exact_for_closed_meshes():
    assert part_volumes([box([0, 0, 0], [1, 2, 3]), box([0, 0, 0], [0.5, 0.5, 0.5])]) == [
        6.0,
        0.125,
    ]


def test_voxelize_cylinder_fraction_and_a_box_with_a_hole():
    import trimesh

    cylinder = trimesh.creation.cylinder(radius=0.5, height=1.0, sections=64)
    occ = voxelize([cylinder], *cylinder.bounds, 64)
    assert occ.mean() == pytest.approx(math.pi / 4, abs=0.01)
    whole = box([0.1, 0.1, 0.1], [0.9, 0.7, 0.8])
    holed = whole.copy()
    holed.update_faces(np.arange(12) != 5)
    lo, hi = np.zeros(3), np.ones(3)
    # Two of the three ray directions see every voxel right; the vote keeps it.
    assert np.array_equal(voxelize([holed], lo, hi, 32), voxelize([whole], lo, hi, 32))


def test_volume_iou_of_eight_boxes_is_fast():
    gt, pred = chair(), shrunk(chair(), 0.9)
    volume_iou(pred, gt)
    start = time.perf_counter()
    for _ in range(5):
        volume_iou(pred, gt)
    per_call = (time.perf_counter() - start) / 5
    # Two objects per call; 0.1 s/object would still be an order of magnitude too slow
    # to matter, so this only guards against a regression to per-voxel Python loops.
    assert per_call < 0.2
