"""Warm start of a planner: supervised fine-tuning on well-formed plans with random views.

A random-init planner (the tiny preset's Qwen2-VL) writes noise; DPO needs rollouts that
parse, differ, and sometimes help. This stage teaches the format and nothing else: each
target plan restates the question in `<thinking>` and asks for 1-2 instructions drawn
uniformly from the executor's vocabulary (`instruction_vocabulary`: the 13 viewpoints
and a zoom on each object of the scene), so which view helps is left for DPO to find.
Loss: next-token cross-entropy on the plan's tokens and the closing `<|im_end|>` only
(the prompt and the images are context), full fine-tuning of every weight, AdamW with
linear warmup and cosine decay.

    rows = make_spatial_samples(...)                    # or read_dataset(dataset)
    examples = sft_examples(rows, cfg)                  # [(row, plan_text)]
    metrics = train_planner_sft(cfg, model_dir=base, examples=examples, image_root=data,
                                out_dir=out, tracker=tracker)
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genalign.artifacts import ModelCard, write_model_card
from genalign.config.planner import PlannerSFTConfig
from genalign.data.scene_views import instruction_vocabulary
from genalign.generators.plan_format import format_plan
from genalign.storage import atomic_dir
from genalign.tracking import Tracker


def thinking_for(question: str) -> str:
    """The warm-start plan's reasoning: the question restated (what to look for)."""
    return f"{question.strip()} Another view may show it."


def sft_examples(rows: Sequence[dict[str, Any]], cfg: PlannerSFTConfig) -> list[tuple[dict, str]]:
    """`examples_per_row` random plans per row, seeded: [(row, plan text)].

    A row needs `question` and `meta.objects` (the scene's object names, for zooms) or
    falls back to viewpoints only."""
    rng = random.Random(cfg.seed)
    out = []
    for row in rows:
        vocabulary = instruction_vocabulary(row.get("meta", {}).get("objects", []))
        for _ in range(cfg.examples_per_row):
            n = rng.randint(cfg.min_instructions, cfg.max_instructions)
            out.append((row, format_plan(thinking_for(row["question"]), rng.sample(vocabulary, n))))
    return out


def _encode(processor: Any, row: dict, plan: str, image_root: Path) -> dict[str, Any]:
    """One example's tensors: input ids with the plan and <|im_end|> after the prompt,
    labels -100 over the prompt."""
    from genalign.data.planner_prompt import planner_prompt
    from genalign.generators.planner import load_images
    from genalign.models.vlm import chat_inputs

    end = processor.tokenizer.eos_token  # <|im_end|>: the end of the assistant's turn
    batch = chat_inputs(processor, load_images(row, image_root), planner_prompt(row), answer=plan + end)
    ids = batch.inputs["input_ids"][0]
    labels = ids.clone()
    labels[: int(batch.answer_positions[0])] = -100
    return {**{k: v for k, v in batch.inputs.items()}, "labels": labels[None]}


def _collate(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad the token rows; concatenate the images' patches and grids."""
    import torch

    length = max(it["input_ids"].shape[1] for it in items)
    out: dict[str, Any] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100),
                      ("mm_token_type_ids", 0)):
        if key in items[0]:
            out[key] = torch.stack([
                torch.nn.functional.pad(it[key][0], (0, length - it[key].shape[1]), value=fill)
                for it in items
            ])
    for key in ("pixel_values", "image_grid_thw"):
        if key in items[0]:
            out[key] = torch.cat([it[key] for it in items])
    return out


def train_planner_sft(
    cfg: PlannerSFTConfig,
    *,
    model_dir: Path | str,
    examples: Sequence[tuple[dict, str]],
    image_root: Path | str,
    out_dir: Path | str,
    tracker: Tracker,
) -> dict[str, float]:
    """Fine-tune the planner in `model_dir` on `examples`; write the full model to `out_dir`
    (loadable with `load_vlm`). Returns {sft/loss_first, sft/loss, sft/steps, sft/seconds}."""
    import torch
    from tqdm.auto import tqdm

    from genalign.models.vlm import load_vlm
    from genalign.training.schedules import warmup_cosine

    if not examples:
        raise ValueError("train_planner_sft: no examples")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, processor = load_vlm(model_dir)
    model.train()
    encoded = [_encode(processor, row, plan, Path(image_root)) for row, plan in examples]
    pad_id = processor.tokenizer.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)
    perm, cursor = torch.randperm(len(encoded), generator=order), 0
    losses = []
    for step in tqdm(range(cfg.steps), desc="planner warm start", mininterval=5):
        if cursor + cfg.batch_size > len(perm):
            perm, cursor = torch.randperm(len(encoded), generator=order), 0
        idx = perm[cursor : cursor + cfg.batch_size].tolist()
        cursor += cfg.batch_size
        batch = _collate([encoded[i] for i in idx], pad_id)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * warmup_cosine(step, warmup=cfg.warmup_steps, total=cfg.steps,
                                                 min_ratio=0.1)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == cfg.steps - 1:
            tracker.log_metrics({"sft/loss": losses[-1]}, step=step)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"planner warm start: non-finite loss {losses[-5:]}")
    model.eval()
    tail = losses[-min(20, len(losses)):]
    metrics = {
        "sft/loss_first": losses[0],
        "sft/loss": sum(tail) / len(tail),
        "sft/steps": float(cfg.steps),
        "sft/examples": float(len(encoded)),
        "sft/seconds": time.perf_counter() - start,
    }
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_model_card(tmp, ModelCard(kind="model", arch="qwen-vl", method="planner_sft", base_model=str(model_dir),
                                        metrics=metrics, config=cfg.to_dict()))
    return metrics
