"""Voxel worlds for the voxel-sds pipeline: the `map.json` format, world set-up, measures.

A world is a grid of blocks, each empty or one of 7 solid materials. On disk it is the
source design's `map.json`:

    {"sequence": 3,
     "worldConfig": {"dimensions": {"x": 64, "y": 32, "z": 64}, "worldScale": 2.0},
     "metadata": {"prompt": "a snowy hill"},
     "blocks": [{"position": [0, 0, 0], "blockType": "Grass"}, ...]}

In memory it is a `VoxelMap`: a uint8 array of shape (X, Y, Z) holding an index into
`MATERIALS` per voxel, 0 ("Air") for empty.

Axes: y is up, as in Minecraft. A position [x, y, z] is three integers with 0 <= x < X,
0 <= y < Y, 0 <= z < Z; y = 0 is the ground layer. Voxel (x, y, z) covers
[x, x+1) x [y, y+1) x [z, z+1) in grid units, that box times `world_scale` in world units.

One encoding of empty: an "Air" block in a file is accepted and means no block, and
nothing writes Air. Blocks are written in one canonical order, that of `np.nonzero` on
the (X, Y, Z) array (x, then y, then z), so `parse_map(map_to_json(m)) == m` for every
map, `map_to_json(parse_map(d)) == d` for a canonical `d`, and `write_map` writes the
same bytes for the same map. `parse_map` checks every block with numpy, all blocks at
once, and names the file, the field and the block in its errors; on an 88k-block world it
takes less time than `json.loads` of the text (benchmarks/voxel_map_io.py).

For the optimiser: `initial_map` builds the starting world ("map", "ground", "cube",
"empty"), `logits_from_map` and `map_from_probabilities` convert between a map and
occupancy and material logits, `resize_map` moves a world between grid sizes
(16^3 -> 32^3 -> 64^3). For the evaluation: `floating_share` and `block_count`.

    >>> m = initial_map("ground", (16, 16, 16))
    >>> m.count, floating_share(m)
    (256, 0.0)
    >>> write_map(m, Path("map.json")); read_map(Path("map.json")) == m
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from genalign.storage import atomic_write_text

MATERIALS = ("Air", "Grass", "Dirt", "Stone", "Plank", "Snow", "Sand", "Water")
SOLIDS = MATERIALS[1:]  # what an optimiser's material logits range over, in this order
FACES = ("top", "bottom", "side")  # top faces +y, bottom -y, side the four others
AXES = ("x", "y", "z")
INITIAL_KINDS = ("map", "ground", "cube", "empty")

# The source design's worldConfig.worldScale: a block is 2 world units wide.
DEFAULT_WORLD_SCALE = 2.0
# A bound on X * Y * Z, checked before any array is made: at 256^3 the optimiser's
# float32 occupancy and 7 material logits per voxel take 512 MiB. The source design's
# worlds are 64 x 32 x 64.
MAX_VOXELS = 256**3

# RGB in [0, 1] of each solid's top, bottom and side face. This project's choice of
# Minecraft-like colours, not taken from any texture pack. Water has no transparency
# here; a light, saturated blue stands in for it.
FACE_COLORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "Grass": ((0.36, 0.62, 0.25), (0.47, 0.33, 0.20), (0.42, 0.45, 0.23)),
    "Dirt": ((0.50, 0.36, 0.22), (0.42, 0.29, 0.18), (0.47, 0.33, 0.20)),
    "Stone": ((0.52, 0.52, 0.52), (0.42, 0.42, 0.42), (0.47, 0.47, 0.47)),
    "Plank": ((0.69, 0.53, 0.31), (0.58, 0.44, 0.25), (0.63, 0.48, 0.28)),
    "Snow": ((0.96, 0.97, 0.99), (0.86, 0.88, 0.92), (0.91, 0.93, 0.96)),
    "Sand": ((0.87, 0.81, 0.59), (0.78, 0.72, 0.52), (0.83, 0.77, 0.56)),
    "Water": ((0.25, 0.50, 0.90), (0.16, 0.34, 0.70), (0.21, 0.43, 0.82)),
}

_INDEX = {name: i for i, name in enumerate(MATERIALS)}
_TOP_KEYS = ("sequence", "blocks", "worldConfig", "metadata")
_CONFIG_KEYS = ("dimensions", "worldScale")
_BLOCK_KEYS = ("position", "blockType")


class VoxelMapError(ValueError):
    """A map that does not match the format; the message names the file and the field."""


def palette_colors() -> np.ndarray:
    """Face colours, [7, 3, 3] float32: SOLIDS x FACES (top, bottom, side) x RGB."""
    return np.array([FACE_COLORS[name] for name in SOLIDS], dtype=np.float32)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class VoxelMap:
    """A voxel world: a material index per voxel (0 = empty) and the file's other fields.

    `blocks` is kept as a read-only copy, so a map never changes after it is made.
    """

    blocks: np.ndarray  # [X, Y, Z] uint8, an index into MATERIALS
    world_scale: float  # world units per grid unit
    sequence: int = 0  # the source design's save counter, kept as it is
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)  # any JSON object

    def __post_init__(self) -> None:
        b = self.blocks
        if not isinstance(b, np.ndarray) or b.dtype != np.uint8 or b.ndim != 3:
            shown = f"{b.dtype} array of shape {b.shape}" if isinstance(b, np.ndarray) else b
            raise VoxelMapError(f"VoxelMap.blocks: expected a uint8 array [X, Y, Z], got {shown}")
        _check_dims(b.shape, "VoxelMap.blocks.shape")
        if b.max() >= len(MATERIALS):
            raise VoxelMapError(
                f"VoxelMap.blocks: material index {int(b.max())} at "
                f"{np.argwhere(b >= len(MATERIALS))[0].tolist()}; expected 0-{len(MATERIALS) - 1} "
                f"(an index into {list(MATERIALS)})"
            )
        blocks = b.copy()
        blocks.flags.writeable = False
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(
            self, "world_scale", _check_scale(self.world_scale, "VoxelMap.world_scale")
        )
        if not _is_int(self.sequence) or self.sequence < 0:
            raise VoxelMapError(
                f"VoxelMap.sequence: expected a non-negative integer, got {self.sequence!r}"
            )
        object.__setattr__(self, "sequence", int(self.sequence))
        if not isinstance(self.metadata, dict):
            raise VoxelMapError(f"VoxelMap.metadata: expected a dict, got {self.metadata!r}")
        # A JSON round trip must give it back unchanged: no int keys, tuples, NaN, objects.
        try:
            same = json.loads(json.dumps(self.metadata, allow_nan=False)) == self.metadata
        except (TypeError, ValueError) as e:
            raise VoxelMapError(f"VoxelMap.metadata: not JSON ({e})") from None
        if not same:
            raise VoxelMapError(
                "VoxelMap.metadata: changes in a JSON round trip (keys must be strings, "
                f"sequences lists): {self.metadata!r}"
            )
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VoxelMap):
            return NotImplemented
        return (
            np.array_equal(self.blocks, other.blocks)
            and self.world_scale == other.world_scale
            and self.sequence == other.sequence
            and self.metadata == other.metadata
        )

    def __repr__(self) -> str:
        return (
            f"VoxelMap(dims={self.dims}, count={self.count}, world_scale={self.world_scale}, "
            f"sequence={self.sequence}, metadata={self.metadata!r})"
        )

    @property
    def dims(self) -> tuple[int, int, int]:
        """(X, Y, Z) in grid units."""
        x, y, z = self.blocks.shape
        return int(x), int(y), int(z)

    @property
    def count(self) -> int:
        """Solid blocks."""
        return int(np.count_nonzero(self.blocks))

    def histogram(self) -> dict[str, int]:
        """Solid blocks per material, every one of SOLIDS in order (zeros included)."""
        counts = np.bincount(self.blocks.ravel(), minlength=len(MATERIALS))
        return {name: int(c) for name, c in zip(SOLIDS, counts[1:])}


# ---------------------------------------------------------------- checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float | np.floating)


def _check_dims(dims: Any, at: str) -> tuple[int, int, int]:
    if not isinstance(dims, tuple | list) or len(dims) != 3:
        raise VoxelMapError(f"{at}: expected 3 dimensions (X, Y, Z), got {dims!r}")
    for axis, n in zip(AXES, dims):
        if not _is_int(n) or n < 1:
            raise VoxelMapError(f"{at}: the {axis} dimension must be a positive integer, got {n!r}")
    if math.prod(dims) > MAX_VOXELS:
        raise VoxelMapError(
            f"{at}: {dims[0]} x {dims[1]} x {dims[2]} = {math.prod(dims)} voxels, "
            f"more than the {MAX_VOXELS} (256^3) a world may hold"
        )
    return int(dims[0]), int(dims[1]), int(dims[2])


def _check_scale(value: Any, at: str) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise VoxelMapError(f"{at}: expected a positive finite number, got {value!r}")
    return float(value)


def _material_error(name: Any, at: str) -> VoxelMapError:
    return VoxelMapError(f"{at}: unknown material {name!r}; valid: {list(MATERIALS)}")


def _check_material(name: Any, at: str) -> int:
    if type(name) is not str or name not in _INDEX:
        raise _material_error(name, at)
    return _INDEX[name]


def _field(obj: dict[str, Any], key: str, at: str) -> Any:
    if key not in obj:
        raise VoxelMapError(f"{at}: missing field {key!r}")
    return obj[key]


def _only_keys(obj: dict[str, Any], valid: tuple[str, ...], at: str) -> None:
    unknown = sorted(set(obj) - set(valid), key=str)
    if unknown:
        raise VoxelMapError(f"{at}: unknown fields {unknown}; valid: {list(valid)}")


# ---------------------------------------------------------------- reading


def parse_map(obj: Any, where: str) -> VoxelMap:
    """A `VoxelMap` from the parsed JSON of a map file; errors start with `where`.

    Required: "blocks" and "worldConfig" {"dimensions": {"x", "y", "z"}, "worldScale"};
    "sequence" (default 0) and "metadata" (default {}) may be left out. Unknown fields
    are errors, so nothing in a file is dropped without a word. A position appears once
    in the list, an "Air" entry included.
    """
    if not isinstance(obj, dict):
        raise VoxelMapError(
            f"{where}: expected a JSON object with 'blocks' and 'worldConfig', "
            f"got {type(obj).__name__}"
        )
    _only_keys(obj, _TOP_KEYS, where)
    config = _field(obj, "worldConfig", where)
    if not isinstance(config, dict):
        raise VoxelMapError(f"{where}: worldConfig: expected an object, got {config!r}")
    _only_keys(config, _CONFIG_KEYS, f"{where}: worldConfig")
    dimensions = _field(config, "dimensions", f"{where}: worldConfig")
    at = f"{where}: worldConfig.dimensions"
    if not isinstance(dimensions, dict):
        raise VoxelMapError(
            f"{at}: expected an object {{'x': X, 'y': Y, 'z': Z}}, got {dimensions!r}"
        )
    _only_keys(dimensions, AXES, at)
    for axis in AXES:
        n = _field(dimensions, axis, at)
        if type(n) is not int or n < 1:
            raise VoxelMapError(f"{at}.{axis}: expected a positive integer, got {n!r}")
    dims = _check_dims(tuple(dimensions[a] for a in AXES), at)
    scale = _check_scale(
        _field(config, "worldScale", f"{where}: worldConfig"), f"{where}: worldConfig.worldScale"
    )
    sequence = obj.get("sequence", 0)
    if type(sequence) is not int or sequence < 0:
        raise VoxelMapError(f"{where}: sequence: expected a non-negative integer, got {sequence!r}")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise VoxelMapError(f"{where}: metadata: expected an object, got {metadata!r}")
    raw = _field(obj, "blocks", where)
    if not isinstance(raw, list):
        raise VoxelMapError(f"{where}: blocks: expected a list of blocks, got {type(raw).__name__}")
    blocks = _parse_blocks(raw, dims, where)
    return VoxelMap(blocks, world_scale=scale, sequence=sequence, metadata=metadata)


def _parse_blocks(raw: list[Any], dims: tuple[int, int, int], where: str) -> np.ndarray:
    """The [X, Y, Z] array of a block list, every block checked.

    Each check runs over all blocks at once; only once it fails does a loop look for the
    first block that fails it, for the message.
    """
    n = len(raw)
    try:
        positions = [b["position"] for b in raw]
        names = [b["blockType"] for b in raw]
    except (TypeError, KeyError):
        i, b = next(
            (i, b)
            for i, b in enumerate(raw)
            if type(b) is not dict or not set(_BLOCK_KEYS) <= set(b)
        )
        if type(b) is not dict:
            raise VoxelMapError(
                f"{where}: blocks[{i}]: expected an object "
                f'{{"position": [x, y, z], "blockType": name}}, got {b!r}'
            ) from None
        missing = [k for k in _BLOCK_KEYS if k not in b]
        raise VoxelMapError(f"{where}: blocks[{i}]: missing field {missing[0]!r}") from None
    extra = np.flatnonzero(np.fromiter(map(len, raw), np.int64, n) != len(_BLOCK_KEYS))
    if extra.size:
        i = int(extra[0])
        _only_keys(raw[i], _BLOCK_KEYS, f"{where}: blocks[{i}]")

    # position: a list of 3 integers inside the dimensions
    if set(map(type, positions)) - {list}:
        i = next(i for i, p in enumerate(positions) if type(p) is not list)
        raise VoxelMapError(
            f"{where}: blocks[{i}].position: expected 3 integers [x, y, z], got {positions[i]!r}"
        )
    short = np.flatnonzero(np.fromiter(map(len, positions), np.int64, n) != 3)
    if short.size:
        i = int(short[0])
        raise VoxelMapError(
            f"{where}: blocks[{i}].position: expected 3 integers [x, y, z], got {positions[i]!r}"
        )
    flat = list(chain.from_iterable(positions))
    if set(map(type, flat)) - {int}:  # floats, strings, null and booleans alike
        i, k = divmod(next(j for j, v in enumerate(flat) if type(v) is not int), 3)
        raise VoxelMapError(
            f"{where}: blocks[{i}].position[{k}]: expected an integer, got {positions[i][k]!r} "
            f"in {positions[i]!r}"
        )
    try:
        coords = np.array(flat, dtype=np.int64).reshape(n, 3)  # [N, 3]
    except OverflowError:
        j = next(j for j, v in enumerate(flat) if not -(2**63) <= v < 2**63)
        raise _outside_error(where, j // 3, j % 3, flat[j], dims) from None
    outside = (coords < 0) | (coords >= np.array(dims))  # [N, 3]
    rows = np.flatnonzero(outside.any(axis=1))
    if rows.size:
        i = int(rows[0])
        k = int(np.flatnonzero(outside[i])[0])
        raise _outside_error(where, i, k, int(coords[i, k]), dims)

    # blockType: one of MATERIALS
    try:
        codes = np.fromiter(map(_INDEX.__getitem__, names), np.uint8, n)
    except (KeyError, TypeError):
        i = next(i for i, t in enumerate(names) if type(t) is not str or t not in _INDEX)
        raise _material_error(names[i], f"{where}: blocks[{i}].blockType") from None

    # one block a position
    flat_index = np.ravel_multi_index(coords.T, dims) if n else np.zeros(0, np.int64)
    order = np.argsort(flat_index, kind="stable")
    repeats = np.flatnonzero(flat_index[order][1:] == flat_index[order][:-1])
    if repeats.size:
        later = order[repeats + 1]
        pick = int(np.argmin(later))
        first, second = int(order[repeats[pick]]), int(later[pick])
        raise VoxelMapError(
            f"{where}: blocks[{first}].position and blocks[{second}].position are both "
            f"{coords[second].tolist()}; a position holds one block"
        )

    blocks = np.zeros(dims, dtype=np.uint8)
    blocks[coords[:, 0], coords[:, 1], coords[:, 2]] = codes  # Air entries write 0
    return blocks


def _outside_error(
    where: str, i: int, k: int, value: int, dims: tuple[int, int, int]
) -> VoxelMapError:
    axis = AXES[k]
    return VoxelMapError(
        f"{where}: blocks[{i}].position[{k}]: {axis} = {value} is outside the world; "
        f"expected 0 <= {axis} < {dims[k]} (worldConfig.dimensions.{axis})"
    )


def read_map(path: Path) -> VoxelMap:
    """Read a map file (`map.json`); errors name the file."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise VoxelMapError(f"{path}: map file not found") from None
    except json.JSONDecodeError as e:
        raise VoxelMapError(f"{path}: not JSON ({e})") from None
    return parse_map(obj, where=str(path))


