"""train-planner: DPO of a fresh adapter from the base planner, then the merged planner.

Every iteration trains a new LoRA/DoRA adapter from the base model on the accumulated
pairs (so the DPO reference is always the base), with trl's DPOTrainer
(`genalign.trainers.lm_dpo`), and folds it into a full model: the planner the next
iteration rolls out with. Under torchrun (a cluster profile giving the stage several GPUs
or nodes) every process trains, trl's DDP splits the batches, and only the main process
writes the adapter and the merged planner; the others return once training is done.

    adapter/   adapter_config.json, adapter_model.safetensors, genalign.json, manifest.json
    model/     the merged planner (config, safetensors, processor), manifest.json

Weak pairs are subsampled to `dpo.weak_pair_weight` here, before the pairs file is
written for the trainer (trl's rows carry no weak flag).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from genalign.artifacts import ADAPTER, MODEL, PAIRS, ModelCard, read_model_card, write_model_card
from genalign.config.planner_dpo import TrainPlannerConfig
from genalign.models.refs import artifact_ref, model_dir
from genalign.records import Pair, read_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def run(cfg: TrainPlannerConfig, *, model: Path, pairs: Path, adapter: Path, merged: Path,
        tracker: Tracker) -> StageResult:
    from genalign.data.planner_pairs import planner_pairs, read_trl_jsonl, weight_weak_pairs, write_trl_jsonl
    from genalign.trainers.lm_dpo import merge_adapter, train_lm_dpo
    from genalign.training.launch import is_main_process

    pairs_manifest = read_manifest(pairs, PAIRS)
    rows = read_jsonl(pairs / "pairs.jsonl", Pair)
    kept, weak = weight_weak_pairs(planner_pairs(rows), cfg.dpo.weak_pair_weight, cfg.dpo.seed)
    base = model_dir(model)
    iterations = sorted({p.iteration for p in rows}) or [0]
    with tempfile.TemporaryDirectory(dir=adapter.parent, prefix=f".{adapter.name}.") as scratch:
        trl_file = Path(scratch) / "train.trl.jsonl"
        write_trl_jsonl(trl_file, kept)
        work = Path(scratch) / "adapter"
        if not kept:  # every round so far tied: nothing to learn from yet
            metrics = _untrained(cfg, base, work, artifact_ref(model))
        else:
            metrics = train_lm_dpo(
                dataclasses.replace(cfg.dpo, weak_pair_weight=1.0), base_model_dir=base,
                pairs_rows=read_trl_jsonl(trl_file), image_root=pairs, out_dir=work, tracker=tracker,
                base_model_ref=artifact_ref(model),
            )
        if not is_main_process():  # the main process writes the outputs
            return StageResult(metrics=metrics, summary={"pairs": len(kept), "iterations": iterations})
        metrics = {**metrics, "weak_pairs": float(weak["weak_kept"]), "weak_pairs_dropped": float(weak["weak_dropped"])}
        write_model_card(work, dataclasses.replace(
            read_model_card(work), arch="qwen-vl", metrics=metrics, config=cfg.to_dict(), iteration=max(iterations),
            pairs={"trained": len(kept), "iterations": iterations, **weak,
                   "sha256": pairs_manifest["hashes"].get("pairs.jsonl", "")},
            base_model=artifact_ref(model),  # a reference, or the in-run directory register-model registers
        ))
        with atomic_dir(adapter) as tmp:
            for f in work.iterdir():
                shutil.move(str(f), tmp / f.name)
            write_manifest(tmp, kind=ADAPTER, config=cfg.to_dict(), inputs={"model": str(model), "pairs": str(pairs)},
                           counts={"pairs": len(kept)})
        tracker.log_artifact(adapter, "adapter")  # every iteration's adapter, in its stage run
        merge_adapter(base, adapter, merged)
    write_manifest(merged, kind=MODEL, config=cfg.to_dict(), inputs={"model": str(model), "adapter": str(adapter)})
    return StageResult(metrics=metrics, summary={"pairs": len(kept), "iterations": iterations})


def _untrained(cfg: TrainPlannerConfig, base: Path, out: Path, base_ref: str) -> dict[str, float]:
    """A fresh adapter saved without training (LoRA's B = 0, DoRA's magnitude = the weight
    norm: the base model unchanged), for a round that has no pairs to train on."""
    from peft import LoraConfig, get_peft_model

    from genalign.models.vlm import load_vlm
    from genalign.trainers.lm_dpo import METHOD, adapter_targets

    metrics = {"train/steps": 0.0, "pairs": 0.0}
    if cfg.dpo.adapter == "full":
        shutil.copytree(base, out)
    else:
        model, _ = load_vlm(base)
        lora = LoraConfig(r=cfg.dpo.rank, lora_alpha=cfg.dpo.alpha, lora_dropout=cfg.dpo.dropout,
                          target_modules=adapter_targets(model, cfg.dpo), use_dora=cfg.dpo.adapter == "dora")
        get_peft_model(model, lora).save_pretrained(out)
    write_model_card(out, ModelCard(
        kind=MODEL if cfg.dpo.adapter == "full" else "adapter", arch="qwen-vl",
        base_model=base_ref, method=METHOD, loss=cfg.dpo.loss_type, adapter_type=cfg.dpo.adapter,
        metrics=metrics, extra={"note": "no pairs to train on: an untrained adapter, equal to the base"},
    ))
    return metrics
