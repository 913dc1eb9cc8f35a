"""Does the stochastic head, or σReparam, help the hand-pose transformer on the tiny preset?

A quality comparison, not a timing: every variant trains the preset's phases end to end
and is scored on the held-out split. MPJPE ratios below 1 mean the variant helps.

Variants, each a change of the preset's `train.model`:

    plain            the preset as it is
    stochastic_head  stochastic_head: true (the VAE-style latent; its KL weighted by each
                     phase's weights.kl)
    sigma_reparam    sigma_reparam: true (every nn.Linear a SigmaReparamLinear, Zhai et al. 2023)
    both             stochastic_head: true and sigma_reparam: true

For each variant and each of --seeds (model.seed and train.seed both set to the seed),
on the dataset prepare-hands makes from the preset's prepare config (once, in a
temporary directory; the synthetic frames are cached under GENALIGN_CACHE, like the
pipeline's): `genalign.trainers.hand_pose.train_phase` for every phase in order, each
from the previous phase's model directory, as the pipeline's train-hand-pose tasks do.
After every phase the EMA model is scored on the preset's evaluate split as
evaluate-hand-pose scores it (`load_phase_model(..., weights="ema")`, `predict` with the
evaluate batch size, `hand_pose_metrics` with FINGERS): the per-phase MPJPE, and after
the last phase MPJPE, PA-MPJPE, PCK@5px and AUC 0-50 mm. The mean-pose baseline that
evaluate-hand-pose gates against is scored once, for scale. Train seconds are the CPU
time of this process over the phases (`time.process_time`; wall seconds, from
train_phase, are in the JSON), torch on --threads intra-op threads.

How long: the tiny preset trains 5428 steps a run (7556 crops, batch 32: 236 steps an
epoch, 2 + 18 + 3 epochs), about 7 minutes on one thread (σReparam ~1.2x), so two
variants take about a quarter of an hour a seed.

With one seed the comparison is weak: seeds move the MPJPE too, and a difference smaller
than the seed-to-seed spread (the `std` column of the means, shown with two or more seeds)
means nothing. Run two or more seeds before reading a ratio as an effect.

    python benchmarks/hand_pose_variants.py [--preset tiny] [--seeds 0 1] [--variants plain both] [--threads 1]
    python benchmarks/hand_pose_variants.py --smoke     # seconds: the e2e preset, fewest epochs

`--smoke` trains the e2e preset (32-px crops, 160 training crops) with the fewest epochs
each phase allows (1, or one per group for a one_group_at_a_time phase) and writes to the
temporary directory unless --out is given: it checks that the script runs, its numbers
mean nothing. Prints the table and the means per variant, and writes
benchmarks/results/hand_pose_variants.json, whose `ratios` are the seed-mean MPJPE of each
variant over plain's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from genalign.config.hand_pose import EvaluateHandPoseConfig, TrainHandPoseConfig
from genalign.config.presets import load_preset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hand_pose_variants.json"
SMOKE_PRESET = "e2e"
# name -> changes of the preset's train.model
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "stochastic_head": {"stochastic_head": True},
    "sigma_reparam": {"sigma_reparam": True},
    "both": {"stochastic_head": True, "sigma_reparam": True},
}
BASELINE = "plain"
FINAL = ("mpjpe", "pa_mpjpe", "mpjpe_absolute", "pck_5px", "auc_0_50mm")
MEANS = ("mpjpe", "pa_mpjpe", "pck_5px", "auc_0_50mm", "train_s")


# --- pure helpers ----------------------------------------------------------------------


def smoke_phases(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The phases with the fewest epochs each allows: 1, or one per trainable group for a
    one_group_at_a_time phase (PhaseConfig refuses fewer)."""
    out = []
    for phase in phases:
        groups = phase.get("trainable")
        one_at_a_time = phase.get("one_group_at_a_time", False)
        if one_at_a_time and groups is None:
            raise ValueError(f"phase {phase['name']}: one_group_at_a_time without an explicit trainable list")
        out.append({**phase, "epochs": len(groups) if one_at_a_time else 1})
    return out


def variant_config(train: dict[str, Any], variant: str, seed: int, *, smoke: bool = False) -> TrainHandPoseConfig:
    """The preset's train section (a mapping, as load_preset gives it) with `variant`'s
    model changes and `seed` as both model.seed and seed, validated; with `smoke`, the
    phases cut to their fewest epochs."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}, expected one of {list(VARIANTS)}")
    model = {**train["model"], **VARIANTS[variant], "seed": seed}
    changed = {**train, "model": model, "seed": seed}
    if smoke:
        changed["phases"] = smoke_phases(train["phases"])
    return TrainHandPoseConfig.from_dict(changed, where=f"train ({variant}, seed {seed})")


def check_variants(names: list[str]) -> list[str]:
    """The variants to run, in the given order, each once; plain among them (the ratios'
    baseline)."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}, expected some of {list(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a variant is named twice: {names}")
    if BASELINE not in names:
        raise ValueError(f"--variants must include {BASELINE!r}: the ratios compare every variant to it")
    return list(names)


