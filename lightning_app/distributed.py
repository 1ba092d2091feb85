"""Gathering evaluation outputs across processes.

DistributedSampler pads every rank to the same number of samples by repeating indices, and
ranks may still end with different counts (e.g. a custom sampler), so rows are gathered
with their lengths and duplicates are dropped by dataset `index`. Every rank ends with the
same rows in the same order, so every rank computes identical metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

AllGather = Callable[[torch.Tensor], torch.Tensor]


def gather_rows(tensor: torch.Tensor, all_gather: AllGather, world_size: int) -> torch.Tensor:
    """Concatenate `tensor` [n_rank, ...] from all ranks (n may differ) in rank order.

    `all_gather(t)` must return [world_size, *t.shape] (LightningModule.all_gather does).
    """
    if world_size <= 1:
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = all_gather(n).reshape(-1).tolist()
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = all_gather(padded)
    return torch.cat([gathered[r, : sizes[r]] for r in range(world_size)])


def unique_by_index(index: torch.Tensor, **columns: torch.Tensor) -> dict[str, torch.Tensor]:
    """Keep one row per dataset index (dropping sampler padding), sorted by index."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    rows = order[keep]
    out = {name: col[rows] for name, col in columns.items()}
    out["index"] = index[rows]
    return out
