"""The voxel map format: exact round trips, one encoding of empty, stable bytes, every
malformed case named; the optimiser's initial worlds, logits and resizing; the validity
measures on worlds whose answers are counted by hand."""

import copy
import json
import math

import numpy as np
import pytest

from genalign.data.voxel_map import (
    MATERIALS,
    SOLIDS,
    VoxelMap,
    VoxelMapError,
    block_count,
    floating_share,
    format_map,
    initial_map,
    logits_from_map,
    map_from_probabilities,
    map_to_json,
    palette_colors,
    parse_map,
    read_map,
    resize_map,
    write_map,
)

# A 4 x 3 x 4 world; its blocks in canonical order (x, then y, then z).
SMALL = {
    "sequence": 7,
    "blocks": [
        {"position": [0, 0, 0], "blockType": "Grass"},
        {"position": [0, 0, 3], "blockType": "Dirt"},
        {"position": [1, 0, 1], "blockType": "Stone"},
        {"position": [1, 1, 1], "blockType": "Plank"},
        {"position": [1, 2, 1], "blockType": "Snow"},
        {"position": [3, 0, 2], "blockType": "Sand"},
        {"position": [3, 2, 0], "blockType": "Water"},
    ],
    "worldConfig": {"dimensions": {"x": 4, "y": 3, "z": 4}, "worldScale": 2.0},
    "metadata": {"prompt": "a tiny test world", "seed": 3},
}


def small(**changes):
    d = copy.deepcopy(SMALL)
    d.update(changes)
    return d


