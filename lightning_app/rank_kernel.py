"""The exact rank kernel behind the retrieval metrics (`retrieval_ranks`,
`paired_retrieval_ranks`, `single_positive_ranks`).

A query's rank is 1 + the number of non-positive gallery items scoring at least as high as
its best positive (float32 scores). Counting needs the best positive's score before the
pass over the scores, so two kernels:

* dense (any device): a `[chunk, G]` score block; the positives' scores are read from it,
  then one compare-and-count pass.
* tiled (CPU): scores in cache-sized tiles of `TILE_ROWS x TILE_COLS` that never exist
  together. The best positive's float32 score is bracketed beforehand: its float64 dot
  product is within `gamma_d * sum |q_i g_i|` of any float32 summation of the same
  products (gamma_d = d u / (1 - d u), u = 2^-24, whatever the order or FMA use), so it
  lies in a narrow band [low, high]. Each tile counts the items above `high` and keeps the
  few inside the band (with their columns); after the last tile the best positive is read
  from the kept items exactly, and the band items at or above it are added to the count.
  A query whose positive does not show up in its band (a matmul that is not true float32,
  e.g. a reduced-precision mode) is recounted with the dense kernel.
"""

from __future__ import annotations

import torch

from lightning_app.cpu_gemm import scores_t

TILE_ROWS = 256
TILE_COLS = 4096
_UNIT = 2.0**-24  # float32 unit roundoff


