"""Data parallelism for genalign's own trainers: N processes that take the same optimizer
steps as one process with the same global batch.

A trainer that runs under torchrun (`genalign.training.launch`, or the pods of a Kubeflow
Trainer TrainJob) calls `setup()` once, which joins the default process group (gloo on
CPU, nccl on CUDA, this rank's GPU from LOCAL_RANK) when WORLD_SIZE > 1 and is a no-op
otherwise. Then, per optimizer step:

    index = shard(step_index)                       # this rank's share of the step's samples
    loss = sum(loss_i for i in index) / len(step_index)   # weighted by the *global* count
    loss.backward()
    sum_gradients(trainable)                        # one all-reduce of the flattened grads

Each rank's loss is weighted by its share of the whole step, so the sum of the ranks'
gradients is the single-process gradient exactly (up to the order of the additions),
also when the step's samples do not divide evenly; `torch.nn.parallel.DistributedDataParallel`
instead averages per-rank means, which equals it only for equal shares. Clipping and the
optimizer then see identical gradients on every rank, so the weights stay identical
without a broadcast. Statistics that are sums of weighted per-sample values are summed
the same way (`sum_`).

Everything here is a no-op in a plain process, so a trainer has one code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from genalign.training.launch import rank, world_size


def is_distributed() -> bool:
    """Whether this process is one of several (a process group is or will be joined)."""
    return world_size() > 1


def setup() -> torch.device:
    """Join the default process group if this is one of several processes and none is
    joined yet; return this rank's device (cuda:LOCAL_RANK with CUDA, else the CPU)."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if is_distributed() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's share of a step's sample indices: every world_size-th from its rank."""
    return index[rank() :: world_size()]


def sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (one all-reduce over their concatenation)."""
    import torch.distributed as dist

    tensors = [t for t in tensors if t is not None]
    if not is_distributed() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
        offset += n


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with a backward pass: the gradient of the sum, summed over the ranks.
    (torch.distributed.nn.functional.all_reduce does the same but is deprecated.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, differentiably (`tensor` itself in a plain process).

    For a batch statistic that is not a sum of per-sample values (a spread across the
    batch): every rank computes the statistic from the sums, and its backward pass sums
    the ranks' gradients of them, so a term that each rank weights by 1 / world_size
    sends each sample the gradient it gets in one process."""
    if not is_distributed():
        return tensor
    return _SumOverRanks.apply(tensor)


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum the gradients of `params` over the ranks; a parameter that got no gradient on
    a rank takes part with zeros, so every rank makes the same all-reduce."""
    params = list(params)
    if not is_distributed():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    sum_(p.grad for p in params)


def barrier() -> None:
    """Wait for every rank (a no-op in a plain process)."""
    import torch.distributed as dist

    if is_distributed() and dist.is_initialized():
        dist.barrier()
