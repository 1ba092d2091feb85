"""The exact rank kernel behind the retrieval metrics (`retrieval_ranks`,
`paired_retrieval_ranks`, `single_positive_ranks`).

A query's rank is 1 + the number of non-positive gallery items scoring at least as high as
its best positive (float32 scores). Counting needs the best positive's score before the
pass over the scores, so two kernels:

* dense (any device): a `[chunk, G]` score block; the positives' scores are read from it,
  then one compare-and-count pass.
* tiled (CPU): scores in cache-sized tiles of `TILE_ROWS x TILE_COLS` that never exist
  together. Each query's best positive score is bracketed beforehand by a narrow band
  [low, high] around a plain float32 dot product of the pair: two float32 summations of the
  same d products differ by at most 2 gamma_d sum |q_i g_i| (gamma_d = d u / (1 - d u),
  u = 2^-24, any order, FMA or not), and in practice by a few sqrt(d) u sum |q_i g_i|.
  Each tile counts the items above `high`, reads the positives' scores where they are,
  and lists the rare other items inside the band. At the end, when the best positive lies
  in its band, every item at or above it was counted or listed and none below it counted,
  so the rank is exact; a query whose best positive fell outside (a matmul that is not
  true float32, e.g. a reduced-precision mode, or a rare rounding beyond the band) is
  recounted with the dense kernel. The band's width only decides speed.

Both directions of paired retrieval (`paired_ranks_from_pairs`) score the same N x M
matrix, once: every tile is counted along its rows (video -> music) and its columns
(music -> video), each against its own queries' bands. The tiled path is
lightning_app/rank_tiled.py (threads), its counting loops lightning_app/rank_tiles.py
(compiled).
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_app.cpu_gemm import scores_t

# 2 MiB float32 tiles: counted while still in the core's L2 cache. Measured at N=20k,
# d=512, one thread: 512 x 1024 took 1.06x the time of its products alone, 256 x 4096
# (4 MiB) 1.14-1.23x.
TILE_ROWS = 512
TILE_COLS = 1024
_UNIT = 2.0**-24  # float32 unit roundoff


def _tiled(device: torch.device, num_gallery: int | None = None) -> bool:
    """The tiled kernel applies: CPU, true float32 products, and (for one direction) a
    gallery of at least two tiles (below that one dense block is as fast)."""
    return (device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"
            and (num_gallery is None or num_gallery >= 2 * TILE_COLS))


def ranks_from_pairs(query: torch.Tensor, gallery: torch.Tensor, rows: torch.Tensor,
                     cols: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per-query ranks given positive (query, gallery) pairs sorted by query (CPU longs)."""
    _check_chunk(chunk_size)
    device = query.device
    query = query.detach()  # tiles are read as NumPy views
    gal = gallery.detach().to(device).float().contiguous()
    if _tiled(device, gal.shape[0]):
        from lightning_app.rank_tiled import tiled_ranks

        return tiled_ranks(query, gal, rows, cols, chunk_size)
    return dense_loop(query, gal, rows, cols, chunk_size)


def paired_ranks_from_pairs(videos: torch.Tensor, music: torch.Tensor, rows: torch.Tensor,
                            cols: torch.Tensor, chunk_size: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of both directions: (per video over music, per music over videos), given the
    positive (video, music) pairs sorted by video (CPU longs).

    On the CPU each score tile is made once and counted both ways; elsewhere the two
    directions run one after the other.
    """
    _check_chunk(chunk_size)
    # The same pairs as (music, video), sorted by music.
    back = torch.from_numpy(np.lexsort((rows.numpy(), cols.numpy())))
    if not _tiled(videos.device):
        return (ranks_from_pairs(videos, music, rows, cols, chunk_size),
                ranks_from_pairs(music, videos, cols[back], rows[back], chunk_size))
    vid = videos.detach().float().contiguous()  # tiles are read as NumPy views
    mus = music.detach().to(videos.device).float().contiguous()
    from lightning_app.rank_tiled import tiled_paired_ranks

    return tiled_paired_ranks(vid, mus, rows, cols, back, chunk_size)


def _check_chunk(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def dense_loop(query: torch.Tensor, gal: torch.Tensor, rows: torch.Tensor,
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
