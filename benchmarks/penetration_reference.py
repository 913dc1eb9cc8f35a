"""The penetration scorer as it stood before the fast path: the reference that the
benchmarks time against and the tests compare scores with.

A faithful copy of `src/genalign/scorers/penetration.py` at commit
2d170acee63ad9d7e8c1c067d6ac78e13861778a and of `load_glb` from
`src/genalign/models/part_codec.py` at commit 41dc26de1910d109336bf6bd2aaf16b921f94e88:
trimesh reads every GLB, every part gets a KD-tree and point-triangle distances for
depth, and `total_volume` comes from trimesh. Only the module docstring and the import
of `load_glb` (now defined here) differ. Do not optimise this file: it is the yardstick.

    from benchmarks.penetration_reference import PenetrationScorer, score_object
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genalign.config.score import PenetrationConfig
from genalign.scorers.base import ObjectScore

if TYPE_CHECKING:
    import manifold3d
    import trimesh
    from scipy.spatial import cKDTree

# Up to this many point-triangle distances go in one dense block: below it numpy's
# per-call overhead dominates, and its [N, M] temporaries stay at ~0.5 MB each.
_DENSE_ENTRIES = 1 << 16


def score_object(meshes: list[trimesh.Trimesh], cfg: PenetrationConfig) -> ObjectScore:
    """Penetration of one object given as one closed mesh per part."""
    parts = [_Part(m) for m in meshes]
    n = len(parts)
    overlaps: list[float] = []
    depth_max = 0.0
    checked = culled = degenerate_pairs = fallback = 0
    for a, b in itertools.combinations(parts, 2):
        if a.degenerate(cfg.min_volume) or b.degenerate(cfg.min_volume):
            degenerate_pairs += 1
            overlaps.append(0.0)
            continue
        if cfg.broad_phase and not _boxes_overlap(a.bounds, b.bounds):
            culled += 1
            overlaps.append(0.0)
            continue
        checked += 1
        ma, mb = a.manifold(), b.manifold()
        if ma is None or mb is None:
            fallback += 1
            overlaps.append(_voxel_overlap(a, b, cfg.voxel_resolution))
            continue
        overlap, depth = _exact_overlap(a, b, ma, mb, cfg.depth)
        overlaps.append(overlap)
        depth_max = max(depth_max, depth)
    values = np.asarray(overlaps, dtype=np.float64)  # [P (P - 1) / 2]
    detail: dict[str, Any] = {
        "num_parts": n,
        "pairs_total": len(overlaps),
        "pairs_checked": checked,
        "pairs_culled": culled,
        "pairs_degenerate": degenerate_pairs,
        "fallback_pairs": fallback,
        "non_watertight_parts": sum(p.rejected for p in parts),
        "degenerate_parts": sum(p.degenerate(cfg.min_volume) for p in parts),
        "penetration_max": float(values.max()) if len(values) else 0.0,
        "penetration_mean": float(values.mean()) if len(values) else 0.0,
        # summed part volumes: lets pair mining compare like-sized objects (MinePairsConfig.similar_key)
        "total_volume": float(sum(abs(m.volume) for m in meshes)),
    }
    if cfg.depth:
        detail["depth_max"] = float(depth_max)
    return ObjectScore(score=detail[f"penetration_{cfg.reduce}"], detail=detail)


class _Part:
    """One part's mesh with what the scorer needs from it, the manifold built on demand."""

    def __init__(self, mesh: trimesh.Trimesh) -> None:
        self.mesh = mesh
        self.faces = faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)  # [M, 3]
        self.triangles = np.asarray(mesh.vertices, dtype=np.float64)[faces]  # [M, 3, 3]
        empty = len(self.triangles) == 0
        corners = self.triangles.reshape(-1, 3)  # only the vertices that faces use
        self.bounds = (  # [2, 3]
            np.zeros((2, 3)) if empty else np.stack([corners.min(0), corners.max(0)])
        )
        # Divergence theorem: exact for a closed mesh; negative when it is wound inside out.
        t = self.triangles
        signed = float(np.einsum("ij,ij->", t[:, 0], _cross(t[:, 1], t[:, 2]))) / 6.0
        # The exact engine needs a closed, consistently oriented, outward-wound mesh.
        self.rejected = empty or not (_is_closed_oriented(faces) and signed > 0.0)
        # A rejected mesh's volume integral means nothing; its bounding box bounds its volume.
        self.volume = float(np.prod(self.bounds[1] - self.bounds[0])) if self.rejected else signed
        self._manifold: manifold3d.Manifold | None = None
        self._index: tuple[cKDTree, np.ndarray, np.ndarray] | None = None
        self.original_id = -1

    def surface_index(self) -> tuple[cKDTree, np.ndarray, np.ndarray]:
        """KD-tree of the vertices the faces use, and each triangle's box [M, 3] lo and hi
        (built once, for penetration depth)."""
        if self._index is None:
            from scipy.spatial import cKDTree

            used = np.asarray(self.mesh.vertices, dtype=np.float64)[np.unique(self.faces)]
            self._index = (cKDTree(used), self.triangles.min(1), self.triangles.max(1))
        return self._index

    def degenerate(self, min_volume: float) -> bool:
        return self.volume < min_volume

    def manifold(self) -> manifold3d.Manifold | None:
        """The part as a manifold3d solid, or None (and `rejected`) when it is not one."""
        if self.rejected:
            return None
        if self._manifold is None:
            import manifold3d

            faces = self.faces.astype(np.uint64)
            # A reserved id on the part's triangles tells, after a boolean, which
            # triangles of the result came from this part.
            self.original_id = manifold3d.Manifold.reserve_ids(1)
            solid = manifold3d.Manifold(
                manifold3d.Mesh64(
                    vert_properties=np.ascontiguousarray(self.mesh.vertices, dtype=np.float64),
                    tri_verts=np.ascontiguousarray(faces),
                    run_index=np.array([0, faces.size], dtype=np.uint64),
                    run_original_id=np.array([self.original_id], dtype=np.uint32),
                )
            )
            if solid.status() != manifold3d.Error.NoError or solid.is_empty():
                self.rejected = True
                return None
            self._manifold = solid
        return self._manifold


