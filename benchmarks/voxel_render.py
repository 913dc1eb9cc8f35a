"""What rendering a soft voxel world costs: views/s and peak memory of a forward+backward.

One step is what an optimiser of a voxel world does per batch of views: occupancy
sigmoid(logits) and face colours from softmax(material logits) (`face_colors`), a render
of --views 128-px orbit views (`orbit_cameras`), a scalar of the images, backward to
both logits. The world is `make_structure("tower", (n, n, n), 0)` started by
`logits_from_map` (solid voxels 0.95, empty ones 0.047: every voxel is in the volume), at
n = 32 and 64.

Renderers and devices:

    torch on cpu       TorchVoxelRenderer (emission-absorption, step 0.5), always
    torch on cuda      the same on the GPU, when CUDA is available
    nvdiffrast         NvdiffrastVoxelRenderer (8 depth-peeling layers), when CUDA and the
                       nvdiffrast package are (the genalign-render image); otherwise the
                       JSON says "not measured" and why

Time: on the CPU the CPU time of this process (`time.process_time`), torch on --threads
intra-op threads (1 by default, so that load from other processes slows every size
alike); on CUDA wall time around a synchronised step. After one untimed step per size
the sizes alternate over --rounds rounds, each keeping its fastest step; views/s is
--views over that step.

Memory: on the CPU the peak resident set during one step above the resident set before
it (Linux's VmHWM, reset just before the step by writing 5 to /proc/self/clear_refs),
each size in a fresh child process after a warm-up render of 8 px. A fresh process,
because the allocator keeps memory freed by an earlier, larger step and the next step
reuses it (a second 32^3 step after a 64^3 one grew by 250 MiB where a fresh one grew by
390). Not ru_maxrss: Linux carries it over from the parent into a child across exec.
Not tracemalloc: torch's tensors bypass Python's allocator. RSS counts what the
allocator holds, not only live tensors. On CUDA `torch.cuda.max_memory_allocated` during
the step above what was allocated before it.

    python benchmarks/voxel_render.py [--views 2 --rounds 3 --threads 1]

Prints the table and writes benchmarks/results/voxel_render.json, whose `ratios` hold the
headline numbers: step time per view and peak memory of 64^3 against 32^3.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from genalign.data.voxel_map import logits_from_map, palette_colors
from genalign.data.voxel_scenes import make_structure
from genalign.render.cameras import orbit_cameras
from genalign.render.voxels import face_colors, make_renderer
from genalign.storage import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "voxel_render.json"
SIZES = (32, 64)
IMAGE = 128


class Step:
    """One forward+backward of `renderer` on the tower world of n^3 voxels."""

    def __init__(self, renderer_name: str, n: int, views: int, device: str, image: int = IMAGE):
        m = make_structure("tower", (n, n, n), 0)
        logits = logits_from_map(m)
        self.occupancy = torch.tensor(logits.occupancy, device=device, requires_grad=True)
        self.materials = torch.tensor(logits.materials, device=device, requires_grad=True)
        self.palette = torch.tensor(palette_colors(), device=device)
        self.cameras = orbit_cameras(views, m.dims, world_scale=m.world_scale, size=image, seed=0).to(device)
        self.world_scale = m.world_scale
        self.renderer = make_renderer(renderer_name)  # each with its defaults
        self.device = device

    def __call__(self) -> None:
        self.occupancy.grad = self.materials.grad = None
        colors = face_colors(torch.softmax(self.materials, dim=-1), self.palette)
        out = self.renderer(torch.sigmoid(self.occupancy), colors, self.cameras, world_scale=self.world_scale)
        (out.rgb.mean() + out.alpha.mean()).backward()
        if self.device == "cuda":
            torch.cuda.synchronize()


def seconds(step: Step) -> float:
    if step.device == "cuda":
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    start = time.process_time()
    step()
    return time.process_time() - start


def cuda_peak_bytes(step: Step) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    return torch.cuda.max_memory_allocated() - before


def cpu_peak_bytes(n: int, views: int, threads: int) -> int:
    """The ru_maxrss growth of one CPU step, in a fresh child process (module doc)."""
    command = [sys.executable, __file__, "--peak-of", str(n), "--views", str(views), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def _status_bytes(key: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in bytes."""
    found = re.search(rf"^{key}:\s+(\d+) kB$", Path("/proc/self/status").read_text(), re.MULTILINE)
    return 1024 * int(found.group(1))


def print_cpu_peak(n: int, views: int) -> None:
    """The child of `cpu_peak_bytes`: warm up at 8 px, then one step; its RSS growth."""
    Step("torch", n, views, "cpu", image=8)()
    step = Step("torch", n, views, "cpu")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0 and later)
    before = _status_bytes("VmRSS")
    step()
    print(_status_bytes("VmHWM") - before)


