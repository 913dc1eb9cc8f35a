"""What decides the exact numbers of a training run on a CPU besides its config, inputs and seeds.

torch splits a large matrix product across its intra-op threads along the summed
dimension (the weight gradient of a linear layer sums over batch x tokens), so it rounds
differently with 1 and with 2 threads, and training amplifies those last bits into other
weights. In the tiny presets, pretraining the part generator, the planner's warm start
and its DPO training change with the thread count (part-dpo's tuned penetration by a few
percent, planner-dpo's reveal share at iteration 1 by 0.06); rollouts, scoring,
evaluation and flow-DPO on batches of 8 pairs came out bitwise the same with 1 and 2
threads (their products are too small to be split).

A model cached by config, or a checkpoint resumed by fingerprint, must therefore also
match the thread count of the run that reuses it, or the run would continue from numbers
that it does not compute itself. `numerics_key()` is that extra part of a cache key.

    key = config_hash({"pretrain": cfg.pretrain.to_dict(), "numerics": numerics_key()})
"""

from __future__ import annotations


def numerics_key() -> dict[str, int]:
    """The settings of this process that change trained weights for the same seeds:
    torch's intra-op thread count (`torch.get_num_threads()`, set by OMP_NUM_THREADS or
    `torch.set_num_threads`)."""
    import torch

    return {"torch_threads": torch.get_num_threads()}
