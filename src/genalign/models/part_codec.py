"""Part codec: primitive parameters <-> normalised latent tokens <-> meshes and GLB files.

A part is a box or a y-axis cylinder with a center, half extents and a yaw (rotation
about +y). Each part is encoded as `PART_TOKENS` tokens of `TOKEN_DIM` numbers, an
object as `[P, PART_TOKENS, TOKEN_DIM]` (P <= `MAX_PARTS`), which is what the part DiT
generates. The encoding is fixed (no learned VAE), so a decoded latent is always a valid
set of primitives.

Slot layout of one part latent `[4, 4]` (row = token):

    token 0  position     [(cx - Cx) / C,  (cy - Cy) / C,  (cz - Cz) / C,  k]
    token 1  size         [(log hx - M) / S, (log hy - M) / S, (log hz - M) / S, k]
    token 2  orientation  [cos 2*yaw, sin 2*yaw, k, k]
    token 3  kind         [k, k, k, k]

with k = +1 for a box and -1 for a cylinder, (Cx, Cy, Cz) = `CENTER_MEAN`,
C = `CENTER_SCALE`, M = `LOG_HALF_MEAN`,
S = `LOG_HALF_STD` (chosen so the dataset's latents are about zero-mean, unit-scale).

Symmetries: a box looks the same after a half turn, so yaw enters as 2*yaw and yaw and
yaw + pi encode identically. A cylinder looks the same at every yaw and has one radius,
so it encodes with yaw = 0 and hz = hx (= radius). Not identified: a box turned a
quarter turn with hx and hz swapped is the same solid but encodes differently.

Decoding accepts any real latent: kind is the sign of the mean of the eight k slots
(ties give a box), yaw is atan2 of the orientation pair (0 when the pair is zero),
half extents are clamped to [`MIN_HALF_EXTENT`, `MAX_HALF_EXTENT`] and centers to
[-`MAX_ABS_CENTER`, `MAX_ABS_CENTER`]; a cylinder's radius is the geometric mean of
the decoded hx and hz.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genalign.storage import atomic_write_bytes

if TYPE_CHECKING:
    import trimesh

PART_TOKENS = 4
TOKEN_DIM = 4
MAX_PARTS = 8

KINDS = ("box", "cylinder")

# Normalisation, measured on genalign.data.parts.make_objects(4000, seed=0): centers
# have mean (0.00, -0.44, -0.02) and std (0.36, 0.40, 0.35) (objects rest on y = -1);
# log half extents have mean -2.04 and std 1.18 (legs ~0.03, table tops ~0.6).
CENTER_MEAN = (0.0, -0.45, 0.0)
CENTER_SCALE = 0.4
LOG_HALF_MEAN = -2.05
LOG_HALF_STD = 1.2

# Decode clamps. The dataset's half extents are >= 0.02 before an object is shrunk to
# fit the cube (by at most ~15%), so 0.01 clamps nothing real; 1.0 is half the unit
# cube; centers up to twice the object box keep a bad latent's meshes bounded.
MIN_HALF_EXTENT = 0.01
MAX_HALF_EXTENT = 1.0
MAX_ABS_CENTER = 2.0

# 24 sides keep a cylinder's polygonal error under 1% of its radius (1 - cos(7.5 deg)).
CYLINDER_SECTIONS = 24

_NODE_RE = re.compile(r"^part_(\d+)$")

# Slots holding the kind sign k (token, dim), see the module docstring.
_KIND_SLOTS = ((0, 3), (1, 3), (2, 2), (2, 3), (3, 0), (3, 1), (3, 2), (3, 3))


@dataclass(frozen=True)
class PartParams:
    """One primitive part. A cylinder's axis is local +y with radius half_extents[0]."""

    kind: str
    center: tuple[float, float, float]
    half_extents: tuple[float, float, float]
    yaw: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PartParams.kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.center) != 3 or len(self.half_extents) != 3:
            raise ValueError(
                f"PartParams.center and half_extents need 3 values, got "
                f"{self.center!r} and {self.half_extents!r}"
            )
        values = (*self.center, *self.half_extents, self.yaw)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"PartParams has a non-finite value: {self}")
        if min(self.half_extents) <= 0.0:
            raise ValueError(f"PartParams.half_extents must be > 0, got {self.half_extents}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "center": [float(v) for v in self.center],
            "half_extents": [float(v) for v in self.half_extents],
            "yaw": float(self.yaw),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PartParams:
        expected = {"kind", "center", "half_extents", "yaw"}
        if set(d) != expected:
            raise ValueError(f"PartParams needs keys {sorted(expected)}, got {sorted(d)}")
        return cls(
            kind=str(d["kind"]),
            center=tuple(float(v) for v in d["center"]),
            half_extents=tuple(float(v) for v in d["half_extents"]),
            yaw=float(d["yaw"]),
        )


def encode_part(p: PartParams) -> np.ndarray:
    """Encode one part as a normalised latent. Returns [PART_TOKENS, TOKEN_DIM] float32."""
    k = 1.0 if p.kind == "box" else -1.0
    hx, hy, hz = p.half_extents
    yaw = p.yaw
    if p.kind == "cylinder":
        # One radius, no orientation: the canonical form of every equivalent cylinder.
        hz = hx
        yaw = 0.0
    c = (np.asarray(p.center, dtype=np.float64) - CENTER_MEAN) / CENTER_SCALE
    s = (np.log([hx, hy, hz]) - LOG_HALF_MEAN) / LOG_HALF_STD
    z = np.empty((PART_TOKENS, TOKEN_DIM), dtype=np.float64)  # [T, D]
    z[0, :3] = c
    z[1, :3] = s
    z[2, 0] = math.cos(2.0 * yaw)
    z[2, 1] = math.sin(2.0 * yaw)
    for t, d in _KIND_SLOTS:
        z[t, d] = k
    return z.astype(np.float32)


def decode_part(latent: np.ndarray) -> PartParams:
    """Decode one part latent [PART_TOKENS, TOKEN_DIM] (any finite values) into a part."""
    z = np.asarray(latent, dtype=np.float64)
    if z.shape != (PART_TOKENS, TOKEN_DIM):
        raise ValueError(f"part latent must be [{PART_TOKENS}, {TOKEN_DIM}], got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("part latent has non-finite values")
    k = float(np.mean([z[t, d] for t, d in _KIND_SLOTS]))
    kind = "box" if k >= 0.0 else "cylinder"
    center = np.clip(z[0, :3] * CENTER_SCALE + CENTER_MEAN, -MAX_ABS_CENTER, MAX_ABS_CENTER)
    # Clip in log space first so exp never overflows.
    log_h = np.clip(
        z[1, :3] * LOG_HALF_STD + LOG_HALF_MEAN,
        math.log(MIN_HALF_EXTENT),
        math.log(MAX_HALF_EXTENT),
    )
    if kind == "cylinder":
        r = math.exp(0.5 * (log_h[0] + log_h[2]))
        half = (r, math.exp(log_h[1]), r)
        yaw = 0.0
    else:
        half = tuple(float(v) for v in np.exp(log_h))
        yaw = 0.5 * math.atan2(z[2, 1], z[2, 0])
    return PartParams(
        kind=kind,
        center=tuple(float(v) for v in center),
        half_extents=tuple(float(v) for v in half),
        yaw=float(yaw),
    )


def encode_object(parts: list[PartParams] | tuple[PartParams, ...]) -> np.ndarray:
    """Encode an object's parts in order. Returns [P, PART_TOKENS, TOKEN_DIM] float32."""
    if not 1 <= len(parts) <= MAX_PARTS:
        raise ValueError(f"an object needs 1..{MAX_PARTS} parts, got {len(parts)}")
    return np.stack([encode_part(p) for p in parts])


def decode_parts(latent: np.ndarray) -> list[PartParams]:
    """Decode an object latent [P, PART_TOKENS, TOKEN_DIM] into its parts, in order."""
    z = np.asarray(latent)
    if z.ndim != 3 or z.shape[1:] != (PART_TOKENS, TOKEN_DIM):
        raise ValueError(f"object latent must be [P, {PART_TOKENS}, {TOKEN_DIM}], got {z.shape}")
    return [decode_part(zp) for zp in z]


def decode_object(latent: np.ndarray) -> list[trimesh.Trimesh]:
    """Decode an object latent [P, PART_TOKENS, TOKEN_DIM] into one closed mesh per part."""
    return [part_mesh(p) for p in decode_parts(latent)]


def part_transform(p: PartParams) -> np.ndarray:
    """The 4x4 local-to-world transform of a part: rotate by yaw about +y, then translate."""
    c, s = math.cos(p.yaw), math.sin(p.yaw)
    m = np.eye(4)
    # Right-handed rotation about +y: x' = c x + s z, z' = -s x + c z.
    m[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    m[:3, 3] = p.center
    return m


def part_mesh(p: PartParams) -> trimesh.Trimesh:
    """A closed, watertight, outward-wound triangle mesh of one part."""
    import trimesh

    transform = part_transform(p)
    hx, hy, hz = p.half_extents
    if p.kind == "box":
        return trimesh.creation.box(extents=(2 * hx, 2 * hy, 2 * hz), transform=transform)
    # trimesh builds cylinders along +z; a quarter turn about x puts the axis on +y.
    to_y = trimesh.transformations.rotation_matrix(-math.pi / 2, (1.0, 0.0, 0.0))
    return trimesh.creation.cylinder(
        radius=hx, height=2 * hy, sections=CYLINDER_SECTIONS, transform=transform @ to_y
    )


def save_glb(meshes: list[trimesh.Trimesh], path: Path) -> None:
    """Write meshes to a GLB, one node per part named part_00, part_01, ... in order."""
    import trimesh

    if not meshes:
        raise ValueError(f"{path}: refusing to write a GLB with no parts")
    scene = trimesh.Scene()
    for i, mesh in enumerate(meshes):
        name = f"part_{i:02d}"
        scene.add_geometry(mesh, node_name=name, geom_name=name)
    data = scene.export(file_type="glb")
    atomic_write_bytes(Path(path), data)


def load_glb(path: Path) -> list[trimesh.Trimesh]:
    """Read a GLB written by `save_glb`: meshes in part order, node transforms applied."""
    import trimesh

    path = Path(path)
    try:
        scene = trimesh.load(path, file_type="glb", force="scene", process=False)
    except (OSError, ValueError, LookupError) as e:  # trimesh's parse errors vary by damage
        raise ValueError(f"{path}: cannot read GLB: {e}") from e
    indexed = []
    for node in scene.graph.nodes_geometry:
        match = _NODE_RE.match(node)
        if match is None:
            raise ValueError(f"{path}: node {node!r} is not named part_NN")
        transform, geom_name = scene.graph[node]
        mesh = scene.geometry[geom_name].copy()
        mesh.apply_transform(transform)
        indexed.append((int(match.group(1)), mesh))
    indexed.sort(key=lambda x: x[0])
    order = [i for i, _ in indexed]
    if order != list(range(len(order))) or not order:
        raise ValueError(f"{path}: expected nodes part_00..part_NN without gaps, got {order}")
    return [mesh for _, mesh in indexed]


# Binary glTF 2.0 (https://registry.khronos.org/glTF/specs/2.0/glTF-2.0.html#glb-file-format-specification):
# a 12-byte header (magic, version, length), then chunks of (length, type, data).
_GLB_MAGIC = 0x46546C67  # "glTF"
_CHUNK_JSON = 0x4E4F534A  # "JSON"
_CHUNK_BIN = 0x004E4942  # "BIN\0"
_INDEX_TYPES = {5121: "<u1", 5123: "<u2", 5125: "<u4"}  # accessor componentType
_FLOAT = 5126
# Node keys that leave the node's transform the identity (no matrix, TRS or children).
_PLAIN_NODE = {"name", "mesh", "extras"}


def read_glb_parts(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(vertices [V, 3] float64, faces [M, 3] int64) of each part of a GLB, in part order.

    The arrays `load_glb` gives, read straight from the file for the layout `save_glb`
    writes (one node per part, no transforms, one indexed triangle primitive per mesh);
    any other layout is read through `load_glb`. Raises OSError when the file cannot be
    opened and ValueError, naming the file, when it is not a GLB of parts.
    """
    path = Path(path)
    data = path.read_bytes()
    doc, blob = _glb_chunks(data, path)
    try:
        nodes = [doc["nodes"][i] for i in doc["scenes"][doc.get("scene", 0)]["nodes"]]
        plain = len(nodes) == len(doc["nodes"]) and all(_plain_node(doc, node) for node in nodes)
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: cannot read GLB: malformed glTF JSON ({type(e).__name__}: {e})") from e
    if not plain:
        return [(np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64)) for m in load_glb(path)]
    indexed = []
    for node in nodes:
        match = _NODE_RE.match(str(node.get("name", "")))
        if match is None:
            raise ValueError(f"{path}: node {node.get('name')!r} is not named part_NN")
        primitive = doc["meshes"][node["mesh"]]["primitives"][0]
        vertices = _accessor(doc, blob, primitive["attributes"]["POSITION"], path).astype(np.float64)
        faces = _accessor(doc, blob, primitive["indices"], path).astype(np.int64)
        if vertices.shape[1:] != (3,) or faces.size % 3:
            raise ValueError(f"{path}: part {node['name']}: positions must be VEC3 and indices whole triangles")
        indexed.append((int(match.group(1)), (vertices, faces.reshape(-1, 3))))
    indexed.sort(key=lambda x: x[0])
    order = [i for i, _ in indexed]
    if order != list(range(len(order))) or not order:
        raise ValueError(f"{path}: expected nodes part_00..part_NN without gaps, got {order}")
    return [arrays for _, arrays in indexed]


def _glb_chunks(data: bytes, path: Path) -> tuple[dict[str, Any], bytes]:
    """The JSON document and the binary chunk of a GLB file."""
    import json
    import struct

    if len(data) < 20:
        raise ValueError(f"{path}: cannot read GLB: {len(data)} bytes is shorter than a GLB header")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2:
        raise ValueError(f"{path}: cannot read GLB: not a binary glTF 2.0 file (magic {data[:4]!r}, version {version})")
    if length != len(data):
        raise ValueError(f"{path}: cannot read GLB: header says {length} bytes, file has {len(data)} (truncated?)")
    chunks, offset = {}, 12
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from("<II", data, offset)
        if offset + 8 + size > len(data):
            raise ValueError(f"{path}: cannot read GLB: a chunk runs past the end of the file (truncated?)")
        chunks.setdefault(kind, data[offset + 8 : offset + 8 + size])
        offset += 8 + size
    if _CHUNK_JSON not in chunks:
        raise ValueError(f"{path}: cannot read GLB: no JSON chunk")
    try:
        doc = json.loads(chunks[_CHUNK_JSON])
    except ValueError as e:
        raise ValueError(f"{path}: cannot read GLB: its JSON chunk does not parse: {e}") from e
    return doc, chunks.get(_CHUNK_BIN, b"")


def _plain_node(doc: dict[str, Any], node: dict[str, Any]) -> bool:
    """A node as `save_glb` writes it: a mesh, no transform, one indexed triangle list of
    tightly packed float32 positions."""
    if not set(node) <= _PLAIN_NODE or "mesh" not in node:
        return False
    primitives = doc["meshes"][node["mesh"]]["primitives"]
    if len(primitives) != 1 or primitives[0].get("mode", 4) != 4 or "indices" not in primitives[0]:
        return False
    position = doc["accessors"][primitives[0]["attributes"]["POSITION"]]
    index = doc["accessors"][primitives[0]["indices"]]
    return (
        position.get("componentType") == _FLOAT and position.get("type") == "VEC3"
        and index.get("componentType") in _INDEX_TYPES and index.get("type") == "SCALAR"
        and not any("sparse" in a or a.get("normalized") for a in (position, index))
        and all(doc["bufferViews"][a["bufferView"]].get("byteStride") in (None, 12 if a is position else None)
                for a in (position, index))
    )


def _accessor(doc: dict[str, Any], blob: bytes, index: int, path: Path) -> np.ndarray:
    """An accessor's data: [count, 3] for VEC3, [count] for SCALAR."""
    accessor = doc["accessors"][index]
    view = doc["bufferViews"][accessor["bufferView"]]
    if view.get("buffer", 0) != 0:
        raise ValueError(f"{path}: cannot read GLB: accessor {index} is not in the binary chunk")
    dtype = "<f4" if accessor["componentType"] == _FLOAT else _INDEX_TYPES[accessor["componentType"]]
    width = 3 if accessor["type"] == "VEC3" else 1
    count = int(accessor["count"])
    start = int(view.get("byteOffset", 0)) + int(accessor.get("byteOffset", 0))
    nbytes = count * width * np.dtype(dtype).itemsize
    if start + nbytes > int(view.get("byteOffset", 0)) + int(view["byteLength"]) or start + nbytes > len(blob):
        raise ValueError(f"{path}: cannot read GLB: accessor {index} runs past its buffer (truncated?)")
    values = np.frombuffer(blob, dtype=dtype, count=count * width, offset=start)
    return values.reshape(count, 3) if width == 3 else values
