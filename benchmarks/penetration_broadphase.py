"""What the penetration scorer costs next to today's scorer and to naive all-pairs booleans.

Four measurements in one run, each checked for equal scores:

1. Scorer, 8-part objects of ~2.5k triangles a part (subdivided boxes and cylinders laid
   out like real assemblies: rows of parts standing on each other, one or two pushed into
   a neighbour), with and without depth: this scorer, today's (`penetration_reference`,
   a faithful copy of the scorer before this one) and naive booleans (today's with
   `broad_phase: false`: an exact manifold3d boolean on every pair).
2. Scaling: ms per object as parts grow from 2 to 32, in a touching chain (turned parts
   in a row, each against the one before: boxes overlap, parts only touch) and a
   scattered layout (random places in a box whose volume grows with the part count, so a
   part meets a few others whatever the count).
3. The score-samples stage on the pipeline's own objects (decoded part latents, boxes
   and 24-sided cylinders, as whole GLB files), with the tiny preset's settings
   (`{reduce: max, workers: 2}`, 512 files a shard), against the same stage running
   today's scorer: one shard alone, and two shards side by side in their own processes
   as the pipeline runs them (num_shards 2, ParallelFor), timed from the first start to
   the last end.
4. Workers: what a spawn pool costs to start, what a file costs in this process, and the
   batch size from which a pool pays (the scorer's own `pool_pays` rule).

Timing: every mode runs on fresh meshes (new trimesh objects, empty caches) built before
the clock starts. Scorer modes are timed in CPU time of this process, stage modes (whose
pools run in other processes) in wall time; modes alternate in a rotating order and each
keeps its fastest of --repeats runs, so load from other processes hurts none more than
another. Peak memory (tracemalloc) is measured in a separate, untimed pass.

    python benchmarks/penetration_broadphase.py [--objects 40] [--files 512] [--repeats 3]

Prints the tables and writes benchmarks/results/penetration_broadphase.json, whose
`ratios` hold the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.penetration_reference, also in spawned workers

from benchmarks import penetration_reference as today
from genalign.config.score import PenetrationConfig
from genalign.storage import atomic_write_json
from genalign.scorers import penetration as scorer

RESULTS = ROOT / "benchmarks" / "results" / "penetration_broadphase.json"
SCORE_KEYS = ("penetration_max", "penetration_mean")


# --- workloads -------------------------------------------------------------------------


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


def make_chain(rng: np.random.Generator, n_parts: int) -> list[trimesh.Trimesh]:
    """A chain along a line 30 degrees off the x axis: every part turned by the same 30
    degrees about z and moved along the line until it touches the one before, so their
    boxes overlap while the parts only touch (up to rounding)."""
    turn = trimesh.transformations.rotation_matrix(math.pi / 6, [0, 0, 1])
    direction = turn[:3, 0]
    meshes: list[trimesh.Trimesh] = []
    for _ in range(n_parts):
        mesh = make_part(rng)
        mesh.apply_transform(turn)
        if meshes:
            reach = (meshes[-1].vertices @ direction).max() - (mesh.vertices @ direction).min()
            mesh.apply_translation(reach * direction)
        meshes.append(mesh)
    return meshes


def make_scattered(rng: np.random.Generator, n_parts: int) -> list[trimesh.Trimesh]:
    """Parts at random places in a cube holding ~0.1 of volume per part, so each part
    meets about the same few neighbours whatever the count."""
    side = (0.1 * n_parts) ** (1 / 3)
    meshes = []
    for _ in range(n_parts):
        mesh = make_part(rng)
        mesh.apply_translation(rng.uniform(0.0, side, 3) - mesh.centroid)
        meshes.append(mesh)
    return meshes


def pipeline_objects(n: int, seed: int) -> list[list[trimesh.Trimesh]]:
    """The meshes the pipeline scores: dataset objects' part latents with Gaussian noise
    (std 0.25, like a partly trained generator: parts near their places, some pushed into
    each other), decoded into boxes and cylinders (`genalign.models.part_codec`)."""
    from genalign.data.parts import make_objects
    from genalign.models.part_codec import decode_parts, encode_object, part_mesh

    rng = np.random.default_rng(seed)
    objects = []
    for spec in make_objects(n, seed=seed):
        latent = encode_object(list(spec.parts))
        latent = latent + rng.normal(0.0, 0.25, latent.shape).astype(np.float32)
        objects.append([part_mesh(p) for p in decode_parts(latent)])
    return objects


def fresh(objects: list[list[trimesh.Trimesh]]) -> list[list[trimesh.Trimesh]]:
    """New meshes with the same arrays and empty trimesh caches."""
    return [[trimesh.Trimesh(m.vertices.copy(), m.faces.copy(), process=False) for m in obj] for obj in objects]


# --- timing ----------------------------------------------------------------------------


def cpu_time(fn, objects, cfg) -> tuple[float, list]:
    """CPU seconds of scoring every object with fn (on fresh meshes), and the results."""
    meshes = fresh(objects)
    start = time.process_time()
    results = [fn(obj, cfg) for obj in meshes]
    return time.process_time() - start, results


def interleaved(modes: dict, repeats: int, run) -> dict:
    """{mode: (best seconds, last result)}: every mode run `repeats` times, in an order
    that rotates each round."""
    names = list(modes)
    best: dict = {}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, result = run(modes[name])
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, result)
            else:
                best[name] = (best[name][0], result)
    return best


def peak_mib(fn, objects, cfg) -> float:
    """Peak traced Python-heap memory of scoring the objects, outside any timed run."""
    meshes = fresh(objects)
    tracemalloc.start()
    for obj in meshes:
        fn(obj, cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def max_diff(a: list, b: list, keys=SCORE_KEYS) -> float:
    return max(abs(x.detail[k] - y.detail[k]) for x, y in zip(a, b, strict=True) for k in keys)


# --- 1. scorer -------------------------------------------------------------------------


def bench_scorer(args) -> dict:
    rng = np.random.default_rng(args.seed)
    objects = [make_object(rng, 8) for _ in range(args.objects)]
    faces = np.mean([len(m.faces) for obj in objects for m in obj])
    print(f"\n1. scorer: {args.objects} objects x 8 parts, {faces:.0f} triangles a part")
    scorer.score_object(objects[0], PenetrationConfig())  # imports and first manifold
    today.score_object(fresh(objects[:1])[0], PenetrationConfig())
    modes = {
        (name, depth): (fn, PenetrationConfig(depth=depth, broad_phase=broad))
        for depth in (True, False)
        for name, fn, broad in (("this scorer", scorer.score_object, True), ("today", today.score_object, True),
                                ("naive", today.score_object, False))
    }
    best = interleaved(modes, args.repeats, lambda mode: cpu_time(mode[0], objects, mode[1]))
    memory = {key: peak_mib(fn, objects[:4], cfg) for key, (fn, cfg) in modes.items()}
    print("{:<12} {:>5} {:>10} {:>10} {:>9} {:>9}".format("mode", "depth", "ms/object", "vs naive", "vs today", "peak MiB"))
    rows = []
    for (name, depth), (seconds, _) in best.items():
        ms = 1e3 * seconds / len(objects)
        vs_naive = best["naive", depth][0] / seconds
        vs_today = best["today", depth][0] / seconds
        rows.append({"mode": name, "depth": depth, "ms_per_object": ms, "vs_naive": vs_naive,
                     "vs_today": vs_today, "peak_mib": memory[name, depth]})
        print(f"{name:<12} {'on' if depth else 'off':>5} {ms:10.2f} {vs_naive:9.1f}x {vs_today:8.1f}x {memory[name, depth]:9.1f}")
    new, ref, naive = (best[m, True][1] for m in ("this scorer", "today", "naive"))
    diffs = {"vs_today": max_diff(new, ref), "vs_naive": max_diff(new, naive)}
    checked = sum(r.detail["pairs_checked"] for r in new)
    separated = sum(r.detail["pairs_separated"] for r in new)
    print(f"pairs past the box test: {checked}, of them settled by a separating plane: {separated}")
    print(f"max |score diff|: vs today {diffs['vs_today']:.1e}, vs naive {diffs['vs_naive']:.1e}")
    assert diffs["vs_today"] <= 1e-12 and diffs["vs_naive"] <= 1e-12, diffs
    assert all(r.detail["fallback_pairs"] == 0 for r in new), "benchmark parts must be closed"
    return {"objects": args.objects, "parts": 8, "triangles_per_part": float(faces), "rows": rows,
            "max_score_diff": diffs, "speedup_vs_naive": best["naive", True][0] / best["this scorer", True][0],
            "speedup_vs_today": best["today", True][0] / best["this scorer", True][0]}


# --- 2. scaling ------------------------------------------------------------------------


def bench_scaling(args) -> list[dict]:
    print(f"\n2. scaling: ms per object, {args.scale_objects} objects a size, depth on")
    print("{:<10} {:>5} {:>7} {:>8} {:>9} {:>12} {:>9} {:>8}".format(
        "layout", "parts", "pairs", "checked", "separated", "this scorer", "today", "ratio"))
    rows = []
    cfg = PenetrationConfig()
    for layout, make in (("chain", make_chain), ("scattered", make_scattered)):
        for n_parts in (2, 4, 8, 16, 32):
            rng = np.random.default_rng(args.seed + n_parts)
            objects = [make(rng, n_parts) for _ in range(args.scale_objects)]
            modes = {"this scorer": scorer.score_object, "today": today.score_object}
            best = interleaved(modes, max(2, args.repeats - 1), lambda fn, objects=objects: cpu_time(fn, objects, cfg))
            new, ref = best["this scorer"][1], best["today"][1]
            diff = max_diff(new, ref)
            assert diff <= 1e-12, (layout, n_parts, diff)
            ms_new = 1e3 * best["this scorer"][0] / len(objects)
            ms_ref = 1e3 * best["today"][0] / len(objects)
            row = {"layout": layout, "parts": n_parts, "pairs": n_parts * (n_parts - 1) // 2,
                   "checked": float(np.mean([r.detail["pairs_checked"] for r in new])),
                   "separated": float(np.mean([r.detail["pairs_separated"] for r in new])),
                   "ms_this_scorer": ms_new, "ms_today": ms_ref, "max_score_diff": diff}
            rows.append(row)
            print(f"{layout:<10} {n_parts:5d} {row['pairs']:7d} {row['checked']:8.1f} {row['separated']:9.1f} "
                  f"{ms_new:12.2f} {ms_ref:9.2f} {ms_ref / ms_new:7.1f}x")
    return rows


# --- 3. the stage ----------------------------------------------------------------------


def write_samples(directory: Path, objects: list[list[trimesh.Trimesh]], prefix: str) -> None:
    """A samples artifact: one GLB and one row per object, eight samples a condition."""
    from genalign.models.part_codec import save_glb
    from genalign.records import Sample, write_jsonl
    from genalign.storage import write_manifest

    rows = []
    for k, meshes in enumerate(objects):
        sid = f"{prefix}c{k // 8:03d}-k{k % 8}"
        save_glb(meshes, directory / "meshes" / f"{sid}.glb")
        rows.append(Sample(sample_id=sid, cond_id=sid.split("-")[0], seed=k, iteration=0,
                           output={"num_parts": len(meshes)}, files={"meshes": f"meshes/{sid}.glb"}, status="ok"))
    write_jsonl(directory / "samples.jsonl", rows)
    write_manifest(directory, kind="samples", counts={"samples": len(rows)})


def run_stage_once(samples: Path, penetration: dict, reference: bool) -> tuple[float, dict]:
    """Wall seconds of one score-samples run into a fresh output, and {sample: score}."""
    from genalign import scorers
    from genalign.records import ScoredSample, read_jsonl
    from genalign.stages import run_stage

    out = Path(tempfile.mkdtemp(prefix="penetration-stage-")) / "scored"
    builder = scorers.SCORERS["penetration"]
    if reference:  # today's stage: the same stage code with today's scorer
        scorers.SCORERS["penetration"] = lambda cfg: today.PenetrationScorer(PenetrationConfig.from_dict(cfg))
    try:
        start = time.perf_counter()
        run_stage("score-samples", {"penetration": penetration}, inputs={"samples": samples}, outputs={"scored": out})
        seconds = time.perf_counter() - start
        scores = {r.sample_id: r.score for r in read_jsonl(out / "scored.jsonl", ScoredSample)}
    finally:
        scorers.SCORERS["penetration"] = builder
        shutil.rmtree(out.parent)
    return seconds, scores


def _shard(samples: Path, penetration: dict, reference: bool, ready, go, results) -> None:
    """One score-samples task of a side-by-side pair: imports done before `go`."""
    import genalign.stages  # noqa: F401

    ready.set()
    go.wait()
    start = time.time()
    _, scores = run_stage_once(samples, penetration, reference)
    results.put((start, time.time(), scores))


def run_shards(shards: list[Path], penetration: dict, reference: bool) -> tuple[float, dict]:
    """Wall seconds from the first shard's start to the last one's end, with the shards
    scored side by side in their own processes (the pipeline's ParallelFor over
    num_shards), and their scores."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    go = context.Event()
    readies, tasks = [], []
    for samples in shards:
        ready = context.Event()
        task = context.Process(target=_shard, args=(samples, penetration, reference, ready, go, results))
        task.start()
        readies.append(ready)
        tasks.append(task)
    for ready in readies:
        ready.wait()
    go.set()
    done = [results.get() for _ in tasks]
    for task in tasks:
        task.join()
    scores = {k: v for _, _, s in done for k, v in s.items()}
    return max(end for _, end, _ in done) - min(start for start, _, _ in done), scores


