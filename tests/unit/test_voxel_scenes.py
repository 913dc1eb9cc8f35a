"""Procedural voxel structures: determinism, bounds and connection to the ground, each
class's dominant material, the nearest-prototype classifier's accuracy, the material
histogram distance, features worked out by hand, and the errors."""

import numpy as np
import pytest

from genalign.data.voxel_map import MATERIALS, SOLIDS, VoxelMap, floating_share, initial_map
from genalign.data.voxel_scenes import (
    FEATURES,
    MIN_DIM,
    PROMPT_CLASSES,
    VoxelSceneError,
    class_scores,
    histogram_distance,
    make_structure,
    material_target,
    shape_features,
)

DIMS = [(16, 16, 16), (32, 32, 32), (32, 16, 32)]
GRASS = MATERIALS.index("Grass")


def non_ground_histogram(m: VoxelMap) -> dict[str, int]:
    h = m.histogram()
    h["Grass"] -= int((m.blocks[:, 0, :] == GRASS).sum())
    return h


def test_same_seed_same_map_and_seeds_differ():
    for name in PROMPT_CLASSES:
        assert make_structure(name, (16, 16, 16), 3) == make_structure(name, (16, 16, 16), 3)
        maps = [make_structure(name, (16, 16, 16), s).blocks for s in range(5)]
        assert len({m.tobytes() for m in maps}) == 5, name


def test_prompt_and_name_give_the_same_structure():
    for name, cls in PROMPT_CLASSES.items():
        m = make_structure(cls.prompt, (16, 16, 16), 1)
        assert m == make_structure(name, (16, 16, 16), 1)
        assert m.metadata == {"prompt": cls.prompt, "class": name, "seed": 1}


@pytest.mark.parametrize("dims", DIMS, ids=lambda d: "x".join(map(str, d)))
@pytest.mark.parametrize("name", list(PROMPT_CLASSES))
def test_structures_stand_on_the_ground_inside_the_margin(name, dims):
    X, Y, Z = dims
    for seed in range(5):
        m = make_structure(name, dims, seed)
        assert m.dims == dims
        assert (m.blocks[:, 0, :] == GRASS).all()  # the ground plane is whole
        assert floating_share(m) == 0.0
        above = m.blocks[:, 1:, :] > 0
        assert above.sum() > 0
        # a margin of one empty voxel to the sides and the top
        assert not above[0].any() and not above[X - 1].any()
        assert not above[:, :, 0].any() and not above[:, :, Z - 1].any()
        assert not above[:, Y - 2, :].any()


@pytest.mark.parametrize("name", list(PROMPT_CLASSES))
def test_dominant_material_is_the_class_material_with_a_secondary(name):
    cls = PROMPT_CLASSES[name]
    for dims in DIMS[:2]:
        for seed in range(5):
            h = non_ground_histogram(make_structure(name, dims, seed))
            assert max(h, key=h.get) == cls.material, (dims, seed, h)
            assert sum(1 for v in h.values() if v) >= 2, (dims, seed, h)  # a secondary


def test_structures_vary_in_size_position_and_orientation():
    walls = [make_structure("wall", (32, 32, 32), s) for s in range(20)]
    spans = [np.flatnonzero(w.blocks[:, 1:, :].any(axis=(1, 2))) for w in walls]
    widths = [int(s[-1] - s[0] + 1) for s in spans]
    assert min(widths) <= 2 and max(widths) >= 16  # along z and along x
    for name in PROMPT_CLASSES:
        maps = [make_structure(name, (32, 32, 32), s) for s in range(20)]
        assert len({m.count for m in maps}) >= 5, name
        corners = {tuple(np.argwhere(m.blocks[:, 1:, :]).min(axis=0)) for m in maps}
        assert len(corners) >= 5, name


@pytest.mark.parametrize("dims", DIMS[:2], ids=lambda d: "x".join(map(str, d)))
def test_each_structure_is_classified_as_its_own_class(dims):
    """20 seeds per class: accuracy 1.00 (80 of 80) at 16^3 and at 32^3, measured; the
    lowest own-class score is 0.89 at 16^3 and 0.93 at 32^3."""
    hits, own = 0, []
    for name in PROMPT_CLASSES:
        for seed in range(20):
            scores = class_scores(make_structure(name, dims, seed))
            assert sum(scores.values()) == pytest.approx(1.0)
            hits += max(scores, key=scores.get) == name
            own.append(scores[name])
    assert hits / (20 * len(PROMPT_CLASSES)) >= 0.95
    assert min(own) > 0.8


