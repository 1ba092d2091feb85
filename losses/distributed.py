"""Gathering embeddings across processes with gradient (open_clip's local-loss pattern).

Each process scores its own rows against the global batch; the gather's backward sums the
gradient over ranks into each rank's own rows, so with DDP's gradient averaging N processes
train exactly as one process on the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_and_rank() -> tuple[int, int]:
    """(world_size, rank); (1, 0) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_sizes(n: int, device: torch.device, world: int) -> list[int]:
    """Every rank's local row count (one small collective, no gradient)."""
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows of possibly different counts; backward sums over ranks, keeps own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        max_n = max(sizes)
        x = x.contiguous()
        if x.shape[0] < max_n:  # all_gather needs equal shapes: pad, gather, then trim
            pad = x.new_zeros((max_n - x.shape[0], *x.shape[1:]))
            padded = torch.cat([x, pad], dim=0)
        else:
            padded = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        parts[rank] = x  # own rows exactly as given (bit-identical, no round trip)
        ctx.offset = sum(sizes[:rank])
        ctx.n = x.shape[0]
        return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad = grad_output.contiguous().clone()
        # Every rank's loss depends on every rank's rows: SUM their gradients, keep ours.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset : ctx.offset + ctx.n], None, None


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` ([B_local, ...]) from every process along dim 0, differentiably.

    The result is the rank-ordered concatenation ``[x_rank0; x_rank1; ...]`` (ranks may hold
    different ``B_local``). In backward, the gradient of the gathered tensor is SUMMED over all
    ranks and each rank receives the slice belonging to its own rows, so gradients from every
    rank's loss flow back to the rows that produced them. Returns ``x`` itself (no copy) when
    torch.distributed is not initialised or the world has one process.
    """
    world, rank = world_and_rank()
    if world == 1:
        return x
    sizes = tuple(gather_sizes(x.shape[0], x.device, world))
    return gather_known_sizes(x, sizes, rank)


def gather_known_sizes(x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
    """`gather_with_grad` when every rank's row count is already known (saves a collective)."""
    return _GatherWithGrad.apply(x, sizes, rank)


def gather_global(*xs: torch.Tensor) -> tuple[list[torch.Tensor], int, int]:
    """Gather tensors with equal local row counts: ([gathered...], own offset, global rows)."""
    world, rank = world_and_rank()
    n = xs[0].shape[0]
    if world == 1:
        return list(xs), 0, n
    sizes = tuple(gather_sizes(n, xs[0].device, world))
    return [gather_known_sizes(x, sizes, rank) for x in xs], sum(sizes[:rank]), sum(sizes)
