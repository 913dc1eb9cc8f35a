"""mine-pairs: win/loss pairs from one or more scored shards.

The pairs artifact is self-contained for training: `pairs.jsonl`, the rows of the
samples it names (`samples.jsonl`, with their scores) and the files those rows name
(latents, conditioning, meshes). Counts of everything dropped, and why, go to the manifest and the metrics. A
shard that yields no pair is counted; no pair at all is an error, since there is
nothing to train on.
"""

from __future__ import annotations

from pathlib import Path

from genalign.artifacts import PAIRS, SCORED
from genalign.config.pairs import MinePairsConfig
from genalign.pairs import (
    MiningResult,
    NoPairsError,
    copy_samples,
    mine_pairs,
    pair_file_names,
    score_stats,
    summarize,
    with_texts,
    write_pair_files,
)
from genalign.records import ScoredSample, read_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def run(cfg: MinePairsConfig, *, scored: list[Path], pairs: Path, tracker: Tracker) -> StageResult:
    if not scored:
        raise ValueError("pairs: no scored artifacts given")
    shards: list[tuple[Path, list[ScoredSample]]] = []
    for directory in scored:
        read_manifest(directory, SCORED)
        shards.append((directory, read_jsonl(directory / "scored.jsonl", ScoredSample)))

    all_pairs, counts, empty_shards = [], {}, 0
    source: dict[str, tuple[Path, ScoredSample]] = {}
    for directory, rows in shards:
        result = mine_pairs(rows, cfg, iteration=max((r.iteration for r in rows), default=0))
        if not result.pairs:
            empty_shards += 1
        all_pairs.extend(result.pairs)
        for k, v in result.counts.items():
            counts[k] = counts.get(k, 0) + v
        for r in rows:
            source[r.sample_id] = (directory, r)
    counts["shards"] = len(shards)
    counts["shards_without_pairs"] = empty_shards
    if not all_pairs and not cfg.allow_empty:
        reasons = {k: v for k, v in counts.items() if v and k not in ("pairs", "shards")}
        raise NoPairsError(f"pairs: no pairs from {len(shards)} scored shard(s) {[str(d) for d, _ in shards]}; counts: {reasons}")

    if not all_pairs:  # allow_empty: an iteration whose questions all tied adds nothing
        import logging

        logging.getLogger(__name__).warning("pairs: no pairs from %d shard(s); counts: %s", len(shards), counts)
    elif all(isinstance(source[p.chosen][1].output, str) for p in all_pairs):
        all_pairs = [with_texts(p, source[p.chosen][1], source[p.rejected][1]) for p in all_pairs]
    with atomic_dir(pairs) as tmp:
        write_pair_files(tmp, all_pairs, copy_samples(all_pairs, source, tmp))
        stats = summarize(MiningResult(pairs=all_pairs, counts=counts))
        write_manifest(
            tmp, kind=PAIRS, config=cfg.to_dict(), inputs={"scored": [str(d) for d in scored]},
            counts=counts, hash_files=pair_file_names(tmp), extra={"gap": stats["gap"], "scores": score_stats(shards)},
        )
    metrics = {f"pairs/{k}": float(v) for k, v in counts.items()}
    metrics.update({f"pairs/gap_{k}": float(v) for k, v in (stats["gap"] or {}).items()})
    return StageResult(metrics=metrics, summary=counts)
