"""What decides the exact numbers of a training run on a CPU besides its config, inputs and seeds.

torch splits a large matrix product across its intra-op threads along the summed
dimension: the weight gradient of a linear layer, a sum over batch x tokens, rounds
differently with 1 and with 2 threads. Inference and small batches stay below the size
at which the work is split, but pretraining does not (the tiny part generator's
batch of 64 objects), and training amplifies last-bit differences into different
weights: the same seeds pretrain another tiny generator with 2 threads than with 1, and
everything downstream of it moves (part-dpo's tuned penetration by a few percent).

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
