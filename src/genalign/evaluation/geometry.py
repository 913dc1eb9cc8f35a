"""Geometry guard metrics: does a generated object still look like its ground truth?

A penetration reward can be gamed: shrink the parts until they no longer meet, or
scatter them apart. These metrics compare a predicted object (a list of part meshes)
with its ground-truth object and move the wrong way when that happens:

    volume_iou     occupancy IoU of the union of the parts, both objects voxelised in
                   one shared grid over their joint bounding box
    chamfer        symmetric Chamfer distance between surface samples (not squared):
                   0.5 * (mean_p min_g |p - g| + mean_g min_p |g - p|)
    part_count     number of predicted parts (part_count_gt for the ground truth)
    volume_ratio   total predicted part volume / total ground-truth part volume

`voxelize` / `voxelize_parts` is the shared scan converter (the penetration scorer's
voxel fallback uses it too).
It casts one ray per grid column along each axis and counts surface crossings below
each voxel centre (odd = inside); a voxel is inside when at least two of the three
axes say so, so a mesh with a hole stays mostly right: a ray through the hole misses
one crossing, but the rays along the other two axes do not pass through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import trimesh

# Voxel centres are shifted by these fractions of a cell (one per axis, irrational and
# unequal) so a ray never passes exactly through a triangle edge or vertex of
# axis-aligned, grid-aligned geometry, where it would count one crossing twice.
_JITTER = np.array([2**0.5, 3**0.5, 5**0.5]) / 100.0


def voxelize(
    meshes: list[trimesh.Trimesh], lo: np.ndarray, hi: np.ndarray, resolution: int
) -> np.ndarray:
    """Occupancy of the union of `meshes` on a resolution^3 grid spanning [lo, hi]. [R, R, R]"""
    return voxelize_parts(meshes, lo, hi, resolution).any(axis=0)


def voxelize_parts(
    meshes: list[trimesh.Trimesh], lo: np.ndarray, hi: np.ndarray, resolution: int
) -> np.ndarray:
    """Occupancy of each mesh on one resolution^3 grid spanning [lo, hi].

    Cell (i, j, k) is sampled at lo + (idx + 0.5 + jitter) * (hi - lo) / resolution.
    Returns a bool array [P, R, R, R] indexed (part, x, y, z); an empty mesh is all False.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or not np.all(hi > lo):
        raise ValueError(f"voxelize needs lo < hi on every axis, got lo={lo}, hi={hi}")
    if resolution < 1:
        raise ValueError(f"voxelize needs resolution >= 1, got {resolution}")
    step = (hi - lo) / resolution
    triangles = [np.asarray(m.triangles, dtype=np.float64).reshape(-1, 3, 3) for m in meshes]
    part = np.repeat(np.arange(len(meshes)), [len(t) for t in triangles])  # [M]
    votes = np.zeros((len(meshes),) + (resolution,) * 3, dtype=np.uint8)  # [P, R, R, R]
    if len(part) == 0:
        return votes.astype(bool)
    # Triangle corners in grid units: sample index i sits at coordinate i.
    grid = (np.concatenate(triangles) - lo) / step - 0.5 - _JITTER  # [M, 3, 3]
    for axis in range(3):
        votes += _parity(grid, part, len(meshes), resolution, axis)
    return votes >= 2


def _parity(grid: np.ndarray, part: np.ndarray, n_parts: int, res: int, axis: int) -> np.ndarray:
    """Odd crossing count per part and sample, rays along `axis`. uint8 [P, R, R, R] (x, y, z)"""
    u_ax, v_ax = [a for a in range(3) if a != axis]
    u, v, w = grid[:, :, u_ax], grid[:, :, v_ax], grid[:, :, axis]  # [M, 3] each
    # Integer columns inside each triangle's projected bounding box.
    i0 = np.clip(np.ceil(u.min(1)), 0, res).astype(np.int64)
    i1 = np.clip(np.floor(u.max(1)), -1, res - 1).astype(np.int64)
    j0 = np.clip(np.ceil(v.min(1)), 0, res).astype(np.int64)
    j1 = np.clip(np.floor(v.max(1)), -1, res - 1).astype(np.int64)
    nj = np.maximum(j1 - j0 + 1, 0)
    # Twice the signed projected area; 0 for triangles seen edge-on (no crossing).
    det = (v[:, 1] - v[:, 2]) * (u[:, 0] - u[:, 2]) + (u[:, 2] - u[:, 1]) * (v[:, 0] - v[:, 2])
    n = np.where(det != 0.0, np.maximum(i1 - i0 + 1, 0) * nj, 0)
    # Enumerate every (triangle, column) candidate without a Python loop.
    total = int(n.sum())
    tri = np.repeat(np.arange(len(n)), n)
    local = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    ci = i0[tri] + local // nj[tri]
    cj = j0[tri] + local % nj[tri]
    uu, vv, ww, d = u[tri], v[tri], w[tri], det[tri]
    l0 = ((vv[:, 1] - vv[:, 2]) * (ci - uu[:, 2]) + (uu[:, 2] - uu[:, 1]) * (cj - vv[:, 2])) / d
    l1 = ((vv[:, 2] - vv[:, 0]) * (ci - uu[:, 2]) + (uu[:, 0] - uu[:, 2]) * (cj - vv[:, 2])) / d
    l2 = 1.0 - l0 - l1
    hit = (l0 >= 0.0) & (l1 >= 0.0) & (l2 >= 0.0)
    depth = l0 * ww[:, 0] + l1 * ww[:, 1] + l2 * ww[:, 2]
    # A crossing at depth w toggles every sample with index > w, i.e. k >= floor(w) + 1;
    # slot res collects crossings above the last sample.
    k = np.clip(np.floor(depth[hit]) + 1, 0, res).astype(np.int64)
    flat = ((part[tri[hit]] * res + ci[hit]) * res + cj[hit]) * (res + 1) + k
    shape = (n_parts, res, res, res + 1)  # [P, Ru, Rv, Rw + 1]
    toggles = (np.bincount(flat, minlength=int(np.prod(shape))) & 1).astype(np.uint8)
    inside = np.bitwise_xor.accumulate(toggles.reshape(shape)[..., :res], axis=3)
    return np.moveaxis(inside, 3, axis + 1)


