"""Compiled loops over one CPU score tile for the rank kernel (lightning_app/rank_kernel.py).

A tile's scores are read once, in cache, right after the product that made them. Per row
(query) and, for the paired kernel, per column (the other direction's query) they count the
scores above the positive's band (`> high`) and at or above its low end (`>= low`); the few
rows or columns where the two counts differ hold band items, which `band_rows` /
`band_cols` then list. Built from torch ops the same work took two compares, two masks, two
reductions and a search for band rows per direction, as much time as half the product; these
loops vectorise (the counts are branch-free) and take under a tenth of it.

numba compiles them on first use (cached next to this file). Inputs: C-contiguous float32
NumPy views of torch tensors, no copies.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BLOCK = 128  # columns per branch-free test in `band_rows`


@njit(nogil=True, cache=True, boundscheck=False)
def count_rows(scores, low, high, over, at_least):  # pragma: no cover - compiled
    """Per row i: over[i] = #(scores[i] > high[i]), at_least[i] = #(scores[i] >= low[i])
    (int32 outputs: narrow counters vectorise wider)."""
    rows, cols = scores.shape
    for i in range(rows):
        hi, lo = high[i], low[i]
        n_over = np.int32(0)
        n_least = np.int32(0)
        for j in range(cols):
            s = scores[i, j]
            n_over += np.int32(s > hi)
            n_least += np.int32(s >= lo)
        over[i] = n_over
        at_least[i] = n_least


@njit(nogil=True, cache=True, boundscheck=False)
def count_rows_cols(scores, row_low, row_high, col_low, col_high, row_over, row_at_least,
                    col_over, col_at_least):  # pragma: no cover - compiled
    """`count_rows` for the rows (int32), and the same per column against the columns' own
    bands into int16 counters that start at zero (a tile has at most 32767 rows)."""
    rows, cols = scores.shape
    for i in range(rows):
        hi, lo = row_high[i], row_low[i]
        n_over = np.int32(0)
        n_least = np.int32(0)
        for j in range(cols):
            s = scores[i, j]
            n_over += np.int32(s > hi)
            n_least += np.int32(s >= lo)
            col_over[j] += np.int16(s > col_high[j])
            col_at_least[j] += np.int16(s >= col_low[j])
        row_over[i] = n_over
        row_at_least[i] = n_least


@njit(nogil=True, cache=True, boundscheck=False)
def band_rows(scores, rows, low, high, total):  # pragma: no cover - compiled
    """The `total` items with low[i] <= score <= high[i] in the given rows: (row, col, score).

    Each row is tested in blocks of `_BLOCK` columns with a branch-free count, and only the
    blocks holding an item are walked: a scanned row holds one or two items in thousands.
    """
    out_r = np.empty(total, np.int64)
    out_c = np.empty(total, np.int64)
    out_v = np.empty(total, np.float32)
    n = 0
    cols = scores.shape[1]
    for i in rows:
        lo, hi = low[i], high[i]
        for b0 in range(0, cols, _BLOCK):
            b1 = min(b0 + _BLOCK, cols)
            found = 0
            for j in range(b0, b1):
                s = scores[i, j]
                found += (s >= lo) & (s <= hi)
            if found:
                for j in range(b0, b1):
                    s = scores[i, j]
                    if s >= lo and s <= hi and n < total:  # total: the counts' own tally
                        out_r[n], out_c[n], out_v[n] = i, j, s
                        n += 1
    return out_r, out_c, out_v


@njit(nogil=True, cache=True, boundscheck=False)
def band_cols(scores, cols, low, high, total):  # pragma: no cover - compiled
    """`band_rows` for columns: (col, row, score) of the items in the given columns' bands."""
    out_c = np.empty(total, np.int64)
    out_r = np.empty(total, np.int64)
    out_v = np.empty(total, np.float32)
    n = 0
    for j in cols:
        lo, hi = low[j], high[j]
        for i in range(scores.shape[0]):
            s = scores[i, j]
            if s >= lo and s <= hi and n < total:
                out_c[n], out_r[n], out_v[n] = j, i, s
                n += 1
    return out_c, out_r, out_v


@njit(nogil=True, cache=True, boundscheck=False)
def pair_dots(query, gallery, rows, cols, score, absum):  # pragma: no cover - compiled
    """Per pair p: score[p] = float32 dot of query[rows[p]] and gallery[cols[p]] (summed in
    order), absum[p] = the float32 sum of the products' magnitudes. No gathered copies."""
    dim = query.shape[1]
    for p in range(rows.shape[0]):
        q, g = query[rows[p]], gallery[cols[p]]
        s = np.float32(0.0)
        a = np.float32(0.0)
        for k in range(dim):
            prod = q[k] * g[k]
            s += prod
            a += abs(prod)
        score[p] = s
        absum[p] = a