def ranks_from_pairs(query: torch.Tensor, gallery: torch.Tensor, rows: torch.Tensor,
                     cols: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-query ranks given positive (query, gallery) pairs sorted by query (CPU longs)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = query.device
    num_queries = query.shape[0]
    counts = torch.bincount(rows.cpu(), minlength=num_queries)
    offsets = torch.zeros(num_queries + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    offsets = offsets.tolist()  # on the CPU: slicing costs no device sync
    rows, cols = rows.to(device), cols.to(device)
    gal = gallery.to(device).float().contiguous()
    tiled = (device.type == "cpu" and gal.shape[0] >= 2 * TILE_COLS
             and torch.get_float32_matmul_precision() == "highest")
    step = min(chunk_size, TILE_ROWS) if tiled else chunk_size
    ranks = torch.empty(num_queries, dtype=torch.long, device=device)
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        a, b = offsets[start], offsets[stop]
        q = query[start:stop].float()
        pr, pc = rows[a:b] - start, cols[a:b]
        kernel = _tiled_ranks if tiled else _dense_ranks
        ranks[start:stop] = kernel(q, gal, pr, pc)
    return ranks


def _dense_ranks(q: torch.Tensor, gal: torch.Tensor, pr: torch.Tensor,
                 pc: torch.Tensor) -> torch.Tensor:
    scores = scores_t(q, gal)  # [c, G] float32
    pos = scores[pr, pc]
    best = torch.full((q.shape[0],), float("-inf"), device=q.device)
    best.scatter_reduce_(0, pr, pos, reduce="amax")
    # Every item at or above the best positive, minus the positives there (those equal to it).
    above = count_true(scores >= best[:, None])
    tied_pos = torch.zeros(q.shape[0], dtype=torch.int32, device=q.device)
    tied_pos.scatter_add_(0, pr, (pos == best[pr]).to(torch.int32))
    return 1 + (above - tied_pos).long()


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """int32 [rows]: True entries per row of a bool [rows, w] tensor.

    Summed as uint8 in column blocks (at most 255 per block, so no overflow) and only the
    [rows, 128] partial sums widened: `mask.sum(dtype=torch.int32)` first copies the whole
    mask to int32, which costs more than the comparison that made it.
    """
    rows, width = mask.shape
    if width % 128 or width // 128 > 255 or not mask.is_contiguous():
        return mask.sum(dim=1, dtype=torch.int32)
    blocks = mask.view(torch.uint8).view(rows, width // 128, 128)
    return blocks.sum(dim=1, dtype=torch.uint8).sum(dim=1, dtype=torch.int32)


def _band(q: torch.Tensor, gal: torch.Tensor, pr: torch.Tensor,
          pc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[low, high] per query, holding the float32 score of its best positive."""
    qp, gp = q[pr].double(), gal[pc].double()
    dim = q.shape[1]
    gamma = dim * _UNIT / (1 - dim * _UNIT)
    exact = (qp * gp).sum(dim=1)
    # Twice the bound plus a float64 allowance: margin costs only a few more band items.
    err = 2 * gamma * (qp * gp).abs().sum(dim=1) + 1e-30
    low = torch.full((q.shape[0],), float("-inf"), dtype=torch.float64)
    high = low.clone()
    low.scatter_reduce_(0, pr, exact - err, reduce="amax")
    high.scatter_reduce_(0, pr, exact + err, reduce="amax")
    # float32 bounds rounded outwards, so comparisons with float32 scores stay safe.
    low32 = low.float()
    low32 = torch.where(low32.double() > low, torch.nextafter(low32, low32 - 1), low32)
    high32 = high.float()
    high32 = torch.where(high32.double() < high, torch.nextafter(high32, high32 + 1), high32)
    return low32[:, None], high32[:, None]


def _tiled_ranks(q: torch.Tensor, gal: torch.Tensor, pr: torch.Tensor,
                 pc: torch.Tensor) -> torch.Tensor:
    rows, num_gallery = q.shape[0], gal.shape[0]
    low, high = _band(q, gal, pr, pc)
    above = torch.zeros(rows, dtype=torch.int32)
    band_row, band_col, band_val = [], [], []
    # Reused mask buffers: fresh tile-sized allocations would page-fault on every tile.
    over_buf = torch.empty((rows, TILE_COLS), dtype=torch.bool)
    low_buf = torch.empty((rows, TILE_COLS), dtype=torch.bool)
    for g0 in range(0, num_gallery, TILE_COLS):
        width = min(TILE_COLS, num_gallery - g0)
        block = gal[g0 : g0 + width]
        scores = scores_t(q, block)
        full = width == TILE_COLS
        over = torch.gt(scores, high, out=over_buf) if full else scores > high
        n_over = count_true(over)
        above += n_over
        at_least = torch.ge(scores, low, out=low_buf) if full else scores >= low
        # Few rows have band items in a given tile: look for them only there.
        hit = torch.nonzero(count_true(at_least) > n_over).reshape(-1)
        r, c = torch.nonzero(at_least[hit] ^ over[hit], as_tuple=True)  # low <= s <= high
        r = hit[r]
        band_row.append(r)
        band_col.append(c + g0)
        band_val.append(scores[r, c])
        # Freed before the next tile's product, so the allocator can hand the same block back
        # (alternating two tile-sized blocks made the products ~20 % slower in a loop of
        # products alone).
        del scores, over, at_least
    r, c, v = torch.cat(band_row), torch.cat(band_col), torch.cat(band_val)
    is_pos = torch.isin(r * num_gallery + c, pr * num_gallery + pc)
    best = torch.full((rows,), float("-inf"))
    best.scatter_reduce_(0, r[is_pos], v[is_pos], reduce="amax")
    counted = (v >= best[r]) & ~is_pos
    above.scatter_add_(0, r[counted], torch.ones(int(counted.sum()), dtype=torch.int32))
    ranks = 1 + above.long()
    lost = torch.nonzero(best == float("-inf")).reshape(-1)
    if lost.numel():  # the positive fell outside its band: not plain float32 arithmetic
        sel = torch.isin(pr, lost)
        remap = torch.full((rows,), -1, dtype=torch.long)
        remap[lost] = torch.arange(lost.numel())
        ranks[lost] = _dense_ranks(q[lost], gal, remap[pr[sel]], pc[sel])
    return ranks
