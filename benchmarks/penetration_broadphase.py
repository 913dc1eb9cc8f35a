"""What the penetration scorer's bounding-box broad phase saves.

Builds N objects of P parts (subdivided boxes and cylinders of ~2-3k triangles each,
laid out like real assemblies: parts side by side, mostly apart or touching, with one
or two overlapping pairs per object) and scores every object twice in this process:
with the broad phase and with exact booleans on all pairs, with and without depth, in
one process. Prints objects/s for each (best of --repeats runs), the throughput ratios,
and checks that both give the same scores.

    python benchmarks/penetration_broadphase.py [--objects 40] [--parts 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import trimesh

from genalign.config.score import PenetrationConfig
from genalign.scorers.penetration import score_object


def make_part(rng: np.random.Generator) -> trimesh.Trimesh:
    """A box subdivided to 3072 triangles or a 128-sided cylinder subdivided to 2048."""
    size = rng.uniform(0.15, 0.35, 3)
    if rng.random() < 0.5:
        mesh = trimesh.creation.box(extents=size)
        for _ in range(4):
            mesh = mesh.subdivide()
        return mesh
    mesh = trimesh.creation.cylinder(radius=size[0] / 2, height=size[1], sections=128)
    return mesh.subdivide()


def make_object(rng: np.random.Generator, n_parts: int) -> list[trimesh.Trimesh]:
    """Rows of four parts 0.4 apart; each row stands on the one below (touching), then
    one or two parts are pushed into their right-hand neighbour."""
    meshes = []
    for i in range(n_parts):
        mesh = make_part(rng)
        lo, hi = mesh.bounds
        below = meshes[i - 4].bounds[1, 1] if i >= 4 else 0.0
        # Centre in x and z on the grid cell, bottom on the top of the part below.
        cell = np.array([0.4 * (i % 4), below, 0.0])
        mesh.apply_translation(cell - np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2]))
        meshes.append(mesh)
    for i in rng.choice(n_parts - 1, size=rng.integers(1, 3), replace=False):
        if (i + 1) % 4 == 0:
            continue  # last of a row: no right-hand neighbour
        # Move part i right until it overlaps part i + 1 by 0.03-0.1.
        gap = meshes[i + 1].bounds[0, 0] - meshes[i].bounds[1, 0]
        meshes[i].apply_translation([gap + rng.uniform(0.03, 0.1), 0.0, 0.0])
    return meshes


def run(objects: list[list[trimesh.Trimesh]], cfg: PenetrationConfig) -> tuple[float, list]:
    start = time.perf_counter()
    results = [score_object(meshes, cfg) for meshes in objects]
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode; best kept")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    objects = [make_object(rng, args.parts) for _ in range(args.objects)]
    faces = np.mean([len(m.faces) for obj in objects for m in obj])
    print(f"{args.objects} objects x {args.parts} parts, {faces:.0f} triangles per part")

    # Warm up (imports, first manifold) before timing; then alternate the modes and keep
    # each one's best time, so load from other processes hurts none of them more.
    run(objects[:1], PenetrationConfig())
    modes = [(broad, depth) for depth in (True, False) for broad in (True, False)]
    seconds = dict.fromkeys(modes, math.inf)
    results = {}
    for _ in range(args.repeats):
        for broad, depth in modes:
            cfg = PenetrationConfig(broad_phase=broad, depth=depth)
            elapsed, results[broad, depth] = run(objects, cfg)
            seconds[broad, depth] = min(seconds[broad, depth], elapsed)

    header = ("mode", "depth", "objects/s", "ms/object", "checked", "culled")
    print("{:<12} {:>5} {:>10} {:>10} {:>8} {:>7}".format(*header))
    for broad, depth in modes:
        name = "broad phase" if broad else "all pairs"
        rate = args.objects / seconds[broad, depth]
        checked = sum(r.detail["pairs_checked"] for r in results[broad, depth])
        culled = sum(r.detail["pairs_culled"] for r in results[broad, depth])
        row = (name, "on" if depth else "off", rate, 1e3 / rate, checked, culled)
        print("{:<12} {:>5} {:>10.1f} {:>10.1f} {:>8d} {:>7d}".format(*row))
    for depth in (True, False):
        ratio = seconds[False, depth] / seconds[True, depth]
        label = "on" if depth else "off"
        print(f"throughput ratio, broad phase / all pairs, depth {label}: {ratio:.2f}x")

    fast, slow = results[True, True], results[False, True]
    diff = max(
        abs(a.detail[k] - b.detail[k])
        for a, b in zip(fast, slow, strict=True)
        for k in ("penetration_max", "penetration_mean", "depth_max")
    )
    overlapping = sum(r.score > 0 for r in fast)
    print(f"objects with overlap: {overlapping}/{len(fast)}; max |score diff|: {diff:.1e}")
    assert diff <= 1e-12, f"broad phase changed a score by {diff}"
    assert all(r.detail["fallback_pairs"] == 0 for r in fast), "benchmark parts must be closed"


if __name__ == "__main__":
    main()