def test_the_ground_plane_is_no_class():
    """The bare ground scores 1/4 for each class, below any real structure's own score."""
    for dims in DIMS:
        scores = class_scores(initial_map("ground", dims))
        assert scores == dict.fromkeys(PROMPT_CLASSES, 0.25)
        for name in PROMPT_CLASSES:
            assert class_scores(make_structure(name, dims, 0))[name] > max(scores.values())


def test_shape_features_worked_by_hand():
    """8^3 ground plus a Stone box x in [2, 6), y in [1, 3), z = 4 and one Plank at
    (2, 3, 4): top y = 3, so height 4/8; 4 of 64 columns; the footprint's rectangle is 4 x 1,
    filled, aspect 1/4; the bounding box 4 x 3 x 1 = 12 holds 9 blocks; shares 8/9 Stone,
    1/9 Plank."""
    blocks = np.zeros((8, 8, 8), np.uint8)
    blocks[:, 0, :] = GRASS
    blocks[2:6, 1:3, 4] = MATERIALS.index("Stone")
    blocks[2, 3, 4] = MATERIALS.index("Plank")
    f = shape_features(VoxelMap(blocks, world_scale=2.0))
    assert list(f) == list(FEATURES)
    expected = {
        "height": 0.5,
        "footprint": 4 / 64,
        "footprint_fill": 1.0,
        "aspect": 0.25,
        "fill": 9 / 12,
        "share_Stone": 8 / 9,
        "share_Plank": 1 / 9,
    }
    assert f == pytest.approx({**dict.fromkeys(FEATURES, 0.0), **expected})
    # Grass above the ground layer counts; the ground's does not.
    blocks[0, 1, 0] = GRASS
    assert shape_features(VoxelMap(blocks, world_scale=2.0))["share_Grass"] == pytest.approx(0.1)
    assert shape_features(initial_map("ground", (8, 8, 8))) == dict.fromkeys(FEATURES, 0.0)


def test_material_target_is_a_distribution_led_by_the_class_material():
    for name, cls in PROMPT_CLASSES.items():
        target = material_target(name)
        assert list(target) == list(SOLIDS)
        assert sum(target.values()) == pytest.approx(1.0)
        assert max(target, key=target.get) == cls.material
        assert material_target(cls.prompt) == target


@pytest.mark.parametrize("dims", DIMS[:2], ids=lambda d: "x".join(map(str, d)))
def test_histogram_distance_is_smallest_to_its_own_class(dims):
    for name in PROMPT_CLASSES:
        for seed in range(5):
            m = make_structure(name, dims, seed)
            d = {other: histogram_distance(m, other) for other in PROMPT_CLASSES}
            assert all(d[name] < d[o] for o in PROMPT_CLASSES if o != name), (seed, d)
            assert 0.0 <= min(d.values()) and max(d.values()) <= 2.0
    assert histogram_distance(initial_map("ground", dims), "tower") == 1.0
    assert histogram_distance(initial_map("empty", dims), "hill") == 1.0


def test_unknown_class_lists_the_valid_ones():
    with pytest.raises(VoxelSceneError, match=r"'castle'.*'tower', 'pyramid', 'wall', 'hill'"):
        make_structure("castle", (16, 16, 16), 0)
    with pytest.raises(VoxelSceneError, match="a stone tower"):
        material_target("a stone castle")


def test_bad_dims_and_seed_are_named():
    with pytest.raises(VoxelSceneError, match=rf"dims: \(16, 7, 16\) is too small.*{MIN_DIM}"):
        make_structure("tower", (16, 7, 16), 0)
    with pytest.raises(VoxelSceneError, match="dims: expected 3 integers"):
        make_structure("tower", (16, 16), 0)
    with pytest.raises(VoxelSceneError, match="dims: expected 3 integers"):
        make_structure("tower", (16.0, 16, 16), 0)
    with pytest.raises(VoxelSceneError, match="seed must be a non-negative integer"):
        make_structure("tower", (16, 16, 16), -1)
    with pytest.raises(VoxelSceneError, match="class_scores: the map's dims"):
        class_scores(initial_map("ground", (4, 4, 4)))


def test_smallest_dims_still_make_every_class():
    for name, cls in PROMPT_CLASSES.items():
        for seed in range(10):
            m = make_structure(name, (MIN_DIM,) * 3, seed)
            assert floating_share(m) == 0.0
            h = non_ground_histogram(m)
            assert max(h, key=h.get) == cls.material, (seed, h)
