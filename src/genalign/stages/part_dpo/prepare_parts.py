"""prepare-parts: procedural conditions (train and held-out) and the base part generator.

Conditions are multi-part objects from `genalign.data.parts`, each with its ground-truth
parts (JSON) and an image rendered by the project (PNG). With `base_model: pretrain`
the tiny generator is pretrained here with flow matching on a disjoint set of objects
(`genalign.trainers.part_base`); the result is cached by config and torch thread count so
a re-run reuses it. Any other `base_model` is a model reference recorded in the model
artifact (a card of kind "ref") and resolved by the stages that load it
(`genalign.models.refs.model_dir`); the tiny preset's is `tiny://part-generator-pretrained`,
the committed build of its `pretrain` section. A reference to an adapter (a registered
part-dpo champion, `mlflow://models/<name>@champion`) is merged into its base here: the
model artifact is then the champion policy as a plain generator, and training starts a
fresh adapter on it (see `PreparePartsConfig.base_model`). Either way the base's
`pretrain/heldout_loss`, when its card has one, is among the stage's metrics.

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
        metrics.update(_referenced_base(cfg, model))
    return StageResult(metrics=metrics, summary=counts)


def _referenced_base(cfg: PreparePartsConfig, out: Path) -> dict[str, float]:
    """A "ref" card for `cfg.base_model`, or the merged generator when it names an adapter;
    the base's held-out loss when its card records one."""
    from genalign.config.refs import parse_model_ref
    from genalign.models.refs import model_dir, pin, resolve
    from genalign.trainers.part_base import HELDOUT_METRIC

    ref = pin(cfg.base_model)  # an alias that moves later does not change what this run used
    # hf:// names a hub model, never an adapter, and is fetched by the stages that load it;
    # the others are looked at now (tiny:// is built or copied into the cache), so a
    # reference that does not resolve fails here, before any sampling.
    resolved = None if parse_model_ref(ref).scheme == "hf" else model_dir(resolve(ref))
    card = read_model_card(resolved) if resolved is not None and has_model_card(resolved) else None
    with atomic_dir(out) as tmp:
        if card is not None and card.kind == "adapter":
            from genalign.generators.parts import save_merged

            save_merged(resolved, tmp, base_model=ref)
        else:
            write_model_card(tmp, ModelCard(kind="ref", ref=ref))
        write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), extra={"ref": ref})
    if card is None or card.kind != "model" or HELDOUT_METRIC not in card.metrics:
        return {}
    return {HELDOUT_METRIC: float(card.metrics[HELDOUT_METRIC])}


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
    """Pretrain the tiny generator (`genalign.trainers.part_base.build_part_base`), or copy
    it from the cache when this config made one before with as many torch threads as this
    process has (they change the weights: `genalign.training.numerics`)."""
    import json

    from genalign.models.refs import cache_dir
    from genalign.trainers.part_base import build_part_base
    from genalign.training.numerics import numerics_key

    # prepare.seed seeds the pretraining and held-out objects, so it is part of the key.
    key = config_hash({"pretrain": cfg.pretrain.to_dict(), "image_size": cfg.image_size, "seed": cfg.seed,
                       "numerics": numerics_key()})
    cached = cache_dir() / "part-base" / key
    if not has_model_card(cached):  # missing, or made with an older model card
        with atomic_dir(cached) as tmp:
            metrics = build_part_base(cfg, tmp, tracker)
            atomic_write_json(tmp / "pretrain_metrics.json", metrics)
    metrics = json.loads((cached / "pretrain_metrics.json").read_text())
    with atomic_dir(out) as tmp:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)
        write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), extra={"cache_key": key})
    return metrics
