"""What a per-negative margin does to each kind of negative (measuring only, never trained on).

For the hinge terms of the top-Q ranking loss (``losses.ranking``), split the selected
(anchor, negative) terms by a category of the negative relative to the anchor's pair (e.g. on
synthetic data: same song, same style, other style) and report per category the mean margin,
the fraction of active hinges (margin + D(anchor, positive) - D(anchor, negative) > 0) and the
number of selected terms. D = -cos, as in the loss; the Q negatives of each anchor are the Q
closest by D, exactly as the loss chooses them.
"""

from __future__ import annotations

import torch

__all__ = ["hinge_category_stats"]


def hinge_category_stats(dist: torch.Tensor, margins: torch.Tensor, num_negatives: int,
                         category: torch.Tensor, num_categories: int
                         ) -> dict[str, torch.Tensor]:
    """Per-category statistics of the selected hinge terms of one ranking direction.

    Args:
        dist: [N, N] distances, row = anchor, column = item of the other modality; column i
            is anchor i's positive.
        margins: [N, N] margin of every (anchor, negative) entry.
        num_negatives: Q, clipped to N - 1.
        category: [N, N] integer category in [0, num_categories) of each (anchor, negative).
        num_categories: C.

    Returns:
        {"mean_margin": [C], "active": [C], "count": [C]} float64 tensors; mean_margin and
        active are NaN for a category without selected terms.
    """
    n = dist.shape[0]
    if dist.shape != (n, n) or margins.shape != (n, n) or category.shape != (n, n):
        raise ValueError(
            "hinge_category_stats expects square [N, N] dist, margins and category, got "
            f"{tuple(dist.shape)}, {tuple(margins.shape)}, {tuple(category.shape)}"
        )
    if n < 2:
        raise ValueError(f"hinge_category_stats needs N >= 2, got N={n}")
    q = min(int(num_negatives), n - 1)
    dist, margins = dist.detach().double(), margins.detach().double()
    eye = torch.eye(n, dtype=torch.bool, device=dist.device)
    idx = dist.masked_fill(eye, float("inf")).topk(q, dim=1, largest=False).indices  # [N, Q]
    m = margins.gather(1, idx)
    active = (m + dist.diagonal().unsqueeze(1) - dist.gather(1, idx)) > 0
    cat = category.gather(1, idx).long().reshape(-1)
    count = torch.bincount(cat, minlength=num_categories).double()
    total_m = torch.bincount(cat, weights=m.reshape(-1), minlength=num_categories)
    total_a = torch.bincount(cat, weights=active.reshape(-1).double(), minlength=num_categories)
    nan = torch.full_like(count, float("nan"))
    has = count > 0
    return {
        "mean_margin": torch.where(has, total_m / count.clamp_min(1), nan),
        "active": torch.where(has, total_a / count.clamp_min(1), nan),
        "count": count,
    }
