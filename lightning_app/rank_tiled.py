"""The tiled CPU path of the rank kernel (lightning_app/rank_kernel.py explains the method).

Row blocks of `TILE_ROWS` queries are shared out to `torch.get_num_threads()` Python
threads, each limited to one OpenMP thread: every thread makes its own tiles (oneDNN) and
counts them right away, while they are still in its core's cache (the counting loops,
lightning_app/rank_tiles.py, release the GIL). One team of OpenMP threads per product
instead made the counting serial next to a parallel product, and its barriers stall as soon
as another process takes a core. Each thread keeps its own counts, summed at the end.
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_app import rank_kernel as _kernel
from lightning_app.cpu_gemm import scores_t
from lightning_app.cpu_workers import run_split


def tiled_ranks(query: torch.Tensor, gal: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """One direction: ranks of `query` rows over `gal` (positive pairs sorted by query)."""
    fwd = _Direction(query.shape[0], gal.shape[0], rows, cols,
                     *_pair_dots(query, gal, rows, cols), gal.shape[1])
    fwd_parts, _ = _count_tiles(query, gal, chunk_size, fwd, None)
    return fwd.finish(fwd_parts, query, gal, chunk_size)


def tiled_paired_ranks(videos: torch.Tensor, music: torch.Tensor, rows: torch.Tensor,
                       cols: torch.Tensor, back: torch.Tensor, chunk_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions from one set of tiles; `back` orders the pairs by music."""
    score, absum = _pair_dots(videos, music, rows, cols)  # one dot per pair serves both ways
    dim = videos.shape[1]
    fwd = _Direction(videos.shape[0], music.shape[0], rows, cols, score, absum, dim)
    bwd = _Direction(music.shape[0], videos.shape[0], cols[back], rows[back], score[back],
                     absum[back], dim)
    fwd_parts, bwd_parts = _count_tiles(videos, music, chunk_size, fwd, bwd)
    return (fwd.finish(fwd_parts, videos, music, chunk_size),
            bwd.finish(bwd_parts, music, videos, chunk_size))


class _Counts:
    """What one thread saw of one direction, per query: the items above its band, its best
    positive's score (read from the tile that holds it), and the items inside its band
    beyond the positives there (query, gallery item, score)."""

    def __init__(self, num_queries: int):
        self.above = np.zeros(num_queries, dtype=np.int64)
        self.best = np.full(num_queries, -np.inf, dtype=np.float32)
        self.band = _Items()


class _Items:
    """(query, item, score) triples in arrays grown by doubling. Kept this way, not as one
    small array per tile: small blocks that outlive a tile sit inside the freed tile's
    memory, so the allocator cannot hand that block to the next tile and the heap grew by
    about one tile per row block (peak 100 MiB at N=20k and 440 MiB at 50k; now 24 and 33)."""

    def __init__(self):
        self.size = 0
        self.arrays = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))

    def extend(self, q: np.ndarray, g: np.ndarray, v: np.ndarray) -> None:
        end = self.size + q.shape[0]
        if end > self.arrays[0].shape[0]:
            cap = max(4096, 2 * end)
            grown = tuple(np.empty(cap, a.dtype) for a in self.arrays)
            for new, old in zip(grown, self.arrays):
                new[: self.size] = old[: self.size]
            self.arrays = grown
        for dst, src in zip(self.arrays, (q, g, v)):
            dst[self.size : end] = src
        self.size = end

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(a[: self.size] for a in self.arrays)


class _Direction:
    """One direction's bands (shared, read-only) and how its threads' counts become ranks."""

    def __init__(self, num_queries: int, num_gallery: int, rows: torch.Tensor,
                 cols: torch.Tensor, score: torch.Tensor, absum: torch.Tensor, dim: int):
        self.rows, self.cols = rows, cols
        self.num_queries, self.num_gallery = num_queries, num_gallery
        self.low, self.high = _band(num_queries, rows, score, absum, dim)

    def add(self, counts: _Counts, tile: np.ndarray, q0: int, g0: int, over: np.ndarray,
            at_least: np.ndarray, qi: np.ndarray, gi: np.ndarray, by_rows: bool) -> None:
        """Fold one tile's counts into `counts`. `qi`, `gi`: tile-local (query, item) indices
        of the positive pairs inside the tile; `by_rows`: the queries are the tile's rows."""
        from lightning_app.rank_tiles import band_cols, band_rows

        n = over.shape[0]
        counts.above[q0 : q0 + n] += over
        low, high = self.low[q0 : q0 + n], self.high[q0 : q0 + n]
        vals = tile[qi, gi] if by_rows else tile[gi, qi]
        np.maximum.at(counts.best[q0 : q0 + n], qi, vals)
        inside = (vals >= low[qi]) & (vals <= high[qi])
        # Items in a band beyond the positives there: a near-tie, or a positive elsewhere.
        # Only those queries' scores are scanned (a band of ~1e-5 rarely holds any).
        in_band = np.maximum(at_least - over, 0)  # < 0 only for an empty (low > high) band
        hit = np.flatnonzero(in_band > np.bincount(qi[inside], minlength=n))
        if hit.size:
            scan = band_rows if by_rows else band_cols
            q, g, v = scan(tile, hit, low, high, int(in_band[hit].sum()))
            counts.band.extend(q + q0, g + g0, v)

    def finish(self, parts: list[_Counts], query: torch.Tensor, gal: torch.Tensor,
               chunk_size: int) -> torch.Tensor:
        """1 + the items above each band + the non-positive band items at or above the best
        positive; queries whose best positive fell outside their band are recounted."""
        num_queries, num_gallery = self.num_queries, self.num_gallery
        above = np.sum([p.above for p in parts], axis=0)
        best = np.max([p.best for p in parts], axis=0)
        if any(p.band.size for p in parts):
            r, c, v = (np.concatenate(x) for x in zip(*(p.band.view() for p in parts)))
            pr, pc = self.rows.numpy(), self.cols.numpy()
            counted = (v >= best[r]) & ~np.isin(r * num_gallery + c, pr * num_gallery + pc)
            above += np.bincount(r[counted], minlength=num_queries)
        ranks = torch.from_numpy(1 + above)
        # Exact only when the best positive lies in its band: then every item at or above it
        # was counted (above the band) or listed (inside it), and no item below it counted.
        # A matmul that is not true float32 (a reduced-precision mode) can break that.
        lost = np.flatnonzero(~((best >= self.low) & (best <= self.high)))
        if lost.size:
            lost_t = torch.from_numpy(lost)
            sel = torch.isin(self.rows, lost_t)
            remap = torch.full((num_queries,), -1, dtype=torch.long)
            remap[lost_t] = torch.arange(lost.size)
            ranks[lost_t] = _kernel.dense_loop(query[lost_t], gal, remap[self.rows[sel]],
                                               self.cols[sel], chunk_size)
        return ranks


