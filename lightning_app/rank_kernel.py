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

Both directions of paired retrieval (`paired_ranks_from_pairs`) score the same N x M
matrix, once: every tile is counted along its rows (video -> music) and its columns
(music -> video), each against its own queries' bands. The counting loops are compiled
(lightning_app/rank_tiles.py).
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_app.cpu_gemm import scores_t

TILE_ROWS = 256
TILE_COLS = 4096
_UNIT = 2.0**-24  # float32 unit roundoff


def _tiled(device: torch.device, num_gallery: int | None = None) -> bool:
    """The tiled kernel applies: CPU, true float32 products, and (for one direction) a
    gallery of at least two tiles (below that one dense block is as fast)."""
    return (device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"
            and (num_gallery is None or num_gallery >= 2 * TILE_COLS))


def ranks_from_pairs(query: torch.Tensor, gallery: torch.Tensor, rows: torch.Tensor,
                     cols: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-query ranks given positive (query, gallery) pairs sorted by query (CPU longs)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = query.device
    query = query.detach()  # tiles are read as NumPy views
    gal = gallery.detach().to(device).float().contiguous()
    if _tiled(device, gal.shape[0]):
        fwd = _Direction(query.shape[0], gal.shape[0], rows, cols,
                         *_pair_dots(query, gal, rows, cols), gal.shape[1])
        _count_tiles(query, gal, min(chunk_size, TILE_ROWS), fwd, None)
        return fwd.finish(query, gal, chunk_size)
    return _dense_loop(query, gal, rows, cols, chunk_size)


def paired_ranks_from_pairs(videos: torch.Tensor, music: torch.Tensor, rows: torch.Tensor,
                            cols: torch.Tensor, chunk_size: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of both directions: (per video over music, per music over videos), given the
    positive (video, music) pairs sorted by video (CPU longs).

    On the CPU each score tile is made once and counted both ways; elsewhere the two
    directions run one after the other.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    assert TILE_ROWS < 2**15, "column counts of a tile are int16"
    # The same pairs as (music, video), sorted by music.
    back = torch.from_numpy(np.lexsort((rows.numpy(), cols.numpy())))
    if not _tiled(videos.device):
        return (ranks_from_pairs(videos, music, rows, cols, chunk_size),
                ranks_from_pairs(music, videos, cols[back], rows[back], chunk_size))
    vid = videos.detach().float().contiguous()  # tiles are read as NumPy views
    mus = music.detach().to(videos.device).float().contiguous()
    score, absum = _pair_dots(vid, mus, rows, cols)  # one dot per pair serves both ways
    fwd = _Direction(vid.shape[0], mus.shape[0], rows, cols, score, absum, vid.shape[1])
    bwd = _Direction(mus.shape[0], vid.shape[0], cols[back], rows[back], score[back],
                     absum[back], vid.shape[1])
    _count_tiles(vid, mus, min(chunk_size, TILE_ROWS), fwd, bwd)
    return fwd.finish(vid, mus, chunk_size), bwd.finish(mus, vid, chunk_size)


class _Direction:
    """One direction's running state over the tiles, per query: the items above its band,
    its best positive's score (read from the tile that holds it) and the non-positive items
    found inside its band."""

    def __init__(self, num_queries: int, num_gallery: int, rows: torch.Tensor,
                 cols: torch.Tensor, score: torch.Tensor, absum: torch.Tensor, dim: int):
        self.rows, self.cols = rows, cols
        self.num_gallery = num_gallery
        self.low, self.high = _band(num_queries, rows, score, absum, dim)
        self.above = np.zeros(num_queries, dtype=np.int64)
        self.best = np.full(num_queries, -np.inf, dtype=np.float32)
        self.band: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, tile: np.ndarray, q0: int, g0: int, over: np.ndarray,
            at_least: np.ndarray, qi: np.ndarray, gi: np.ndarray, by_rows: bool) -> None:
        """Fold in one tile's counts. `qi`, `gi`: tile-local (query, item) indices of the
        positive pairs inside the tile; `by_rows`: this direction's queries are the rows."""
        from lightning_app.rank_tiles import band_cols, band_rows

        n = over.shape[0]
        self.above[q0 : q0 + n] += over
        low, high = self.low[q0 : q0 + n], self.high[q0 : q0 + n]
        vals = tile[qi, gi] if by_rows else tile[gi, qi]
        np.maximum.at(self.best[q0 : q0 + n], qi, vals)
        inside = (vals >= low[qi]) & (vals <= high[qi])
        # Items in a band beyond the positives there: a near-tie, or a positive elsewhere.
        # Only those queries' scores are scanned (a band of < 1e-4 rarely holds any).
        in_band = np.maximum(at_least - over, 0)  # < 0 only for an empty (low > high) band
        hit = np.flatnonzero(in_band > np.bincount(qi[inside], minlength=n))
        if hit.size:
            scan = band_rows if by_rows else band_cols
            q, g, v = scan(tile, hit, low, high, int(in_band[hit].sum()))
            self.band.append((q + q0, g + g0, v))

    def finish(self, query: torch.Tensor, gal: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """1 + the items above each band + the non-positive band items at or above the best
        positive; queries whose best positive fell outside their band are recounted."""
        num_queries, num_gallery = self.above.shape[0], self.num_gallery
        if self.band:
            r, c, v = (np.concatenate(parts) for parts in zip(*self.band))
            pr, pc = self.rows.numpy(), self.cols.numpy()
            counted = (v >= self.best[r]) & ~np.isin(r * num_gallery + c,
                                                     pr * num_gallery + pc)
            self.above += np.bincount(r[counted], minlength=num_queries)
        ranks = torch.from_numpy(1 + self.above)
        # Exact only when the best positive lies in its band: then every item at or above it
        # was counted (above the band) or listed (inside it), and no item below it counted.
        # A matmul that is not true float32 (a reduced-precision mode) can break that.
        lost = np.flatnonzero(~((self.best >= self.low) & (self.best <= self.high)))
        if lost.size:
            lost_t = torch.from_numpy(lost)
            sel = torch.isin(self.rows, lost_t)
            remap = torch.full((num_queries,), -1, dtype=torch.long)
            remap[lost_t] = torch.arange(lost.size)
            ranks[lost_t] = _dense_loop(query[lost_t], gal, remap[self.rows[sel]],
                                        self.cols[sel], chunk_size)
        return ranks


class _TilePairs:
    """The positive (row, col) pairs of one row block, grouped by column tile, so each
    tile's pairs are one slice (tile-local indices)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, q0: int, q1: int):
        a, b = np.searchsorted(rows, [q0, q1])
        tile_of = cols[a:b] // TILE_COLS
        order = np.argsort(tile_of, kind="stable")
        self.rows, self.cols = rows[a:b][order] - q0, cols[a:b][order]
        self.bounds = np.searchsorted(tile_of[order], np.arange(tile_of.max(initial=-1) + 2))

    def at(self, g0: int) -> tuple[np.ndarray, np.ndarray]:
        t = g0 // TILE_COLS
        if t + 1 >= self.bounds.shape[0]:
            return self.rows[:0], self.cols[:0]
        a, b = self.bounds[t], self.bounds[t + 1]
        return self.rows[a:b], self.cols[a:b] - g0


def _count_tiles(query: torch.Tensor, gal: torch.Tensor, step: int, fwd: _Direction,
                 back: _Direction | None) -> None:
    """Every (row block, column tile) product once, counted for `fwd` along its rows and,
    when given, for `back` along its columns."""
    from lightning_app.rank_tiles import count_rows, count_rows_cols

    rows, cols = fwd.rows.numpy(), fwd.cols.numpy()
    for q0 in range(0, query.shape[0], step):
        q = query[q0 : q0 + step].float().contiguous()
        n = q.shape[0]
        pairs = _TilePairs(rows, cols, q0, q0 + n)
        low, high = fwd.low[q0 : q0 + n], fwd.high[q0 : q0 + n]
        for g0 in range(0, gal.shape[0], TILE_COLS):
            tile = scores_t(q, gal[g0 : g0 + TILE_COLS]).numpy()
            m = tile.shape[1]
            over, at_least = np.empty(n, np.int32), np.empty(n, np.int32)
            ti, tj = pairs.at(g0)
            if back is None:
                count_rows(tile, low, high, over, at_least)
            else:
                c_over, c_at_least = np.zeros(m, np.int16), np.zeros(m, np.int16)
                count_rows_cols(tile, low, high, back.low[g0 : g0 + m], back.high[g0 : g0 + m],
                                over, at_least, c_over, c_at_least)
                back.add(tile, g0, q0, c_over, c_at_least, tj, ti, by_rows=False)
            fwd.add(tile, q0, g0, over, at_least, ti, tj, by_rows=True)


def _dense_loop(query: torch.Tensor, gal: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """`_dense_ranks` over `chunk_size` queries at a time (pairs sorted by query)."""
    device = query.device
    num_queries = query.shape[0]
    counts = torch.bincount(rows.cpu(), minlength=num_queries)
    offsets = torch.zeros(num_queries + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    offsets = offsets.tolist()  # on the CPU: slicing costs no device sync
    rows, cols = rows.to(device), cols.to(device)
    ranks = torch.empty(num_queries, dtype=torch.long, device=device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        a, b = offsets[start], offsets[stop]
        ranks[start:stop] = _dense_ranks(query[start:stop].float(), gal, rows[a:b] - start,
                                         cols[a:b])
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


def _pair_dots(q: torch.Tensor, gal: torch.Tensor, pr: torch.Tensor, pc: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 dot product and sum of |products| of every positive pair (plain float32
    summation; lightning_app/rank_tiles.py)."""
    from lightning_app.rank_tiles import pair_dots

    score, absum = torch.empty(pr.shape[0]), torch.empty(pr.shape[0])
    pair_dots(q.float().contiguous().numpy(), gal.float().contiguous().numpy(), pr.numpy(),
              pc.numpy(), score.numpy(), absum.numpy())
    return score, absum


def _band(num_queries: int, pr: torch.Tensor, score: torch.Tensor, absum: torch.Tensor,
          dim: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [low], [high] per query, meant to hold the tile's float32 score of its best
    positive; only speed depends on it: a best positive outside its band is recounted
    (`_Direction.finish`), so results are exact whatever the band.

    The tile's score and `score` are two float32 summations of the same d products. In the
    worst case they differ by up to 2 gamma_d sum |q_i g_i| (gamma_d = d u / (1 - d u),
    any order, FMA or not); with rounding errors of random sign, as in practice, by a few
    sqrt(d) u sum |q_i g_i| (the probabilistic bound of Higham and Mary, 2019). The band is
    the smaller of 2.5 gamma_d and 8 sqrt(d) u times `absum` (2.5 and 8 leave room for
    `absum`'s own rounding), plus d * 2^-148 for products that underflow: at d = 512 a
    band 7x narrower than the worst case, so fewer near-ties need listing.
    """
    gamma = dim * _UNIT / (1 - dim * _UNIT)
    width = min(2.5 * gamma, 8 * dim**0.5 * _UNIT)
    err = width * absum.double() + dim * 2.0**-148
    low = torch.full((num_queries,), float("-inf"), dtype=torch.float64)
    high = low.clone()
    low.scatter_reduce_(0, pr, score.double() - err, reduce="amax")
    high.scatter_reduce_(0, pr, score.double() + err, reduce="amax")
    # float32 bounds rounded outwards, so comparisons with float32 scores stay safe.
    low32 = low.float()
    low32 = torch.where(low32.double() > low, torch.nextafter(low32, low32 - 1), low32)
    high32 = high.float()
    high32 = torch.where(high32.double() < high, torch.nextafter(high32, high32 + 1), high32)
    return low32.numpy(), high32.numpy()
