"""Recall when more than the paired item counts: ranks of the best *compatible* gallery item.

Exact recall (lightning_app.retrieval) counts a hit only for the query's own partner(s). On
data with known structure other items are right too: every item of the query's planted style
(compatible recall) or every item holding the query's song or a near copy of its content
(multi-positive recall). Here a query and the gallery items carry integer labels; an item is
a positive when its label equals the query's. Ranking follows lightning_app.retrieval: the
rank is 1 + the number of items with ANOTHER label scoring at least as high as the best
same-label item (ties count against the query). Scores are dot products, `chunk_size`
queries at a time, so no Q x G matrix is ever built.

`paired_label_ranks` is `paired_retrieval_ranks` with labels: rows are (video, music) pairs,
each distinct key is one query/gallery item (the embedding and label of its first row), and
a row's own partner always shares its label, so every query has a positive.
"""

from __future__ import annotations

import torch

from lightning_app.retrieval import _check_embeddings, dedupe_by_key

__all__ = ["label_ranks", "paired_label_ranks", "shared_key_labels"]


def _check_labels(labels: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{what} labels must be a 1-D tensor with {n} entries, got shape "
                         f"{tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{what} labels must be integers, got {labels.dtype}")
    return labels.long()


def label_ranks(query_emb: torch.Tensor, gallery_emb: torch.Tensor, query_labels: torch.Tensor,
                gallery_labels: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """1-based rank of the best gallery item sharing each query's label; LongTensor [Q].

    Raises ValueError when a query's label occurs nowhere in the gallery.
    """
    _check_embeddings(query_emb, gallery_emb)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = query_emb.device
    q_lab = _check_labels(query_labels, query_emb.shape[0], "query").to(device)
    g_lab = _check_labels(gallery_labels, gallery_emb.shape[0], "gallery").to(device)
    missing = ~torch.isin(q_lab, g_lab)
    if bool(missing.any()):
        first = int(missing.nonzero()[0, 0])
        raise ValueError(f"query {first} (label {int(q_lab[first])}) has no gallery item with "
                         "its label")
    gallery = gallery_emb.to(device).float()
    ranks = torch.empty(query_emb.shape[0], dtype=torch.long, device=device)
    for start in range(0, query_emb.shape[0], chunk_size):
        stop = min(start + chunk_size, query_emb.shape[0])
        scores = query_emb[start:stop].float() @ gallery.T  # [c, G]
        pos = q_lab[start:stop, None] == g_lab[None, :]
        best = scores.masked_fill(~pos, float("-inf")).amax(dim=1, keepdim=True)
        ranks[start:stop] = 1 + ((scores >= best) & ~pos).sum(dim=1, dtype=torch.int32)
    return ranks


def paired_label_ranks(video_emb: torch.Tensor, music_emb: torch.Tensor,
                       video_keys: torch.Tensor, music_keys: torch.Tensor,
                       video_labels: torch.Tensor, music_labels: torch.Tensor,
                       chunk_size: int = 4096) -> dict[str, torch.Tensor]:
    """{"v2m": ranks [unique videos], "m2v": ranks [unique music]} over labelled pair rows.

    Row n is a pair: video key/label video_keys[n]/video_labels[n], music key/label
    music_keys[n]/music_labels[n]. Items are de-duplicated by key exactly as in
    `lightning_app.retrieval.paired_retrieval_ranks` (first occurrence).
    """
    n = video_emb.shape[0]
    for name, t in (("music_emb", music_emb), ("video_keys", video_keys),
                    ("music_keys", music_keys), ("video_labels", video_labels),
                    ("music_labels", music_labels)):
        if t.shape[0] != n:
            raise ValueError(f"paired label ranks: {name} has {t.shape[0]} rows, video_emb {n}")
    device = video_emb.device
    _, v_first, _ = dedupe_by_key(video_keys.to(device=device, dtype=torch.long))
    _, m_first, _ = dedupe_by_key(music_keys.to(device=device, dtype=torch.long))
    videos, music = video_emb[v_first], music_emb.to(device)[m_first]
    v_lab = video_labels.to(device)[v_first]
    m_lab = music_labels.to(device)[m_first]
    return {"v2m": label_ranks(videos, music, v_lab, m_lab, chunk_size),
            "m2v": label_ranks(music, videos, m_lab, v_lab, chunk_size)}


def shared_key_labels(video_keys: torch.Tensor, music_keys: torch.Tensor) -> torch.Tensor:
    """One label per row: its connected component in the graph of (video key, music key) rows.

    Rows that share a music id (several videos of one song) or a video id get one label, so
    every video of a song is a positive for every other's song and back: multi-positive
    labels from the ids alone, for data without planted truth.
    """
    v = torch.unique(video_keys.cpu().long(), return_inverse=True)[1]
    m = torch.unique(music_keys.cpu().long(), return_inverse=True)[1]
    num_v = int(v.max()) + 1 if v.numel() else 0
    parent = list(range(num_v + (int(m.max()) + 1 if m.numel() else 0)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(v.tolist(), (m + num_v).tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return torch.tensor([find(a) for a in v.tolist()], dtype=torch.long,
                        device=video_keys.device)