class _TilePairs:
    """The positive (row, col) pairs of one row block, grouped by column tile, so each
    tile's pairs are one slice (tile-local indices)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, q0: int, q1: int):
        a, b = np.searchsorted(rows, [q0, q1])
        tile_of = cols[a:b] // _kernel.TILE_COLS
        order = np.argsort(tile_of, kind="stable")
        self.rows, self.cols = rows[a:b][order] - q0, cols[a:b][order]
        self.bounds = np.searchsorted(tile_of[order], np.arange(tile_of.max(initial=-1) + 2))

    def at(self, g0: int) -> tuple[np.ndarray, np.ndarray]:
        t = g0 // _kernel.TILE_COLS
        if t + 1 >= self.bounds.shape[0]:
            return self.rows[:0], self.cols[:0]
        a, b = self.bounds[t], self.bounds[t + 1]
        return self.rows[a:b], self.cols[a:b] - g0


def _count_tiles(query: torch.Tensor, gal: torch.Tensor, chunk_size: int, fwd: _Direction,
                 back: _Direction | None) -> tuple[list[_Counts], list[_Counts]]:
    """Every (row block, column tile) product once, counted for `fwd` along its rows and,
    when given, for `back` along its columns; one `_Counts` per thread and direction."""
    assert _kernel.TILE_ROWS < 2**15, "a tile's column counts are int16"
    step = min(chunk_size, _kernel.TILE_ROWS)
    blocks = list(range(0, query.shape[0], step))

    def work(my_blocks: list[int]) -> tuple[_Counts, _Counts | None]:
        fc = _Counts(fwd.num_queries)
        bc = None if back is None else _Counts(back.num_queries)
        for q0 in my_blocks:
            _count_block(query[q0 : q0 + step], gal, q0, fwd, fc, back, bc)
        return fc, bc

    parts = run_split(work, blocks)
    return [p[0] for p in parts], [p[1] for p in parts if p[1] is not None]


def _count_block(q: torch.Tensor, gal: torch.Tensor, q0: int, fwd: _Direction,
                 fc: _Counts, back: _Direction | None, bc: _Counts | None) -> None:
    from lightning_app.rank_tiles import count_rows, count_rows_cols

    n = q.shape[0]
    pairs = _TilePairs(fwd.rows.numpy(), fwd.cols.numpy(), q0, q0 + n)
    low, high = fwd.low[q0 : q0 + n], fwd.high[q0 : q0 + n]
    for g0 in range(0, gal.shape[0], _kernel.TILE_COLS):
        tile = scores_t(q, gal[g0 : g0 + _kernel.TILE_COLS]).numpy()
        m = tile.shape[1]
        over, at_least = np.empty(n, np.int32), np.empty(n, np.int32)
        ti, tj = pairs.at(g0)
        if back is None:
            count_rows(tile, low, high, over, at_least)
        else:
            c_over, c_at_least = np.zeros(m, np.int16), np.zeros(m, np.int16)
            count_rows_cols(tile, low, high, back.low[g0 : g0 + m], back.high[g0 : g0 + m],
                            over, at_least, c_over, c_at_least)
            back.add(bc, tile, g0, q0, c_over, c_at_least, tj, ti, by_rows=False)
        fwd.add(fc, tile, q0, g0, over, at_least, ti, tj, by_rows=True)


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
    unit = _kernel._UNIT
    gamma = dim * unit / (1 - dim * unit)
    width = min(2.5 * gamma, 8 * dim**0.5 * unit)
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
