"""The tiled CPU path of `lightning_app.topk_kernel.exact_topk`.

Row blocks of `TILE_ROWS` queries are shared out to threads (lightning_app/cpu_workers.py:
each thread makes its own tiles with one OpenMP thread and selects from them while they are
in its core's cache). Per query the k best so far are kept sorted by (score desc, index
asc); a tile is read in blocks of `_BLOCK` columns with a branch-free count of the scores
above the current k-th, and only blocks holding one are walked, inserting those. Columns
come in increasing index order, so an item tied with the k-th has a higher index and stays
out, and a new item goes after the kept ones with an equal score: the order is that of a
full stable sort of the row, without one. (Built from torch ops, the same selection took
as long as the products; these loops take a fraction of it.)
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from lightning_app import topk_kernel as _kernel
from lightning_app.cpu_gemm import scores_t
from lightning_app.cpu_workers import run_split

_BLOCK = 128  # columns per branch-free test


def tiled_topk(query: torch.Tensor, gal: torch.Tensor, k: int, chunk_size: int,
               exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores float32 [Q, k], indices int64 [Q, k]); `exclude`: -1 or one index per query."""
    num_queries = query.shape[0]
    top_s = np.full((num_queries, k), -np.inf, dtype=np.float32)
    top_i = np.full((num_queries, k), -1, dtype=np.int64)
    skip = (np.full(num_queries, -1, dtype=np.int64) if exclude is None
            else exclude.cpu().numpy().astype(np.int64))
    step = min(chunk_size, _kernel.TILE_ROWS)

    def work(blocks: list[int]) -> None:
        for q0 in blocks:  # each block's rows of top_s / top_i belong to this thread alone
            q = query[q0 : q0 + step].float().contiguous()
            rows = slice(q0, q0 + q.shape[0])
            for g0 in range(0, gal.shape[0], _kernel.TILE_COLS):
                tile = scores_t(q, gal[g0 : g0 + _kernel.TILE_COLS]).numpy()
                select_tile(tile, g0, skip[rows], top_s[rows], top_i[rows])

    run_split(work, list(range(0, num_queries, step)))
    return torch.from_numpy(top_s), torch.from_numpy(top_i)


@njit(nogil=True, cache=True, boundscheck=False)
def select_tile(scores, g0, skip, top_s, top_i):  # pragma: no cover - compiled
    """Fold one tile (columns g0..) into each row's sorted k best; `skip[i]`: a gallery
    index row i never takes (-1: none)."""
    rows, cols = scores.shape
    k = top_s.shape[1]
    for i in range(rows):
        kth = top_s[i, k - 1]
        own = skip[i] - g0
        for b0 in range(0, cols, _BLOCK):
            b1 = min(b0 + _BLOCK, cols)
            found = 0
            for j in range(b0, b1):
                found += scores[i, j] > kth
            if found == 0:
                continue
            for j in range(b0, b1):
                s = scores[i, j]
                if s > kth and j != own:
                    p = k - 1
                    while p > 0 and top_s[i, p - 1] < s:
                        top_s[i, p] = top_s[i, p - 1]
                        top_i[i, p] = top_i[i, p - 1]
                        p -= 1
                    top_s[i, p] = s
                    top_i[i, p] = g0 + j
                    kth = top_s[i, k - 1]