# ---------------------------------------------------------------- writing


def _canonical_blocks(m: VoxelMap) -> tuple[list[list[int]], list[str]]:
    """Positions and material names of the solid blocks, in np.nonzero order."""
    coords = np.argwhere(m.blocks)  # [N, 3], x then y then z
    names = np.array(MATERIALS, dtype=object)[m.blocks[tuple(coords.T)]]
    return coords.tolist(), names.tolist()


def _world_config(m: VoxelMap) -> dict[str, Any]:
    x, y, z = m.dims
    return {"dimensions": {"x": x, "y": y, "z": z}, "worldScale": m.world_scale}


def map_to_json(m: VoxelMap) -> dict[str, Any]:
    """The map's JSON object: solid blocks only, in the canonical order."""
    positions, names = _canonical_blocks(m)
    return {
        "sequence": m.sequence,
        "blocks": [{"position": p, "blockType": t} for p, t in zip(positions, names)],
        "worldConfig": _world_config(m),
        "metadata": dict(m.metadata),
    }


def format_map(m: VoxelMap) -> str:
    """The text `write_map` writes: `map_to_json(m)` with one block a line, the header first.

    The same map always gives the same text (metadata keys sorted).
    """
    positions, names = _canonical_blocks(m)
    # Material names are plain ASCII words, so no block needs JSON escaping.
    lines = [
        f'    {{"position": [{x}, {y}, {z}], "blockType": "{t}"}}'
        for (x, y, z), t in zip(positions, names)
    ]
    config = json.dumps(_world_config(m), sort_keys=True)
    metadata = json.dumps(m.metadata, sort_keys=True, allow_nan=False)
    blocks = "[\n" + ",\n".join(lines) + "\n  ]" if lines else "[]"
    return (
        f'{{\n  "sequence": {m.sequence},\n  "worldConfig": {config},\n'
        f'  "metadata": {metadata},\n  "blocks": {blocks}\n}}\n'
    )


