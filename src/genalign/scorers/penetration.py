"""Inter-part penetration: how much the parts of a part-decomposed mesh overlap.

For every pair of parts (A, B) of an object:

    overlap(A, B) = vol(A ∩ B) / min(vol A, vol B)      in [0, 1]

0: the parts at most touch; 1: the smaller part lies wholly inside the other. Per object
(P parts, P (P - 1) / 2 pairs):

    penetration_max   max overlap over all pairs
    penetration_mean  mean overlap over all pairs (culled and degenerate pairs count as 0)
    depth_max         max over pairs of the pair's penetration depth (below)

`score` is penetration_max or penetration_mean (`PenetrationConfig.reduce`); lower is
better; an object with one part scores 0.

How a pair is decided, cheapest test first:

1. Broad phase: a pair whose axis-aligned bounding boxes do not overlap (touching is not
   overlapping) cannot intersect: it scores 0 and is counted in pairs_culled.
2. Separating plane: a plane with every vertex of A on one side and every vertex of B on
   the other separates the parts' convex hulls, hence the parts; the pair scores 0
   without a boolean (pairs_separated). The coordinate planes are tried first (boxes
   that overlap by rounding only), then the face normals of both parts. The test allows
   1e-12 of the parts' size for rounding, so parts that touch along a face are settled
   here; an exact boolean returns rounding noise for them (~1e-19, ~1e-16 as a score).
3. Exact volume. Two convex parts (closed, consistently wound, every face on a plane
   that supports the part) with 1000 triangles or more between them: A ∩ B is convex
   and its vertices are the corners of one part inside the other and the points where
   one part's edges cross the other's planes (clipped in one vectorised pass); its
   volume is the volume of their convex hull (qhull). A part wholly inside the other
   scores exactly 1. Every other closed pair, small convex ones included, goes through
   an exact manifold3d boolean, with the boolean's own volumes as denominators (so the
   pipeline's 12- to 96-triangle parts score bit for bit as a boolean scores them). The
   two are exact up to rounding and agree to ~1e-15.

Penetration depth (`depth_max`, a detail, never the score):

- Convex pairs: the minimum translation distance, the length of the shortest
  translation of one part after which the two no longer overlap. It is the distance
  from the origin to the boundary of the Minkowski difference A - B, reached on one of
  its face normals: a face normal of A, one of B, or the cross product of an edge of A
  and an edge of B whose arcs cross on the Gauss map. The separating-axis test over
  those axes gives it exactly, independent of how the faces are triangulated (Gregorius
  2013, "The Separating Axis Test between Convex Polyhedra", GDC; van den Bergen 2003,
  "Collision Detection in Interactive 3D Environments", ch. 4.3).
- Other closed pairs (one part not convex): the deepest intersection-solid vertex. A
  vertex of A ∩ B that lies on the surface of B (so inside A) is as deep as its distance
  to the surface of A, and vice versa; max over the vertices. It says how far one
  surface reaches into the other part, but it samples vertices only: a part pushed in
  flush with the other's sides, so that every vertex of A ∩ B lies on both surfaces,
  reads 0, and a finer triangulation can read deeper.

Fallback: a part that is not closed and consistently oriented (a hole, an inverted
mesh), or that manifold3d rejects, is compared on voxels instead: |A ∧ B| / min(|A|, |B|)
on a voxel_resolution^3 grid over the pair's joint bounding box (PartCrafter's 64^3),
voxelised by `genalign.evaluation.geometry.voxelize_parts`. Those pairs have no depth and
skip the separating-plane test (a holed mesh's voxels can lie outside its hull).

Cost: a part's setup (volume, box, closedness, planes) is a few dozen numpy operations;
the parts of an object are set up joined end to end in runs of up to 2048 triangles, so
small parts share the fixed cost of each call.

A score is a number only when it is one: a part with a non-finite vertex, a face that
names a missing vertex, or a result that is not finite makes the whole object a failed
score with the reason (`ObjectScore.failed`), never 0 and never NaN.

Detail (JSON ints and floats): num_parts, pairs_total, pairs_checked (past the broad
phase), pairs_culled (broad phase), pairs_separated (of the checked, settled by a
separating plane), pairs_degenerate, fallback_pairs, non_watertight_parts,
degenerate_parts (volume below min_volume; their pairs score 0), penetration_max,
penetration_mean, total_volume, and depth_max when `cfg.depth`.

Score a batch of GLB files with `PenetrationScorer(cfg).score_files(paths)`; it starts
worker processes only when the batch is expected to outlast their start-up.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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

# Tolerance of a plane test, as a multiple of the parts' size (their largest absolute
# coordinate, at least 1). Rounding in n . v - d is a few 1e-16 of that size, so 1e-12
# leaves a margin of ~1000 and moves a volume by at most ~1e-12 of a face's area.
_PLANE_TOL = 1e-12
# Face normals that agree to this (per component) are one plane of a convex part: a
# subdivided face's triangles agree to ~1e-16, neighbouring faces of a 128-gon by 0.05.
_NORMAL_QUANTUM = 2.0**-20
# A triangle whose doubled area is below this times size^2 has no reliable normal; a
# part with one takes the boolean path.
_SLIVER = 1e-20
# A convex part with more distinct face planes than this takes the boolean path: its
# edge-edge candidate axes (planes^2 per pair) would cost more than the boolean.
_MAX_PLANES = 512
# A part's separating-plane test projects its support on its planes; beyond this many
# products (planes x vertices) a non-convex part skips it and takes the boolean.
_MAX_PROJECTIONS = 1 << 20
# Two edges' arcs cross on the Gauss map only when each of the four side tests clears
# this (unit vectors): near-touching arcs meet next to a face normal, already an axis.
_ARC_EPS = 1e-9
# Convex pairs with fewer triangles than this between them go through the boolean:
# there manifold3d costs no more than the hull path (~0.2 ms a pair on the pipeline's
# decoded boxes and cylinders) and gives the scores bit for bit as a boolean does.
_HULL_MIN_TRIANGLES = 1000
# Coordinates beyond this would overflow float64 once cubed into a volume (1e308).
_MAX_COORDINATE = 1e100
# Parts are set up in runs of up to this many triangles at once (see `_prepare`).
_JOIN_FACES = 2048


def score_object(meshes: list[trimesh.Trimesh], cfg: PenetrationConfig) -> ObjectScore:
    """Penetration of one object given as one closed mesh per part."""
    return score_parts(
        [(np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64)) for m in meshes],
        cfg,
    )


def score_parts(parts: list[tuple[np.ndarray, np.ndarray]], cfg: PenetrationConfig) -> ObjectScore:
    """Penetration of one object given as (vertices [V, 3] float64, faces [M, 3] int64)
    per part.

    Returns a failed score, with the reason, for input that has no meaningful score: a
    vertex that is not finite (or so large its volume would overflow), a face index
    outside the part's vertices, or a result that is not a finite number.
    """
    problem = _invalid_input(parts)
    if problem is not None:
        return ObjectScore.failed(problem)
    shapes = _prepare(parts)
    n = len(shapes)
    overlaps: list[float] = []
    depth_max = 0.0
    checked = culled = separated = degenerate_pairs = fallback = 0
    boxes = np.stack([p.bounds for p in shapes]) if n else np.zeros((0, 2, 3))  # [P, 2, 3]
    boxes_meet = _boxes_overlap(boxes)  # [P, P]
    # Boxes that overlap by no more than rounding along an axis: a coordinate plane
    # separates the parts (the first separating plane tried, and the cheapest).
    sizes = np.array([p.size for p in shapes])
    flush = _boxes_gap(boxes) >= -_PLANE_TOL * np.maximum(sizes[:, None], sizes[None])  # [P, P]
    # Planes for every closed part in a pair that needs them, all at once.
    solid = np.array([not (p.rejected or p.degenerate(cfg.min_volume)) for p in shapes], dtype=bool)
    needs = solid[:, None] & solid[None] & ~flush & (boxes_meet if cfg.broad_phase else True)
    np.fill_diagonal(needs, False)
    _attach_hulls(shapes, np.flatnonzero(needs.any(1)).tolist())
    for i, j in itertools.combinations(range(n), 2):
        a, b = shapes[i], shapes[j]
        if a.degenerate(cfg.min_volume) or b.degenerate(cfg.min_volume):
            degenerate_pairs += 1
            overlaps.append(0.0)
            continue
        if cfg.broad_phase and not boxes_meet[i, j]:
            culled += 1
            overlaps.append(0.0)
            continue
        checked += 1
        how, overlap, depth = _pair_overlap(a, b, cfg, bool(flush[i, j]))
        separated += how == "separated"
        fallback += how == "fallback"
        overlaps.append(overlap)
        depth_max = max(depth_max, depth)
    values = np.asarray(overlaps, dtype=np.float64)  # [P (P - 1) / 2]
    detail: dict[str, Any] = {
        "num_parts": n,
        "pairs_total": len(overlaps),
        "pairs_checked": checked,
        "pairs_culled": culled,
        "pairs_separated": separated,
        "pairs_degenerate": degenerate_pairs,
        "fallback_pairs": fallback,
        "non_watertight_parts": sum(p.rejected for p in shapes),
        "degenerate_parts": sum(p.degenerate(cfg.min_volume) for p in shapes),
        "penetration_max": float(values.max()) if len(values) else 0.0,
        "penetration_mean": float(values.mean()) if len(values) else 0.0,
        # summed part volumes: lets pair mining compare like-sized objects (MinePairsConfig.similar_key)
        "total_volume": float(sum(abs(p.reported_volume) for p in shapes)),
    }
    if cfg.depth:
        detail["depth_max"] = float(depth_max)
    bad = [f"{k}={v}" for k, v in detail.items() if not math.isfinite(v)]
    if bad:
        return ObjectScore.failed(f"result is not finite: {', '.join(bad)}")
    return ObjectScore(score=detail[f"penetration_{cfg.reduce}"], detail=detail)


def _pair_overlap(a: _Part, b: _Part, cfg: PenetrationConfig, flush: bool) -> tuple[str, float, float]:
    """(how, overlap, depth) of two parts whose boxes overlap; how is "separated" (a
    plane separates them), "fallback" (voxels: a part is not a closed solid) or "exact".
    flush: their boxes overlap by no more than rounding along an axis."""
    if a.rejected or b.rejected:
        return "fallback", _voxel_overlap(a, b, cfg.voxel_resolution), 0.0
    if flush:
        return "separated", 0.0, 0.0
    ha, hb = a.hull, b.hull
    tol = _PLANE_TOL * max(a.size, b.size)
    face_gap = _face_axis_overlap(a, b, ha, hb)
    if face_gap <= tol:
        return "separated", 0.0, 0.0
    convex = ha.convex and hb.convex
    depth = 0.0
    if convex and cfg.depth:
        depth = min(face_gap, _edge_axis_overlap(ha, hb))
        if depth <= tol:  # an edge-edge axis separates them
            return "separated", 0.0, 0.0
    if convex and len(a.faces) + len(b.faces) >= _HULL_MIN_TRIANGLES:
        overlap = _convex_overlap(a, b, ha, hb, tol)
        if overlap is not None:
            return "exact", overlap, depth if overlap > 0.0 else 0.0
    ma, mb = a.manifold(), b.manifold()
    if ma is None or mb is None:
        return "fallback", _voxel_overlap(a, b, cfg.voxel_resolution), 0.0
    overlap, vertex_depth = _exact_overlap(a, b, ma, mb, cfg.depth and not convex)
    return "exact", overlap, (depth if convex else vertex_depth) if overlap > 0.0 else 0.0


def _invalid_input(parts: list[tuple[np.ndarray, np.ndarray]]) -> str | None:
    """Why these parts cannot be scored, or None."""
    for k, (vertices, faces) in enumerate(parts):
        if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
            return f"part {k}: expected vertices [V, 3] and faces [M, 3], got {vertices.shape} and {faces.shape}"
        if not np.isfinite(vertices).all():
            bad = np.flatnonzero(~np.isfinite(vertices).all(axis=1))
            return (f"part {k}: {len(bad)} of {len(vertices)} vertices are not finite "
                    f"(vertex {bad[0]} is {vertices[bad[0]].tolist()})")
        if len(vertices) and np.abs(vertices).max() > _MAX_COORDINATE:
            return (f"part {k}: a coordinate reaches {np.abs(vertices).max():.3g}, above the "
                    f"{_MAX_COORDINATE:g} whose cube (a volume) float64 can hold")
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            return (f"part {k}: face indices span [{faces.min()}, {faces.max()}] "
                    f"but the part has {len(vertices)} vertices")
    return None


class _Part:
    """One part of an object: its arrays and what the scorer needs from them.

    `_prepare` fills the basics of every part of an object at once, and `_attach_hulls`
    their planes, working on the parts' arrays joined end to end: a part's setup is a few
    dozen numpy operations, and taken part by part their fixed cost (microseconds each)
    would be most of the work for the pipeline's 12- to 96-triangle parts.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, signed_volume: float, bounds: np.ndarray,
                 rejected: bool) -> None:
        self.vertices = vertices  # [V, 3] float64
        self.faces = faces  # [M, 3] int64
        # Divergence theorem: exact for a closed mesh, negative when it is wound inside out.
        self.signed_volume = signed_volume
        self.bounds = bounds  # [2, 3] of the vertices faces use
        # The exact engines need a closed, consistently oriented, outward-wound mesh.
        self.rejected = rejected
        # A rejected mesh's volume integral means nothing; its bounding box bounds its volume.
        self.volume = float(np.prod(bounds[1] - bounds[0])) if rejected else signed_volume
        self.reported_volume = signed_volume  # its share of total_volume
        self.size = max(1.0, float(np.abs(bounds).max()))  # scale of the tolerances
        self.hull: _Hull | None = None  # set by _attach_hulls
        self.joined: _Joined | None = None  # the run of parts set up with it, and its index there
        self.local = -1
        self._used: np.ndarray | None = None
        self._triangles: np.ndarray | None = None
        self._manifold: manifold3d.Manifold | None = None
        self._manifold_volume: float | None = None
        self._index: tuple[cKDTree, np.ndarray, np.ndarray] | None = None
        self.original_id = -1

    def degenerate(self, min_volume: float) -> bool:
        return self.volume < min_volume

    @property
    def used(self) -> np.ndarray:
        """[U, 3] the vertices the faces use."""
        if self._used is None:
            used = np.zeros(len(self.vertices), dtype=bool)
            used[self.faces.reshape(-1)] = True
            self._used = self.vertices if used.all() else self.vertices[used]
        return self._used

    @property
    def triangles(self) -> np.ndarray:
        """[M, 3, 3] each face's corners."""
        if self._triangles is None:
            self._triangles = np.take(self.vertices, self.faces, axis=0)
        return self._triangles

    def mesh(self) -> trimesh.Trimesh:
        """The part as a trimesh mesh (for the voxel fallback)."""
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False, validate=False)

    def surface_index(self) -> tuple[cKDTree, np.ndarray, np.ndarray]:
        """KD-tree of the vertices the faces use, and each triangle's box [M, 3] lo and hi
        (built once, for the depth of non-convex pairs)."""
        if self._index is None:
            from scipy.spatial import cKDTree

            self._index = (cKDTree(self.used), self.triangles.min(1), self.triangles.max(1))
        return self._index

    def manifold_volume(self) -> float:
        """The volume manifold3d gives the part's solid (built by `manifold`), computed once."""
        if self._manifold_volume is None:
            self._manifold_volume = self._manifold.volume()
        return self._manifold_volume

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
                    vert_properties=np.ascontiguousarray(self.vertices, dtype=np.float64),
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