def _bounds(meshes: list[trimesh.Trimesh]) -> np.ndarray:
    """Joint axis-aligned bounds of non-empty meshes. [2, 3] (lo, hi)."""
    boxes = [m.bounds for m in meshes if len(m.faces)]
    if not boxes:
        raise ValueError("no non-empty mesh to bound")
    boxes = np.asarray(boxes)  # [P, 2, 3]
    return np.stack([boxes[:, 0].min(0), boxes[:, 1].max(0)])


def volume_iou(
    pred_meshes: list[trimesh.Trimesh], gt_meshes: list[trimesh.Trimesh], resolution: int = 32
) -> float:
    """IoU of the two objects' occupancy (union of parts) in one shared resolution^3 grid."""
    lo, hi = _bounds([*pred_meshes, *gt_meshes])
    pred = voxelize(pred_meshes, lo, hi, resolution)
    gt = voxelize(gt_meshes, lo, hi, resolution)
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        # Both objects thinner than a cell everywhere: nothing to compare.
        return 0.0
    return float(np.count_nonzero(pred & gt) / union)


def chamfer_distance(
    pred_meshes: list[trimesh.Trimesh],
    gt_meshes: list[trimesh.Trimesh],
    n_points: int = 2048,
    seed: int = 0,
) -> float:
    """Symmetric Chamfer distance (mean nearest distance, both ways, halved) of surface samples."""
    from scipy.spatial import cKDTree

    pred = _surface_samples(pred_meshes, n_points, seed)  # [N, 3]
    gt = _surface_samples(gt_meshes, n_points, seed)  # [N, 3]
    d_pred, _ = cKDTree(gt).query(pred)
    d_gt, _ = cKDTree(pred).query(gt)
    return float(0.5 * (d_pred.mean() + d_gt.mean()))


def _surface_samples(meshes: list[trimesh.Trimesh], n_points: int, seed: int) -> np.ndarray:
    """Area-weighted samples on the surfaces of all parts together. [n_points, 3]"""
    import trimesh

    mesh = trimesh.util.concatenate([m for m in meshes if len(m.faces)])
    if len(mesh.faces) == 0 or mesh.area <= 0.0:
        raise ValueError("cannot sample an object with no surface area")
    points, _ = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
    return np.asarray(points)


def part_volumes(meshes: list[trimesh.Trimesh]) -> list[float]:
    """Enclosed volume of each part (exact for closed meshes; absolute, so winding is moot)."""
    return [float(abs(m.volume)) if len(m.faces) else 0.0 for m in meshes]


def guard_metrics(
    pred: list[trimesh.Trimesh],
    gt: list[trimesh.Trimesh],
    resolution: int = 32,
    n_points: int = 2048,
    seed: int = 0,
) -> dict[str, float | int]:
    """All guard metrics of one predicted object against its ground truth (JSON-ready)."""
    gt_volume = sum(part_volumes(gt))
    if gt_volume <= 0.0:
        raise ValueError("ground-truth object has no volume; volume_ratio is undefined")
    return {
        "volume_iou": volume_iou(pred, gt, resolution),
        "chamfer": chamfer_distance(pred, gt, n_points, seed),
        "part_count": len(pred),
        "part_count_gt": len(gt),
        "volume_ratio": float(sum(part_volumes(pred)) / gt_volume),
    }