def write_map(m: VoxelMap, path: Path) -> None:
    """Write `format_map(m)` to `path` atomically (a killed write leaves the old file)."""
    atomic_write_text(Path(path), format_map(m))


# ---------------------------------------------------------------- the optimiser's worlds


def initial_map(
    kind: str,
    dims: tuple[int, int, int],
    *,
    source: VoxelMap | None = None,
    material: str = "Grass",
    world_scale: float | None = None,
) -> VoxelMap:
    """The world an optimisation starts from.

    kind:
        "map"     `source` as it is; its dims must be `dims`.
        "ground"  the ground layer y = 0 filled with `material`: X * Z blocks.
        "cube"    a solid Stone box standing on the ground in the middle of the world,
                  n // 2 voxels along each axis n (at least 1), centred in x and z
                  (starting at (n - n // 2) // 2) and from y = 0 up: 8 x 8 x 8 = 512 blocks
                  on 16^3, x in [4, 12), y in [0, 8), z in [4, 12).
        "empty"   no block.
    `world_scale`: None keeps the source's for "map" and is DEFAULT_WORLD_SCALE (2.0) for
    the others. `source` is read by "map" only and is an error with any other kind.
    """
    if kind not in INITIAL_KINDS:
        raise VoxelMapError(f"initial_map: unknown kind {kind!r}; valid: {list(INITIAL_KINDS)}")
    dims = _check_dims(dims, "initial_map: dims")
    code = _check_material(material, "initial_map: material")
    if code == 0:
        raise VoxelMapError(
            f"initial_map: material must be solid, one of {list(SOLIDS)}; got 'Air'"
        )
    if world_scale is not None:
        world_scale = _check_scale(world_scale, "initial_map: world_scale")
    if kind == "map":
        if source is None:
            raise VoxelMapError("initial_map: kind 'map' needs a source map")
        if source.dims != dims:
            raise VoxelMapError(
                f"initial_map: the source map's dims {source.dims} differ from dims {dims}; "
                "resize it first (resize_map) or set dims to the source's"
            )
        if world_scale is not None and world_scale != source.world_scale:
            raise VoxelMapError(
                f"initial_map: world_scale {world_scale} differs from the source map's "
                f"{source.world_scale}; kind 'map' keeps the source's"
            )
        return source
    if source is not None:
        raise VoxelMapError(
            f"initial_map: a source map is given, but kind {kind!r} does not read one"
        )
    blocks = np.zeros(dims, dtype=np.uint8)
    if kind == "ground":
        blocks[:, 0, :] = code
    elif kind == "cube":
        (sx, sy, sz) = (max(1, n // 2) for n in dims)
        x0, z0 = (dims[0] - sx) // 2, (dims[2] - sz) // 2
        blocks[x0 : x0 + sx, :sy, z0 : z0 + sz] = _INDEX["Stone"]
    return VoxelMap(blocks, world_scale=DEFAULT_WORLD_SCALE if world_scale is None else world_scale)


class VoxelLogits(NamedTuple):
    occupancy: np.ndarray  # [X, Y, Z] float32, logit of "solid"
    materials: np.ndarray  # [X, Y, Z, 7] float32, scores over SOLIDS


def logits_from_map(
    m: VoxelMap, *, occupied: float = 3.0, empty: float = -3.0, confidence: float = 3.0
) -> VoxelLogits:
    """Logits that start an optimiser at `m`.

    A solid voxel's occupancy logit is `occupied`, an empty one's `empty`; a solid voxel's
    own material scores `confidence` and the other six 0, an empty voxel's all 0. The
    defaults are this project's choice: sigmoid(3) = 0.95, confident with gradient left
    (sigmoid'(3) = 0.045), and softmax gives the own material 0.77. With `empty` < 0 <
    `occupied`, `map_from_probabilities(sigmoid(occupancy), materials)` (threshold 0.5)
    gives `m` back.
    """
    for name, value in (("occupied", occupied), ("empty", empty), ("confidence", confidence)):
        if not _is_number(value) or not math.isfinite(value):
            raise VoxelMapError(f"logits_from_map: {name} must be a finite number, got {value!r}")
    if not empty < occupied:
        raise VoxelMapError(
            f"logits_from_map: expected empty < occupied, got {empty} and {occupied}"
        )
    if not confidence > 0:
        raise VoxelMapError(f"logits_from_map: confidence must be positive, got {confidence}")
    solid = m.blocks > 0
    occupancy = np.where(solid, np.float32(occupied), np.float32(empty))
    materials = np.zeros((*m.dims, len(SOLIDS)), dtype=np.float32)
    x, y, z = np.nonzero(solid)
    materials[x, y, z, m.blocks[x, y, z].astype(np.int64) - 1] = confidence
    return VoxelLogits(occupancy, materials)


def map_from_probabilities(
    occupancy: np.ndarray,
    materials: np.ndarray,
    *,
    threshold: float = 0.5,
    world_scale: float,
    sequence: int = 0,
    metadata: dict[str, Any] | None = None,
) -> VoxelMap:
    """The map an optimiser's state stands for.

    A voxel is solid where occupancy > threshold (occupancy: [X, Y, Z] probabilities in
    [0, 1]); its material is the argmax of `materials` ([X, Y, Z, 7] scores over SOLIDS:
    logits or probabilities alike), ties going to the first of SOLIDS. Numpy arrays only:
    convert a tensor with `.detach().cpu().numpy()`.
    """
    where = "map_from_probabilities"
    for name, a in (("occupancy", occupancy), ("materials", materials)):
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
            raise VoxelMapError(
                f"{where}: {name} must be a numeric numpy array, got {type(a).__name__}"
            )
    if occupancy.ndim != 3:
        raise VoxelMapError(f"{where}: occupancy must be [X, Y, Z], got shape {occupancy.shape}")
    want = (*occupancy.shape, len(SOLIDS))
    if materials.shape != want:
        raise VoxelMapError(
            f"{where}: materials must be [X, Y, Z, {len(SOLIDS)}] = {want} "
            f"(scores over {list(SOLIDS)}), got shape {materials.shape}"
        )
    _check_dims(occupancy.shape, f"{where}: occupancy.shape")
    if not np.isfinite(occupancy).all() or occupancy.min() < 0 or occupancy.max() > 1:
        raise VoxelMapError(
            f"{where}: occupancy must hold probabilities in [0, 1] (apply a sigmoid to logits), "
            f"got values in [{occupancy.min()}, {occupancy.max()}]"
        )
    if not np.isfinite(materials).all():
        raise VoxelMapError(f"{where}: materials holds non-finite values")
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise VoxelMapError(f"{where}: threshold must be a number in [0, 1], got {threshold!r}")
    codes = (materials.argmax(axis=-1) + 1).astype(np.uint8)
    blocks = np.where(occupancy > threshold, codes, np.uint8(0))
    return VoxelMap(blocks, world_scale=world_scale, sequence=sequence, metadata=metadata or {})


def resize_map(
    m: VoxelMap, dims: tuple[int, int, int], *, world_scale: float | None = None
) -> VoxelMap:
    """The map on a grid of `dims` by nearest-neighbour resampling.

    New voxel i of an axis of n voxels (old size n0) takes old voxel floor(i * n0 / n): an
    integer upscale repeats each voxel (16 -> 32: 0, 0, 1, 1, ...), a downscale keeps
    the first of each group (32 -> 16: 0, 2, 4, ...), so the ground layer stays y = 0.

    The world keeps its extent: world_scale becomes m.world_scale * X0 / X, which needs
    one ratio on all three axes; for a resize that changes the proportions, pass the new
    `world_scale`.
    """
    new = _check_dims(dims, "resize_map: dims")
    old = m.dims
    if world_scale is None:
        if not (new[0] * old[1] == new[1] * old[0] and new[0] * old[2] == new[2] * old[0]):
            raise VoxelMapError(
                f"resize_map: {old} -> {new} changes the proportions, so no single world_scale "
                "keeps the world's extent; pass world_scale"
            )
        world_scale = m.world_scale * old[0] / new[0]
    index = [(np.arange(n) * n0) // n for n, n0 in zip(new, old)]
    blocks = m.blocks[np.ix_(*index)]
    return VoxelMap(blocks, world_scale=world_scale, sequence=m.sequence, metadata=m.metadata)


# ---------------------------------------------------------------- validity measures

# Face neighbours only: blocks touching at an edge or a corner do not hold each other up.
_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def floating_share(m: VoxelMap) -> float:
    """Share of solid blocks not 6-connected (through shared faces) to the ground layer
    y = 0; 0.0 for an empty map."""
    total = m.count
    if total == 0:
        return 0.0
    labels, _ = ndimage.label(m.blocks > 0, structure=_SIX_CONNECTED)  # [X, Y, Z]
    grounded = np.unique(labels[:, 0, :])
    grounded = grounded[grounded > 0]
    return float(total - np.isin(labels, grounded).sum()) / total


def block_count(m: VoxelMap) -> int:
    """Solid blocks (every block is inside the world: a VoxelMap cannot hold one outside)."""
    return m.count
