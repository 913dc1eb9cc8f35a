"""On CUDA a flow-DPO optimizer step syncs with the host once: the copy of its statistics.

torch.cuda.set_sync_debug_mode("warn") makes every synchronizing CUDA call (an `.item()`,
a blocking copy, a `nonzero`) emit a warning; a step with a live and one with a
precomputed reference, gradient accumulation and drift measured, must emit at most one.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from genalign.config.flow_dpo import FlowDPOConfig
from genalign.config.part_dit import PartDiTConfig
from genalign.models.part_dit import PartDiT
from genalign.tracking import NullTracker
from genalign.trainers.flow_dpo import FlowDPOTrainer, PairTensors


def _pairs(n: int) -> PairTensors:
    g = torch.Generator().manual_seed(1)
    mask = torch.arange(8)[None] < torch.randint(1, 9, (n, 1), generator=g)
    shape = (n, 8, 4, 4)
    return PairTensors(
        torch.randn(shape, generator=g), torch.randn(shape, generator=g),
        torch.randn(n, 16, 32, generator=g), mask,
    )


@pytest.mark.parametrize("precompute", [False, True])
def test_one_host_sync_per_step(tmp_path, precompute):
    torch.manual_seed(0)
    base = PartDiT(PartDiTConfig(hidden=64, depth=2, heads=4, cond_dim=32))
    base.save_pretrained(tmp_path / "base")
    cfg = FlowDPOConfig(
        batch_size=4, grad_accum=2, max_steps=4, log_every=1, drift_every=1,
        checkpoint_every=0, precompute_reference=precompute,
    )
    trainer = FlowDPOTrainer(cfg, base_model_dir=tmp_path / "base", pairs=_pairs(16),
                             out_dir=tmp_path / "out", tracker=NullTracker())
    trainer.setup()
    trainer.train_step()  # warm-up: allocator and kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, syncs
