"""What a run reuses from an earlier one is keyed by torch's thread count too.

With 1 and 2 intra-op threads the same seeds train different weights (a large matrix
product's reduction is split across the threads), so a pretrained base cached by config,
a warm-started planner or a flow-DPO checkpoint made with another thread count is not what
this run would compute: it is made again (or trained from the start) instead of reused.
`genalign run` uses one thread per task unless OMP_NUM_THREADS says otherwise.
"""

from pathlib import Path

import pytest
import torch

from genalign.stages import run_stage
from genalign.storage import read_manifest

pytestmark = pytest.mark.integration

PREPARE_PRETRAIN = {
    "train_conditions": 2, "eval_conditions": 1, "base_model": "pretrain",
    "pretrain": {"objects": 16, "hidden": 16, "depth": 2, "heads": 2, "heldout_objects": 8,
                 "training": {"steps": 2, "batch_size": 8, "warmup_steps": 1}},
}
PREPARE_PLANNER = {
    "source": "synthetic", "train_samples": 2, "eval_samples": 2, "base_model": "tiny://tiny-qwen2-vl",
    "warm_start": {"steps": 1, "batch_size": 2, "examples_per_row": 1, "warmup_steps": 1},
}


@pytest.fixture
def threads(tmp_path, monkeypatch):
    """torch.set_num_threads, restored afterwards; a cache of this test's own."""
    monkeypatch.setenv("GENALIGN_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) if cache.is_dir() else []


def prepare_parts(cfg: dict, out: Path) -> str:
    run_stage("prepare-parts", cfg, inputs={},
              outputs={"conditions": out / "cond", "eval_conditions": out / "eval", "model": out / "model"})
    return read_manifest(out / "model", "model")["cache_key"]


def test_pretrained_base_is_reused_only_at_the_same_thread_count(tmp_path, threads):
    cache = tmp_path / "cache" / "part-base"
    threads(1)
    first = prepare_parts(PREPARE_PRETRAIN, tmp_path / "a")
    assert prepare_parts(PREPARE_PRETRAIN, tmp_path / "b") == first and entries(cache) == [first]
    threads(2)
    second = prepare_parts(PREPARE_PRETRAIN, tmp_path / "c")
    assert second != first and entries(cache) == sorted([first, second])


def test_warm_started_planner_is_reused_only_at_the_same_thread_count(tmp_path, threads):
    cache = tmp_path / "cache" / "planner-base"

    def prepare(out: Path) -> str:
        out.mkdir()
        run_stage("prepare-planner", PREPARE_PLANNER, inputs={},
                  outputs={"dataset": out / "dataset", "eval_dataset": out / "eval", "model": out / "model"})
        return read_manifest(out / "model", "model")["cache_key"]

    threads(1)
    first = prepare(tmp_path / "a")
    assert prepare(tmp_path / "b") == first and entries(cache) == [first]
    threads(2)
    second = prepare(tmp_path / "c")
    assert second != first and entries(cache) == sorted([first, second])


def test_flow_dpo_checkpoint_is_resumed_only_at_the_same_thread_count(tmp_path, threads, monkeypatch):
    from genalign.trainers.flow_dpo import FlowDPOTrainer

    d = tmp_path
    run_stage("prepare-parts", {"train_conditions": 4, "eval_conditions": 1, "base_model": "tiny://part-generator"},
              inputs={}, outputs={"conditions": d / "cond", "eval_conditions": d / "eval", "model": d / "model"})
    run_stage("rollout-parts", {"samples_per_condition": 4, "steps": 2},
              inputs={"conditions": d / "cond", "model": d / "model"}, outputs={"samples": d / "samples"},
              params={"shard": 0, "num_shards": 1})
    run_stage("score-samples", {"penetration": {"workers": 1}}, inputs={"samples": d / "samples"},
              outputs={"scored": d / "scored"})
    run_stage("mine-pairs", {"higher_is_better": False, "min_gap": 0.0}, inputs={"scored": [d / "scored"]},
              outputs={"pairs": d / "pairs"})
    train = {"max_steps": 2, "batch_size": 2, "checkpoint_every": 1}
    ins = {"model": d / "model", "pairs": d / "pairs"}

    def killed_before_saving(self, metrics):
        raise KeyboardInterrupt

    threads(2)
    with monkeypatch.context() as m:  # a 2-thread run killed after its last checkpoint
        m.setattr(FlowDPOTrainer, "save", killed_before_saving)
        with pytest.raises(KeyboardInterrupt):
            run_stage("train-flow-dpo", train, inputs=ins, outputs={"adapter": d / "killed"})
    resumed = []
    load = FlowDPOTrainer._load_checkpoint
    monkeypatch.setattr(FlowDPOTrainer, "_load_checkpoint", lambda self, path: (resumed.append(path), load(self, path)))

    threads(1)
    run_stage("train-flow-dpo", train, inputs=ins, outputs={"adapter": d / "one-thread"})
    assert resumed == [], "a 1-thread run resumed a 2-thread run's checkpoint"
    threads(2)
    run_stage("train-flow-dpo", train, inputs=ins, outputs={"adapter": d / "two-threads"})
    assert [p.name for p in resumed] == ["step_00000002"]
