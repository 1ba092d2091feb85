"""Cycle-consistent new training pairs from embeddings (pure; SSVMR back retrieval).

By analogy with back translation (synthetic partners for monolingual data), an item that has
no partner is given one when retrieval agrees in both directions: the item's top partner
retrieves the item back (among its top `rank_tolerance`). Two sources of such items:

- `back_retrieve` (in-split mining, `back_retrieval.source=split`): every distinct training
  video is asked; new (video, song) combinations of the training split are the candidates.
- `pool_back_retrieve` (`source=unpaired`): every UNPAIRED video asks for its top song among
  all songs (unpaired and training), and every unpaired song for its top video among all
  videos; the answers whose cycle closes are the candidates.

Candidates at or above `similarity_floor` are kept, best score first, at most `max_new`.

The candidate search is exact by default; `index` (back_retrieval.index) may make it a FAISS
index (lightning_app/ann_index.py) for big collections. An approximate index may find no
partner for an item (index -1): such an item gets no candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lightning_app.ann_index import IndexParams, search
from lightning_app.retrieval import dedupe_by_key

EXACT = IndexParams("exact")


@dataclass
class BackRetrieved:
    video_rows: np.ndarray  # int64 [A], the added pairs, best score first
    music_rows: np.ndarray  # int64 [A]
    scores: np.ndarray  # float32 [A]
    cycle_consistent: int  # videos whose cycle closes (before floor, existing pairs and cap)
    candidates: int  # ... that also pass the floor and are new


def back_retrieve(video: torch.Tensor, music: torch.Tensor, video_keys: torch.Tensor,
                  music_keys: torch.Tensor, existing: tuple[np.ndarray, np.ndarray], *,
                  rank_tolerance: int, similarity_floor: float, max_new: int | None,
                  chunk_size: int = 4096, index: IndexParams = EXACT) -> BackRetrieved:
    """Cycle-consistent new pairs from train-row embeddings (video[n], music[n] = row n).

    Videos and songs are de-duplicated by key (first row represents them); `existing` is the
    current pairing as (video rows, music rows). Ties in retrieval go to the lowest key, and
    candidates are ranked by score, then video key.
    """
    device = video.device
    _, v_first, _ = dedupe_by_key(video_keys.to(device=device, dtype=torch.long))
    m_unique, m_first, _ = dedupe_by_key(music_keys.to(device=device, dtype=torch.long))
    videos, songs = video[v_first], music[m_first]
    score, song, found = _top1(videos, songs, index, chunk_size)
    asked, slot = torch.unique(song, sorted=True, return_inverse=True)
    k = min(rank_tolerance, videos.shape[0])
    _, back = search(songs[asked], videos, k, index, chunk_size)  # [S, k] video idx
    mine = torch.arange(videos.shape[0], device=device)
    cycle = (back[slot] == mine[:, None]).any(dim=1) & found
    # Pairs by (video key, music key): keys are the dataset's id codes, so this compares ids.
    n_music = int(m_unique.numel())
    ex_v, ex_m = (torch.as_tensor(x, dtype=torch.long) for x in existing)
    have = video_keys.cpu()[ex_v] * n_music + music_keys.cpu()[ex_m]
    vkey, mkey = video_keys.to(device)[v_first], m_unique[song]
    new = ~torch.isin((vkey * n_music + mkey).cpu(), have).to(device)
    ok = cycle & (score >= similarity_floor) & new
    chosen = torch.nonzero(ok).reshape(-1)
    order = torch.sort(score[chosen], descending=True, stable=True).indices
    chosen = chosen[order]
    if max_new is not None:
        chosen = chosen[:max_new]
    return BackRetrieved(
        video_rows=v_first[chosen].cpu().numpy().astype(np.int64),
        music_rows=m_first[song[chosen]].cpu().numpy().astype(np.int64),
        scores=score[chosen].cpu().numpy().astype(np.float32),
        cycle_consistent=int(cycle.sum()),
        candidates=int(ok.sum()),
    )


@dataclass
class PoolPairs:
    """Pairs for the unpaired pool, as indices into the combined lists (pool items first)."""

    video_index: np.ndarray  # int64 [A], best score first
    music_index: np.ndarray  # int64 [A]
    scores: np.ndarray  # float32 [A]
    cycle_consistent: int  # distinct pairs whose cycle closes (before floor and cap)
    candidates: int  # ... that also pass the floor


def pool_back_retrieve(videos: torch.Tensor, songs: torch.Tensor, pool_videos: int,
                       pool_songs: int, *, rank_tolerance: int, similarity_floor: float,
                       max_new: int | None, chunk_size: int = 4096,
                       index: IndexParams = EXACT) -> PoolPairs:
    """New pairs for the unpaired items of `videos` [V, E] and `songs` [S, E].

    The first `pool_videos` rows of `videos` (first `pool_songs` of `songs`) are the unpaired
    items, the rest the distinct training items. An unpaired video v asks for its top song s
    among all songs; the pair (v, s) is consistent when v is among s's top `rank_tolerance`
    videos (of all videos). An unpaired song s asks likewise for its top video. A pair found
    from both sides counts once. Ties in retrieval go to the lowest index; candidates are
    ranked by score, then video index, then music index.
    """
    found: dict[tuple[int, int], float] = {}
    consistent = 0
    for side in ("video", "music"):
        n_pool = pool_videos if side == "video" else pool_songs
        if n_pool == 0 or len(videos) == 0 or len(songs) == 0:
            continue
        query_all, other = (videos, songs) if side == "video" else (songs, videos)
        score, top, hit = _top1(query_all[:n_pool], other, index, chunk_size)
        asked, slot = torch.unique(top, sorted=True, return_inverse=True)
        k = min(rank_tolerance, len(query_all))
        _, back = search(other[asked], query_all, k, index, chunk_size)
        mine = torch.arange(n_pool, device=back.device)
        closes = (back[slot] == mine[:, None]).any(dim=1) & hit
        for q in torch.nonzero(closes).reshape(-1).tolist():
            pair = (q, int(top[q])) if side == "video" else (int(top[q]), q)
            if pair not in found:
                consistent += 1
                found[pair] = float(score[q])
    kept = sorted(((-s, v, m) for (v, m), s in found.items() if s >= similarity_floor))
    candidates = len(kept)
    if max_new is not None:
        kept = kept[:max_new]
    return PoolPairs(
        video_index=np.array([v for _, v, _ in kept], dtype=np.int64),
        music_index=np.array([m for _, _, m in kept], dtype=np.int64),
        scores=np.array([-s for s, _, _ in kept], dtype=np.float32),
        cycle_consistent=consistent, candidates=candidates)


def _top1(queries: torch.Tensor, gallery: torch.Tensor, index: IndexParams,
          chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(best score, its gallery index, found) per query; not found: index 0, score -inf."""
    score, top = search(queries, gallery, 1, index, chunk_size)
    score, top = score[:, 0], top[:, 0]
    found = top >= 0
    return score.masked_fill(~found, float("-inf")), top.clamp(min=0), found