def bench_stage(args, work: Path) -> dict:
    shards = []
    for k in range(2):
        objects = pipeline_objects(args.files, args.seed + k)
        shards.append(work / f"samples-{k}")
        write_samples(shards[-1], objects, prefix=f"s{k}")
    parts = np.mean([len(o) for o in objects])
    faces = np.mean([len(m.faces) for o in objects for m in o])
    print(f"\n3. score-samples stage: {args.files} GLB files a shard of decoded part latents, "
          f"{parts:.1f} parts of {faces:.0f} triangles an object; wall time")
    tiny = {"reduce": "max", "workers": 2}  # configs/part-dpo/tiny.yaml
    modes = {
        ("1 shard", "this stage"): (lambda: run_stage_once(shards[0], tiny, False)),
        ("1 shard", "today"): (lambda: run_stage_once(shards[0], tiny, True)),
        ("1 shard", "today, 1 worker"): (lambda: run_stage_once(shards[0], {**tiny, "workers": 1}, True)),
        ("2 shards", "this stage"): (lambda: run_shards(shards, tiny, False)),
        ("2 shards", "today"): (lambda: run_shards(shards, tiny, True)),
    }
    best = interleaved(modes, args.repeats, lambda mode: mode())
    rows = []
    print("{:<9} {:<16} {:>8} {:>10} {:>9}".format("shards", "mode", "seconds", "ms/file", "speedup"))
    for (layout, name), (seconds, scores) in best.items():
        ours = best[layout, "this stage"]
        assert scores == ours[1], f"{layout} {name}: scores differ"
        files = args.files * (2 if layout == "2 shards" else 1)
        row = {"shards": layout, "mode": name, "seconds": seconds, "ms_per_file": 1e3 * seconds / files,
               "this_stage_speedup": seconds / ours[0]}
        rows.append(row)
        print(f"{layout:<9} {name:<16} {seconds:8.2f} {row['ms_per_file']:10.2f} {row['this_stage_speedup']:8.1f}x")
    scores = best["2 shards", "this stage"][1]
    overlapping = sum(s > 0 for s in scores.values())
    print(f"scores identical to today's on all {len(scores)} samples ({overlapping} with overlap)")

    def ratio(layout, name):
        return best[layout, name][0] / best[layout, "this stage"][0]

    return {"files_per_shard": args.files, "parts_per_object": float(parts), "triangles_per_part": float(faces),
            "rows": rows, "speedup": ratio("2 shards", "today"), "speedup_one_shard": ratio("1 shard", "today"),
            "speedup_one_shard_vs_one_worker": ratio("1 shard", "today, 1 worker")}


