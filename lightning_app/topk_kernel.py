"""The exact top-k kernel behind `lightning_app.search.topk_search`.

Order: score descending, and among equal scores the lower gallery index first. The result
is the same as fully sorting every score row that way, without ever sorting a row.

On the CPU (galleries of at least two tiles, k <= `MAX_TILED_K`) the scores are made in
tiles of `TILE_ROWS` queries x `TILE_COLS` gallery items that never exist together, and each
query's k best so far are kept sorted as the tiles go by (lightning_app/topk_tiles.py).
Elsewhere (a GPU, small galleries, large k) whole `[chunk, G]` score rows are cut with one
`torch.topk` of k + 1: when the k-th and (k+1)-th differ, the top k are the k best, put in
order by (score, index); where they are equal, the row is sorted (rare for real
embeddings). Memory is one tile per thread on the CPU and one chunk's scores elsewhere.
"""

from __future__ import annotations

import torch

from lightning_app.cpu_gemm import scores_t

TILE_ROWS = 512
TILE_COLS = 1024  # 2 MiB float32 tiles, selected from while in L2 (as the rank kernel's)
MAX_TILED_K = 64


def exact_topk(query: torch.Tensor, gallery: torch.Tensor, k: int, chunk_size: int,
               exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores float32 [Q, k], indices int64 [Q, k]) best first; inputs already checked.

    `exclude`: int64 [Q] on the query's device, -1 or one gallery index per query scored
    -inf (never chosen while k <= G - 1).
    """
    device = query.device
    query = query.detach()  # tiles are read as NumPy views
    gal = gallery.detach().to(device).float().contiguous()
    num_queries, num_gallery = query.shape[0], gal.shape[0]
    # Tiles pay off past two of them; a sorted insertion per kept item suits small k.
    if device.type == "cpu" and num_gallery >= 2 * TILE_COLS and k <= MAX_TILED_K:
        from lightning_app.topk_tiles import tiled_topk

        return tiled_topk(query, gal, k, chunk_size, exclude)
    out_scores = torch.empty((num_queries, k), dtype=torch.float32, device=device)
    out_index = torch.empty((num_queries, k), dtype=torch.long, device=device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        ex = exclude[start:stop] if exclude is not None else None
        s, i = _dense_chunk(query[start:stop].float(), gal, k, ex)
        out_scores[start:stop], out_index[start:stop] = s, i
    return out_scores, out_index


def _mask_excluded(scores: torch.Tensor, ex: torch.Tensor | None, offset: int) -> None:
    """Score -inf where the query's excluded index falls in columns [offset, offset + w)."""
    if ex is None:
        return
    local = ex - offset
    rows = torch.nonzero((ex >= 0) & (local >= 0) & (local < scores.shape[1])).reshape(-1)
    if rows.numel():
        scores[rows, local[rows]] = float("-inf")


def _dense_chunk(q: torch.Tensor, gal: torch.Tensor, k: int,
                 ex: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    scores = scores_t(q, gal)  # [c, G]
    _mask_excluded(scores, ex, 0)
    return _select(scores, None, k)


def _select(values: torch.Tensor, index: torch.Tensor | None,
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of candidates by (value desc, gallery index asc).

    `index`: the candidates' gallery indices (None: the column is the index). Every item
    scoring at least the k-th best must be among the candidates (ties are decided here).
    """
    rows, width = values.shape
    if width <= k:  # everything is chosen: only the order is left
        return _sorted_topk(values, index, k)
    top, pos = values.topk(k + 1, dim=1)
    tied = top[:, k - 1] == top[:, k]
    scores, cols = top[:, :k], pos[:, :k]
    chosen = cols if index is None else index.gather(1, cols)
    # (value desc, index asc): sort by index, then a stable sort by value.
    by_index = chosen.sort(dim=1).indices
    chosen, scores = chosen.gather(1, by_index), scores.gather(1, by_index)
    order = scores.sort(dim=1, descending=True, stable=True).indices
    scores, chosen = scores.gather(1, order), chosen.gather(1, order)
    ties = torch.nonzero(tied).reshape(-1)
    if ties.numel():  # equal scores at the cut: the whole row decides, in index order
        scores[ties], chosen[ties] = _sorted_topk(
            values[ties], None if index is None else index[ties], k)
    return scores, chosen


def _sorted_topk(values: torch.Tensor, index: torch.Tensor | None,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top k by (value desc, index asc) through full stable sorts (small or rare rows)."""
    if index is None:
        index = torch.arange(values.shape[1], device=values.device).expand_as(values)
    else:
        by_index = index.sort(dim=1).indices
        index, values = index.gather(1, by_index), values.gather(1, by_index)
    order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, order), index.gather(1, order)
