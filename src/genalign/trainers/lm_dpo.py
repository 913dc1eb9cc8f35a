"""Planner DPO: train a Qwen-VL planner on preference pairs with trl's `DPOTrainer`.

DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7) and the other losses
trl implements (`genalign.config.lm_dpo.LOSS_TYPES`), on a fresh LoRA or DoRA adapter over
the base model or on the full model:

- Reference. With an adapter, trl gets `ref_model=None` and a `peft_config`, and computes
  the reference log-probabilities with the adapter disabled: the reference is the base
  model, one copy of the weights in memory. Every iteration of the planner-dpo pipeline
  starts a fresh adapter from the base model, so the reference stays the base model.
  With full fine-tuning a second, frozen copy of the base model is the reference.
- Parts. Each parameter belongs to the language model (`llm`), the vision tower
  (`vision`) or the merger that projects vision features into the LLM (`merger`; Qwen3-VL's
  deepstack mergers included). A frozen part gets no adapter (LoRA) or no gradient (full);
  each trained part's parameters form their own optimizer groups with the part's learning
  rate (`create_optimizer` is overridden; transformers' Trainer builds the schedule on top,
  and under DeepSpeed the same method builds the client optimizer).
- Data. `genalign.data.planner_pairs` turns the pairs into trl's conversational vision
  rows (images first, then the planner's text, as the rollouts' prompt); trl's
  `DataCollatorForVisionPreference` renders the chat template and processes the images on
  the fly. Weak pairs are kept, or subsampled to `weak_pair_weight` of them.
- Precision and scale. bf16 only with CUDA (on CPU, `bf16=False`). DeepSpeed
  (`configs/deepspeed/<name>.json`) only when CUDA GPUs are present; on CPU the setting is
  ignored with a log line. The ZeRO-3 offload config sets `zero_force_ds_cpu_optimizer`
  to false: the per-part parameter groups need the client optimizer (torch AdamW), which
  then steps on the CPU copies.
- Processes. `launch_lm_dpo(..., processes=N)` (`genalign.training.launch`) trains in
  this process for N = 1 and otherwise runs `python -m torch.distributed.run --standalone
  --nproc-per-node N -m genalign.trainers.lm_dpo ...` (this module's command line, below;
  `--standalone` takes a free port) with OMP_NUM_THREADS=1 unless set, relays its output
  and returns the metrics from `out_dir/genalign.json`. Each worker joins the process
  group through accelerate (gloo on CPU, nccl on CUDA). All ranks draw one seeded order
  of the pairs (`data_seed`) and rank r takes its batches r, r + N, ... of
  `per_device_batch_size` pairs, so `per_device_batch_size * grad_accum * N` pairs make
  one step, the same pairs as one process with N times the batch; DDP averages the
  ranks' gradients of per-pair mean losses, so the step is the same too
  (tests/integration/test_lm_dpo_distributed.py). Only the main process writes
  `out_dir`. `accelerate launch` works the same way.

Layout written under `out_dir` (adapter runs):

    adapter_config.json, adapter_model.safetensors   peft adapter (lora_* tensors only)
    genalign.json   model card (`genalign.artifacts.ModelCard`): kind "adapter" ("model" for
                    full fine-tuning), arch "qwen-vl", base_model, method "lm_dpo", loss
                    (trl's loss_type), adapter_type, metrics, config, pairs: {...counts}

and for full fine-tuning the model's config.json + safetensors and the processor files,
loadable with `genalign.models.vlm.load_vlm(out_dir)`. `merge_adapter` folds an adapter
into the base weights and writes a full model directory for the next iteration's rollouts.

    metrics = train_lm_dpo(cfg, base_model_dir=base, pairs_rows=read_jsonl(p, Pair),
                           image_root=data_dir, out_dir=out, tracker=NullTracker())
    merge_adapter(base, out, merged_dir)

    metrics = launch_lm_dpo(cfg, base_model_dir=base, pairs_file=out / "pairs.trl.jsonl",
                            image_root=data_dir, out_dir=adapter, processes=2)

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m genalign.trainers.lm_dpo \\
        --config cfg.json --model BASE --pairs pairs.trl.jsonl --image-root DATA --out ADAPTER
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genalign.artifacts import MODEL, ModelCard, read_model_card, write_model_card
from genalign.config.lm_dpo import ALL_LINEAR, PARTS, LMDPOConfig
from genalign.data.planner_pairs import (
    PlannerPair,
    planner_pairs,
    read_trl_jsonl,
    trl_dataset,
    weight_weak_pairs,
)
from genalign.records import Pair
from genalign.storage import ArtifactError, atomic_dir
from genalign.tracking import NullTracker, Tracker
from genalign.training.adapters import lora_config
from genalign.training.base_model import GENALIGN_JSON
from genalign.training.launch import is_main_process, launch

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

METHOD = "lm_dpo"
# Files transformers' Trainer.save_model writes beside the model that this project does
# not keep: training_args.bin is a pickle.
DROPPED_FILES = ("training_args.bin",)
# The trl log keys forwarded to the tracker under "train/"; trl logs more (logps, logits,
# entropy), forwarded too, but these are the ones a run summary reads.
SUMMARY_KEYS = ("loss", "rewards/accuracies", "rewards/margins")


# ---------------------------------------------------------------- model parts


def part_of(name: str) -> str:
    """The part ("llm", "vision" or "merger") of a parameter or module of a Qwen-VL model.

    Qwen2-VL, Qwen2.5-VL and Qwen3-VL(-MoE) in transformers 5 keep the vision tower under
    `model.visual` with its merger(s) at `visual.merger` (and Qwen3-VL's
    `visual.deepstack_merger_list`); everything else (embeddings, decoder, lm_head) is the
    language model. peft prefixes (`base_model.model.`) do not change the answer.
    """
    segments = name.split(".")
    if "visual" not in segments:
        return "llm"
    below = segments[segments.index("visual") + 1 :]
    return "merger" if any("merger" in s for s in below) else "vision"


def adapter_targets(model: torch.nn.Module, cfg: LMDPOConfig) -> list[str]:
    """Full names of the nn.Linear modules that get an adapter: those matching
    `cfg.target_modules` inside the trained parts, never lm_head."""
    import torch

    trained = set(cfg.trained_parts())
    lm_head = model.get_output_embeddings()
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is lm_head:
            continue
        if part_of(name) not in trained:
            continue
        if ALL_LINEAR in cfg.target_modules or any(
            name == t or name.endswith("." + t) for t in cfg.target_modules
        ):
            names.append(name)
    if not names:
        raise ValueError(
            f"target_modules {list(cfg.target_modules)} match no linear layer in the trained "
            f"parts {list(cfg.trained_parts())}"
        )
    return names


def parameter_groups(
    model: torch.nn.Module, cfg: LMDPOConfig, decay_names: set[str]
) -> list[dict[str, Any]]:
    """Optimizer groups: per trained part, the trainable parameters with weight decay and
    those without (biases, norms: transformers' `get_decay_parameter_names`), each with the
    part's learning rate. Empty groups are left out; the group's "name" is for logs."""
    lrs = cfg.learning_rates()
    buckets: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        buckets.setdefault((part_of(name), name in decay_names), []).append(param)
    groups = []
    for part in PARTS:
        for decay in (True, False):
            params = buckets.get((part, decay))
            if params:
                groups.append(
                    {
                        "name": f"{part}{'' if decay else '_no_decay'}",
                        "params": params,
                        "lr": lrs[part],
                        "weight_decay": cfg.weight_decay if decay else 0.0,
                    }
                )
    return groups


# ---------------------------------------------------------------- runtime choices


def use_bf16(cfg: LMDPOConfig, cuda: bool) -> bool:
    """bf16 mixed precision: "auto" follows CUDA; true without CUDA is an error."""
    if cfg.bf16 == "auto":
        return cuda
    if cfg.bf16 and not cuda:
        raise ValueError("bf16: true needs a CUDA device; use auto or false on CPU")
    return bool(cfg.bf16)


def deepspeed_config_path(cfg: LMDPOConfig, cuda: bool) -> Path | None:
    """configs/deepspeed/<name>.json when DeepSpeed is asked for and CUDA is present."""
    if cfg.deepspeed is None:
        return None
    if not cuda:
        logger.warning(
            "deepspeed=%s ignored: no CUDA device (DeepSpeed ZeRO is used on GPUs only)",
            cfg.deepspeed,
        )
        return None
    from genalign.config.presets import configs_dir

    path = configs_dir() / "deepspeed" / f"{cfg.deepspeed}.json"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing DeepSpeed config for deepspeed={cfg.deepspeed!r}")
    return path


def _as_planner_pairs(rows: Sequence[Pair | PlannerPair]) -> list[PlannerPair]:
    pairs = [r for r in rows if isinstance(r, PlannerPair)]
    generic = [r for r in rows if isinstance(r, Pair)]
    if len(pairs) + len(generic) != len(rows):
        raise TypeError("pairs_rows: expected genalign.records.Pair or PlannerPair rows")
    if generic and pairs:
        raise TypeError("pairs_rows: expected one row type, got Pair and PlannerPair mixed")
    return planner_pairs(generic) if generic else pairs


# ---------------------------------------------------------------- trainer pieces


def _tracker_callback(tracker: Tracker):
    from transformers import TrainerCallback

    class TrackerCallback(TrainerCallback):
        """Forwards the Trainer's step logs to the Tracker as train/<key> (main process)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "train_runtime" in logs:
                return  # the end-of-run summary goes into the returned metrics instead
            metrics = {
                f"train/{k}": float(v)
                for k, v in logs.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            }
            if metrics:
                tracker.log_metrics(metrics, step=state.global_step)

    return TrackerCallback()


def _trainer_class():
    from trl import DPOTrainer

    class PartsDPOTrainer(DPOTrainer):
        """trl's DPOTrainer with one optimizer group per (model part, weight decay)."""

        lm_dpo_cfg: LMDPOConfig

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                opt_model = self.model if model is None else model
                decay = set(self.get_decay_parameter_names(opt_model))
                groups = parameter_groups(opt_model, self.lm_dpo_cfg, decay)
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
                kwargs.pop("lr", None)  # each group has its own
                self.optimizer = cls(groups, **kwargs)
            return self.optimizer

    return PartsDPOTrainer


# ---------------------------------------------------------------- train


def train_lm_dpo(
    cfg: LMDPOConfig,
    *,
    base_model_dir: Path | str,
    pairs_rows: Sequence[Pair | PlannerPair],
    image_root: Path | str,
    out_dir: Path | str,
    tracker: Tracker,
    base_model_ref: str | None = None,
) -> dict[str, float]:
    """Train on `pairs_rows` (Pair rows whose `extra` holds the texts and images, or
    PlannerPairs) over the Qwen-VL model in `base_model_dir`; images under `image_root`.

    Writes the adapter (or the full model) and genalign.json into `out_dir` and returns
    {train/loss, train/rewards/accuracies, train/rewards/margins (last logged step),
    train/loss_mean (over the run), train/steps, train/seconds, pairs, weak_pairs,
    weak_pairs_dropped}. `base_model_ref` is recorded in genalign.json (default: the
    directory).
    """
    import torch
    from trl import DPOConfig

    from genalign.models.vlm import load_vlm

    start = time.perf_counter()
    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    cuda = torch.cuda.is_available()
    bf16 = use_bf16(cfg, cuda)
    ds_path = deepspeed_config_path(cfg, cuda)

    # --- data
    pairs, counts = weight_weak_pairs(_as_planner_pairs(pairs_rows), cfg.weak_pair_weight, cfg.seed)
    dataset = trl_dataset(pairs, image_root)

    # --- trl arguments first: with a ZeRO-3 config, creating them registers DeepSpeed with
    # transformers, so the models below load straight into partitions (zero.Init).
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    args = DPOConfig(
        output_dir=str(out_dir.with_name(f".{out_dir.name}.trainer")),
        loss_type=[cfg.loss_type, "sft"] if cfg.sft_weight > 0 else [cfg.loss_type],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight > 0 else None,
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        learning_rate=cfg.lr_llm,  # the groups carry their own rates; this is the default
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type=cfg.lr_scheduler,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        activation_checkpointing=cfg.gradient_checkpointing,
        bf16=bf16,
        fp16=False,
        deepspeed=str(ds_path) if ds_path else None,
        max_length=cfg.max_length,
        remove_unused_columns=False,  # the vision collator needs prompt/chosen/rejected/images
        disable_dropout=cfg.dropout == 0.0,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        # Without CUDA accelerate takes torchrun's workers for a distributed run (gloo) only
        # when told the run is on CPU; otherwise each worker trains alone on all the pairs.
        use_cpu=not cuda,
    )

    # --- model
    # LoRA on CUDA keeps the frozen base in bf16 (peft keeps the adapter in fp32); full
    # fine-tuning keeps fp32 master weights (autocast or DeepSpeed does the bf16 compute).
    dtype = "bfloat16" if bf16 and cfg.adapter != "full" else "float32"
    model, processor = load_vlm(base_model_dir, dtype=dtype)
    peft_config = None
    ref_model = None
    if cfg.adapter == "full":
        trained = set(cfg.trained_parts())
        for name, param in model.named_parameters():
            param.requires_grad_(part_of(name) in trained)
        ref_model, _ = load_vlm(base_model_dir, dtype=dtype)
        ref_model.requires_grad_(False)
    else:
        peft_config = lora_config(cfg, adapter_targets(model, cfg))

    trainer = _trainer_class()(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[_tracker_callback(tracker)],
    )
    trainer.lm_dpo_cfg = cfg  # read by create_optimizer when train() starts
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    result = trainer.train()

    # --- metrics
    last = {}
    for entry in trainer.state.log_history:
        if "loss" in entry and "train_runtime" not in entry:
            last = entry
    metrics: dict[str, float] = {f"train/{k}": float(last[k]) for k in SUMMARY_KEYS if k in last}
    metrics.update(
        {
            "train/loss_mean": float(result.training_loss),
            "train/steps": float(trainer.state.global_step),
            "train/seconds": time.perf_counter() - start,
            "pairs": float(len(pairs)),
            "weak_pairs": float(counts["weak_kept"]),
            "weak_pairs_dropped": float(counts["weak_dropped"]),
        }
    )
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"lm_dpo: non-finite training metrics {metrics}")

    # --- save: every process calls save_model (ZeRO-3 gathers the weights), the main one
    # writes; then the main process moves the files into out_dir atomically.
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        with atomic_dir(out_dir) as tmp:
            for f in staging.iterdir():
                if f.name not in DROPPED_FILES:
                    shutil.move(str(f), tmp / f.name)
            write_model_card(
                tmp,
                ModelCard(
                    kind=MODEL if cfg.adapter == "full" else "adapter",
                    arch="qwen-vl",
                    base_model=base_model_ref or str(base_model_dir),
                    method=METHOD,
                    loss=cfg.loss_type,
                    adapter_type=cfg.adapter,
                    metrics=metrics,
                    config=cfg.to_dict(),
                    pairs={"trained": len(pairs), **counts},
                    extra={"runtime": {"bf16": bf16, "deepspeed": cfg.deepspeed if ds_path else None}},
                ),
            )
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(args.output_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return metrics


# ---------------------------------------------------------------- merge


def merge_adapter(base_model_dir: Path | str, adapter_dir: Path | str, out_dir: Path | str) -> Path:
    """Fold the peft adapter in `adapter_dir` into the base model and write a full model
    directory (weights, config, generation config, processor, genalign.json) that
    `load_vlm(out_dir)` loads: the planner the next iteration rolls out with."""
    from genalign.models.vlm import load_vlm

    base_model_dir, adapter_dir, out_dir = Path(base_model_dir), Path(adapter_dir), Path(out_dir)
    model, processor = load_vlm(base_model_dir, adapter_dir=adapter_dir)
    merged = model.merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_model_card(
            tmp,
            ModelCard(
                kind=MODEL,
                arch="qwen-vl",
                method="merge",
                base_model=str(base_model_dir),
                extra={"adapter": str(adapter_dir)},
            ),
        )
    return out_dir


# ---------------------------------------------------------------- launch


def launch_lm_dpo(
    cfg: LMDPOConfig,
    *,
    base_model_dir: Path | str,
    pairs_file: Path | str,
    image_root: Path | str,
    out_dir: Path | str,
    processes: int,
    tracker: Tracker | None = None,
    base_model_ref: str | None = None,
    timeout_s: float | None = None,
) -> dict[str, float]:
    """Train on the trl pairs file (`write_trl_jsonl`) in `processes` processes and return
    `train_lm_dpo`'s metrics.

    One process: `train_lm_dpo` here, step logs to `tracker` (default a NullTracker). More:
    torchrun runs this module's `main` in each worker (see "Processes" above); the step logs
    stay in the workers, so `tracker` must be None, and the metrics are read back from
    `out_dir/genalign.json`. A failed or timed-out run raises RuntimeError / TimeoutError
    with the last lines of its output.
    """
    if processes > 1 and tracker is not None:
        raise ValueError(
            "tracker: step logs are forwarded with processes=1 only; with more processes log "
            "the returned metrics (also in out_dir/genalign.json)"
        )
    out_dir = Path(out_dir)

    def worker_args(scratch: Path) -> list[str]:
        config_path = scratch / "lm_dpo.json"
        config_path.write_text(json.dumps(cfg.to_dict(), indent=2))
        args = [
            "--config", str(config_path),
            "--model", str(base_model_dir),
            "--pairs", str(pairs_file),
            "--image-root", str(image_root),
            "--out", str(out_dir),
        ]  # fmt: skip
        if base_model_ref is not None:
            args += ["--base-model-ref", base_model_ref]
        return args

    def rank0_metrics() -> dict[str, float]:
        meta = out_dir / GENALIGN_JSON
        if not meta.is_file():
            raise ArtifactError(f"{meta}: missing after a successful {processes}-process run")
        return {k: float(v) for k, v in read_model_card(out_dir).metrics.items()}

    return launch(
        processes,
        in_process=lambda: train_lm_dpo(
            cfg,
            base_model_dir=base_model_dir,
            pairs_rows=read_trl_jsonl(pairs_file),
            image_root=image_root,
            out_dir=out_dir,
            tracker=tracker if tracker is not None else NullTracker(),
            base_model_ref=base_model_ref,
        ),
        module="genalign.trainers.lm_dpo",
        worker_args=worker_args,
        result=rank0_metrics,
        name="lm_dpo",
        timeout_s=timeout_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of one training process (torchrun starts N of these); prints the
    metrics as JSON from the main process."""
    parser = argparse.ArgumentParser(
        prog="python -m genalign.trainers.lm_dpo",
        description="Planner DPO on a trl pairs file; run under torchrun for several processes.",
    )
    parser.add_argument("--config", required=True, type=Path, help="JSON of LMDPOConfig fields")
    parser.add_argument("--model", required=True, type=Path, help="base Qwen-VL model directory")
    parser.add_argument("--pairs", required=True, type=Path, help="pairs file (write_trl_jsonl)")
    parser.add_argument("--image-root", required=True, type=Path, help="the pairs' images root")
    parser.add_argument("--out", required=True, type=Path, help="adapter or model directory")
    parser.add_argument("--base-model-ref", help="recorded in genalign.json (default: --model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # the inputs are checked before torch is imported: a bad file fails in a second
    cfg = LMDPOConfig.from_dict(json.loads(args.config.read_text()), where=str(args.config))
    pairs = read_trl_jsonl(args.pairs)

    import torch.distributed as dist

    metrics = train_lm_dpo(
        cfg,
        base_model_dir=args.model,
        pairs_rows=pairs,
        image_root=args.image_root,
        out_dir=args.out,
        tracker=NullTracker(),
        base_model_ref=args.base_model_ref,
    )
    if is_main_process():
        print(json.dumps(metrics, sort_keys=True), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
