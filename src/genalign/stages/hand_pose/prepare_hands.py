"""prepare-hands: hand-centred crops of one official DexYCB split setup.

The frames come from a directory in the DexYCB toolkit's layout: the real dataset
(`source: dexycb`, `root`), or the project's synthetic hands (`source: synthetic`),
generated in the same layout and cached by their config, so one loader
(`genalign.data.dexycb`) serves both. Every split (train, val, test) of `setup` is read
with the toolkit's rules, frames without a hand are skipped and counted, left hands are
mirrored to right ones, and each frame becomes a hand-centred crop with its intrinsics.

    dataset/
      train.safetensors  val.safetensors  test.safetensors
          images uint8 [N,3,S,S]  joints3d [N,21,3] metres (camera frame, mirrored to right)
          joints2d [N,21,2] crop px  K [N,3,3] crop intrinsics  mirrored [N]
          object_pose [N,3,4]  object_extent [N,3] (NaN: unknown)  index [N]
      frames_<split>.jsonl   the frame each row came from (subject, sequence, serial, frame, side)
      dataset.json           setup, counts, skipped frames by reason, the training split's
                             mean root-relative pose (mm: the baseline an evaluation beats)

    genalign stage prepare-hands --config cfg.yaml --out dataset=d
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genalign.artifacts import DATASET
from genalign.config.hand_pose import SPLITS, PrepareHandsConfig
from genalign.stages import StageResult
from genalign.storage import (
    ArtifactError,
    atomic_dir,
    atomic_write_json,
    config_hash,
    write_manifest,
)
from genalign.tracking import Tracker


def run(cfg: PrepareHandsConfig, *, dataset: Path, tracker: Tracker) -> StageResult:
    from safetensors.torch import save_file

    from genalign.data.dexycb import build_crops, load_split

    root, extents = _source(cfg)
    # Every split is indexed (and its labels checked) before any crop is made, so a bad
    # file in the test split stops the stage before the train split's work.
    indices = {split: load_split(root, cfg.setup, split) for split in SPLITS}
    frames = {split: _subsample(index.frames, cfg.max_frames.get(split), cfg.seed, split)
              for split, index in indices.items()}
    counts: dict[str, int] = {}
    skipped: dict[str, dict[str, int]] = {}
    with atomic_dir(dataset) as tmp:
        for split in SPLITS:
            crops = build_crops(frames[split], size=cfg.crop_size, margin=cfg.crop_margin,
                                object_extents=extents, progress=True)
            save_file({k: v.contiguous() for k, v in crops.items()}, str(tmp / f"{split}.safetensors"))
            rows = [{"row": i, "subject": f.subject, "sequence": f.sequence, "serial": f.serial,
                     "frame": f.frame, "side": f.side} for i, f in enumerate(frames[split])]
            (tmp / f"frames_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            counts[split] = len(rows)
            skipped[split] = dict(indices[split].skipped)
            if split == "train":
                joints = crops["joints3d"].double().numpy() * 1000.0  # metres -> mm
                mean_pose = (joints - joints[:, :1]).mean(axis=0)  # [21, 3] root-relative
        info = {"source": cfg.source, "setup": cfg.setup, "crop_size": cfg.crop_size, "counts": counts,
                "skipped": skipped, "mean_pose_mm": mean_pose.tolist(),
                "available": {s: len(i.frames) for s, i in indices.items()}}
        atomic_write_json(tmp / "dataset.json", info)
        write_manifest(tmp, kind=DATASET, config=cfg.to_dict(), counts=counts,
                       hash_files=[f"{s}.safetensors" for s in SPLITS] + ["dataset.json"])
    metrics = {f"prepare/{split}_frames": float(n) for split, n in counts.items()}
    for split, reasons in skipped.items():
        for reason, n in reasons.items():
            metrics[f"prepare/{split}_skipped_{reason}"] = float(n)
    return StageResult(metrics=metrics, summary={"counts": counts, "skipped": skipped})


def _source(cfg: PrepareHandsConfig) -> tuple[Path, dict | None]:
    """The dataset directory, and the grasped objects' half-extents when they are known."""
    if cfg.source == "dexycb":
        root = Path(cfg.root)
        if not root.is_dir():
            raise ArtifactError(f"root: {root} is not a directory; expected the DexYCB dataset (DEX_YCB_DIR)")
        return root, None
    from genalign.data.synthetic_hands import (
        OBJECT_EXTENTS,
        SyntheticHandsSpec,
        write_synthetic_dexycb,
    )
    from genalign.models.refs import cache_dir

    # Generated once per config: the same spec writes byte-identical files.
    root = cache_dir() / "synthetic-hands" / config_hash(cfg.synthetic.to_dict())
    if not root.is_dir():
        with atomic_dir(root) as tmp:
            write_synthetic_dexycb(tmp, SyntheticHandsSpec(**cfg.synthetic.to_dict()), progress=True,
                                   workers=cfg.workers)
    return root, OBJECT_EXTENTS


def _subsample(frames: list, limit: int | None, seed: int, split: str) -> list:
    """At most `limit` frames, drawn without replacement with a seed of their own; in the
    split's order."""
    if limit is None or len(frames) <= limit:
        return list(frames)
    from genalign.training.seeds import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "max-frames", split))
    keep = np.sort(rng.choice(len(frames), size=limit, replace=False))
    return [frames[i] for i in keep]
