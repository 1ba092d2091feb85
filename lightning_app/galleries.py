"""Evaluation on seeded random galleries of a fixed size (the protocol of many papers).

`eval.gallery_size=N eval.draws=R`: draw R random subsets of N pairs from the split, without
replacement within a draw; the generator of draw d is seeded by (seed, d), so the subsets
depend only on the run's `seed`, the draw number and the split size. Each subset is both the
query set and the gallery (de-duplicated by id, as for the whole split), so every query's
positive is in its gallery. Metrics are computed per draw; the reported value is their mean,
with the sample standard deviation over draws beside it (`.../std`, 0 for one draw).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np
import torch

from lightning_app.retrieval import paired_retrieval_ranks


def draw_galleries(num_pairs: int, gallery_size: int, draws: int, seed: int) -> list[np.ndarray]:
    """R sorted int64 arrays, each `gallery_size` distinct positions in [0, num_pairs)."""
    if not 1 <= gallery_size <= num_pairs:
        raise ValueError(f"gallery_size={gallery_size} must be in [1, {num_pairs}]")
    if draws < 1:
        raise ValueError(f"draws={draws} must be >= 1")
    out = []
    for d in range(draws):
        rng = np.random.default_rng(np.random.SeedSequence([seed % 2**63, d]))
        out.append(np.sort(rng.choice(num_pairs, size=gallery_size, replace=False)))
    return out


def subset_rows(rows: dict[str, torch.Tensor], positions: np.ndarray) -> dict[str, torch.Tensor]:
    """The rows at `positions` (every column: embeddings, keys, dataset index)."""
    some = next(iter(rows.values()))
    take = torch.as_tensor(positions, dtype=torch.long, device=some.device)
    return {name: col[take.to(col.device)] for name, col in rows.items()}


def gallery_ranks(rows: dict[str, torch.Tensor], galleries: Sequence[np.ndarray],
                  chunk_size: int = 4096) -> list[dict[str, torch.Tensor]]:
    """Per draw: {"v2m": ranks, "m2v": ranks} within that draw's gallery."""
    out = []
    for positions in galleries:
        sub = subset_rows(rows, positions)
        out.append(paired_retrieval_ranks(sub["video"], sub["music"], sub["video_key"],
                                          sub["music_key"], chunk_size=chunk_size))
    return out


def mean_and_std(per_draw: Sequence[dict[str, float]]) -> dict[str, float]:
    """{key: mean over draws, key + "/std": sample standard deviation (0 for one draw)}."""
    if not per_draw:
        raise ValueError("mean_and_std: no draws")
    out: dict[str, float] = {}
    for key in per_draw[0]:
        values = [m[key] for m in per_draw]
        out[key] = statistics.fmean(values)
        out[f"{key}/std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out
