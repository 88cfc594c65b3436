"""torch.distributed helpers for training over several processes (torchrun, DDP).

The losses compare every image with every sound of the *global* batch, so each rank needs all ranks' embeddings
with a gradient path back to its own rows: :func:`gather_with_grad`. Outside a process group every helper
degrades to the single-process answer, so the same code runs on a laptop and under ``torchrun``.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["gather_with_grad", "init_from_env", "is_distributed", "local_rank", "rank", "world_size"]

# The variables torchrun (and torch.distributed.launch) sets for every worker.
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """Whether a default process group is up (more than one process may be taking part)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``), which picks its GPU; 0 without torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env() -> torch.device:
    """Join the process group described by torchrun's environment variables and return this process's device.

    Under torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) the default group is created
    with NCCL when CUDA is available, each process taking the GPU of its ``LOCAL_RANK``, and with gloo otherwise.
    Without those variables nothing is initialised and the device is the first GPU or the CPU. Calling it again
    once the group is up only returns the device.
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if all(name in os.environ for name in _TORCHRUN_ENV) and not is_distributed():
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    return device


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0; backward sums every rank's gradient of the gathered tensor and keeps this rank's rows.

    The summed gradient is the gradient of the *sum* of all ranks' losses, which is right whatever each rank does
    with the gathered tensor. Written on the stable ``all_gather``/``all_reduce`` collectives rather than
    ``torch.distributed.nn.functional.all_gather`` (deprecated in recent torch, limited to equal shapes, and on
    gloo its backward emulates reduce-scatter with one scatter per rank). The gradient is only N x d, so an
    all-reduce costs nothing next to the towers.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Ranks may hold different numbers of rows (the end of an epoch) and not every backend gathers uneven
        # tensors: share the counts, gather rows padded to the largest count, then drop the padding.
        counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
        dist.all_gather(counts, torch.tensor([len(x)], device=x.device))
        counts = [int(n) for n in counts]
        padded = x.new_zeros((max(counts), *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        start = sum(counts[: dist.get_rank()])
        ctx.rows = slice(start, start + len(x))
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 in rank order, keeping gradients to this rank's rows.

    Each rank's own rows receive the gradient of the sum over ranks of whatever is computed from the result.
    When every rank computes the same global loss L from the gathered batch, that is ``world_size * dL/dx``,
    which DDP's averaging of parameter gradients over ranks turns back into exactly dL/dparams: N ranks with
    B samples each then train like one process with N*B, with no rescaling of the loss. Without a process group
    (or with a single process) ``x`` is returned unchanged.
    """
    if world_size() == 1:
        return x
    return _GatherRows.apply(x)
