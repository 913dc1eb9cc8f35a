"""accumulate-pairs: the training pairs of iteration i, the pairs of iterations 0..i.

Takes this iteration's pairs and the previous accumulation (none at iteration 0) and
writes their union (`genalign.pairs.accumulate`: each pair keeps its iteration; a pair id
seen again takes the later one) as a self-contained pairs artifact, in every format the
pairs stage writes. With `window`, only the pairs of the last `window` iterations stay.
"""

from __future__ import annotations

from pathlib import Path

from genalign.artifacts import PAIRS
from genalign.config.pairs import AccumulatePairsConfig
from genalign.pairs import accumulate, copy_samples, pair_file_names, write_pair_files
from genalign.records import Pair, ScoredSample, read_jsonl
from genalign.stages import StageResult
from genalign.storage import atomic_dir, read_manifest, write_manifest
from genalign.tracking import Tracker


def run(cfg: AccumulatePairsConfig, *, pairs: Path, previous: Path | None, accumulated: Path,
        tracker: Tracker) -> StageResult:
    sources = [p for p in (previous, pairs) if p is not None]
    sets, samples = [], {}
    for directory in sources:
        read_manifest(directory, PAIRS)
        sets.append(read_jsonl(directory / "pairs.jsonl", Pair))
        for s in read_jsonl(directory / "samples.jsonl", ScoredSample):
            samples[s.sample_id] = (directory, s)
    merged = accumulate(sets)
    if cfg.window is not None and merged:
        latest = max(p.iteration for p in merged)
        merged = [p for p in merged if p.iteration > latest - cfg.window]
    by_iteration: dict[str, int] = {}
    for p in merged:
        by_iteration[str(p.iteration)] = by_iteration.get(str(p.iteration), 0) + 1
    counts = {"pairs": len(merged), "weak": sum(p.weak for p in merged), "by_iteration": by_iteration}
    with atomic_dir(accumulated) as tmp:
        write_pair_files(tmp, merged, copy_samples(merged, samples, tmp))
        write_manifest(tmp, kind=PAIRS, config=cfg.to_dict(), counts=counts, hash_files=pair_file_names(tmp),
                       inputs={"pairs": str(pairs), "previous": str(previous) if previous else ""})
    metrics = {"accumulate/pairs": float(len(merged)), "accumulate/weak": float(counts["weak"])}
    return StageResult(metrics=metrics, summary=counts)