def seed_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant (in the order of first appearance): the mean over its seeds of each of
    MEANS, the seeds, and the sample standard deviation of the MPJPE (None for one seed)
    with its spread (max - min)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["variant"], []).append(row)
    out = {}
    for variant, runs in by.items():
        mpjpes = [r["mpjpe"] for r in runs]
        out[variant] = {
            "seeds": [r["seed"] for r in runs],
            **{k: statistics.fmean(r[k] for r in runs) for k in MEANS},
            "mpjpe_std": statistics.stdev(mpjpes) if len(runs) > 1 else None,
            "mpjpe_spread": max(mpjpes) - min(mpjpes),
        }
    return out


def ratios(means: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Seed-mean MPJPE of every variant but plain over plain's: below 1, the variant helps."""
    base = means[BASELINE]["mpjpe"]
    return {f"mpjpe_{v}_vs_{BASELINE}": m["mpjpe"] / base for v, m in means.items() if v != BASELINE}


# --- workload --------------------------------------------------------------------------


def evaluate(model_dir: Path, data: dict, batch_size: int) -> dict[str, float]:
    """The EMA model of `model_dir` on `data` as evaluate-hand-pose scores it: FINAL's
    metrics (mm, shares)."""
    from genalign.data.hand_skeleton import FINGERS
    from genalign.evaluation.hand_pose import hand_pose_metrics
    from genalign.stages.hand_pose.evaluate_hand_pose import predict
    from genalign.trainers.hand_pose import load_phase_model

    net, _ = load_phase_model(model_dir, weights="ema")
    cam, px = predict(net, data, batch_size)
    gt_cam = data["joints3d"].double().numpy() * 1000.0  # metres -> mm
    metrics = hand_pose_metrics(cam, gt_cam, px, data["joints2d"].double().numpy(), FINGERS)
    return {k: float(metrics[k]) for k in FINAL}


def baseline_metrics(dataset: Path, data: dict) -> dict[str, float]:
    """The mean-pose baseline of evaluate-hand-pose (the training split's mean root-relative
    pose at the true wrist) on `data`."""
    import numpy as np

    from genalign.data.hand_skeleton import FINGERS
    from genalign.evaluation.hand_pose import hand_pose_metrics
    from genalign.stages.hand_pose.evaluate_hand_pose import _project

    mean_pose = np.asarray(json.loads((dataset / "dataset.json").read_text())["mean_pose_mm"], dtype=np.float64)
    gt_cam = data["joints3d"].double().numpy() * 1000.0
    base_cam = gt_cam[:, :1] + mean_pose[None]
    metrics = hand_pose_metrics(base_cam, gt_cam, _project(base_cam, data["K"].double().numpy()),
                                data["joints2d"].double().numpy(), FINGERS)
    return {k: float(metrics[k]) for k in FINAL}


def train_and_score(cfg: TrainHandPoseConfig, train: dict, held_out: dict, batch_size: int,
                    work: Path) -> dict[str, Any]:
    """Every phase of `cfg` in order, each from the previous one's directory under `work`,
    the EMA model scored after each; the final metrics, the phases and the train time."""
    from genalign.trainers.hand_pose import train_phase

    phases, previous, cpu = [], None, 0.0
    for i, phase in enumerate(cfg.phases):
        out = work / f"{i}-{phase.name}"
        start = time.process_time()
        metrics = train_phase(cfg, i, train, out_dir=out, previous=previous, resume=False)
        seconds = time.process_time() - start
        cpu += seconds
        scores = evaluate(out, held_out, batch_size)
        phases.append({"phase": phase.name, "ema_mpjpe": scores["mpjpe"], "steps": int(metrics["steps"]),
                       "final_loss": metrics["final_loss"], "collapsed_batches": int(metrics["collapsed_batches"]),
                       "train_s": seconds, "train_wall_s": metrics["seconds"]})
        previous = out
    return {**scores, "train_s": cpu, "train_wall_s": sum(p["train_wall_s"] for p in phases), "phases": phases}


# --- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="hand-pose preset (configs/hand-pose/<preset>.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (model.seed and train.seed)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"some of {list(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--smoke", action="store_true",
                        help=f"the {SMOKE_PRESET} preset with the fewest epochs: checks that the script runs")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the JSON written (default {RESULTS.relative_to(ROOT)}; with --smoke, the temp dir)")
    args = parser.parse_args()
    try:
        variants = check_variants(args.variants)
    except ValueError as e:
        parser.error(str(e))
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0 or args.threads < 1:
        parser.error("--seeds must be distinct and >= 0, --threads >= 1")
    preset_name = SMOKE_PRESET if args.smoke else args.preset
    out_path = args.out or (Path(tempfile.gettempdir()) / "hand_pose_variants_smoke.json" if args.smoke else RESULTS)
    os.environ.setdefault("TQDM_DISABLE", "1")
    load = os.getloadavg()[0]

    import torch
    from safetensors.torch import load_file

    from genalign.stages import run_stage
    from genalign.storage import atomic_write_json

    torch.set_num_threads(args.threads)
    preset = load_preset("hand-pose", preset_name)
    eval_cfg = EvaluateHandPoseConfig.from_dict(preset["evaluate"])
    cfgs = {(v, s): variant_config(preset["train"], v, s, smoke=args.smoke) for v in variants for s in args.seeds}
    first = next(iter(cfgs.values()))
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch thread(s); device "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="hand-pose-variants-") as tmp:
        dataset = Path(tmp) / "dataset"
        run_stage("prepare-hands", preset["prepare"], inputs={}, outputs={"dataset": dataset})
        train = load_file(str(dataset / "train.safetensors"))
        held_out = load_file(str(dataset / f"{eval_cfg.split}.safetensors"))
        baseline = baseline_metrics(dataset, held_out)
        n = int(train["images"].shape[0])
        print(f"preset {preset_name}{' (smoke)' if args.smoke else ''}: {n} training crops, "
              f"{int(held_out['images'].shape[0])} {eval_cfg.split} crops; phases "
              + ", ".join(f"{p.name} {p.epochs} ep" for p in first.phases)
              + f", batch {first.batch_size}; mean-pose baseline MPJPE {baseline['mpjpe']:.2f} mm")
        # untimed: the first model build imports transformers' DINOv2, which the first
        # run's CPU time would otherwise count
        from genalign.trainers.hand_pose import build_model

        build_model(first, None)
        for (variant, seed), cfg in cfgs.items():
            work = Path(tmp) / f"{variant}-{seed}"
            result = train_and_score(cfg, train, held_out, eval_cfg.batch_size, work)
            shutil.rmtree(work)
            rows.append({"variant": variant, "seed": seed, "model": VARIANTS[variant], **result})
            print(f"  {variant} seed {seed}: MPJPE {result['mpjpe']:.2f} mm after "
                  + ", ".join(f"{p['phase']} {p['ema_mpjpe']:.2f}" for p in result["phases"])
                  + f"; {result['train_s']:.0f} CPU-s", flush=True)

    means = seed_means(rows)
    header = "{:<16} {:>5} {:>8} {:>9} {:>8} {:>8} {:>9}"
    print(f"\nEMA model on the {eval_cfg.split} split after the last phase (mm; PCK@5px and AUC 0-50 mm "
          f"as shares); train CPU seconds")
    print(header.format("variant", "seed", "mpjpe", "pa_mpjpe", "pck", "auc", "train s"))
    for r in rows:
        print(f"{r['variant']:<16} {r['seed']:>5} {r['mpjpe']:>8.2f} {r['pa_mpjpe']:>9.2f} {r['pck_5px']:>8.3f} "
              f"{r['auc_0_50mm']:>8.3f} {r['train_s']:>9.1f}")
    print(f"\nmean over seeds {args.seeds}")
    print("{:<16} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8}".format(
        "variant", "mpjpe", "std", "pa_mpjpe", "pck", "auc", "train s", "mpjpe x"))
    for v, m in means.items():
        std = "-" if m["mpjpe_std"] is None else f"{m['mpjpe_std']:.2f}"
        print(f"{v:<16} {m['mpjpe']:>8.2f} {std:>9} {m['pa_mpjpe']:>9.2f} {m['pck_5px']:>8.3f} "
              f"{m['auc_0_50mm']:>8.3f} {m['train_s']:>9.1f} {m['mpjpe'] / means[BASELINE]['mpjpe']:>8.3f}")
    if len(args.seeds) == 1:
        print("one seed: a difference smaller than the seed-to-seed spread means nothing; run --seeds 0 1 or more")

    result = {
        "benchmark": "hand_pose_variants",
        "kind": "quality (held-out MPJPE; a ratio below 1: the variant helps)",
        "command": " ".join(["python benchmarks/hand_pose_variants.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu"},
        "clock": "train_s: process CPU time; train_wall_s: train_phase's wall time",
        "settings": {"preset": preset_name, "smoke": args.smoke, "seeds": args.seeds, "variants": variants,
                     "train_crops": n, "split": eval_cfg.split, "eval_batch_size": eval_cfg.batch_size,
                     "phases": [{"name": p.name, "epochs": p.epochs} for p in first.phases],
                     "batch_size": first.batch_size, "train": {k: v for k, v in preset["train"].items()}},
        "baseline": baseline,
        "rows": rows,
        "means": means,
        "ratios": ratios(means),
    }
    atomic_write_json(out_path, result)
    shown = out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path
    print(f"\nratios: {json.dumps({k: round(v, 3) for k, v in result['ratios'].items()})}\nwrote {shown}")


if __name__ == "__main__":
    main()
