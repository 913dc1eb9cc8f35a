"""train-hand-pose: one training phase of the hand-pose transformer.

Phase `phase` of `train.phases` (`genalign.trainers.hand_pose.train_phase`) on the
dataset artifact's train split, from the previous phase's model (`previous`; none for
the first phase). Checkpoints live in a work directory keyed by the stage's fingerprint
(config, phase, inputs, torch thread count, process count), so a task killed mid-phase
and run again resumes from its last checkpoint; the model artifact appears only when the
phase is done.

Under torchrun every rank runs the stage and trains its share of each step (the
trainer's "Processes"); the work directory (under `genalign.models.refs.cache_dir()`)
must then be on a filesystem every rank sees, since rank 0 alone writes the checkpoints
that all of them resume from. Rank 0 alone copies the model into the artifact and
removes the work directory.

    genalign stage train-hand-pose --config cfg.yaml --in dataset=d [--in previous=m0] --out model=m1 --param phase=1
    python -m torch.distributed.run --standalone --nproc-per-node 2 --no-python \
        genalign stage train-hand-pose --config cfg.yaml --in dataset=d --out model=m0 --param phase=0
"""

from __future__ import annotations

import shutil
from pathlib import Path

from genalign.artifacts import DATASET, MODEL, fingerprint
from genalign.config.hand_pose import TrainHandPoseConfig
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def run(cfg: TrainHandPoseConfig, *, dataset: Path, previous: Path | None, model: Path, phase: int,
        tracker: Tracker) -> StageResult:
    from safetensors.torch import load_file

    from genalign.models.refs import cache_dir
    from genalign.trainers.hand_pose import train_phase
    from genalign.training.distributed import teardown
    from genalign.training.launch import is_main_process, world_size
    from genalign.training.numerics import numerics_key

    if not 0 <= phase < len(cfg.phases):
        raise ValueError(f"phase {phase}: expected 0 <= phase < {len(cfg.phases)} (the phases of train.phases)")
    if (previous is None) != (phase == 0):
        raise ValueError(f"phase {phase}: the previous phase's model is needed exactly when phase > 0")
    read_manifest(dataset, DATASET)
    if previous is not None:
        read_manifest(previous, MODEL)
    inputs = {"dataset": dataset, **({"previous": previous} if previous is not None else {})}
    # N processes round differently from one (the order of the gradient sums), so, like
    # the thread count, the process count decides whose checkpoints a run may resume
    fp = fingerprint("train-hand-pose", cfg.to_dict(), {"phase": phase, **numerics_key(), "processes": world_size()},
                     inputs)
    work = cache_dir() / "train" / fp
    data = load_file(str(dataset / "train.safetensors"))
    try:
        metrics = train_phase(cfg, phase, data, out_dir=work, previous=previous, tracker=tracker, resume=True)
    finally:
        teardown()
    # train_phase returns on every rank once rank 0 has written `work`; the other ranks'
    # `model` is a scratch directory that run_stage drops
    if is_main_process():
        with atomic_dir(model) as tmp:
            for path in work.iterdir():
                if path.name != "checkpoints":
                    shutil.copy2(path, tmp / path.name)
            write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), inputs={k: str(v) for k, v in inputs.items()},
                           counts={"train_frames": int(data["images"].shape[0])},
                           extra={"phase": phase, "phase_name": cfg.phases[phase].name})
        shutil.rmtree(work, ignore_errors=True)
    name = cfg.phases[phase].name
    return StageResult(metrics={f"train/{k}": float(v) for k, v in metrics.items()},
                       summary={"phase": phase, "name": name, **metrics})
