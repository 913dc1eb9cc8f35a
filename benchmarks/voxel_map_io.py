"""What reading and writing a voxel map costs next to plain `json.loads` / `json.dumps`.

One world of the source design's size: 88,000 solid blocks of random materials on a
64 x 32 x 64 grid (seed 0), as `genalign.data.voxel_map` writes it (4.7 MB of text, one
block a line). Modes, each on that same text or map:

    json.loads      json.loads(text): the baseline of reading
    parse_map       parse_map(obj) on the loaded object: every check and the array
    loads+parse     json.loads then parse_map: read_map without the file
    read_map        read_map(path) of the written file
    json.dumps      json.dumps(obj) of the loaded object: the baseline of writing
    map_to_json     map_to_json(map): the JSON object of the map
    format_map      format_map(map): the text write_map writes
    write_map       write_map(map, path): the text, written atomically (with fsync)

Time: wall time (the file modes wait on the disk) with the garbage collector off during
a run and a collection before it, as timeit does, so that no mode pays for collecting the
others' garbage (the loaded object alone is 88k dicts and lists). The modes alternate in
a rotating order over --repeats rounds, each keeping its fastest run. The round trip is
checked exact before the clock starts.

    python benchmarks/voxel_map_io.py [--repeats 7]

Prints the table and writes benchmarks/results/voxel_map_io.json, whose `ratios` hold
the headline numbers: reading against json.loads, writing against json.dumps.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from genalign.data.voxel_map import (
    MATERIALS,
    VoxelMap,
    format_map,
    map_to_json,
    parse_map,
    read_map,
    write_map,
)
from genalign.storage import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "voxel_map_io.json"
# The source design's world: 64 x 32 x 64 with 88k blocks.
DIMS = (64, 32, 64)
BLOCKS = 88_000
# mode -> the baseline its `x` column divides by
BASELINES = {
    "json.loads": "json.loads",
    "parse_map": "json.loads",
    "loads+parse": "json.loads",
    "read_map": "json.loads",
    "json.dumps": "json.dumps",
    "map_to_json": "json.dumps",
    "format_map": "json.dumps",
    "write_map": "json.dumps",
}


def make_map(dims: tuple[int, int, int], n: int, seed: int) -> VoxelMap:
    rng = np.random.default_rng(seed)
    flat = np.zeros(math.prod(dims), dtype=np.uint8)
    flat[rng.choice(flat.size, n, replace=False)] = rng.integers(1, len(MATERIALS), n)
    return VoxelMap(flat.reshape(dims), world_scale=2.0, sequence=1, metadata={"seed": seed})


def fastest(modes: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """{mode: fastest wall seconds}: every mode run `repeats` times, the order rotating."""
    names = list(modes)
    best: dict[str, float] = {}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            gc.disable()
            start = time.perf_counter()
            modes[name]()
            seconds = time.perf_counter() - start
            gc.enable()
            best[name] = min(seconds, best.get(name, math.inf))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs per mode; fastest kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    load = os.getloadavg()[0]

    m = make_map(DIMS, BLOCKS, args.seed)
    text = format_map(m)
    obj = json.loads(text)
    with tempfile.TemporaryDirectory(prefix="voxel-map-io-") as tmp:
        path = Path(tmp) / "map.json"
        write_map(m, path)
        assert read_map(path) == m and map_to_json(m) == obj, "round trip not exact"
        assert path.read_text() == text
        modes = {
            "json.loads": lambda: json.loads(text),
            "parse_map": lambda: parse_map(obj, "map.json"),
            "loads+parse": lambda: parse_map(json.loads(text), "map.json"),
            "read_map": lambda: read_map(path),
            "json.dumps": lambda: json.dumps(obj),
            "map_to_json": lambda: map_to_json(m),
            "format_map": lambda: format_map(m),
            "write_map": lambda: write_map(m, path),
        }
        best = fastest(modes, args.repeats)

    rows = [
        {
            "mode": name,
            "ms": 1e3 * best[name],
            "baseline": BASELINES[name],
            "x_baseline": best[name] / best[BASELINES[name]],
        }
        for name in modes
    ]
    print(
        f"{os.cpu_count()} CPUs, load average {load:.1f}, Python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )
    print(
        f"{DIMS[0]} x {DIMS[1]} x {DIMS[2]} world, {m.count} blocks, {len(text) / 1e6:.2f} MB of "
        f"text; fastest of {args.repeats} runs, wall time"
    )
    print(f"{'mode':<13}{'ms':>9}{'x base':>9}  baseline")
    for row in rows:
        print(f"{row['mode']:<13}{row['ms']:>9.1f}{row['x_baseline']:>9.2f}  {row['baseline']}")

    ratios = {
        "voxel_map_read_vs_json_loads": best["loads+parse"] / best["json.loads"],
        "voxel_map_parse_vs_json_loads": best["parse_map"] / best["json.loads"],
        "voxel_map_format_vs_json_dumps": best["format_map"] / best["json.dumps"],
        "voxel_map_write_vs_json_dumps": best["write_map"] / best["json.dumps"],
    }
    result = {
        "benchmark": "voxel_map_io",
        "command": " ".join(["python benchmarks/voxel_map_io.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "clock": "wall time, garbage collector off during a run",
        "settings": {
            "dims": list(DIMS),
            "blocks": m.count,
            "seed": args.seed,
            "text_bytes": len(text.encode()),
            "repeats": args.repeats,
        },
        "rows": rows,
        "ratios": ratios,
    }
    atomic_write_json(args.out, result)
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"\nratios: {json.dumps({k: round(v, 3) for k, v in ratios.items()})}\nwrote {shown}")


if __name__ == "__main__":
    main()