def random_map(dims=(64, 32, 64), n=88_000, seed=0) -> VoxelMap:
    """The source design's size: 88,000 solid blocks of random materials on 64 x 32 x 64."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(math.prod(dims), dtype=np.uint8)
    flat[rng.choice(flat.size, n, replace=False)] = rng.integers(1, len(MATERIALS), n)
    return VoxelMap(flat.reshape(dims), world_scale=2.0, sequence=12, metadata={"prompt": "x"})


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- round trips


def test_small_map_round_trips_exactly():
    m = parse_map(small(), "map.json")
    assert m.dims == (4, 3, 4)
    assert m.count == 7
    assert m.world_scale == 2.0 and m.sequence == 7
    assert m.metadata == SMALL["metadata"]
    assert m.blocks[1, 2, 1] == MATERIALS.index("Snow")
    assert m.blocks[3, 2, 0] == MATERIALS.index("Water")
    assert m.histogram() == {name: 1 for name in SOLIDS}
    assert map_to_json(m) == SMALL
    assert parse_map(map_to_json(m), "again") == m
    assert json.loads(format_map(m)) == SMALL


def test_88k_block_map_round_trips_through_a_file(tmp_path):
    m = random_map()
    assert m.count == 88_000
    path = tmp_path / "map.json"
    write_map(m, path)
    back = read_map(path)
    assert back == m
    assert back.histogram() == m.histogram()
    assert map_to_json(back) == json.loads(path.read_text())


def test_air_entries_mean_no_block_and_are_not_written():
    blocks = [*SMALL["blocks"], {"position": [2, 2, 2], "blockType": "Air"}]
    blocks.insert(0, {"position": [0, 1, 0], "blockType": "Air"})
    m = parse_map(small(blocks=blocks), "map.json")
    assert m == parse_map(small(), "map.json")
    assert m.count == 7
    out = map_to_json(m)
    assert out == SMALL
    assert "Air" not in format_map(m)


def test_input_order_does_not_matter_and_output_is_canonical():
    shuffled = small(blocks=SMALL["blocks"][::-1])
    m = parse_map(shuffled, "map.json")
    assert map_to_json(m)["blocks"] == SMALL["blocks"]


def test_written_bytes_are_stable(tmp_path):
    m = random_map((16, 8, 16), 500, seed=1)
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    write_map(m, a)
    write_map(m, b)
    assert a.read_bytes() == b.read_bytes()
    write_map(read_map(a), c)
    assert c.read_bytes() == a.read_bytes()
    # The metadata's key order does not reach the bytes.
    reordered = VoxelMap(m.blocks, world_scale=2.0, sequence=12, metadata={"prompt": "x"})
    assert format_map(reordered) == a.read_text()


def test_empty_map_round_trips(tmp_path):
    m = initial_map("empty", (2, 3, 4))
    write_map(m, tmp_path / "map.json")
    back = read_map(tmp_path / "map.json")
    assert back == m and back.count == 0
    assert map_to_json(back)["blocks"] == []


def test_sequence_and_metadata_may_be_left_out():
    d = small()
    del d["sequence"], d["metadata"]
    m = parse_map(d, "map.json")
    assert m.sequence == 0 and m.metadata == {}


def test_integer_world_scale_reads_as_float():
    d = small()
    d["worldConfig"]["worldScale"] = 3
    m = parse_map(d, "map.json")
    assert m.world_scale == 3.0 and isinstance(m.world_scale, float)


# ---------------------------------------------------------------- malformed maps


def with_block(i, block):
    blocks = copy.deepcopy(SMALL["blocks"])
    blocks[i] = block
    return small(blocks=blocks)


def with_config(**changes):
    d = small()
    d["worldConfig"].update(changes)
    return d


def with_dims(**changes):
    d = small()
    d["worldConfig"]["dimensions"].update(changes)
    return d


def without(d, *path):
    *parents, key = path
    inner = d
    for p in parents:
        inner = inner[p]
    del inner[key]
    return d


BAD = {
    "outside x": (
        with_block(2, {"position": [4, 0, 1], "blockType": "Stone"}),
        r"map\.json: blocks\[2\]\.position\[0\]: x = 4 is outside the world; expected 0 <= x < 4",
    ),
    "outside y": (
        with_block(5, {"position": [3, 3, 2], "blockType": "Sand"}),
        r"blocks\[5\]\.position\[1\]: y = 3 is outside the world; expected 0 <= y < 3",
    ),
    "negative z": (
        with_block(1, {"position": [0, 0, -1], "blockType": "Dirt"}),
        r"blocks\[1\]\.position\[2\]: z = -1 is outside the world; expected 0 <= z < 4",
    ),
    "huge coordinate": (
        with_block(3, {"position": [2**70, 0, 0], "blockType": "Dirt"}),
        r"blocks\[3\]\.position\[0\]: x = 1180591620717411303424 is outside",
    ),
    "unknown blockType": (
        with_block(4, {"position": [1, 2, 1], "blockType": "Lava"}),
        r"blocks\[4\]\.blockType: unknown material 'Lava'; valid: \['Air', 'Grass', 'Dirt'",
    ),
    "lower-case blockType": (
        with_block(0, {"position": [0, 0, 0], "blockType": "grass"}),
        r"blocks\[0\]\.blockType: unknown material 'grass'",
    ),
    "blockType not a string": (
        with_block(6, {"position": [3, 2, 0], "blockType": 3}),
        r"blocks\[6\]\.blockType: unknown material 3",
    ),
    "duplicate position": (
        small(blocks=[*SMALL["blocks"], {"position": [1, 0, 1], "blockType": "Dirt"}]),
        r"blocks\[2\]\.position and blocks\[7\]\.position are both \[1, 0, 1\]",
    ),
    "duplicate through Air": (
        small(blocks=[{"position": [3, 2, 0], "blockType": "Air"}, *SMALL["blocks"]]),
        r"blocks\[0\]\.position and blocks\[7\]\.position are both \[3, 2, 0\]",
    ),
    "missing worldConfig": (
        without(small(), "worldConfig"),
        r"map\.json: missing field 'worldConfig'",
    ),
    "missing dimensions": (
        without(small(), "worldConfig", "dimensions"),
        r"map\.json: worldConfig: missing field 'dimensions'",
    ),
    "missing axis": (
        without(small(), "worldConfig", "dimensions", "z"),
        r"worldConfig\.dimensions: missing field 'z'",
    ),
    "extra axis": (with_dims(w=2), r"worldConfig\.dimensions: unknown fields \['w'\]"),
    "zero dimension": (
        with_dims(y=0),
        r"worldConfig\.dimensions\.y: expected a positive integer, got 0",
    ),
    "negative dimension": (with_dims(x=-4), r"dimensions\.x: expected a positive integer, got -4"),
    "float dimension": (with_dims(z=4.0), r"dimensions\.z: expected a positive integer, got 4\.0"),
    "string dimension": (with_dims(x="4"), r"dimensions\.x: expected a positive integer, got '4'"),
    "boolean dimension": (
        with_dims(x=True),
        r"dimensions\.x: expected a positive integer, got True",
    ),
    "too many voxels": (
        with_dims(x=4096, y=4096, z=4096),
        r"dimensions: 4096 x 4096 x 4096 .* more than",
    ),
    "float position": (
        with_block(3, {"position": [1, 1.5, 1], "blockType": "Plank"}),
        r"blocks\[3\]\.position\[1\]: expected an integer, got 1\.5",
    ),
    "integral float position": (
        with_block(3, {"position": [1.0, 1, 1], "blockType": "Plank"}),
        r"blocks\[3\]\.position\[0\]: expected an integer, got 1\.0",
    ),
    "boolean position": (
        with_block(3, {"position": [1, True, 1], "blockType": "Plank"}),
        r"blocks\[3\]\.position\[1\]: expected an integer, got True",
    ),
    "null position": (
        with_block(6, {"position": [3, 2, None], "blockType": "Water"}),
        r"blocks\[6\]\.position\[2\]: expected an integer, got None",
    ),
    "two-element position": (
        with_block(1, {"position": [0, 3], "blockType": "Dirt"}),
        r"blocks\[1\]\.position: expected 3 integers \[x, y, z\], got \[0, 3\]",
    ),
    "four-element position": (
        with_block(1, {"position": [0, 0, 3, 0], "blockType": "Dirt"}),
        r"blocks\[1\]\.position: expected 3 integers \[x, y, z\], got \[0, 0, 3, 0\]",
    ),
    "position not a list": (
        with_block(2, {"position": "1,0,1", "blockType": "Stone"}),
        r"blocks\[2\]\.position: expected 3 integers \[x, y, z\], got '1,0,1'",
    ),
    "zero worldScale": (
        with_config(worldScale=0),
        r"worldConfig\.worldScale: expected a positive finite number, got 0",
    ),
    "negative worldScale": (
        with_config(worldScale=-2.0),
        r"worldScale: expected a positive finite number, got -2\.0",
    ),
    "nan worldScale": (
        with_config(worldScale=float("nan")),
        r"worldScale: expected a positive finite number, got nan",
    ),
    "infinite worldScale": (with_config(worldScale=float("inf")), r"worldScale: .* got inf"),
    "string worldScale": (with_config(worldScale="2.0"), r"worldScale: .* got '2\.0'"),
    "boolean worldScale": (with_config(worldScale=True), r"worldScale: .* got True"),
    "missing worldScale": (
        without(small(), "worldConfig", "worldScale"),
        r"worldConfig: missing field 'worldScale'",
    ),
    "missing blocks": (without(small(), "blocks"), r"map\.json: missing field 'blocks'"),
    "blocks not a list": (
        small(blocks={"0": {}}),
        r"map\.json: blocks: expected a list of blocks, got dict",
    ),
    "block not an object": (
        with_block(4, "Stone"),
        r"blocks\[4\]: expected an object .* got 'Stone'",
    ),
    "block a list": (with_block(0, [0, 0, 0, "Grass"]), r"blocks\[0\]: expected an object"),
    "block without position": (
        with_block(5, {"blockType": "Sand"}),
        r"blocks\[5\]: missing field 'position'",
    ),
    "block without blockType": (
        with_block(5, {"position": [3, 0, 2]}),
        r"blocks\[5\]: missing field 'blockType'",
    ),
    "block with an extra field": (
        with_block(2, {"position": [1, 0, 1], "blockType": "Stone", "color": "red"}),
        r"blocks\[2\]: unknown fields \['color'\]; valid: \['position', 'blockType'\]",
    ),
    "unknown top-level field": (small(version=2), r"map\.json: unknown fields \['version'\]"),
    "negative sequence": (small(sequence=-1), r"sequence: expected a non-negative integer, got -1"),
    "metadata not an object": (small(metadata=["a"]), r"metadata: expected an object, got \['a'\]"),
    "not an object": ([SMALL], r"map\.json: expected a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_map_is_named(case):
    d, message = BAD[case]
    with pytest.raises(VoxelMapError, match=message) as info:
        parse_map(d, "map.json")
    assert str(info.value).startswith("map.json: ")


def test_read_map_names_the_file(tmp_path):
    with pytest.raises(VoxelMapError, match=r"missing\.json: map file not found"):
        read_map(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"blocks": [')
    with pytest.raises(VoxelMapError, match=r"bad\.json: not JSON"):
        read_map(bad)
    bad.write_text(json.dumps(with_block(4, {"position": [9, 0, 0], "blockType": "Snow"})))
    with pytest.raises(VoxelMapError, match=r"bad\.json: blocks\[4\]\.position\[0\]: x = 9"):
        read_map(bad)


def test_error_in_a_large_map_names_the_block():
    d = map_to_json(random_map((32, 16, 32), 5000, seed=2))
    d["blocks"][4321]["position"][2] = 32
    with pytest.raises(
        VoxelMapError, match=r"blocks\[4321\]\.position\[2\]: z = 32 .* 0 <= z < 32"
    ):
        parse_map(d, "big.json")


# ---------------------------------------------------------------- the VoxelMap type


def test_map_is_a_read_only_copy():
    blocks = np.zeros((2, 2, 2), dtype=np.uint8)
    m = VoxelMap(blocks, world_scale=1.0)
    blocks[0, 0, 0] = 3
    assert m.count == 0
    with pytest.raises(ValueError, match="read-only"):
        m.blocks[0, 0, 0] = 3


def test_equality_compares_every_field():
    m = parse_map(small(), "map.json")
    assert m == parse_map(small(), "other.json")
    other = m.blocks.copy()
    other[2, 2, 2] = 1
    assert m != VoxelMap(other, world_scale=2.0, sequence=7, metadata=m.metadata)
    assert m != VoxelMap(m.blocks, world_scale=1.0, sequence=7, metadata=m.metadata)
    assert m != VoxelMap(m.blocks, world_scale=2.0, sequence=8, metadata=m.metadata)
    assert m != VoxelMap(m.blocks, world_scale=2.0, sequence=7, metadata={})
    assert m != VoxelMap(np.zeros((4, 3, 5), np.uint8), world_scale=2.0, sequence=7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"blocks": np.zeros((2, 2, 2), np.int64)},
            r"expected a uint8 array \[X, Y, Z\], got int64",
        ),
        ({"blocks": np.zeros((2, 2), np.uint8)}, r"expected a uint8 array \[X, Y, Z\]"),
        (
            {"blocks": np.zeros((2, 0, 2), np.uint8)},
            r"the y dimension must be a positive integer, got 0",
        ),
        (
            {"blocks": np.full((2, 2, 2), 8, np.uint8)},
            r"material index 8 at \[0, 0, 0\]; expected 0-7",
        ),
        ({"world_scale": 0.0}, r"world_scale: expected a positive finite number"),
        ({"sequence": -2}, r"sequence: expected a non-negative integer"),
        ({"metadata": {1: "a"}}, r"metadata: changes in a JSON round trip"),
        ({"metadata": {"a": (1, 2)}}, r"metadata: changes in a JSON round trip"),
        ({"metadata": {"a": float("nan")}}, r"metadata: not JSON"),
        ({"metadata": {"a": object()}}, r"metadata: not JSON"),
    ],
)
def test_voxel_map_checks_its_fields(kwargs, message):
    fields = {"blocks": np.zeros((2, 2, 2), np.uint8), "world_scale": 1.0, **kwargs}
    with pytest.raises(VoxelMapError, match=message):
        VoxelMap(**fields)


def test_palette_colors():
    colors = palette_colors()
    assert colors.shape == (7, 3, 3) and colors.dtype == np.float32
    assert (colors >= 0).all() and (colors <= 1).all()
    grass, dirt, water = (colors[SOLIDS.index(n)] for n in ("Grass", "Dirt", "Water"))
    top, bottom, side = grass
    assert top[1] > top[0] and top[1] > top[2]  # green
    np.testing.assert_array_equal(bottom, dirt[2])  # dirt-brown underneath
    assert bottom[0] > bottom[1] > bottom[2]
    assert side[1] > side[2] and side[0] > side[2]  # green-brown
    assert (water[:, 2] > water[:, 0]).all()  # blue on every face


# ---------------------------------------------------------------- initial worlds


def test_ground_fills_the_bottom_layer():
    m = initial_map("ground", (16, 16, 16))
    assert m.count == block_count(m) == 16 * 16
    assert (m.blocks[:, 0, :] == MATERIALS.index("Grass")).all()
    assert m.blocks[:, 1:, :].max() == 0
    assert m.world_scale == 2.0
    snow = initial_map("ground", (8, 4, 6), material="Snow")
    assert snow.histogram()["Snow"] == 8 * 6 == snow.count


def test_cube_is_the_middle_half_standing_on_the_ground():
    m = initial_map("cube", (16, 16, 16))
    assert m.count == 8 * 8 * 8 == 512
    assert m.histogram()["Stone"] == 512
    expected = np.zeros((16, 16, 16), np.uint8)
    expected[4:12, 0:8, 4:12] = MATERIALS.index("Stone")
    np.testing.assert_array_equal(m.blocks, expected)
    # 5 x 3 x 7: sizes 2, 1, 3; x from (5 - 2) // 2 = 1, z from (7 - 3) // 2 = 2.
    odd = initial_map("cube", (5, 3, 7))
    assert odd.count == 6
    assert np.argwhere(odd.blocks).min(axis=0).tolist() == [1, 0, 2]
    assert np.argwhere(odd.blocks).max(axis=0).tolist() == [2, 0, 4]
    assert initial_map("cube", (1, 1, 1)).count == 1
    assert initial_map("cube", (64, 32, 64)).count == 32 * 16 * 32
    assert floating_share(m) == 0.0


def test_empty_and_map_kinds():
    assert initial_map("empty", (4, 4, 4)).count == 0
    source = parse_map(small(), "map.json")
    assert initial_map("map", (4, 3, 4), source=source) is source
    assert initial_map("ground", (4, 3, 4), world_scale=0.5).world_scale == 0.5


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (
            ("sphere", (4, 4, 4)),
            {},
            r"unknown kind 'sphere'; valid: \['map', 'ground', 'cube', 'empty'\]",
        ),
        (("map", (4, 4, 4)), {}, r"kind 'map' needs a source map"),
        (
            ("map", (4, 4, 4)),
            {"source": "S"},
            r"source map's dims \(4, 3, 4\) differ from dims \(4, 4, 4\)",
        ),
        (("map", (4, 3, 4)), {"source": "S", "world_scale": 1.0}, r"world_scale 1\.0 differs"),
        (("ground", (4, 3, 4)), {"source": "S"}, r"kind 'ground' does not read one"),
        (("ground", (4, 4, 4)), {"material": "Lava"}, r"material: unknown material 'Lava'; valid:"),
        (("ground", (4, 4, 4)), {"material": "Air"}, r"material must be solid"),
        (("ground", (4, 0, 4)), {}, r"dims: the y dimension must be a positive integer, got 0"),
        (("ground", (4, 4)), {}, r"dims: expected 3 dimensions"),
    ],
)
def test_initial_map_errors(args, kwargs, message):
    if kwargs.get("source") == "S":
        kwargs = {**kwargs, "source": parse_map(small(), "map.json")}
    with pytest.raises(VoxelMapError, match=message):
        initial_map(*args, **kwargs)


# ---------------------------------------------------------------- logits and probabilities


def test_logits_round_trip():
    m = random_map((12, 8, 10), 300, seed=3)
    occ, mat = logits_from_map(m)
    assert occ.shape == (12, 8, 10) and occ.dtype == np.float32
    assert mat.shape == (12, 8, 10, 7) and mat.dtype == np.float32
    solid = m.blocks > 0
    assert (occ[solid] == 3.0).all() and (occ[~solid] == -3.0).all()
    assert (mat[~solid] == 0).all()
    x, y, z = np.argwhere(solid)[0]
    own = int(m.blocks[x, y, z]) - 1
    assert mat[x, y, z, own] == 3.0 and mat[x, y, z].sum() == 3.0
    back = map_from_probabilities(
        sigmoid(occ), mat, world_scale=2.0, sequence=12, metadata={"prompt": "x"}
    )
    assert back == m


def test_map_from_probabilities_thresholds_strictly_and_breaks_ties_to_the_first():
    occupancy = np.array([0.2, 0.5, 0.51, 1.0]).reshape(4, 1, 1)
    materials = np.zeros((4, 1, 1, 7))
    materials[2, 0, 0, 5] = 1.0  # Sand
    m = map_from_probabilities(occupancy, materials, world_scale=1.0)
    assert m.blocks.ravel().tolist() == [0, 0, MATERIALS.index("Sand"), MATERIALS.index("Grass")]
    assert map_from_probabilities(occupancy, materials, threshold=0.1, world_scale=1.0).count == 4


@pytest.mark.parametrize(
    "occupancy, materials, message",
    [
        (
            np.full((2, 2, 2), 0.7),
            np.zeros((2, 2, 2, 8)),
            r"materials must be \[X, Y, Z, 7\] = \(2, 2, 2, 7\)",
        ),
        (np.full((2, 2), 0.7), np.zeros((2, 2, 7)), r"occupancy must be \[X, Y, Z\]"),
        (
            np.full((2, 2, 2), 1.5),
            np.zeros((2, 2, 2, 7)),
            r"occupancy must hold probabilities in \[0, 1\]",
        ),
        (np.full((2, 2, 2), np.nan), np.zeros((2, 2, 2, 7)), r"occupancy must hold probabilities"),
        (
            np.full((2, 2, 2), 0.7),
            np.full((2, 2, 2, 7), np.inf),
            r"materials holds non-finite values",
        ),
        ([[[0.7]]], np.zeros((1, 1, 1, 7)), r"occupancy must be a numeric numpy array, got list"),
    ],
)
def test_map_from_probabilities_errors(occupancy, materials, message):
    with pytest.raises(VoxelMapError, match=message):
        map_from_probabilities(occupancy, materials, world_scale=1.0)


def test_logits_from_map_errors():
    m = initial_map("ground", (2, 2, 2))
    with pytest.raises(VoxelMapError, match=r"expected empty < occupied, got 1\.0 and 1\.0"):
        logits_from_map(m, occupied=1.0, empty=1.0)
    with pytest.raises(VoxelMapError, match=r"confidence must be positive, got 0\.0"):
        logits_from_map(m, confidence=0.0)
    with pytest.raises(VoxelMapError, match=r"occupied must be a finite number, got inf"):
        logits_from_map(m, occupied=float("inf"))


# ---------------------------------------------------------------- validity measures


def test_floating_share_counts_blocks_cut_off_from_the_ground():
    blocks = np.zeros((6, 6, 6), np.uint8)
    blocks[1, 0:4, 1] = MATERIALS.index("Stone")  # a pillar of 4 on the ground
    m = VoxelMap(blocks.copy(), world_scale=1.0)
    assert floating_share(m) == 0.0
    blocks[4, 3, 4] = MATERIALS.index("Snow")  # one block in the air
    assert floating_share(VoxelMap(blocks.copy(), world_scale=1.0)) == pytest.approx(1 / 5)
    blocks[2, 3, 1] = MATERIALS.index("Plank")  # against the pillar's side: held
    blocks[2, 2, 2] = MATERIALS.index("Plank")  # meets the pillar at an edge only: floating
    assert floating_share(VoxelMap(blocks.copy(), world_scale=1.0)) == pytest.approx(2 / 7)


def test_floating_share_of_an_empty_map_is_zero():
    assert floating_share(initial_map("empty", (3, 3, 3))) == 0.0


# ---------------------------------------------------------------- resizing


def test_resize_up_repeats_each_voxel_and_keeps_the_extent():
    blocks = np.zeros((2, 2, 2), np.uint8)
    blocks[0, 0, 0] = 1
    blocks[1, 1, 0] = 4
    m = VoxelMap(blocks, world_scale=2.0, sequence=3, metadata={"a": 1})
    up = resize_map(m, (4, 4, 4))
    expected = np.zeros((4, 4, 4), np.uint8)
    expected[0:2, 0:2, 0:2] = 1
    expected[2:4, 2:4, 0:2] = 4
    np.testing.assert_array_equal(up.blocks, expected)
    assert up.world_scale == 1.0 and up.sequence == 3 and up.metadata == {"a": 1}
    assert resize_map(up, (2, 2, 2)) == m


def test_resize_down_keeps_the_first_voxel_of_each_group():
    blocks = np.zeros((4, 4, 4), np.uint8)
    blocks[0, 0, 0] = 1  # kept: index 0 of the pair (0, 1)
    blocks[1, 0, 0] = 2  # dropped
    blocks[2, 0, 2] = 3  # kept
    blocks[3, 3, 3] = 5  # dropped
    down = resize_map(VoxelMap(blocks, world_scale=1.0), (2, 2, 2))
    assert down.world_scale == 2.0
    assert {tuple(p): int(down.blocks[tuple(p)]) for p in np.argwhere(down.blocks)} == {
        (0, 0, 0): 1,
        (1, 0, 1): 3,
    }


def test_resize_that_changes_proportions_needs_a_world_scale():
    m = initial_map("ground", (4, 4, 4))
    with pytest.raises(VoxelMapError, match=r"\(4, 4, 4\) -> \(8, 4, 8\) changes the proportions"):
        resize_map(m, (8, 4, 8))
    wide = resize_map(m, (8, 4, 8), world_scale=1.0)
    assert wide.world_scale == 1.0 and wide.count == 64
    # 16^3 -> 24^3: new voxel i takes old floor(i * 16 / 24).
    m = initial_map("cube", (16, 16, 16))
    assert resize_map(m, (24, 24, 24)).count == 12 * 12 * 12
