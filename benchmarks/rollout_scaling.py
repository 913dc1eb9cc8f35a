"""How rollout + score time per condition grows with K, the samples per condition, in part-dpo.

For K = 2, 4, 8, 16 one shard of --conditions conditions goes through the work of the
rollout-parts and score-samples stages, timed apart:

- rollout: what rollout-parts runs (`genalign.stages.part_dpo.rollout_parts`):
  `genalign.generators.parts.generate` (the condition images encoded, K latents a
  condition sampled in batches of `batch_size`), then per condition its features written
  (safetensors) and its image linked, per sample its latent written (safetensors),
  decoded (`part_codec.decode_object`) and written as a GLB (`part_codec.save_glb`).
- score: what score-samples runs (`genalign.stages.shared.score_samples`):
  `PenetrationScorer.score_files` on the GLB files of the samples that decoded.

Left out of both: loading the generator (once, before any run), the rows, manifests and
hashes the stages write, and score-samples' linking of the sample files. Conditions are
made as prepare-parts makes them (`genalign.data.parts.make_objects`, rendered by
`genalign.render.parts_image`), seeded. Settings are the tiny preset's
(configs/part-dpo/tiny.yaml): 20 steps, guidance 2.0, rollout seed 0, batch_size 32
(RolloutPartsConfig's default, which the preset keeps), score `{reduce: max}`.

Timing: CPU time of this process (`time.process_time`, all its threads). torch runs
--threads intra-op threads (1 by default, so that other load on the machine slows
every K alike and idle OpenMP threads add no spin time). The scorer runs with workers 1:
it would start a pool only once its first files show that the rest outlast twice
worker_start_s (2 s) in this process, and the largest batch here (16 x 8 = 128 files of
~2 ms) is far below that, so the preset's `workers: 2` would score in this process too;
workers 1 rules a pool out, whose work this process's CPU time would not see. Each run
writes into a fresh, empty directory made before the clock starts; one untimed run
warms up first. The K values run in a rotating order, --repeats rounds, and each keeps
its fastest rollout, fastest score and fastest rollout + score of one run.

    python benchmarks/rollout_scaling.py [--base tiny://part-generator-pretrained] [--conditions 8] [--repeats 3]

Prints the table and writes benchmarks/results/rollout_scaling.json, whose `ratios` hold
the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "rollout_scaling.json"
KS = (2, 4, 8, 16)


# --- pure helpers ----------------------------------------------------------------------


def rotation(names: list, round_: int) -> list:
    """The order of round `round_`: `names` rotated left by round_ places, so each name
    runs first in turn."""
    shift = round_ % len(names)
    return list(names[shift:]) + list(names[:shift])


def padded_slots(num_parts: list[int], batch_size: int) -> int:
    """Part slots the DiT computes for jobs with these part counts in batches of
    `batch_size` (in order): each batch pads every sample to its largest part count."""
    return sum(len(batch) * max(batch) for batch in
               (num_parts[i : i + batch_size] for i in range(0, len(num_parts), batch_size)))


def ratios(rows: list[dict]) -> dict[str, float]:
    """Headline ratios of K = 16 to K = 2 from the table rows."""
    by_k = {row["k"]: row for row in rows}
    lo, hi = by_k[2], by_k[16]
    return {
        "rollout_score_per_condition_k16_vs_k2": hi["total_ms_per_condition"] / lo["total_ms_per_condition"],
        "rollout_score_per_sample_k16_vs_k2": hi["total_ms_per_sample"] / lo["total_ms_per_sample"],
        "rollout_per_sample_k16_vs_k2": hi["rollout_ms_per_sample"] / lo["rollout_ms_per_sample"],
        "score_per_sample_k16_vs_k2": hi["score_ms_per_sample"] / lo["score_ms_per_sample"],
    }


# --- workload --------------------------------------------------------------------------


def make_conditions(directory: Path, n: int, seed: int, image_size: int) -> list:
    """`n` conditions as prepare-parts writes them: one multi-part object each, its image
    rendered at `image_size` under images/ (the ground-truth JSON is not needed here)."""
    from genalign.data.parts import make_objects
    from genalign.records import Condition
    from genalign.render.parts_image import render_object, save_png

    rows = []
    for obj in make_objects(n, seed=seed):
        image = f"images/{obj.id}.png"
        save_png(render_object(list(obj.parts), size=image_size), directory / image)
        rows.append(Condition(id=obj.id, image=image, class_=obj.category,
                              meta={"num_parts": len(obj.parts), "split": "train"}, files={"image": image}))
    return rows


def rollout(gen, conditions: list, cond_dir: Path, out: Path, k: int, cfg) -> tuple[list[Path], list[str]]:
    """rollout-parts' work for one shard into `out`: the GLB files of the samples that
    decoded, and the ids of those that did not."""
    import torch
    from safetensors.torch import save_file

    from genalign.artifacts import link_or_copy
    from genalign.generators.parts import generate
    from genalign.models.part_codec import decode_object, save_glb

    results, features = generate(gen, conditions, cond_dir, k=k, seed=cfg.seed, steps=cfg.steps,
                                 guidance=cfg.guidance, batch_size=cfg.batch_size)
    (out / "cond").mkdir(parents=True)
    (out / "latents").mkdir()
    (out / "meshes").mkdir()
    for i, c in enumerate(conditions):
        save_file({"features": features[i].contiguous(), "num_parts": torch.tensor(int(c.meta["num_parts"]))},
                  str(out / "cond" / f"{c.id}.safetensors"))
        link_or_copy(cond_dir / c.image, out / "images" / f"{c.id}.png")
    meshes, failed = [], []
    for c, j, _, latent in results:
        sid = f"{c.id}-i0-k{j}"
        save_file({"latent": latent.contiguous()}, str(out / "latents" / f"{sid}.safetensors"))
        try:
            save_glb(decode_object(latent.numpy()), out / "meshes" / f"{sid}.glb")
        except Exception:  # noqa: BLE001 - as in the stage: a failed sample, left out of scoring
            failed.append(sid)
        else:
            meshes.append(out / "meshes" / f"{sid}.glb")
    return meshes, failed


def run_once(gen, conditions: list, cond_dir: Path, k: int, cfg, scorer) -> dict:
    """CPU seconds of one rollout and of scoring its files, in a fresh directory."""
    out = Path(tempfile.mkdtemp(prefix=f"rollout-k{k}-"))
    try:
        start = time.process_time()
        files, failed = rollout(gen, conditions, cond_dir, out, k, cfg)
        mid = time.process_time()
        scores = scorer.score_files(files)
        end = time.process_time()
    finally:
        shutil.rmtree(out)
    failed_scores = sum(s.score is None for s in scores)
    return {"rollout_s": mid - start, "score_s": end - mid, "failed_decodes": len(failed),
            "failed_scores": failed_scores}


# --- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny://part-generator-pretrained",
                        help="model reference of the generator (genalign.models.refs.resolve)")
    parser.add_argument("--conditions", type=int, default=8, help="conditions in the shard")
    parser.add_argument("--seed", type=int, default=1234, help="condition seed (the tiny preset's prepare seed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per K; fastest kept")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    load = os.getloadavg()[0]

    import torch

    from genalign.config.part_dpo import RolloutPartsConfig
    from genalign.config.score import ScoreSamplesConfig
    from genalign.generators.parts import load_generator
    from genalign.models.refs import resolve
    from genalign.scorers import get_scorer

    torch.set_num_threads(args.threads)
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s); CPU time")
    # configs/part-dpo/tiny.yaml: rollout {steps: 20, guidance: 2.0, seed: 0}; score {reduce: max}
    # with workers 1 in place of the preset's 2 (see the module docstring).
    score_cfg = ScoreSamplesConfig.from_dict({"scorer": "penetration", "penetration": {"reduce": "max", "workers": 1}})
    scorer = get_scorer(score_cfg.scorer, score_cfg.scorer_config())
    gen = load_generator(resolve(args.base))
    rollout_cfgs = {k: RolloutPartsConfig(samples_per_condition=k, steps=20, guidance=2.0, seed=0) for k in KS}

    with tempfile.TemporaryDirectory(prefix="rollout-scaling-") as tmp:
        cond_dir = Path(tmp)
        conditions = make_conditions(cond_dir, args.conditions, args.seed, image_size=32)
        num_parts = [int(c.meta["num_parts"]) for c in conditions]
        print(f"base {args.base}, {len(conditions)} conditions of {min(num_parts)}-{max(num_parts)} parts "
              f"(mean {sum(num_parts) / len(num_parts):.1f}), steps 20, guidance 2.0, "
              f"batch_size {rollout_cfgs[2].batch_size}, score {{reduce: max, workers: 1}}")
        run_once(gen, conditions, cond_dir, 2, rollout_cfgs[2], scorer)  # warm-up: imports, first calls
        best: dict[int, dict] = {}
        for r in range(args.repeats):
            for k in rotation(list(KS), r):
                res = run_once(gen, conditions, cond_dir, k, rollout_cfgs[k], scorer)
                res["total_s"] = res["rollout_s"] + res["score_s"]
                prev = best.setdefault(k, res)
                for key in ("rollout_s", "score_s", "total_s"):
                    prev[key] = min(prev[key], res[key])

    rows = []
    for k in KS:
        b, n = best[k], len(conditions)
        samples = n * k
        jobs = [p for p in num_parts for _ in range(k)]  # generate's job order: condition by condition
        batch = rollout_cfgs[k].batch_size
        rows.append({
            "k": k, "conditions": n, "samples": samples,
            "failed_decodes": b["failed_decodes"], "failed_scores": b["failed_scores"],
            "batches": math.ceil(samples / batch),
            "padded_slots_per_sample": padded_slots(jobs, batch) / samples,
            "rollout_ms_per_condition": 1e3 * b["rollout_s"] / n, "score_ms_per_condition": 1e3 * b["score_s"] / n,
            "total_ms_per_condition": 1e3 * b["total_s"] / n,
            "rollout_ms_per_sample": 1e3 * b["rollout_s"] / samples, "score_ms_per_sample": 1e3 * b["score_s"] / samples,
            "total_ms_per_sample": 1e3 * b["total_s"] / samples,
        })
    for row in rows:
        row["total_vs_k2"] = row["total_ms_per_condition"] / rows[0]["total_ms_per_condition"]

    print(f"\nms of CPU time, fastest of {args.repeats} runs per K")
    print("{:>3} {:>8} {:>8} {:>14} {:>12} {:>12} {:>10} {:>9}".format(
        "K", "samples", "batches", "rollout/cond", "score/cond", "total/cond", "ms/sample", "vs K=2"))
    for row in rows:
        print(f"{row['k']:3d} {row['samples']:8d} {row['batches']:8d} {row['rollout_ms_per_condition']:14.1f} "
              f"{row['score_ms_per_condition']:12.1f} {row['total_ms_per_condition']:12.1f} "
              f"{row['total_ms_per_sample']:10.2f} {row['total_vs_k2']:8.2f}x")
    print("rollout / score ms per sample: " + ", ".join(
        f"K={row['k']} {row['rollout_ms_per_sample']:.2f} / {row['score_ms_per_sample']:.2f}" for row in rows))
    print("padded part slots per sample: " + ", ".join(
        f"K={row['k']} {row['padded_slots_per_sample']:.2f}" for row in rows))
    print("failed samples (decode / score): " + ", ".join(
        f"K={row['k']} {row['failed_decodes']} / {row['failed_scores']}" for row in rows))

    result = {
        "benchmark": "rollout_scaling",
        "command": " ".join(["python benchmarks/rollout_scaling.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "clock": "process CPU time",
        "settings": {"base": args.base, "conditions": len(conditions), "condition_seed": args.seed,
                     "steps": 20, "guidance": 2.0, "batch_size": rollout_cfgs[2].batch_size,
                     "score": score_cfg.to_dict(), "repeats": args.repeats},
        "rows": rows,
        "ratios": ratios(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"\nratios: {json.dumps(result['ratios'])}\nwrote {shown}")


if __name__ == "__main__":
    main()
