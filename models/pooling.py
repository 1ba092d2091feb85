"""Masked temporal pooling of frame features [B, T, D] -> [B, D'] (VM-NET's video input)."""

from __future__ import annotations

import torch

POOLINGS = ("mean", "max", "mean_max")


def pooled_dim(dim: int, pooling: str) -> int:
    return 2 * dim if pooling == "mean_max" else dim


def masked_pool(x: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r} (choose from: {', '.join(POOLINGS)})")
    m = mask.unsqueeze(-1).to(x.dtype)
    mean = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
    if pooling == "mean":
        return mean
    neg = torch.finfo(x.dtype).min
    mx = x.masked_fill(~mask.unsqueeze(-1), neg).amax(1)
    return mx if pooling == "max" else torch.cat([mean, mx], dim=-1)
