"""prepare-planner: the questions (train and held-out) and the base planner.

Datasets are MMSI-Bench-format directories (`genalign.data.mmsi`):

    dataset/
      manifest.json  rows.jsonl       {id, images, question, options, answer, question_type, meta}
      images/...  scenes/...          (synthetic: the front view and the scene JSON per question)

`source: synthetic` generates the scenes of `genalign.data.spatial_scenes` (train and
held-out from one seeded stream, disjoint); `source: mmsi` reads a data file, counts the
rows whose images are missing (they are left out, with their line, in the manifest) and
splits the rest with a seeded shuffle.

The model artifact holds the planner: with `warm_start` the base is fine-tuned here on
well-formed plans with random views (`genalign.trainers.planner_sft`), cached by config
so a re-run reuses it; without it the artifact records the model reference, resolved by
the stages that load it (`genalign.models.refs.model_dir`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

from genalign.artifacts import (
    DATASET,
    MODEL,
    ModelCard,
    has_model_card,
    link_or_copy,
    read_model_card,
    write_model_card,
)
from genalign.config.planner_dpo import PreparePlannerConfig
from genalign.data.mmsi import DATASET_ROWS, read_dataset
from genalign.stages import StageResult
from genalign.storage import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    config_hash,
    write_manifest,
)
from genalign.tracking import Tracker


def run(cfg: PreparePlannerConfig, *, dataset: Path, eval_dataset: Path, model: Path,
        tracker: Tracker) -> StageResult:
    # The warm start's cache key (and, for its data, this config's hash) as it always was.
    fp = config_hash({"config": cfg.to_dict(), "inputs": {}})
    counts = _write_datasets(cfg, dataset, eval_dataset, fp)
    metrics = {f"data/{k}": float(v) for k, v in counts.items()}
    if cfg.warm_start is None:
        _referenced_base(cfg, model)
    else:
        metrics.update(_warm_started(cfg, dataset, model, fp, tracker))
    return StageResult(metrics=metrics, summary=counts)


def _referenced_base(cfg: PreparePlannerConfig, out: Path) -> None:
    """A "ref" card for `cfg.base_model`, or the merged planner when it names an adapter
    (a registered planner-dpo champion): a fresh adapter then trains on the champion."""
    from genalign.config.refs import parse_model_ref
    from genalign.models.refs import base_and_adapter, pin, resolve

    ref = pin(cfg.base_model)  # an alias that moves later does not change what this run used
    adapter = None
    if parse_model_ref(ref).scheme not in ("tiny", "hf"):  # those name models, never adapters
        base, adapter = base_and_adapter(resolve(ref))
    with atomic_dir(out) as tmp:
        if adapter is not None:
            from genalign.trainers.lm_dpo import merge_adapter

            merge_adapter(base, adapter, tmp)
            write_model_card(tmp, dataclasses.replace(read_model_card(tmp), base_model=ref, extra={}))
        else:
            write_model_card(tmp, ModelCard(kind="ref", ref=ref))
        write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), extra={"ref": ref})


def _write_datasets(cfg: PreparePlannerConfig, dataset: Path, eval_dataset: Path, fp: str) -> dict[str, int]:
    if cfg.source == "synthetic":
        return _synthetic(cfg, dataset, eval_dataset, fp)
    return _mmsi(cfg, dataset, eval_dataset, fp)


def _write(out: Path, rows: list[dict], cfg: PreparePlannerConfig, fp: str, split: str, counts: dict,
           copy_from: Path, sources: dict[str, Path] | None = None) -> None:
    """`sources`: where an image named differently in the artifact comes from."""
    with atomic_dir(out) as tmp:
        for row in rows:
            for rel in [*row["images"], *([row["meta"]["scene"]] if "scene" in row.get("meta", {}) else [])]:
                link_or_copy((sources or {}).get(rel, copy_from / rel), tmp / rel)
        atomic_write_text(tmp / DATASET_ROWS, "".join(json.dumps(r) + "\n" for r in rows))
        write_manifest(tmp, kind=DATASET, config=cfg.to_dict(), counts=counts, hash_files=[DATASET_ROWS],
                       extra={"split": split})


def _synthetic(cfg: PreparePlannerConfig, dataset: Path, eval_dataset: Path, fp: str) -> dict[str, int]:
    import tempfile

    from genalign.data.spatial_scenes import load_scene, make_spatial_samples

    n = cfg.train_samples + cfg.eval_samples
    with tempfile.TemporaryDirectory(dir=dataset.parent) as scratch:
        rows = make_spatial_samples(n, seed=cfg.seed, out_dir=Path(scratch), cfg=cfg.world)
        for row in rows:  # the object names: the warm start's zoom instructions name them
            row["meta"]["objects"] = load_scene(Path(scratch) / row["meta"]["scene"]).object_names
        counts = {"train": cfg.train_samples, "eval": cfg.eval_samples, "skipped": 0}
        _write(dataset, rows[: cfg.train_samples], cfg, fp, "train", counts, Path(scratch))
        _write(eval_dataset, rows[cfg.train_samples :], cfg, fp, "eval", counts, Path(scratch))
    return counts


def _mmsi(cfg: PreparePlannerConfig, dataset: Path, eval_dataset: Path, fp: str) -> dict[str, int]:
    from genalign.data.mmsi import load_mmsi
    from genalign.models.refs import resolve

    path = Path(cfg.data)
    if cfg.data.startswith("s3://"):
        folder, _, name = cfg.data.rpartition("/")
        path = resolve(folder) / name
    data = load_mmsi(path)
    # An image given by an absolute path or one outside the data folder ("../x.png") gets a
    # name inside the artifact, which is then self-contained (`tmp / rel` would escape it).
    sources: dict[str, Path] = {}
    rows = []
    for r in data.rows:
        images = []
        for n, (rel, src) in enumerate(zip(r.images, r.image_paths)):
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                rel = f"external/{r.id}_{n}{src.suffix}"
                sources[rel] = src
            images.append(rel)
        rows.append({"id": r.id, "images": images, "question": r.question, "options": list(r.options),
                     "answer": r.answer, "question_type": r.question_type, "meta": dict(r.meta)})
    if len(rows) < 2:
        raise ValueError(f"{path}: {len(rows)} usable row(s) ({len(data.skipped)} skipped); need at least 2")
    random.Random(cfg.seed).shuffle(rows)
    n_eval = min(cfg.eval_samples, len(rows) // 2)
    train, held = rows[n_eval:][: cfg.train_samples], rows[:n_eval]
    counts = {"train": len(train), "eval": len(held), "skipped": len(data.skipped)}
    _write(dataset, train, cfg, fp, "train", counts, path.parent, sources)
    _write(eval_dataset, held, cfg, fp, "eval", counts, path.parent, sources)
    if data.skipped:
        atomic_write_json(dataset / "skipped.json", [s.__dict__ for s in data.skipped])
    return counts


def _warm_started(cfg: PreparePlannerConfig, dataset: Path, out: Path, fp: str, tracker: Tracker) -> dict[str, float]:
    """Warm-start the base planner on the train questions, or copy it from the cache when it
    was made with as many torch threads as this process has (`genalign.training.numerics`)."""
    from genalign.models.refs import cache_dir, resolve
    from genalign.trainers.planner_sft import sft_examples, train_planner_sft
    from genalign.training.numerics import numerics_key

    key = config_hash({"base": cfg.base_model, "warm_start": cfg.warm_start.to_dict(), "data": fp,
                       "numerics": numerics_key()})
    cached = cache_dir() / "planner-base" / key
    if not has_model_card(cached):  # missing, or made with an older model card
        rows = read_dataset(dataset)
        train_planner_sft(cfg.warm_start, model_dir=resolve(cfg.base_model), examples=sft_examples(rows, cfg.warm_start),
                          image_root=dataset, out_dir=cached, tracker=tracker)
    card = read_model_card(cached)
    metrics = card.metrics
    with atomic_dir(out) as tmp:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)
        # what it was made from, as the reference (the cache path means nothing elsewhere)
        write_model_card(tmp, dataclasses.replace(card, base_model=cfg.base_model))
        write_manifest(tmp, kind=MODEL, config=cfg.to_dict(), extra={"cache_key": key})
    return {k: float(v) for k, v in metrics.items()}