def _is_closed_oriented(faces: np.ndarray) -> bool:
    """Every directed edge appears once and its reverse once: closed and consistently wound."""
    if len(faces) == 0:
        return False
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).astype(np.int64)  # [3M, 2]
    n = int(faces.max()) + 1
    forward = np.sort(edges[:, 0] * n + edges[:, 1])
    backward = np.sort(edges[:, 1] * n + edges[:, 0])
    return bool(np.all(forward[1:] != forward[:-1]) and np.array_equal(forward, backward))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of [M, 3] arrays (np.cross costs ~0.1 ms a call in overhead)."""
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=1)


def _boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Strict overlap of two [2, 3] boxes: boxes that only touch hold no common volume."""
    return bool(np.all(a[0] < b[1]) and np.all(b[0] < a[1]))


def _exact_overlap(
    a: _Part, b: _Part, ma: manifold3d.Manifold, mb: manifold3d.Manifold, depth: bool
) -> tuple[float, float]:
    """(vol(A ∩ B) / min volume, depth) from an exact boolean."""
    solid = ma ^ mb
    volume = solid.volume()
    if volume <= 0.0:
        return 0.0, 0.0
    # The engine's own volumes, so a part wholly inside the other scores exactly 1;
    # min() absorbs any remaining rounding.
    overlap = min(1.0, volume / min(ma.volume(), mb.volume()))
    if not depth:
        return overlap, 0.0
    mesh = solid.to_mesh64()
    verts = np.asarray(mesh.vert_properties)[:, :3]  # [V, 3]
    tris = np.asarray(mesh.tri_verts).reshape(-1, 3)  # [F, 3]
    runs = np.asarray(mesh.run_index) // 3  # [R + 1] triangle offsets of each run
    origin = np.repeat(np.asarray(mesh.run_original_id), np.diff(runs))  # [F]
    # A vertex on B's surface lies inside A: its depth is its distance to A's surface.
    on_b = np.unique(tris[origin == b.original_id])
    on_a = np.unique(tris[origin == a.original_id])
    return overlap, max(
        _max_distance_to_surface(verts[on_b], a), _max_distance_to_surface(verts[on_a], b)
    )


