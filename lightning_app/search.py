"""Exact search over embeddings: top-k gallery items per query, and the rank of one given
positive per query (self-training, back retrieval, per-query results, `vmr retrieve`).

Same conventions as `lightning_app.retrieval`: float32 scores computed `chunk_size` queries at
a time (never a Q x G matrix), ties with negatives counted against the query, and among equal
scores the lower gallery index first.
"""

from __future__ import annotations

import torch

from lightning_app.retrieval import _check_embeddings, _ranks_from_pairs
from lightning_app.topk_kernel import exact_topk

__all__ = ["single_positive_ranks", "topk_search"]

def single_positive_ranks(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    positive: torch.Tensor,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """:func:`retrieval_ranks` for exactly one positive per query, given as LongTensor [Q].

    Same ranking convention (ties with negatives count against the query), without the
    per-query Python loop that the general ``positives`` forms need, so it scales to every
    training pair.
    """
    _check_embeddings(query_emb, gallery_emb)
    num_queries, num_gallery = query_emb.shape[0], gallery_emb.shape[0]
    if positive.dim() != 1 or positive.shape[0] != num_queries:
        raise ValueError(
            f"positive must be a 1-D tensor with one gallery index per query ({num_queries}), "
            f"got shape {tuple(positive.shape)}"
        )
    if positive.is_floating_point() or positive.dtype == torch.bool:
        raise ValueError(f"positive must hold integer gallery indices, got {positive.dtype}")
    cols = positive.to(device="cpu", dtype=torch.long)
    if bool(((cols < 0) | (cols >= num_gallery)).any()):
        raise ValueError(f"positive has a gallery index out of range [0, {num_gallery})")
    return _ranks_from_pairs(query_emb, gallery_emb, torch.arange(num_queries), cols, chunk_size)


def topk_search(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    chunk_size: int = 4096,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` gallery items by dot product for every query.

    Returns ``(scores, indices)``: float32 [Q, k] and int64 [Q, k] on the query's device,
    best first. Scores are computed in float32, ``chunk_size`` queries at a time, so memory
    stays at a few ``chunk_size x G`` blocks (never Q x G).

    Ties: among equal scores the lower gallery index comes first (deterministic on any
    device, unlike ``torch.topk``).

    ``exclude``: optional integer tensor [Q] naming one gallery index per query to skip (e.g.
    the query itself when query and gallery are the same set), or -1 for none. ``k`` must not
    exceed the number of gallery items left to any query.
    """
    _check_embeddings(query, gallery)
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = query.device
    excluding = False
    if exclude is not None:
        if exclude.dim() != 1 or exclude.shape[0] != num_queries:
            raise ValueError(
                f"exclude must be a 1-D tensor with one entry per query ({num_queries}), "
                f"got shape {tuple(exclude.shape)}"
            )
        if exclude.is_floating_point() or exclude.dtype == torch.bool:
            raise ValueError(f"exclude must hold integer gallery indices, got {exclude.dtype}")
        exclude = exclude.to(device=device, dtype=torch.long)
        if bool(((exclude < -1) | (exclude >= num_gallery)).any()):
            raise ValueError(f"exclude entries must be -1 or in [0, {num_gallery})")
        excluding = bool((exclude >= 0).any())
    available = num_gallery - 1 if excluding else num_gallery
    if not 1 <= k <= available:
        raise ValueError(
            f"topk_search: k={k} must be in [1, {available}] (gallery of {num_gallery} items"
            + (", one excluded per query)" if excluding else ")")
        )
    return exact_topk(query, gallery, k, chunk_size, exclude if excluding else None)
