"""train-flow-dpo: flow-matching DPO of a LoRA/DoRA adapter over the base part DiT.

Reads the self-contained pairs artifact (pairs, sample rows, latents, conditioning),
trains with `genalign.trainers.flow_dpo`, and writes the peft adapter directory plus
`genalign.json`. Checkpoints live in a work directory keyed by the config and inputs
(under the cache), so a re-run after a crash resumes from the last checkpoint; the
adapter artifact itself appears only when training completes.

Under torchrun (`torchrun --no-python genalign stage train-flow-dpo ...`) every rank trains
(data-parallel, see the trainer) in the one work directory, which must therefore be on a
filesystem all ranks share; rank 0 alone copies it into the adapter and removes it, after
the trainer has returned on every rank, i.e. after every rank is done reading it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from genalign.artifacts import ADAPTER, PAIRS, fingerprint
from genalign.config.flow_dpo import TrainFlowDPOConfig
from genalign.records import Pair, ScoredSample, read_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def pair_files(pairs_dir: Path) -> list[dict[str, Path]]:
    """The chosen/rejected latent and conditioning files of every pair, in file order."""
    read_manifest(pairs_dir, PAIRS)
    pairs = read_jsonl(pairs_dir / "pairs.jsonl", Pair)
    samples = {s.sample_id: s for s in read_jsonl(pairs_dir / "samples.jsonl", ScoredSample)}
    items = []
    for p in pairs:
        for sid in (p.chosen, p.rejected):
            if sid not in samples:
                raise ValueError(f"{pairs_dir / 'pairs.jsonl'}: pair {p.pair_id} names sample {sid!r} missing from samples.jsonl")
        chosen, rejected = samples[p.chosen], samples[p.rejected]
        items.append({
            "chosen_latent": pairs_dir / chosen.files["latent"],
            "rejected_latent": pairs_dir / rejected.files["latent"],
            "cond": pairs_dir / chosen.files["cond"],
        })
    return items


def run(cfg: TrainFlowDPOConfig, *, model: Path, pairs: Path, adapter: Path, tracker: Tracker) -> StageResult:

    from genalign.artifacts import read_model_card, write_model_card
    from genalign.models.part_codec import MAX_PARTS
    from genalign.models.part_generator import KIND
    from genalign.models.refs import artifact_ref, cache_dir, model_dir
    from genalign.trainers.flow_dpo import load_pair_tensors, train_flow_dpo
    from genalign.training import distributed
    from genalign.training.launch import is_main_process
    from genalign.training.numerics import numerics_key

    # Checkpoints of an interrupted run live under the inputs' fingerprint: a re-run
    # with the same config, inputs and torch thread count resumes from them (another
    # thread count would continue from weights it does not compute itself).
    fp = fingerprint("train-flow-dpo", cfg.to_dict(), numerics_key(), {"model": model, "pairs": pairs})
    tensors = load_pair_tensors(pair_files(pairs), max_parts=MAX_PARTS)
    work = cache_dir() / "train" / fp
    # The model artifact may be a reference (tiny://, mlflow://, s3://, hf://, a path):
    # trained on what it resolves to, recorded as the reference itself. Under torchrun
    # rank 0 resolves it (builds or downloads it into the cache) before the others look,
    # so that no rank reads a cache entry another is replacing; the trainer's process
    # group is joined here for that barrier.
    distributed.setup()
    if is_main_process():
        model_dir(model)
    distributed.barrier()
    # Under torchrun this returns on every rank once rank 0 has written `work` and no rank
    # reads it any more (the trainer's last barrier), so rank 0 may copy and remove it
    # without waiting for the others.
    metrics = train_flow_dpo(
        cfg, base_model_dir=model_dir(model) / "dit", pairs=tensors, out_dir=work, tracker=tracker,
        resume=True, base_model_ref=artifact_ref(model),
    )
    result = StageResult(metrics={f"train/{k}": float(v) for k, v in metrics.items()}, summary=metrics)
    if not is_main_process():  # run_stage drops the other ranks' outputs
        return result
    with atomic_dir(adapter) as tmp:
        for path in work.iterdir():
            if path.name != "checkpoints":
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, tmp / path.name)
        hashes = read_manifest(pairs, PAIRS).get("hashes", {})
        write_model_card(tmp, dataclasses.replace(  # an adapter over a part generator
            read_model_card(tmp), arch=KIND,
            pairs={"trained": len(tensors.part_mask), "sha256": hashes.get("pairs.jsonl", "")},
        ))
        write_manifest(
            tmp, kind=ADAPTER, config=cfg.to_dict(), inputs={"model": str(model), "pairs": str(pairs)},
            counts={"pairs": len(tensors.part_mask)},
        )
    shutil.rmtree(work, ignore_errors=True)
    return result