# --- 4. workers ------------------------------------------------------------------------


def bench_workers(args, work: Path) -> dict:
    print("\n4. workers: pool start-up against scoring in this process")
    files = sorted((work / "samples-0" / "meshes").glob("*.glb"))
    cfg = PenetrationConfig(workers=1)
    per_file = min(_time_serial(files, cfg) for _ in range(2)) / len(files)
    starts = []
    for _ in range(2):
        # Start-up: a spawn pool of 2 until each worker has scored one file (imports, the
        # first boolean), less the time the files themselves take.
        start = time.perf_counter()
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(scorer._score_file, files[:2], [cfg] * 2))
        starts.append(time.perf_counter() - start - per_file)
    start_s = min(starts)
    crossover = math.ceil(start_s * 2 / per_file)  # files where files * c * (1 - 1/2) = start
    print(f"2-worker spawn pool start-up {start_s:.2f} s; {1e3 * per_file:.2f} ms a pipeline file in this process")
    print(f"a pool pays from ~{crossover} files (configured worker_start_s: {PenetrationConfig().worker_start_s} s)")
    return {"pool_start_s": start_s, "ms_per_file": 1e3 * per_file, "crossover_files": crossover,
            "worker_start_s": PenetrationConfig().worker_start_s}


def _time_serial(files: list[Path], cfg: PenetrationConfig) -> float:
    start = time.perf_counter()
    scorer.PenetrationScorer(cfg).score_files(files)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=40, help="objects in the scorer benchmark")
    parser.add_argument("--scale-objects", type=int, default=3, help="objects per size in the scaling benchmark")
    # The tiny preset's shard: 128 train conditions x 8 samples over 2 shards.
    parser.add_argument("--files", type=int, default=512, help="GLB files a shard in the stage benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; fastest kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}, numpy {np.__version__}, trimesh {trimesh.__version__}")
    with tempfile.TemporaryDirectory(prefix="penetration-bench-") as tmp:
        headline = bench_scorer(args)
        scaling = bench_scaling(args)
        stage = bench_stage(args, Path(tmp))
        workers = bench_workers(args, Path(tmp))
    result = {
        "benchmark": "penetration_broadphase",
        "command": " ".join(["python benchmarks/penetration_broadphase.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "numpy": np.__version__,
                    "trimesh": trimesh.__version__},
        "ratios": {
            "penetration_speedup_vs_naive": headline["speedup_vs_naive"],
            "penetration_speedup_vs_today": headline["speedup_vs_today"],
            "penetration_stage_speedup_pipeline_objects": stage["speedup"],
            "penetration_stage_speedup_one_shard": stage["speedup_one_shard"],
            "penetration_stage_speedup_one_shard_vs_today_one_worker": stage["speedup_one_shard_vs_one_worker"],
        },
        "scorer": headline,
        "scaling": scaling,
        "stage": stage,
        "workers": workers,
    }
    atomic_write_json(args.out, result)
    print(f"\nratios: {json.dumps(result['ratios'])}\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
