"""Procedural voxel structures for the voxel-sds tiny preset: worlds whose class is known.

The tiny preset trains a tiny diffusion prior on renders of these structures and then
asks whether a world optimised from a prompt moved toward the prompted class. Here the
truth is computable: every structure is drawn from its class's generator, and the class
evidence (`shape_features`, `class_scores`, `histogram_distance`) is read from the map
alone, never from the reward the optimiser saw.

| class   | prompt           | material | structure |
|---------|------------------|----------|-----------|
| tower   | "a stone tower"  | Stone    | a tall square pillar, a Plank roof or Stone battlements, |
|         |                  |          | a Plank door and windows |
| pyramid | "a sand pyramid" | Sand     | a stepped square pyramid (one voxel in per level), |
|         |                  |          | a few Stone blocks, maybe a Stone capstone |
| wall    | "a wooden wall"  | Plank    | a long wall 1-2 thick along x or z, a few Stone blocks |
| hill    | "a snow hill"    | Snow     | a paraboloid mound: Snow over Dirt, a few Stone rocks |

Every structure stands on a Grass ground plane (the y = 0 layer, `initial_map("ground")`)
and keeps a margin of one voxel to the world's sides and top. Each is built of columns
rising from y = 1 without gaps, so every block is connected to the ground
(`floating_share(m) == 0`). Sizes are fractions of the world's dims, so one class looks
alike at 16^3, 32^3 and 32 x 16 x 32; per seed, the size, the position, the wall's axis
and the secondary blocks vary. Deterministic: `make_structure(name, dims, seed)` depends
only on its arguments (a numpy Generator from `seed`).

"Ground" is the Grass of the y = 0 layer; every other solid block is a non-ground block,
and the features and material shares are over non-ground blocks only.

    >>> m = make_structure("a stone tower", (16, 16, 16), seed=0)
    >>> max(class_scores(m), key=class_scores(m).get)
    'tower'
    >>> histogram_distance(m, "tower") < histogram_distance(m, "wall")
    True
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from genalign.data.voxel_map import DEFAULT_WORLD_SCALE, MATERIALS, MAX_VOXELS, SOLIDS, VoxelMap

# At 8 voxels an axis every class still fits with its margin: a 2-wide tower 4 tall, a
# pyramid of base 3, a wall 4 long, a hill of radius 2.
MIN_DIM = 8
# Empty voxels kept between a structure and the world's sides and top.
_MARGIN = 1
# Prototype structures per class for `class_scores` and `material_target`, drawn from
# seeds _PROTOTYPE_SEED + i: far from the small seeds callers and tests use, so a test
# classifies structures the prototypes were not made from.
PROTOTYPES = 32
_PROTOTYPE_SEED = 1_000_000
# Floor of a feature's spread when standardising: a feature that no prototype varies
# (the Water share is always 0) would otherwise divide by zero. 0.05 is a twentieth of
# the range of a share; this project's choice.
_MIN_SCALE = 0.05
# Softmax temperature in standardised units, this project's choice: with 1.0 each of 200
# structures per class scores its own class 0.87 or more at 16^3 (median 0.97) and 0.92
# or more at 32^3, measured with seeds 0-199.
TEMPERATURE = 1.0

_CODE = {name: i for i, name in enumerate(MATERIALS)}
_GRASS, _DIRT, _STONE, _PLANK, _SNOW, _SAND = (
    _CODE[n] for n in ("Grass", "Dirt", "Stone", "Plank", "Snow", "Sand")
)
SHAPE_FEATURES = ("height", "footprint", "footprint_fill", "aspect", "fill")
FEATURES = SHAPE_FEATURES + tuple(f"share_{name}" for name in SOLIDS)


class VoxelSceneError(ValueError):
    """A request for a structure that cannot be made; the message names the argument."""


Dims = tuple[int, int, int]
# Draws a structure into `blocks` ([X, Y, Z] uint8, the ground layer already laid).
Builder = Callable[[np.ndarray, np.random.Generator], None]


@dataclasses.dataclass(frozen=True)
class PromptClass:
    """A prompt class: its short name, its prompt, its dominant solid and its generator."""

    name: str
    prompt: str
    material: str  # one of SOLIDS: the most common material of its non-ground blocks
    build: Builder


# ---------------------------------------------------------------- helpers


def _between(rng: np.random.Generator, lo: float, hi: float) -> int:
    """An integer in [round(lo), round(hi)], at least 1; hi below lo gives round(lo)."""
    a = max(1, round(lo))
    return int(rng.integers(a, max(a, round(hi)) + 1))


def _corner(rng: np.random.Generator, n: int, size: int) -> int:
    """The low corner of a span of `size` voxels on an axis of `n`, keeping the margin."""
    return int(rng.integers(_MARGIN, n - _MARGIN - size + 1))


def _sprinkle(
    blocks: np.ndarray, rng: np.random.Generator, among: int, code: int, count: int
) -> None:
    """Turn `count` randomly chosen blocks of material `among` above the ground into `code`,
    at most an eighth of them, so the class's material stays dominant on small worlds.

    Replacing a block never disconnects the structure.
    """
    cells = np.argwhere(blocks[:, 1:, :] == among) + (0, 1, 0)  # [N, 3]
    pick = rng.choice(len(cells), size=min(count, max(1, len(cells) // 8)), replace=False)
    x, y, z = cells[pick].T
    blocks[x, y, z] = code


# ---------------------------------------------------------------- the generators


def _tower(blocks: np.ndarray, rng: np.random.Generator) -> None:
    X, Y, Z = blocks.shape
    side = _between(rng, min(X, Z) / 8, min(X, Z) / 5)
    side = max(side, 2)
    # Body from y = 1 up to `top`, one layer above it for the roof or battlements.
    top = min(_between(rng, 0.55 * Y, 0.8 * Y), Y - _MARGIN - 2)
    x0, z0 = _corner(rng, X, side), _corner(rng, Z, side)
    blocks[x0 : x0 + side, 1 : top + 1, z0 : z0 + side] = _STONE
    if rng.random() < 0.5:
        blocks[x0 : x0 + side, top + 1, z0 : z0 + side] = _PLANK  # a roof
    else:
        i, k = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        rim = (i == 0) | (k == 0) | (i == side - 1) | (k == side - 1)
        merlon = rim & ((i + k) % 2 == 0)
        layer = blocks[x0 : x0 + side, top + 1, z0 : z0 + side]
        layer[merlon] = _STONE
    # A door two high in the middle of one face, and windows: Plank in the Stone.
    face = int(rng.integers(4))
    mid = side // 2
    doors = ((x0 + mid, z0), (x0 + mid, z0 + side - 1), (x0, z0 + mid), (x0 + side - 1, z0 + mid))
    door_x, door_z = doors[face]
    blocks[door_x, 1:3, door_z] = _PLANK
    for _ in range(int(rng.integers(1, 4))):
        y = int(rng.integers(3, top + 1)) if top >= 3 else top
        if rng.random() < 0.5:
            blocks[x0 + int(rng.integers(side)), y, rng.choice([z0, z0 + side - 1])] = _PLANK
        else:
            blocks[rng.choice([x0, x0 + side - 1]), y, z0 + int(rng.integers(side))] = _PLANK


def _pyramid(blocks: np.ndarray, rng: np.random.Generator) -> None:
    X, Y, Z = blocks.shape
    # ceil(base / 2) levels must fit below the top margin.
    base = min(_between(rng, 0.4 * min(X, Z), 0.7 * min(X, Z)), 2 * (Y - _MARGIN - 1))
    base = max(base, 3)
    x0, z0 = _corner(rng, X, base), _corner(rng, Z, base)
    level = 0
    while base - 2 * level >= 1:
        a, b = level, base - level
        blocks[x0 + a : x0 + b, 1 + level, z0 + a : z0 + b] = _SAND
        level += 1
    if rng.random() < 0.5:
        top = np.argwhere(blocks[:, level, :] == _SAND)  # the last level laid
        blocks[top[:, 0], level, top[:, 1]] = _STONE  # a capstone
    _sprinkle(blocks, rng, _SAND, _STONE, int(rng.integers(2, 6)))


def _wall(blocks: np.ndarray, rng: np.random.Generator) -> None:
    X, Y, Z = blocks.shape
    along_x = bool(rng.random() < 0.5)
    n, m = (X, Z) if along_x else (Z, X)
    length = _between(rng, 0.5 * n, 0.8 * n)
    thick = int(rng.integers(1, 3))
    height = min(_between(rng, 0.25 * Y, 0.45 * Y), Y - _MARGIN - 1)
    height = max(height, 2)
    a, b = _corner(rng, n, length), _corner(rng, m, thick)
    if along_x:
        blocks[a : a + length, 1 : height + 1, b : b + thick] = _PLANK
    else:
        blocks[b : b + thick, 1 : height + 1, a : a + length] = _PLANK
    _sprinkle(blocks, rng, _PLANK, _STONE, int(rng.integers(2, 6)))


def _hill(blocks: np.ndarray, rng: np.random.Generator) -> None:
    X, Y, Z = blocks.shape
    radius = max(2.0, rng.uniform(0.25, 0.4) * min(X, Z))
    peak = max(2.0, min(rng.uniform(0.2, 0.35) * Y, Y - _MARGIN - 1))
    # The centre keeps every column with d < radius inside the margin.
    cx = rng.uniform(_MARGIN + radius - 0.5, X - _MARGIN - radius + 0.5)
    cz = rng.uniform(_MARGIN + radius - 0.5, Z - _MARGIN - radius + 0.5)
    x, z = np.meshgrid(np.arange(X) + 0.5, np.arange(Z) + 0.5, indexing="ij")  # [X, Z]
    d2 = ((x - cx) ** 2 + (z - cz) ** 2) / radius**2
    heights = np.where(d2 < 1, np.round(peak * (1 - d2)), 0).astype(np.int64)  # [X, Z]
    core = (0.4 * heights).astype(np.int64)  # Dirt below, the top 60% or more Snow
    y = np.arange(Y)[None, :, None]  # [1, Y, 1]
    snow = (y >= 1) & (y <= heights[:, None, :])
    dirt = (y >= 1) & (y <= core[:, None, :])
    blocks[snow] = _SNOW
    blocks[dirt] = _DIRT
    _sprinkle(blocks, rng, _SNOW, _STONE, int(rng.integers(2, 5)))


PROMPT_CLASSES: dict[str, PromptClass] = {
    c.name: c
    for c in (
        PromptClass("tower", "a stone tower", "Stone", _tower),
        PromptClass("pyramid", "a sand pyramid", "Sand", _pyramid),
        PromptClass("wall", "a wooden wall", "Plank", _wall),
        PromptClass("hill", "a snow hill", "Snow", _hill),
    )
}
_BY_PROMPT = {c.prompt: c for c in PROMPT_CLASSES.values()}


def prompt_class(name_or_prompt: str) -> PromptClass:
    """The class of a short name ("tower") or its prompt ("a stone tower")."""
    found = PROMPT_CLASSES.get(name_or_prompt) or _BY_PROMPT.get(name_or_prompt)
    if found is None:
        raise VoxelSceneError(
            f"unknown prompt class {name_or_prompt!r}; valid names: {list(PROMPT_CLASSES)}, "
            f"prompts: {list(_BY_PROMPT)}"
        )
    return found


def _check_dims(dims: Any, at: str) -> Dims:
    if (
        not isinstance(dims, tuple | list)
        or len(dims) != 3
        or not all(isinstance(n, int | np.integer) and not isinstance(n, bool) for n in dims)
    ):
        raise VoxelSceneError(f"{at}: expected 3 integers (X, Y, Z), got {dims!r}")
    dims = (int(dims[0]), int(dims[1]), int(dims[2]))
    if min(dims) < MIN_DIM:
        raise VoxelSceneError(
            f"{at}: {dims} is too small; a structure needs at least {MIN_DIM} voxels along "
            "each axis"
        )
    if math.prod(dims) > MAX_VOXELS:
        raise VoxelSceneError(f"{at}: {dims} holds more than MAX_VOXELS = {MAX_VOXELS} voxels")
    return dims


def make_structure(name_or_prompt: str, dims: Dims, seed: int) -> VoxelMap:
    """A structure of the class on a Grass ground plane; the same arguments, the same map.

    `name_or_prompt`: a key of PROMPT_CLASSES or its prompt. `dims`: (X, Y, Z), each at
    least MIN_DIM. The map's metadata holds the prompt, the class name and the seed.
    """
    cls = prompt_class(name_or_prompt)
    dims = _check_dims(dims, "make_structure: dims")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise VoxelSceneError(f"make_structure: seed must be a non-negative integer, got {seed!r}")
    blocks = np.zeros(dims, dtype=np.uint8)
    blocks[:, 0, :] = _GRASS
    cls.build(blocks, np.random.default_rng(int(seed)))
    return VoxelMap(
        blocks,
        world_scale=DEFAULT_WORLD_SCALE,
        metadata={"prompt": cls.prompt, "class": cls.name, "seed": int(seed)},
    )


# ---------------------------------------------------------------- class evidence


def _non_ground(m: VoxelMap) -> np.ndarray:
    """[X, Y, Z] bool: solid blocks other than the Grass of the y = 0 layer."""
    solid = m.blocks > 0
    solid[:, 0, :] &= m.blocks[:, 0, :] != _GRASS
    return solid


def _shares(m: VoxelMap, solid: np.ndarray) -> np.ndarray:
    """[7] share of each of SOLIDS among the blocks of `solid`; zeros when none."""
    counts = np.bincount(m.blocks[solid], minlength=len(MATERIALS))[1:].astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts


def shape_features(m: VoxelMap) -> dict[str, float]:
    """Class evidence from the map alone, over its non-ground blocks (all 0.0 when none).

    height          (highest non-ground block's y + 1) / Y
    footprint       share of the X * Z columns holding a non-ground block
    footprint_fill  footprint columns / area of their bounding rectangle (1 for a square
                    or a wall, pi/4 for a disc)
    aspect          short side / long side of that rectangle (about 0.1 for a wall, 1 for a
                    tower, pyramid or hill)
    fill            non-ground blocks / volume of their bounding box (1 for a solid box,
                    about 1/3 for a stepped pyramid)
    share_<M>       share of material M among non-ground blocks, for each of SOLIDS
    """
    solid = _non_ground(m)
    features = dict.fromkeys(FEATURES, 0.0)
    if not solid.any():
        return features
    X, Y, Z = m.dims
    columns = solid.any(axis=1)  # [X, Z]
    xs, ys, zs = (np.flatnonzero(solid.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    wx, wy, wz = (int(a[-1] - a[0] + 1) for a in (xs, ys, zs))
    features["height"] = float(ys[-1] + 1) / Y
    features["footprint"] = float(columns.sum()) / (X * Z)
    features["footprint_fill"] = float(columns.sum()) / (wx * wz)
    features["aspect"] = min(wx, wz) / max(wx, wz)
    features["fill"] = float(solid.sum()) / (wx * wy * wz)
    for name, share in zip(SOLIDS, _shares(m, solid)):
        features[f"share_{name}"] = float(share)
    return features


@functools.lru_cache(maxsize=8)
def _prototypes(dims: Dims) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class the mean features and mean material shares of PROTOTYPES structures
    of `dims`, and the features' spread: ([C, F], [C, 7], [F]), read-only."""
    features, shares = [], []
    for name in PROMPT_CLASSES:
        maps = [make_structure(name, dims, _PROTOTYPE_SEED + i) for i in range(PROTOTYPES)]
        features.append([[shape_features(m)[f] for f in FEATURES] for m in maps])
        shares.append([_shares(m, _non_ground(m)) for m in maps])
    f = np.array(features)  # [C, PROTOTYPES, F]
    scale = np.maximum(f.reshape(-1, len(FEATURES)).std(axis=0), _MIN_SCALE)  # [F]
    out = (f.mean(axis=1), np.array(shares).mean(axis=1), scale)
    for a in out:
        a.flags.writeable = False
    return out


def class_scores(m: VoxelMap) -> dict[str, float]:
    """A score per class in [0, 1], summing to 1: a nearest-prototype classifier.

    Each class's prototype is the mean `shape_features` of PROTOTYPES (32) structures of
    the class made at the map's dims (seeds the callers do not use). Features are
    standardised by their spread over all those structures (at least _MIN_SCALE = 0.05);
    the score is a softmax over -d_c / TEMPERATURE, d_c the Euclidean distance from the
    map's standardised features to class c's prototype. A structure of each class scores
    its own class highest (tests/unit/test_voxel_scenes.py measures the accuracy).
    A map with no non-ground block (the bare ground plane an optimisation starts from)
    shows no class: it scores 1 / len(PROMPT_CLASSES) for each. Its features are all 0 by
    convention, not measurements, and as distances they would favour whichever prototype
    sits nearest that corner (the hill, 0.72 at 16^3).
    The map's dims must be at least MIN_DIM along each axis (the prototypes are made at
    them).
    """
    means, _, scale = _prototypes(_check_dims(m.dims, "class_scores: the map's dims"))
    if not _non_ground(m).any():
        return dict.fromkeys(PROMPT_CLASSES, 1.0 / len(PROMPT_CLASSES))
    x = np.array([shape_features(m)[f] for f in FEATURES])  # [F]
    d = np.linalg.norm((x - means) / scale, axis=1)  # [C]
    logits = -d / TEMPERATURE
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return {name: float(s) for name, s in zip(PROMPT_CLASSES, p)}


def material_target(name: str, dims: Dims = (32, 32, 32)) -> dict[str, float]:
    """The class's mean material shares over non-ground blocks, every one of SOLIDS.

    The mean over PROTOTYPES structures of `dims` of each structure's shares. `name`: a
    class name or prompt. The shares barely change with dims; `histogram_distance` uses
    the map's own.
    """
    cls = prompt_class(name)
    _, shares, _ = _prototypes(_check_dims(dims, "material_target: dims"))
    row = shares[list(PROMPT_CLASSES).index(cls.name)]
    return {material: float(s) for material, s in zip(SOLIDS, row)}


def histogram_distance(m: VoxelMap, name: str) -> float:
    """L1 distance in [0, 2] between the map's material shares over non-ground blocks and
    `material_target(name, m.dims)`; 1.0 for a map with no non-ground block (neither
    toward nor away from any class: it has no materials to compare)."""
    target = material_target(name, m.dims)
    solid = _non_ground(m)
    if not solid.any():
        return 1.0
    own = _shares(m, solid)
    return float(np.abs(own - np.array([target[s] for s in SOLIDS])).sum())
