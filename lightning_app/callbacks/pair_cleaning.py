"""Deciding every training pair from embeddings: flags, actions and pseudo-labels (pure).

A pair (row i: video i with music i) is flagged when its paired song ranks beyond
`rank_threshold` among all distinct training songs. A flagged pair is then dropped,
down-weighted, or re-assigned to a pseudo-label: the model's top song, accepted by one of two
rules (`rule`):

- `margin`: the top song outscores the paired one by more than `reassign_margin` (cosines);
- `cycle`: the cycle closes: video -> its top song -> that song's top video is the video
  itself (among all distinct training videos), the cycle-consistency test back retrieval
  also uses.

A flagged pair that no rule re-assigns falls back to `fallback` (downweight, drop or keep).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from datamodules.train_pairs import TrainPairs
from lightning_app.callbacks.truth import PairTruth, fraction
from lightning_app.retrieval import dedupe_by_key
from lightning_app.search import single_positive_ranks, topk_search

ACTIONS = ("drop", "downweight", "reassign")
FALLBACKS = ("downweight", "drop", "keep")
RULES = ("margin", "cycle")
OUTCOMES = ("kept", "downweighted", "dropped", "reassigned")


@dataclass
class Cleaning:
    """One round's decisions; arrays are per original pair (train row) unless noted."""

    ranks: np.ndarray  # int64 [N], rank of the paired song among distinct training songs
    flagged: np.ndarray  # bool [N]
    outcome: np.ndarray  # str [N], one of OUTCOMES
    music_rows: np.ndarray  # int64 [N], music row after cleaning (the row itself unless moved)
    weights: np.ndarray  # float32 [N]

    @property
    def pairs(self) -> TrainPairs:
        """The training list: every pair not dropped, in row order."""
        keep = np.flatnonzero(self.outcome != "dropped")
        return TrainPairs(keep, self.music_rows[keep], self.weights[keep])

    @property
    def status(self) -> list[str]:
        return [str(s) for s in self.outcome[self.outcome != "dropped"]]

    def counts(self) -> dict[str, int]:
        out = {"flagged": int(self.flagged.sum())}
        out.update({name: int((self.outcome == name).sum()) for name in OUTCOMES})
        return out


def cycle_closes(video: torch.Tensor, songs: torch.Tensor, top_song: torch.Tensor,
                 video_keys: torch.Tensor | None = None, chunk_size: int = 4096) -> torch.Tensor:
    """[N] bool: the top video of song `top_song[i]` (among the distinct videos) is video i.

    Videos are de-duplicated by `video_keys` (default: every row its own video); ties in
    retrieval go to the lowest key.
    """
    n, device = video.shape[0], video.device
    keys = (torch.arange(n, device=device) if video_keys is None
            else video_keys.to(device=device, dtype=torch.long))
    _, v_first, v_inverse = dedupe_by_key(keys)
    asked, slot = torch.unique(top_song, sorted=True, return_inverse=True)
    _, back = topk_search(songs[asked], video[v_first], 1, chunk_size=chunk_size)
    return back[slot, 0] == v_inverse


def clean_pairs(video: torch.Tensor, music: torch.Tensor, music_keys: torch.Tensor, *,
                rank_threshold: int, action: str, downweight: float, reassign_margin: float,
                fallback: str, rule: str = "margin", video_keys: torch.Tensor | None = None,
                chunk_size: int = 4096) -> Cleaning:
    """Decide every original pair (row i: video[i] with music[i]) from the embeddings.

    Songs are de-duplicated by `music_keys` (each represented by its first row), so a song
    used by several videos competes once. Ranks follow lightning_app.retrieval (ties count
    against the pair); the top song is `topk_search`'s (ties: lowest song key first).
    """
    if rule not in RULES:
        raise ValueError(f"unknown pseudo-label rule {rule!r} (choose from: {', '.join(RULES)})")
    n = video.shape[0]
    keys = music_keys.to(device=video.device, dtype=torch.long)
    _, first, inverse = dedupe_by_key(keys)
    gallery = music[first]
    ranks = single_positive_ranks(video, gallery, inverse, chunk_size=chunk_size).cpu().numpy()
    flagged = ranks > rank_threshold
    outcome = np.full(n, "kept", dtype=object)
    music_rows = np.arange(n, dtype=np.int64)
    weights = np.ones(n, dtype=np.float32)
    rest = flagged
    if action == "reassign":
        top_score, top = topk_search(video, gallery, 1, chunk_size=chunk_size)
        other = top[:, 0] != inverse
        if rule == "margin":
            paired_score = (video.float() * gallery[inverse].float()).sum(dim=1)
            accept = top_score[:, 0] - paired_score > reassign_margin
        else:
            accept = cycle_closes(video, gallery, top[:, 0], video_keys, chunk_size)
        move = flagged & (other & accept).cpu().numpy()
        music_rows[move] = first[top[:, 0]].cpu().numpy()[move]
        outcome[move] = "reassigned"
        rest = flagged & ~move
        action = fallback
    if action == "drop":
        outcome[rest] = "dropped"
    elif action == "downweight":
        outcome[rest] = "downweighted"
        weights[rest] = downweight
    return Cleaning(ranks.astype(np.int64), flagged, outcome, music_rows, weights)


def measure(result: Cleaning, video_ids: list[str], music_ids: list[str],
            truth: PairTruth) -> dict[str, float]:
    """Flag precision/recall against the planted noisy pairs; accuracy of re-assignments."""
    noisy = truth.noisy(video_ids)
    hits = int((result.flagged & noisy).sum())
    moved = np.flatnonzero(result.outcome == "reassigned")
    right = sum(truth.song(music_ids[result.music_rows[i]]) == truth.true_music(video_ids[i])
                for i in moved)
    return {
        "flag_precision": fraction(hits, int(result.flagged.sum())),
        "flag_recall": fraction(hits, int(noisy.sum())),
        "reassign_accuracy": fraction(right, len(moved)),
        "noisy": float(noisy.sum()),
    }
