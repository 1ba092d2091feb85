"""The exact top-k kernel behind `lightning_app.search.topk_search`.

Order: score descending, and among equal scores the lower gallery index first. The result
is the same as fully sorting every score row that way, without ever sorting a row.

On the CPU the scores are made in tiles of `TILE_ROWS` queries x `TILE_COLS` gallery items
(a few MiB, so the passes after the matmul read from cache, not from memory). Each tile
keeps only what can still reach a query's top k, found in one vectorised pass:

* the tile's columns are split into `GROUP` strided groups (column j + i * span for
  i < GROUP), each summarised by its maximum (an element-wise max of GROUP contiguous
  slices);
* a group can hold a top-k item only if its maximum is >= theta, the k-th largest group
  maximum seen so far for that query (k groups hold an item >= theta, so an item below it
  has k better ones). Those groups' scores are kept (a few per tile once theta settles;
  theta is re-derived from what is kept whenever much was added).

Every item scoring at least the true k-th score is kept, ties included, so one
`torch.topk` of k + 1 over the kept scores decides: when the k-th and (k+1)-th differ, the
top k are the k best, put in order by (score, index); where they are equal, the query's
kept scores are sorted (rare for real embeddings). Elsewhere (a GPU, small galleries,
large k) the same cut is taken on whole `[chunk, G]` score rows, so memory is one chunk's
scores there and one tile plus the kept groups on the CPU.
"""

from __future__ import annotations

import torch

from lightning_app.cpu_gemm import scores_t

TILE_ROWS = 512
TILE_COLS = 4096
GROUP = 16


def exact_topk(query: torch.Tensor, gallery: torch.Tensor, k: int, chunk_size: int,
               exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores float32 [Q, k], indices int64 [Q, k]) best first; inputs already checked.

    `exclude`: int64 [Q] on the query's device, -1 or one gallery index per query scored
    -inf (never chosen while k <= G - 1).
    """
    device = query.device
    gal = gallery.to(device).float().contiguous()
    num_queries, num_gallery = query.shape[0], gal.shape[0]
    out_scores = torch.empty((num_queries, k), dtype=torch.float32, device=device)
    out_index = torch.empty((num_queries, k), dtype=torch.long, device=device)
    # Tiles pay off when a tile's k best groups are a small part of it.
    tiled = (device.type == "cpu" and num_gallery >= 4 * TILE_COLS
             and (k + 1) * GROUP * 4 <= TILE_COLS)
    rows = min(chunk_size, TILE_ROWS) if tiled else chunk_size
    for start in range(0, num_queries, rows):
        stop = min(start + rows, num_queries)
        q = query[start:stop].float()
        ex = exclude[start:stop] if exclude is not None else None
        if tiled:
            s, i = _tiled_chunk(q, gal, k, ex)
        else:
            s, i = _dense_chunk(q, gal, k, ex)
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


def _tiled_chunk(q: torch.Tensor, gal: torch.Tensor, k: int,
                 ex: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    rows, num_gallery = q.shape[0], gal.shape[0]
    kept = _Kept(rows, k)
    theta = None  # [rows, 1]: k groups seen so far have a maximum >= theta
    for g0 in range(0, num_gallery, TILE_COLS):
        width = min(TILE_COLS, num_gallery - g0)
        block = gal[g0 : g0 + width]
        scores = scores_t(q, block)  # the last tile may be narrower: grouped the same way
        _mask_excluded(scores, ex, g0)
        span = width // GROUP
        members = scores[:, : GROUP * span].view(rows, GROUP, span)
        group_max = members.amax(dim=1)  # [rows, span], one vectorised pass
        if theta is None:
            theta = group_max.topk(k, dim=1).values[:, -1:]
        # >=: a group whose maximum equals theta may hold a tie that the lower index wins.
        row, grp = torch.nonzero(group_max >= theta, as_tuple=True)
        cols = grp[:, None] + torch.arange(GROUP) * span  # [n, GROUP] within the tile
        # take() on flat offsets: much cheaper than advanced indexing of the strided view.
        values = torch.take(scores, cols + (row * width)[:, None])
        kept.add(row, torch.take(group_max, row * span + grp), values, cols + g0)
        if GROUP * span < width:  # the few columns left over by the grouping: all kept
            rest = torch.arange(GROUP * span, width)
            kept.add_columns(scores[:, rest], rest + g0)
        if kept.since_tightened > 2 * k * rows:  # theta is loose: the k-th best kept so far
            theta = kept.tighten()
    values, index = kept.dense(num_gallery)
    return _select(values, index, k)


class _Kept:
    """The candidate groups of one query chunk, flat: (row, group max, members, columns)."""

    def __init__(self, rows: int, k: int):
        self.rows, self.k = rows, k
        self.row: list[torch.Tensor] = []
        self.max: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.cols: list[torch.Tensor] = []
        self.since_tightened = 0  # groups added since the last tighten()

    def add(self, row, group_max, values, cols) -> None:
        self.since_tightened += row.numel()
        self.row.append(row)
        self.max.append(group_max)
        self.values.append(values)
        self.cols.append(cols)

    def add_columns(self, values: torch.Tensor, cols: torch.Tensor) -> None:
        """Every row keeps these columns (fewer than GROUP), as one padded group each."""
        n, width = values.shape
        padded = torch.full((n, GROUP), float("-inf"))
        padded[:, :width] = values
        index = torch.full((n, GROUP), -1, dtype=torch.long)
        index[:, :width] = cols[None, :]
        # Padding scores -inf, never chosen while k <= the items a query may get.
        self.add(torch.arange(n), values.amax(dim=1), padded, index)

    def _flat(self) -> tuple[torch.Tensor, ...]:
        flat = tuple(torch.cat(x) for x in (self.row, self.max, self.values, self.cols))
        self.row, self.max, self.values, self.cols = ([x] for x in flat)
        return flat

    def tighten(self) -> torch.Tensor:
        """The k-th largest kept group maximum per row; drops the groups below it."""
        row, gmax, values, cols = self._flat()
        # Row by row, largest maximum first: the k-th of each row sits at its start + k - 1
        # (every row keeps >= k groups, the k best of its first tile).
        order = gmax.sort(descending=True, stable=True).indices
        order = order[row[order].sort(stable=True).indices]
        start = torch.zeros(self.rows, dtype=torch.long)
        start[1:] = torch.bincount(row, minlength=self.rows).cumsum(0)[:-1]
        theta = gmax[order[start + self.k - 1]][:, None]
        keep = gmax >= theta[row, 0]
        self.since_tightened = 0
        self.row, self.max = [row[keep]], [gmax[keep]]
        self.values, self.cols = [values[keep]], [cols[keep]]
        return theta

    def dense(self, pad_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, most groups of a row x GROUP] values and columns, padded with -inf."""
        row, _, values, cols = self._flat()
        if row.numel() == 0:
            return torch.empty(self.rows, 0), torch.empty(self.rows, 0, dtype=torch.long)
        order = row.sort(stable=True).indices
        row, values, cols = row[order], values[order], cols[order]
        counts = torch.bincount(row, minlength=self.rows)
        start = torch.zeros(self.rows, dtype=torch.long)
        start[1:] = counts.cumsum(0)[:-1]
        slot = torch.arange(row.numel()) - start[row]
        width = int(counts.max())
        out_v = torch.full((self.rows, width, GROUP), float("-inf"))
        out_i = torch.full((self.rows, width, GROUP), pad_index, dtype=torch.long)
        out_v[row, slot], out_i[row, slot] = values, cols
        return out_v.reshape(self.rows, -1), out_i.reshape(self.rows, -1)


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