class _Joined:
    """Some parts' arrays end to end, vertex ids offset to index the joined vertices.
    Coordinates are kept as rows ([3, ...]): numpy works on contiguous rows several times
    faster than on the columns of an [N, 3] array. members: the parts' indices in the
    object."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]], members: list[int]) -> None:
        self.members = members
        self.parts = parts
        count = len(parts)
        self.vertex_count = np.array([len(v) for v, _ in parts], dtype=np.int64)  # [P]
        self.face_count = np.array([len(f) for _, f in parts], dtype=np.int64)  # [P]
        offset = np.cumsum(self.vertex_count) - self.vertex_count
        self.vertices = np.concatenate([v for v, _ in parts]) if count else np.zeros((0, 3))  # [V, 3]
        faces = [f + o for (_, f), o in zip(parts, offset, strict=True)]
        self.faces = np.concatenate(faces) if count else np.zeros((0, 3), dtype=np.int64)  # [M, 3]
        self.vertex_part = np.repeat(np.arange(count), self.vertex_count)  # [V]
        self.face_part = np.repeat(np.arange(count), self.face_count)  # [M]
        self.coords = np.ascontiguousarray(self.vertices.T)  # [3, V]
        self.corners = np.ascontiguousarray(self.faces.T)  # [3, M]
        x = self.coords.take(self.corners, axis=1)  # [3, 3, M] (coordinate, corner, face)
        e1, e2 = x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]  # [3, M]
        self.doubled = doubled = np.empty_like(e1)  # [3, M] the face normals times twice the area
        for k, (u, v) in enumerate(((1, 2), (2, 0), (0, 1))):
            np.subtract(e1[u] * e2[v], e1[v] * e2[u], out=doubled[k])
        # 6 x the signed volume of the tetrahedron (origin, triangle), v0 . (v1 x v2) =
        # v0 . ((v1 - v0) x (v2 - v0)); summed per part, 6 x its volume.
        self.terms = (x[:, 0] * doubled).sum(0)  # [M]
        self.x_sums = x[0].sum(0)  # [M] x0 + x1 + x2 of each face


def _prepare(parts: list[tuple[np.ndarray, np.ndarray]]) -> list[_Part]:
    """The parts with their volumes, boxes and closedness.

    Parts are joined in runs of up to _JOIN_FACES triangles and each run is computed at
    once: joining saves the fixed cost per numpy call that dominates small parts, while
    past a few thousand triangles the joined arrays outgrow the caches and cost more.
    """
    shapes: list[_Part] = []
    run: list[int] = []
    for k in range(len(parts) + 1):
        if k < len(parts) and (not run or sum(len(parts[m][1]) for m in run) + len(parts[k][1]) <= _JOIN_FACES):
            run.append(k)
            continue
        if run:
            shapes += _prepare_joined(_Joined([parts[m] for m in run], run))
        run = [k]
    return shapes


def _prepare_joined(joined: _Joined) -> list[_Part]:
    count = len(joined.members)
    face_from = np.cumsum(joined.face_count) - joined.face_count
    # Per part, numpy's pairwise sum: a running sum over a 3k-triangle part drifts by ~1e-14.
    signed = [float(joined.terms[f : f + m].sum()) / 6.0 for f, m in zip(face_from, joined.face_count, strict=True)]
    used = np.zeros(len(joined.vertices), dtype=bool)
    used[joined.corners.reshape(-1)] = True
    # Boxes over the vertices faces use: the others count as NaN, which fmin and fmax skip.
    bounds = np.zeros((count, 2, 3))
    has = np.flatnonzero(joined.vertex_count > 0)
    if len(has):
        rows = joined.coords if used.all() else np.where(used, joined.coords, np.nan)
        start = (np.cumsum(joined.vertex_count) - joined.vertex_count)[has]
        bounds[has, 0] = np.fmin.reduceat(rows, start, axis=1).T
        bounds[has, 1] = np.fmax.reduceat(rows, start, axis=1).T
    bounds[np.isnan(bounds).any(axis=(1, 2))] = 0.0  # a part whose faces use no vertex: none
    closed = _closed_parts(joined)
    shapes = []
    for k, (v, f) in enumerate(joined.parts):
        part = _Part(v, f, signed[k], bounds[k], bool(len(f) == 0 or not closed[k] or not signed[k] > 0.0))
        part.joined, part.local = joined, k
        if part.rejected:
            # An open mesh has no volume; total_volume keeps trimesh's number for it, the
            # flux of (x, 0, 0) through its faces (for a closed mesh, its volume).
            faces = slice(face_from[k], face_from[k] + joined.face_count[k])
            part.reported_volume = float((joined.doubled[0, faces] * joined.x_sums[faces]).sum()) / 6.0
        shapes.append(part)
    return shapes


def _closed_parts(joined: _Joined) -> np.ndarray:
    """[P] bool: every directed edge of the part appears once and its reverse once, i.e.
    the part is closed and consistently wound.

    One sort for all parts: each directed edge keyed by its undirected pair and its
    direction. Vertex ids are offset per part, so part k's 3 M_k keys stay one block. A
    directed edge that repeats fails its part, and within each block the keys must come
    in pairs of one undirected edge. An edge from a vertex to itself (a collapsed
    triangle) is its own reverse and only has to be unique.
    """
    n = max(len(joined.vertices), 1)
    corners = joined.corners.astype(np.int32) if 2 * n * n < 2**31 else joined.corners  # half the bytes to sort
    i = corners.reshape(-1)
    j = np.concatenate([corners[1], corners[2], corners[0]])  # edges 0-1, 1-2, 2-0
    key = np.minimum(i, j) * n
    key += np.maximum(i, j)
    key *= 2
    key += i > j
    key.sort()
    undirected = key >> 1
    size = 3 * joined.face_count  # [P] keys per part
    start = np.cumsum(size) - size

    def part_of(position: np.ndarray) -> np.ndarray:
        return np.searchsorted(start, position, side="right") - 1

    closed = joined.face_count > 0
    closed[part_of(np.flatnonzero(key[1:] == key[:-1]))] = False
    loop = np.flatnonzero(undirected // n == undirected % n) if np.any(i == j) else ()
    if len(loop):  # drop the self-edges, which have no pair
        size = size - np.bincount(part_of(loop), minlength=len(size))
        undirected = np.delete(undirected, loop)
        start = np.cumsum(size) - size
    odd = size % 2 == 1
    closed &= ~odd
    if odd.any():  # an odd block would shift the pairing of every block after it
        keep = np.repeat(~odd, size)
        undirected, size = undirected[keep], np.where(odd, 0, size)
        start = np.cumsum(size) - size
    closed[part_of(2 * np.flatnonzero(undirected[0::2] != undirected[1::2]))] = False
    return closed


class _Hull:
    """A closed part's distinct face planes; for a convex part also its corners and edges.

    normals [G, 3] unit, one per distinct plane, and the part's extent along each
    (`extent`, max and min over support [N, 3]: its corners when convex, else the
    vertices faces use). `convex`: every face lies on the plane n . x = offset of its
    normal (offsets [G], the corners' max), so the part is the intersection of the
    half-spaces n . x <= offset. Then corners [C, 3] are the vertices where three or more
    planes meet (a support in any direction is reached at one), edges [E, 2] the corner
    index pairs joined by an edge of the part, and arc_planes [E, 2] the two planes
    either side of each edge (the edge's arc on the Gauss map).
    """

    def __init__(self, normals: np.ndarray, support: np.ndarray, offsets: np.ndarray | None = None,
                 edges: np.ndarray | None = None, arc_planes: np.ndarray | None = None) -> None:
        self.normals = normals
        self.support = support
        self.convex = edges is not None
        self.corners, self.offsets, self.edges, self.arc_planes = support, offsets, edges, arc_planes
        self._extent: tuple[np.ndarray, np.ndarray] | None = None
        self._circles: np.ndarray | None = None

    @property
    def circles(self) -> np.ndarray:
        """[E, 3] unit n_1 x n_0 of each edge's two planes: the normal of the great circle
        its arc lies on, along the edge (the same for -normals)."""
        if self._circles is None:
            n, arcs = self.normals, self.arc_planes
            self._circles = _unit(_cross(np.take(n, arcs[:, 1], axis=0), np.take(n, arcs[:, 0], axis=0)))
        return self._circles

    @property
    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """(max, min) [G] each: the support's extent along each normal."""
        if self._extent is None:
            project = self.normals @ self.support.T  # [G, N]
            self._extent = project.max(1), project.min(1)
        return self._extent


def _attach_hulls(shapes: list[_Part], which: list[int]) -> None:
    """Set `hull` on the parts `which` (closed ones), computed at once for the parts of
    each joined run (see `_prepare`).

    A face's plane is its unit normal rounded to _NORMAL_QUANTUM; planes of one part
    with the same rounded normal are one plane (normal: the area-weighted mean). The part
    is convex when, for every plane, the vertices of its faces lie on the plane that
    supports the part's corners along that normal (then the faces tile the boundary of
    the corners' hull), it has four or more corners, every pair of planes is shared by at
    most two corners, and corners - edges + planes = 2 (Euler's formula for a polytope).
    """
    runs: dict[int, list[int]] = {}
    for k in which:
        if shapes[k].hull is None and not shapes[k].rejected:
            runs.setdefault(id(shapes[k].joined), []).append(k)
    for members in runs.values():
        joined = shapes[members[0]].joined
        _attach_joined_hulls([shapes[m] for m in joined.members], joined, [shapes[m].local for m in members])


def _attach_joined_hulls(shapes: list[_Part], joined: _Joined, which: list[int]) -> None:
    count = len(shapes)
    chosen = np.zeros(count, dtype=bool)
    chosen[which] = True
    if chosen.all():
        d, face_part, faces = joined.doubled, joined.face_part, joined.faces
    else:
        face_mask = chosen[joined.face_part]
        d = joined.doubled[:, face_mask]  # [3, M']
        face_part = joined.face_part[face_mask]
        faces = joined.faces[face_mask]  # [M', 3] joined vertex ids
    size = np.array([s.size for s in shapes])  # [P]
    length = np.sqrt((d * d).sum(0))  # [M'] twice the areas
    flat = np.zeros(count, dtype=bool)  # parts with a sliver triangle: no reliable normals
    flat[face_part[length <= _SLIVER * size[face_part] ** 2]] = True
    q = np.rint(d / (np.where(length > 0.0, length, 1.0) * _NORMAL_QUANTUM)).astype(np.int64) + (1 << 20)
    plane, planes = _labels((q[0] << 42) | (q[1] << 21) | q[2])
    if count > 1:
        plane, planes = _labels(face_part * planes + plane)  # [M'], ids grouped by part
    plane_part = np.empty(planes, dtype=np.int64)
    plane_part[plane] = face_part
    plane_count = np.bincount(plane_part, minlength=count)  # [P]
    normals = _unit(np.stack([np.bincount(plane, weights=d[k], minlength=planes) for k in range(3)], axis=1))
    # Distinct (vertex, plane) incidences, sorted by vertex; a vertex with three or more
    # planes is a corner.
    incidence = faces * planes + plane[:, None]
    if len(joined.vertices) * planes < 2**31:
        incidence = incidence.astype(np.int32)  # sorts in half the time
    incidence = np.sort(incidence.reshape(-1))
    incidence = incidence[_run_starts(incidence)]
    vertex, on = np.divmod(incidence, planes)
    start = _run_starts(vertex)
    planes_at = _run_lengths(start, len(vertex))
    is_corner = planes_at >= 3
    corner_vertex = vertex[start[is_corner]]  # [C] joined ids, grouped by part
    corner_part = joined.vertex_part[corner_vertex]
    corners = np.take(joined.vertices, corner_vertex, axis=0)  # [C, 3]
    corner_count = np.bincount(corner_part, minlength=count)
    plane_from = np.cumsum(plane_count) - plane_count
    corner_from = np.cumsum(corner_count) - corner_count
    offsets = np.full(planes, np.nan)
    for k in which:
        g = slice(plane_from[k], plane_from[k] + plane_count[k])
        if corner_count[k]:
            offsets[g] = (normals[g] @ corners[corner_from[k] : corner_from[k] + corner_count[k]].T).max(1)
    height = _dot(np.take(joined.vertices, vertex, axis=0), np.take(normals, on, axis=0)) - offsets[on]
    tol = _PLANE_TOL * size[plane_part[on]]
    bent = np.zeros(count, dtype=bool)
    bent[plane_part[on[~(np.abs(height) <= tol)]]] = True  # NaN (no corners) counts as bent
    edges, arcs, crowded = _corner_edges(on[np.repeat(is_corner, planes_at)], planes_at[is_corner], planes)
    bent[plane_part[crowded]] = True
    edge_part = corner_part[edges[:, 0]]
    edge_count = np.bincount(edge_part, minlength=count)
    edge_from = np.cumsum(edge_count) - edge_count
    convex = ~flat & ~bent & (plane_count <= _MAX_PLANES) & (corner_count >= 4)
    convex &= corner_count - edge_count + plane_count == 2
    for k in which:
        part = shapes[k]
        g = slice(plane_from[k], plane_from[k] + plane_count[k])
        if convex[k]:
            c0, e = corner_from[k], slice(edge_from[k], edge_from[k] + edge_count[k])
            part.hull = _Hull(normals[g], corners[c0 : c0 + corner_count[k]], offsets[g],
                              edges[e] - c0, arcs[e] - plane_from[k])
        elif flat[k] or plane_count[k] > _MAX_PLANES or plane_count[k] * len(part.used) > _MAX_PROJECTIONS:
            part.hull = _Hull(np.zeros((0, 3)), part.used)
        else:
            part.hull = _Hull(normals[g], part.used)


def _corner_edges(planes: np.ndarray, per_corner: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A convex polytope's edges from its corners' planes: two corners that share two
    planes are joined by the edge where those planes meet.

    planes [K]: each corner's planes, in ascending runs of per_corner [C] entries, out of
    `count` planes. Returns edges [E, 2] (corner indices) and arc_planes [E, 2] (the two
    planes) in the order of the planes, and the first plane of every pair shared by more
    than two corners (which no polytope has).
    """
    if np.all(per_corner == 3):  # the common case: pairs (0, 1), (0, 2), (1, 2) of each corner
        trio = planes.reshape(-1, 3)
        first, second = trio[:, [0, 0, 1]].reshape(-1), trio[:, [1, 2, 2]].reshape(-1)
        corner = np.arange(len(per_corner)).repeat(3)
    else:
        run_end = np.repeat(np.cumsum(per_corner), per_corner)  # [K] one past each entry's run
        later = run_end - np.arange(len(planes)) - 1  # entries after this one in its run
        at = np.repeat(np.arange(len(planes)), later)
        other = at + 1 + np.arange(len(at)) - np.repeat(np.cumsum(later) - later, later)
        first, second = planes[at], planes[other]
        corner = np.repeat(np.arange(len(per_corner)), per_corner)[at]
    shift = len(per_corner).bit_length()
    pair = ((first.astype(np.int64) * count + second) << shift) | corner
    pair.sort()
    key = pair >> shift
    same = key[1:] == key[:-1]  # entries i and i + 1 share their two planes
    crowded = key[1:-1][same[1:] & same[:-1]] // count
    at = np.flatnonzero(same)
    which = pair & ((1 << shift) - 1)
    edges = np.empty((len(at), 2), dtype=np.int64)
    edges[:, 0], edges[:, 1] = which[at], which[at + 1]
    arcs = np.empty((len(at), 2), dtype=np.int64)
    arcs[:, 0], arcs[:, 1] = np.divmod(key[at], count)
    return edges, arcs, crowded


def _run_lengths(start: np.ndarray, total: int) -> np.ndarray:
    """The length of each run, from where the runs start (np.diff with append is slower)."""
    size = np.empty_like(start)
    size[:-1] = start[1:] - start[:-1]
    size[-1:] = total - start[-1:]
    return size


def _run_starts(ordered: np.ndarray) -> np.ndarray:
    """Where each run of equal values of a sorted array starts (np.r_ costs ~5 us a call)."""
    change = np.empty(len(ordered), dtype=bool)
    change[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
    return np.flatnonzero(change)


def _labels(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Each key's rank among the distinct keys, and their number."""
    order = np.argsort(keys)
    start = _run_starts(keys[order])
    rank = np.zeros(len(keys), dtype=np.int64)
    rank[start[1:]] = 1
    labels = np.empty(len(keys), dtype=np.int64)
    labels[order] = np.cumsum(rank)
    return labels, len(start)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of [M, 3] arrays (np.cross costs ~0.1 ms a call in overhead)."""
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=1)


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows of [K, 3] scaled to length 1."""
    return v / np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of [K, 3] arrays."""
    return np.einsum("ij,ij->i", a, b)


def _boxes_gap(boxes: np.ndarray) -> np.ndarray:
    """[P, P] the largest gap between two [P, 2, 3] boxes along an axis: max over axes of
    -min(hi_i - lo_j, hi_j - lo_i); negative when they overlap on every axis."""
    lo, hi = boxes[:, 0], boxes[:, 1]
    return -np.minimum(hi[:, None] - lo[None], hi[None] - lo[:, None]).min(axis=2)


def _boxes_overlap(boxes: np.ndarray) -> np.ndarray:
    """Strict overlap of every pair of [P, 2, 3] boxes: boxes that only touch hold no
    common volume. Returns [P, P] bool."""
    lo, hi = boxes[:, 0], boxes[:, 1]
    return np.all(lo[:, None] < hi[None], axis=2) & np.all(lo[None] < hi[:, None], axis=2)


def _axis_overlap(axes: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> float:
    """The least overlap, over unit axes [K, 3], of the projections of point sets pa
    [N, 3] and pb [M, 3]: min over axes of min(max A - min B, max B - min A); <= 0 when
    one of the axes separates them."""
    a = axes @ pa.T  # [K, N]
    b = axes @ pb.T  # [K, M]
    return float(np.minimum(a.max(1) - b.min(1), b.max(1) - a.min(1)).min())


def _face_axis_overlap(a: _Part, b: _Part, ha: _Hull, hb: _Hull) -> float:
    """The least overlap of the two parts along the face normals of either; <= 0 (up to
    rounding) when one of those planes separates the parts. Infinite when neither part
    has a usable plane."""
    gaps = [math.inf]
    for own, other in ((ha, hb), (hb, ha)):
        if len(own.normals):
            high, low = own.extent
            project = own.normals @ other.support.T  # [G, N]
            gaps.append(float(np.minimum(high - project.min(1), project.max(1) - low).min()))
    return min(gaps)


def _convex_overlap(a: _Part, b: _Part, ha: _Hull, hb: _Hull, tol: float) -> float | None:
    """vol(A ∩ B) / min volume of two convex parts whose face planes do not separate
    them: the volume of the convex hull of the intersection's vertices (qhull, Barber,
    Dobkin and Huhdanpaa 1996, "The quickhull algorithm for convex hulls", ACM TOMS 22(4)).
    None when qhull cannot build the hull (a flat or nearly flat intersection)."""
    inner_a, a_inside = _clip_edges(ha, hb, b.bounds, tol)
    inner_b, b_inside = _clip_edges(hb, ha, a.bounds, tol)
    if a_inside or b_inside:
        return 1.0  # one part wholly inside the other: vol(A ∩ B) is the smaller volume
    points = np.concatenate([inner_a, inner_b])
    if len(points) < 4:
        return 0.0
    from scipy.spatial import ConvexHull, QhullError

    try:
        volume = ConvexHull(points).volume
    except QhullError:
        return None
    return min(1.0, volume / min(a.volume, b.volume))


def _edge_axis_overlap(ha: _Hull, hb: _Hull) -> float:
    """The least overlap of two convex parts along the cross products of an edge of A and
    an edge of B that span a face of the Minkowski difference A - B: the edges' arcs
    cross on the Gauss map (Gregorius 2013, `IsMinkowskiFace`, with B's normals negated).
    Infinite when no pair does.

    The side tests are taken plane by plane, not pair by pair: which side of each
    A-arc's great circle every normal of -B lies on ([EA, GB]), and the converse
    ([EB, GA]); a pair of arcs then needs only look those signs up.
    """
    na, nb = ha.normals, -hb.normals  # the Gauss maps of A and -B
    ia, ib = ha.arc_planes, hb.arc_planes  # [EA, 2], [EB, 2] the planes either side of each edge
    circle_a, circle_b = ha.circles, hb.circles  # b x a along A's edges, d x c along B's
    side_a = _side(circle_a @ nb.T)  # [EA, GB] side of each normal of -B on each great circle of A
    side_b = _side(circle_b @ na.T)  # [EB, GA]
    c, d = side_a[:, ib[:, 0]], side_a[:, ib[:, 1]]  # [EA, EB]: c . (b x a), d . (b x a)
    ea, eb = np.nonzero(c * d < 0)
    if len(ea) == 0:
        return math.inf
    cba = c[ea, eb]
    adc, bdc = side_b[eb, ia[ea, 0]], side_b[eb, ia[ea, 1]]  # a . (d x c), b . (d x c)
    crossing = (adc * bdc < 0) & (cba * bdc > 0)
    if not crossing.any():
        return math.inf
    axes = _unit(_cross(circle_a[ea[crossing]], circle_b[eb[crossing]]))
    return _axis_overlap(axes, ha.corners, hb.corners)


def _side(cosines: np.ndarray) -> np.ndarray:
    """-1, 0 or 1: which side of a great circle a unit vector lies on, 0 within _ARC_EPS
    (an arc that touches a great circle only there meets it next to a face normal,
    which is an axis already)."""
    return (cosines > _ARC_EPS).astype(np.int8) - (cosines < -_ARC_EPS).astype(np.int8)


def _clip_edges(x: _Hull, y: _Hull, box: np.ndarray, tol: float) -> tuple[np.ndarray, bool]:
    """The vertices of X ∩ Y that lie on X's corners or edges: X's corners inside Y, and
    where X's edges cross Y's planes on their way in or out of Y (Cyrus and Beck 1978,
    "Generalized two- and three-dimensional clipping", Computers & Graphics 3(1)). Also
    whether every corner of X is inside Y (within tol), i.e. X lies inside Y.

    box [2, 3]: Y's bounding box; corners outside it are outside Y, and edges with both
    ends beyond one of its sides never enter Y, so neither is tested against Y's planes.
    """
    corners, edges = x.corners, x.edges
    below, above = corners < box[0] - tol, corners > box[1] + tol  # [C, 3]
    in_box = ~(below | above).any(1)  # [C]
    code = below @ np.array([1, 2, 4]) + above @ np.array([8, 16, 32])  # [C] sides of the box it lies beyond
    live = (code[edges[:, 0]] & code[edges[:, 1]]) == 0  # [E] edges that may meet Y
    needed = in_box.copy()
    needed[edges[live].reshape(-1)] = True
    rows = np.flatnonzero(needed)
    s = np.zeros((len(corners), len(y.normals)))  # [C, G] > 0: outside that plane (rows not needed stay 0)
    s[rows] = corners[rows] @ y.normals.T - y.offsets
    inside = in_box & (s.max(1) <= tol)
    if inside.all():
        return corners[:0], True
    points = [corners[inside]]
    ends = edges[live]
    sp, sq = s[ends[:, 0]], s[ends[:, 1]]  # [E', G]
    op, oq = sp > 0.0, sq > 0.0
    cross = ~(op & oq).any(1) & (op | oq).any(1)  # not beyond one plane, out of at least one
    if cross.any():
        sp, sq, op, oq, ends = sp[cross], sq[cross], op[cross], oq[cross], ends[cross]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = sp / (sp - sq)  # where the edge meets each plane, used only where it crosses
        enter = np.where(op & ~oq, t, 0.0).max(1)  # [E'']
        leave = np.where(~op & oq, t, 1.0).min(1)
        keep = enter <= leave
        p = corners[ends[:, 0]]
        step = corners[ends[:, 1]] - p
        points.append((p + enter[:, None] * step)[keep & (enter > 0.0)])
        points.append((p + leave[:, None] * step)[keep & (leave < 1.0)])
    return np.concatenate(points), False


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
    overlap = min(1.0, volume / min(a.manifold_volume(), b.manifold_volume()))
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
    occ = voxelize_parts([a.mesh(), b.mesh()], lo, hi, resolution)  # [2, R, R, R]
    smaller = int(occ.reshape(2, -1).sum(1).min())
    if smaller == 0:
        # A part thinner than a cell everywhere: too small to measure on this grid.
        return 0.0
    return float(np.count_nonzero(occ[0] & occ[1]) / smaller)


def _score_file(path: Path, cfg: PenetrationConfig) -> ObjectScore:
    """The score of one GLB file, or a failed score that says why; never raises."""
    from genalign.models.part_codec import read_glb_parts

    # Any failure to read (missing, truncated, not a GLB, wrong nodes) or to score makes
    # this one sample failed and leaves the rest of the batch to be scored.
    try:
        parts = read_glb_parts(path)
    except OSError as e:
        return ObjectScore.failed(f"{path}: cannot open: {e.strerror or e}")
    except ValueError as e:
        return ObjectScore.failed(str(e))
    except Exception as e:  # noqa: BLE001
        return ObjectScore.failed(f"{path}: cannot read: {type(e).__name__}: {e}")
    try:
        result = score_parts(parts, cfg)
    except Exception as e:  # noqa: BLE001
        return ObjectScore.failed(f"{path}: scoring failed: {type(e).__name__}: {e}")
    if result.status == "failed":
        return ObjectScore.failed(f"{path}: {result.error}")
    return result


# Files timed in this process before the scorer decides on workers: the first pays for
# imports and is left out of the estimate.
_PROBE_FILES = 3


def pool_pays(seconds_per_file: float, files_left: int, workers: int, start_s: float) -> bool:
    """Whether `workers` processes finish `files_left` files sooner than this process.

    This process needs files_left * c; a pool needs start_s + files_left * c / workers.
    The pool wins when files_left * c * (1 - 1 / workers) > start_s, e.g. for two workers
    once the serial remainder exceeds twice the start-up time.
    """
    return workers > 1 and files_left * seconds_per_file * (1.0 - 1.0 / workers) > start_s


class PenetrationScorer:
    """Scores GLB files of part-decomposed objects by inter-part penetration (lower is better)."""

    name = "penetration"
    higher_is_better = False

    def __init__(self, cfg: PenetrationConfig) -> None:
        self.cfg = cfg

    def score_files(self, paths: list[Path]) -> list[ObjectScore]:
        """One ObjectScore per path, in order; a file that cannot be read or scored gives a
        failed score with the reason.

        Files are scored in this process; once a few have been timed, the rest go to a
        pool of up to `cfg.workers` processes if `pool_pays` says the pool would finish
        sooner, start-up (`cfg.worker_start_s`) included.
        """
        from tqdm.auto import tqdm

        paths = [Path(p) for p in paths]
        workers = min(self.cfg.workers, os.cpu_count() or 1, len(paths))
        results: list[ObjectScore] = []
        with tqdm(total=len(paths), desc="penetration", disable=None) as progress:
            for k, path in enumerate(paths):
                if k == 1:
                    timed_from = time.perf_counter()
                if self._pool_now(k, time.perf_counter() - timed_from if k > 1 else 0.0, len(paths) - k, workers):
                    return results + self._score_in_pool(paths[k:], workers, progress)
                results.append(_score_file(path, self.cfg))
                progress.update()
        return results

    def _pool_now(self, done: int, timed_s: float, left: int, workers: int) -> bool:
        """Whether to hand the `left` files still to score to a pool, after `done` files
        of which all but the first took `timed_s` seconds."""
        if workers <= 1:
            return False
        if self.cfg.worker_start_s == 0.0:
            return True
        return done >= _PROBE_FILES and pool_pays(timed_s / (done - 1), left, workers, self.cfg.worker_start_s)

    def _score_in_pool(self, paths: list[Path], workers: int, progress: Any) -> list[ObjectScore]:
        # spawn, not fork: the caller may hold torch or BLAS threads that a fork would copy
        # in a locked state.
        results: list[ObjectScore] = []
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                chunk = max(1, len(paths) // (4 * workers))
                for result in pool.map(_score_file, paths, itertools.repeat(self.cfg), chunksize=chunk):
                    results.append(result)
                    progress.update()
        except BrokenProcessPool:
            # A worker died (killed, out of memory): score what it left here.
            for path in paths[len(results) :]:
                results.append(_score_file(path, self.cfg))
                progress.update()
        return results
