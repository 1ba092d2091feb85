"""Retrieval metrics (Recall@K, median and mean rank) for cross-modal retrieval.

Everything here is a pure torch function that runs on whatever device the embeddings live
on. Scores are computed ``chunk_size`` queries at a time so that evaluating a large split never
materialises the full Q x G score matrix.

Ranking convention: the rank of a query is 1 + the number of *non-positive* gallery items
scoring at least as high as its best positive. Ties with negatives count against the query
(pessimistic, so a collapsed model with constant embeddings gets R@1 = 0 rather than a lucky
score), while ties among positives do not matter because only the best positive counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Ranks -> numbers live in their own module; re-exported here, where callers look for them.
from lightning_app.rank_kernel import paired_ranks_from_pairs, ranks_from_pairs
from lightning_app.rank_metrics import metrics_from_ranks, recall_curve

__all__ = [
    "dedupe_by_key",
    "metrics_from_ranks",
    "paired_retrieval_metrics",
    "paired_retrieval_ranks",
    "recall_curve",
    "retrieval_metrics",
    "retrieval_ranks",
]

Positives = torch.Tensor | Sequence


# --------------------------------------------------------------------------------------------
# Validation and positive-set handling
# --------------------------------------------------------------------------------------------


def _check_embeddings(query_emb: torch.Tensor, gallery_emb: torch.Tensor) -> None:
    if query_emb.dim() != 2 or gallery_emb.dim() != 2:
        raise ValueError(
            "retrieval expects 2-D [Q, D] query and [G, D] gallery embeddings, got "
            f"query={tuple(query_emb.shape)} gallery={tuple(gallery_emb.shape)}"
        )
    if query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(
            "retrieval: query and gallery embedding dimensions differ: "
            f"query={tuple(query_emb.shape)} gallery={tuple(gallery_emb.shape)}"
        )
    if query_emb.shape[0] == 0:
        raise ValueError("retrieval: there are no queries (Q = 0)")
    if not query_emb.is_floating_point() or not gallery_emb.is_floating_point():
        raise ValueError(
            f"retrieval expects floating-point embeddings, got query dtype {query_emb.dtype} "
            f"and gallery dtype {gallery_emb.dtype}"
        )
    # NaN/inf scores compare False against everything, which would silently give a diverged
    # model rank 1 on every query; fail loudly instead.
    if not (_all_finite(query_emb) and _all_finite(gallery_emb)):
        raise ValueError("retrieval: embeddings contain NaN or inf values")


def _all_finite(x: torch.Tensor) -> bool:
    """True when no entry is NaN or +-inf: min and max propagate both, in one pass over x
    (torch.isfinite makes four, which cost as much as a top-k search over a small chunk)."""
    if x.numel() == 0:
        return True
    low, high = torch.aminmax(x)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _positive_pairs(
    positives: Positives, num_queries: int, num_gallery: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn either form of ``positives`` into (query, gallery) index pairs sorted by query.

    Returns CPU LongTensors ``rows, cols``; every query in [0, num_queries) occurs in rows.
    """
    if torch.is_tensor(positives) and positives.dtype == torch.bool:
        if tuple(positives.shape) != (num_queries, num_gallery):
            raise ValueError(
                f"boolean positives must have shape [Q, G] = [{num_queries}, {num_gallery}], "
                f"got {tuple(positives.shape)}"
            )
        has_pos = positives.any(dim=1).cpu()
        if not bool(has_pos.all()):
            first = int((~has_pos).nonzero()[0, 0])
            raise ValueError(f"query {first} has no positive gallery item")
        rows, cols = positives.cpu().nonzero(as_tuple=True)  # row-major, so sorted by row
        return rows, cols

    if len(positives) != num_queries:
        raise ValueError(
            f"positives must list one entry per query: got {len(positives)} entries for "
            f"{num_queries} queries"
        )
    per_query = []
    for i, p in enumerate(positives):
        # A bare int (or 0-d tensor) is accepted as a single positive for convenience.
        idx = p.detach() if torch.is_tensor(p) else torch.as_tensor(p)
        idx = idx.reshape(-1)
        if idx.numel() == 0:
            raise ValueError(f"query {i} has no positive gallery item")
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise ValueError(
                f"positives[{i}] must hold integer gallery indices, got dtype {idx.dtype}"
            )
        idx = idx.to(device="cpu", dtype=torch.long)
        if bool(((idx < 0) | (idx >= num_gallery)).any()):
            raise ValueError(
                f"positives[{i}] has a gallery index out of range [0, {num_gallery}): "
                f"{idx.tolist()}"
            )
        per_query.append(idx)
    counts = torch.tensor([len(x) for x in per_query], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(num_queries), counts)
    cols = torch.cat(per_query)
    return rows, cols