def _max_distance_to_surface(points: np.ndarray, part: _Part) -> float:
    """max over points [N, 3] of the unsigned distance to the part's surface.

    Branch and bound: the distance U to the nearest mesh vertex bounds a point's distance
    from above. The few points with the largest U go first and set a best exact distance;
    every point whose U does not beat it is dropped; the rest go in small blocks of
    nearby points, each compared only with the triangles whose boxes come within the
    block's largest U of it (they include each point's nearest triangle).
    """
    if len(points) == 0:
        return 0.0
    if len(points) * len(part.triangles) <= _DENSE_ENTRIES:
        return float(_point_triangle_distance(points, part.triangles).min(1).max())
    tree, tri_lo, tri_hi = part.surface_index()
    upper, _ = tree.query(points)  # [N]

    def block_max(idx: np.ndarray) -> float:
        reach = upper[idx].max()
        lo = points[idx].min(0) - reach
        hi = points[idx].max(0) + reach
        near = np.all((tri_lo <= hi) & (tri_hi >= lo), axis=1)
        return float(_point_triangle_distance(points[idx], part.triangles[near]).min(1).max())

    order = np.argsort(-upper)
    best = block_max(order[:8])
    rest = order[8:][upper[order[8:]] > best]
    if len(rest) == 0:
        return best
    # Blocks of points that are close together: sort by cell of a grid about as coarse
    # as the largest remaining bound, so a block's box stays small; small meshes take
    # larger blocks.
    cell = np.floor((points[rest] - points[rest].min(0)) / max(upper[rest].max(), 1e-12))
    rest = rest[np.lexsort(cell.T)]
    size = max(32, _DENSE_ENTRIES // len(part.triangles))
    for start in range(0, len(rest), size):
        idx = rest[start : start + size]
        idx = idx[upper[idx] > best]
        if len(idx):
            best = max(best, block_max(idx))
    return best


def _point_triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Unsigned distance of each point [N, 3] to each triangle [M, 3, 3]. Returns [N, M].

    Inside the triangle's prism the distance is to its plane, outside it is to the
    nearest of its three edge segments. Every term is a dot product, so the [N, M]
    arrays come from outer products and no [N, M, 3] array is built.
    """

    def dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x, y)

    def outer(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # einsum, not x @ y.T: a threaded BLAS call for an inner size of 3 is several
        # times slower on a busy machine.
        return np.einsum("ij,kj->ik", x, y)

    v = [tri[:, 0], tri[:, 1], tri[:, 2]]  # 3 x [M, 3]
    e = [v[1] - v[0], v[2] - v[1], v[0] - v[2]]  # edges v_i -> v_{i+1}
    normal = _cross(e[0], -e[2])  # [M, 3], |normal| = twice the area
    area2 = dot(normal, normal)
    pp = dot(p, p)[:, None]  # [N, 1]
    inside = np.broadcast_to(area2 > 0.0, (len(p), len(tri))).copy()  # [N, M]
    edge_d2 = np.full((len(p), len(tri)), np.inf)
    for vi, ei in zip(v, e, strict=True):
        # (p - v_i) . (n x e_i) >= 0 on the inner side of edge i (counter-clockwise about n).
        k = _cross(normal, ei)
        inside &= outer(p, k) >= dot(vi, k)
        ee = dot(ei, ei)
        pe = outer(p, ei) - dot(vi, ei)  # (p - v_i) . e_i
        t = np.clip(pe / np.where(ee > 0.0, ee, 1.0), 0.0, 1.0)
        # |p - v_i - t e_i|^2 = |p - v_i|^2 - 2 t (p - v_i) . e_i + t^2 |e_i|^2
        pv2 = pp - 2.0 * outer(p, vi) + dot(vi, vi)
        edge_d2 = np.minimum(edge_d2, pv2 - t * (2.0 * pe - t * ee))
    plane_d2 = (outer(p, normal) - dot(v[0], normal)) ** 2 / np.where(area2 > 0.0, area2, 1.0)
    return np.sqrt(np.maximum(np.where(inside, plane_d2, edge_d2), 0.0))


def _voxel_overlap(a: _Part, b: _Part, resolution: int) -> float:
    """|vox A ∧ vox B| / min(|vox A|, |vox B|) on a resolution^3 grid over the joint box."""
    from genalign.evaluation.geometry import voxelize_parts

    lo = np.minimum(a.bounds[0], b.bounds[0])
    hi = np.maximum(a.bounds[1], b.bounds[1])
    occ = voxelize_parts([a.mesh, b.mesh], lo, hi, resolution)  # [2, R, R, R]
    smaller = int(occ.reshape(2, -1).sum(1).min())
    if smaller == 0:
        # A part thinner than a cell everywhere: too small to measure on this grid.
        return 0.0
    return float(np.count_nonzero(occ[0] & occ[1]) / smaller)


def _score_file(path: Path, cfg: PenetrationConfig) -> ObjectScore:
    try:
        meshes = load_glb(path)
    # Any failure to read (missing, truncated, not a GLB, wrong nodes) makes this one
    # sample failed and leaves the rest of the batch to be scored.
    except Exception as e:  # noqa: BLE001
        return ObjectScore.failed(f"{path}: {type(e).__name__}: {e}")
    return score_object(meshes, cfg)


class PenetrationScorer:
    """Scores GLB files of part-decomposed objects by inter-part penetration (lower is better)."""

    name = "penetration"
    higher_is_better = False

    def __init__(self, cfg: PenetrationConfig) -> None:
        self.cfg = cfg

    def score_files(self, paths: list[Path]) -> list[ObjectScore]:
        """One ObjectScore per path, in order; an unreadable file gives a failed score."""
        from tqdm.auto import tqdm

        paths = [Path(p) for p in paths]
        progress = {"total": len(paths), "desc": "penetration", "disable": None}
        if self.cfg.workers == 1 or len(paths) <= 1:
            return [_score_file(p, self.cfg) for p in tqdm(paths, **progress)]
        workers = min(self.cfg.workers, len(paths))
        # spawn, not fork: the caller may hold torch or BLAS threads that a fork would copy
        # in a locked state.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            chunk = max(1, len(paths) // (4 * workers))
            results = pool.map(_score_file, paths, itertools.repeat(self.cfg), chunksize=chunk)
            return list(tqdm(results, **progress))


_NODE_RE = re.compile(r"^part_(\d+)$")


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
