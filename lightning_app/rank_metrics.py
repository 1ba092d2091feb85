"""From ranks to the numbers papers report: Recall@K, median and mean rank, the R@K curve."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["metrics_from_ranks", "recall_curve"]


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"R@k": fraction of ranks <= k for k in ks, "MdR": median rank, "MnR": mean rank}.

    The median follows NumPy (mean of the two middle values for an even count) rather than
    torch.median (lower middle value), so results match the usual published tables.
    """
    if ranks.numel() == 0:
        raise ValueError("metrics_from_ranks: no ranks given")
    r = ranks.reshape(-1).double()
    out: dict[str, float] = {}
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"recall cut-offs must be >= 1, got {k}")
        out[f"R@{int(k)}"] = float((r <= k).double().mean())
    s = r.sort().values
    n = s.numel()
    median = s[n // 2] if n % 2 == 1 else (s[n // 2 - 1] + s[n // 2]) / 2
    out["MdR"] = float(median)
    out["MnR"] = float(r.mean())
    return out


def recall_curve(ranks: torch.Tensor, max_k: int) -> torch.Tensor:
    """FloatTensor [max_k] with R@1, ..., R@max_k (fractions), on the ranks' device."""
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    if ranks.numel() == 0:
        raise ValueError("recall_curve: no ranks given")
    r = ranks.reshape(-1).long()
    if bool((r < 1).any()):
        raise ValueError("recall_curve: ranks are 1-based and must be >= 1")
    # Ranks beyond max_k all land in one overflow bin, so the histogram stays max_k + 2 long.
    hist = torch.bincount(r.clamp(max=max_k + 1), minlength=max_k + 2)
    return hist[1 : max_k + 1].cumsum(0).float() / r.numel()