def _ranks_from_pairs(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Per-query ranks given positive (query, gallery) pairs sorted by query index.

    Memory stays at one score block (lightning_app/rank_kernel.py: cache-sized tiles on the
    CPU, a [chunk, G] block elsewhere).
    """
    return ranks_from_pairs(query_emb, gallery_emb, rows, cols, chunk_size)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def retrieval_ranks(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    positives: Positives,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """1-based rank of the best positive of every query; LongTensor [Q] on the query device.

    Args:
        query_emb: [Q, D] embeddings (any float dtype; scored in float32). Scores are plain dot
            products: embeddings are assumed already normalised.
        gallery_emb: [G, D] embeddings.
        positives: a bool tensor [Q, G], or a sequence of Q entries, each a sequence/tensor of
            gallery indices (several positives per query allowed). Every query needs one.
        chunk_size: queries scored at once; bounds memory to chunk_size x G scores.
    """
    _check_embeddings(query_emb, gallery_emb)
    rows, cols = _positive_pairs(positives, query_emb.shape[0], gallery_emb.shape[0])
    return _ranks_from_pairs(query_emb, gallery_emb, rows, cols, chunk_size)


def retrieval_metrics(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    positives: Positives,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Recall@k, median rank and mean rank; see :func:`retrieval_ranks` for the arguments."""
    ranks = retrieval_ranks(query_emb, gallery_emb, positives, chunk_size=chunk_size)
    return metrics_from_ranks(ranks, ks)


def dedupe_by_key(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """De-duplicate items by integer id.

    Returns ``(unique_keys, first_index, inverse)``: unique_keys is sorted; first_index[u] is
    the position in ``keys`` of the first occurrence of unique_keys[u]; inverse[n] is the
    position of keys[n] in unique_keys (so unique_keys[inverse] == keys).
    """
    if keys.dim() != 1:
        raise ValueError(f"dedupe_by_key expects a 1-D tensor of keys, got {tuple(keys.shape)}")
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    n = keys.shape[0]
    # scatter_reduce(amin) of positions gives the first occurrence deterministically on any
    # device (torch.unique gives no guarantee about which duplicate it "keeps").
    first_index = torch.full((unique_keys.shape[0],), n, dtype=torch.long, device=keys.device)
    first_index.scatter_reduce_(
        0, inverse, torch.arange(n, device=keys.device), reduce="amin", include_self=True
    )
    return unique_keys, first_index, inverse


def _pairs_from_inverse(
    row_inv: torch.Tensor, col_inv: torch.Tensor, num_cols: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique (row, col) index pairs, sorted by row, from per-sample item indices."""
    # One combined int64 key per pair: unique() both de-duplicates and sorts by row first.
    combined = torch.unique(row_inv * num_cols + col_inv, sorted=True)
    return combined // num_cols, combined % num_cols


def _first_rows(emb: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """`emb[first]`, without the copy when every row is its own first occurrence (unique
    ids in order: the common case, where the copy cost a tenth of the metrics at N=20k)."""
    n = emb.shape[0]
    if first.shape[0] == n and bool((first == torch.arange(n, device=first.device)).all()):
        return emb
    return emb[first]


def paired_retrieval_ranks(
    video_emb: torch.Tensor,
    music_emb: torch.Tensor,
    video_keys: torch.Tensor,
    music_keys: torch.Tensor,
    chunk_size: int = 4096,
) -> dict[str, torch.Tensor]:
    """Per-query ranks in both directions, ``{"v2m": [unique videos], "m2v": [unique music]}``.

    Row n of the inputs is one pair with integer ids ``video_keys[n]`` and ``music_keys[n]``.
    Each distinct id becomes one query/gallery item (represented by the embedding of its
    first occurrence), so a song used by several videos appears once in the music gallery and
    counts as a positive for each of them; likewise a video paired with several songs.
    """
    if video_emb.dim() != 2 or music_emb.dim() != 2:
        raise ValueError(
            "paired retrieval expects 2-D embeddings, got "
            f"video={tuple(video_emb.shape)} music={tuple(music_emb.shape)}"
        )
    n = video_emb.shape[0]
    shapes = (music_emb.shape[0], tuple(video_keys.shape), tuple(music_keys.shape))
    if shapes != (n, (n,), (n,)):
        raise ValueError(
            "paired retrieval: rows must be pairs, got "
            f"video_emb={tuple(video_emb.shape)} music_emb={tuple(music_emb.shape)} "
            f"video_keys={tuple(video_keys.shape)} music_keys={tuple(music_keys.shape)}"
        )
    if video_keys.is_floating_point() or music_keys.is_floating_point():
        raise ValueError("paired retrieval: keys must be integer ids")
    device = video_emb.device
    _, v_first, v_inv = dedupe_by_key(video_keys.to(device=device, dtype=torch.long))
    _, m_first, m_inv = dedupe_by_key(music_keys.to(device=device, dtype=torch.long))
    num_music = m_first.shape[0]
    videos = _first_rows(video_emb, v_first)
    music = _first_rows(music_emb.to(device), m_first)
    _check_embeddings(videos, music)
    # Every unique item comes from at least one pair, so each query has >= 1 positive.
    rows, cols = _pairs_from_inverse(v_inv.cpu(), m_inv.cpu(), num_music)
    v2m, m2v = paired_ranks_from_pairs(videos, music, rows, cols, chunk_size)
    return {"v2m": v2m, "m2v": m2v}


def paired_retrieval_metrics(
    video_emb: torch.Tensor,
    music_emb: torch.Tensor,
    video_keys: torch.Tensor,
    music_keys: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Video-to-music and music-to-video metrics for a list of (video, music) pairs.

    See :func:`paired_retrieval_ranks`. Returns keys ``"v2m/R@k"``, ``"v2m/MdR"``,
    ``"v2m/MnR"`` and the same with ``"m2v/"``.
    """
    ranks = paired_retrieval_ranks(video_emb, music_emb, video_keys, music_keys, chunk_size)
    return {
        f"{direction}/{k}": v
        for direction, r in ranks.items()
        for k, v in metrics_from_ranks(r, ks).items()
    }
