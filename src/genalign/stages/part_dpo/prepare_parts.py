"""prepare-parts: procedural conditions (train and held-out) and the base part generator.

Conditions are multi-part objects from `genalign.data.parts`, each with its ground-truth
parts (JSON) and an image rendered by the project (PNG). With `base_model: pretrain`
(the tiny preset) the tiny generator is pretrained here with flow matching on a
disjoint set of objects; the result is cached by config so a re-run reuses it. Any
other `base_model` is a model reference recorded in the model artifact (a card of kind
"ref") and resolved by the stages that load it (`genalign.models.refs.model_dir`). A
reference to an adapter (a registered part-dpo champion, `mlflow://models/<name>@champion`)
is merged into its base here: the model artifact is then the champion policy as a plain
generator, and training starts a fresh adapter on it (see `PreparePartsConfig.base_model`).

    genalign stage prepare-parts --config cfg.yaml --out conditions=c --out eval_conditions=e --out model=m
"""

from __future__ import annotations

import shutil
from pathlib import Path

from genalign.artifacts import (
    CONDITIONS,
    MODEL,
    ModelCard,
    has_model_card,
    read_model_card,
    write_model_card,
)
from genalign.config.part_dpo import PreparePartsConfig
from genalign.records import Condition, write_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, atomic_write_json, config_hash, write_manifest
from genalign.tracking import Tracker

PRETRAIN_SEED_OFFSET = 7919  # keeps pretraining objects disjoint from the conditions


def run(
    cfg: PreparePartsConfig, *, conditions: Path, eval_conditions: Path, model: Path, tracker: Tracker
) -> StageResult:
    from genalign.data.parts import make_objects

    objects = make_objects(cfg.train_conditions + cfg.eval_conditions, seed=cfg.seed)
    counts = {
        "conditions/train": _write_conditions(objects[: cfg.train_conditions], conditions, cfg, "train"),
        "conditions/eval": _write_conditions(objects[cfg.train_conditions :], eval_conditions, cfg, "eval"),
    }
    metrics: dict[str, float] = {k: float(v) for k, v in counts.items()}
    if cfg.base_model == "pretrain":
        metrics.update(_pretrained_base(cfg, model, tracker))
    else:
        _referenced_base(cfg, model)
    return StageResult(metrics=metrics, summary=counts)


def _referenced_base(cfg: PreparePartsConfig, out: Path) -> None:
    """A "ref" card for `cfg.base_model`, or the merged generator when it names an adapter."""
    from genalign.config.refs import parse_model_ref
    from genalign.models.refs import model_dir, pin, resolve

    ref = pin(cfg.base_model)  # an alias that moves later does not change what this run used
    # tiny:// and hf:// name models, never adapters; the others are looked at now, so a
    # reference that does not resolve fails here, before any sampling.
    resolved = None if parse_model_ref(ref).scheme in ("tiny", "hf") else model_dir(resolve(ref))
    with atomic_dir(out) as tmp:
        if resolved is not None and has_model_card(resolved) and read_model_card(resolved).kind == "adapter":
            from genalign.generators.parts import save_merged

            save_merged(resolved, tmp, base_model=ref)
        else:
            write_model_card(tmp, ModelCard(kind="ref", ref=ref))
        write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), extra={"ref": ref})


def _write_conditions(objects, out: Path, cfg: PreparePartsConfig, split: str) -> int:
    from genalign.data.parts import object_to_dict
    from genalign.render.parts_image import render_object, save_png

    rows = []
    with atomic_dir(out) as tmp:
        for obj in objects:
            image = f"images/{obj.id}.png"
            gt = f"gt/{obj.id}.json"
            save_png(render_object(list(obj.parts), size=cfg.image_size), tmp / image)
            atomic_write_json(tmp / gt, object_to_dict(obj))
            rows.append(Condition(
                id=obj.id, prompt=None, image=image, class_=obj.category,
                meta={"num_parts": len(obj.parts), "gt": gt, "split": split}, files={"image": image, "gt": gt},
            ))
        write_jsonl(tmp / "conditions.jsonl", rows)
        write_manifest(
            tmp, kind=CONDITIONS, config=cfg.to_dict(), counts={"conditions": len(rows)},
            hash_files=["conditions.jsonl"], extra={"split": split},
        )
    return len(rows)


def _pretrained_base(cfg: PreparePartsConfig, out: Path, tracker: Tracker) -> dict[str, float]:
    """Pretrain the tiny generator, or copy it from the cache when this config made one before
    with as many torch threads as this process has (they change the weights:
    `genalign.training.numerics`)."""
    from genalign.models.refs import cache_dir
    from genalign.training.numerics import numerics_key

    key = config_hash({"pretrain": cfg.pretrain.to_dict(), "image_size": cfg.image_size,
                       "numerics": numerics_key()})
    cached = cache_dir() / "part-base" / key
    if not has_model_card(cached):  # missing, or made with an older model card
        with atomic_dir(cached) as tmp:
            metrics = _pretrain(cfg, tmp, tracker)
            atomic_write_json(tmp / "pretrain_metrics.json", metrics)
    import json

    metrics = json.loads((cached / "pretrain_metrics.json").read_text())
    with atomic_dir(out) as tmp:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)
        write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), extra={"cache_key": key})
    return metrics


def _pretrain(cfg: PreparePartsConfig, out: Path, tracker: Tracker) -> dict[str, float]:
    import numpy as np
    import torch

    from genalign.config.part_dit import PartDiTConfig
    from genalign.data.parts import make_objects
    from genalign.models.part_codec import MAX_PARTS, PART_TOKENS, TOKEN_DIM, encode_object
    from genalign.models.part_generator import COMPONENTS, KIND
    from genalign.models.vision import VisionEncoder, build_tiny_vision
    from genalign.render.parts_image import render_object
    from genalign.trainers.flow_matching import pretrain

    p = cfg.pretrain
    objects = make_objects(p.objects, seed=cfg.seed + PRETRAIN_SEED_OFFSET)
    build_tiny_vision(out / "vision", seed=p.training.seed, image_size=cfg.image_size)
    vision = VisionEncoder.from_pretrained(out / "vision")
    latents = torch.zeros(len(objects), MAX_PARTS, PART_TOKENS, TOKEN_DIM)
    mask = torch.zeros(len(objects), MAX_PARTS, dtype=torch.bool)
    images = []
    for i, obj in enumerate(objects):
        enc = torch.from_numpy(np.asarray(encode_object(list(obj.parts))))
        latents[i, : len(obj.parts)] = enc
        mask[i, : len(obj.parts)] = True
        images.append(render_object(list(obj.parts), size=cfg.image_size))
    cond = torch.cat([vision.encode(images[i : i + 256]) for i in range(0, len(images), 256)])
    model_cfg = PartDiTConfig(
        token_dim=TOKEN_DIM, tokens_per_part=PART_TOKENS, max_parts=MAX_PARTS,
        hidden=p.hidden, depth=p.depth, heads=p.heads, cond_dim=cond.shape[-1],
    )
    metrics = pretrain(p.training, model_cfg, latents, mask, cond, out / "dit", tracker)
    metrics = {f"pretrain/{k}" if "/" not in k else k: float(v) for k, v in metrics.items()}
    write_model_card(out, ModelCard(kind="model", arch=KIND, method="flow_matching", components=dict(COMPONENTS),
                                    config={"pretrain": p.to_dict(), "image_size": cfg.image_size}, metrics=metrics))
    return metrics