def measure(renderer: str, device: str, views: int, rounds: int, threads: int) -> list[dict]:
    steps = {n: Step(renderer, n, views, device) for n in SIZES}
    for step in steps.values():
        step()  # untimed: first-call allocations, CUDA context, nvdiffrast's buffers
    best = {n: math.inf for n in SIZES}
    for r in range(rounds):
        order = SIZES[r % len(SIZES):] + SIZES[: r % len(SIZES)]
        for n in order:
            best[n] = min(best[n], seconds(steps[n]))
    rows = []
    for n in SIZES:
        peak = cuda_peak_bytes(steps[n]) if device == "cuda" else cpu_peak_bytes(n, views, threads)
        rows.append({
            "renderer": renderer,
            "device": device,
            "voxels": f"{n}^3",
            "views": views,
            "image": IMAGE,
            "ms_per_step": 1e3 * best[n],
            "views_per_s": views / best[n],
            "peak_mib": peak / 2**20,
        })
    del steps
    return rows


def nvdiffrast_missing() -> str | None:
    if not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("nvdiffrast") is None:
        return "the nvdiffrast package is not installed (it is in the genalign-render image only)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=2, help="views rendered per step")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per size; fastest kept")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--peak-of", type=int, help=argparse.SUPPRESS)  # the memory child
    args = parser.parse_args()
    if args.views < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--views, --rounds and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    if args.peak_of is not None:
        print_cpu_peak(args.peak_of, args.views)
        return
    load = os.getloadavg()[0]
    started = time.perf_counter()

    rows = measure("torch", "cpu", args.views, args.rounds, args.threads)
    not_measured = {}
    if torch.cuda.is_available():
        rows += measure("torch", "cuda", args.views, args.rounds, args.threads)
    else:
        not_measured["torch on cuda"] = "CUDA is not available (torch.cuda.is_available() is False)"
    missing = nvdiffrast_missing()
    if missing is None:
        rows += measure("nvdiffrast", "cuda", args.views, args.rounds, args.threads)
    else:
        not_measured["nvdiffrast"] = missing

    memory = {
        "cpu": "peak RSS during one step above the RSS before it (VmHWM reset by /proc/self/clear_refs), "
               "in a fresh process per size",
        "cuda": "torch.cuda.max_memory_allocated during one step above the memory allocated before it",
    }
    print(
        f"{os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}, {args.threads} thread(s); "
        f"tower world, {args.views} views of {IMAGE} px a step, forward+backward; fastest of {args.rounds}"
    )
    print(f"{'renderer':<11}{'device':<7}{'voxels':>7}{'ms/step':>10}{'views/s':>9}{'peak MiB':>10}")
    for row in rows:
        print(f"{row['renderer']:<11}{row['device']:<7}{row['voxels']:>7}{row['ms_per_step']:>10.1f}"
              f"{row['views_per_s']:>9.2f}{row['peak_mib']:>10.1f}")
    for what, why in not_measured.items():
        print(f"{what}: not measured: {why}")
    print(f"time: CPU time of the process on the CPU, wall time on CUDA. peak memory: {memory['cpu']} (CPU); "
          f"{memory['cuda']} (CUDA)")

    def ratio(renderer: str, device: str, key: str) -> float | None:
        by_size = {r["voxels"]: r[key] for r in rows if r["renderer"] == renderer and r["device"] == device}
        return by_size["64^3"] / by_size["32^3"] if by_size else None

    ratios = {
        "voxel_render_torch_cpu_time_64_vs_32": ratio("torch", "cpu", "ms_per_step"),
        "voxel_render_torch_cpu_peak_memory_64_vs_32": ratio("torch", "cpu", "peak_mib"),
    }
    for renderer, device in (("torch", "cuda"), ("nvdiffrast", "cuda")):
        if any(r["renderer"] == renderer and r["device"] == device for r in rows):
            ratios[f"voxel_render_{renderer}_{device}_time_64_vs_32"] = ratio(renderer, device, "ms_per_step")
            ratios[f"voxel_render_{renderer}_{device}_peak_memory_64_vs_32"] = ratio(renderer, device, "peak_mib")
    result = {
        "benchmark": "voxel_render",
        "command": " ".join(["python benchmarks/voxel_render.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "clock": "CPU time of the process on the CPU; wall time of a synchronised step on CUDA",
        "memory": memory,
        "settings": {
            "world": "make_structure('tower', (n, n, n), 0), logits_from_map defaults",
            "sizes": [f"{n}^3" for n in SIZES],
            "image": IMAGE,
            "views": args.views,
            "rounds": args.rounds,
            "threads": args.threads,
            "torch_step": 0.5,
            "nvdiffrast_layers": 8,
        },
        "rows": rows,
        "not_measured": not_measured,
        "ratios": ratios,
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(args.out, result)
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"\nratios: {json.dumps({k: round(v, 3) for k, v in ratios.items()})}\nwrote {shown}")


if __name__ == "__main__":
    main()
