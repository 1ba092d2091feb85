"""Benchmark conditions on top of the planted pairs (`planted.PlantedBenchmark`).

Latent variables per pair i: a style g(i), a pair-specific part eps_i that both modalities
may show, and (only when `share` < 1) a private part per modality, eps_v_i and eps_m_i, all
N(0, I). The contents the two modalities render are

    z_video_i = s_g + tau * (sqrt(share) * eps_i + sqrt(1 - share) * eps_v_i)
    z_music_i = s_g + tau * (sqrt(share) * eps_i + sqrt(1 - share) * eps_m_i)

so each modality keeps the same spread around its style centre whatever `share` is. At
share 1 both show z_i = s_g + tau * eps_i, exactly today's data (the private parts are not
even drawn). At share 0 a pair's video and music have nothing pair-specific in common: given
the style, its own music is no better a match for its video than any other music of that
style. Same-style items are then interchangeable (true false negatives).

Near duplicates (`near_duplicates`, a fraction of each split's pairs): pair j is a near copy
of another pair i of its split: it takes i's style and every latent part plus a small fresh
deviation, eps_j = eps_i + scale * delta (likewise the private parts), so each modality's
content moves by tau * scale * N(0, I) and the shared part of the deviation follows `share`.
Copies are drawn among pairs that take part in no shared song; originals are any other
pair of the split (an original may be a song's sharer or owner: the copy then nearly holds
that song). Each split draws from its own stream, so val/test do not depend on the training
set.

Training subset (`train_pairs` > 0): only the first `train_pairs` training pairs are kept;
everything is still drawn for all `pairs`, so the validation and test pairs (ids, contents,
noise, spans, shared songs, near duplicates) are identical for every `train_pairs`. The
train part of shared songs is redrawn among the kept pairs (from a stream of its own) and
label noise and near duplicates are drawn among the kept pairs, so the fractions hold in
the training set actually written.

Multi-positive groups (truth column `group`): pairs connected by a shared song or a near
copy form one group, named by the id of its first pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Streams of their own (see planted._STREAM for the others; no id is used twice).
STREAMS = {"video_private": 21, "music_private": 22, "near_duplicates": 23, "train_songs": 24}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass
class PairLatents:
    style: np.ndarray  # [n] style of each pair
    shared: np.ndarray  # [n, d] eps: the pair-specific part both modalities show
    video: np.ndarray | None = None  # [n, d] eps_v; None at share 1
    music: np.ndarray | None = None  # [n, d] eps_m; None at share 1

    @classmethod
    def draw(cls, seed: int, share: float, style: np.ndarray, shared: np.ndarray
             ) -> PairLatents:
        """`style` and `shared` as drawn by the benchmark; private parts only if share < 1."""
        if share >= 1.0:
            return cls(style.copy(), shared)
        shape = shared.shape
        video = np.random.default_rng([seed, STREAMS["video_private"]]).normal(0.0, 1.0, shape)
        music = np.random.default_rng([seed, STREAMS["music_private"]]).normal(0.0, 1.0, shape)
        return cls(style.copy(), shared, video, music)

    def take_songs(self, song_source: np.ndarray) -> None:
        """Each pair takes its song's style, shared part and music part; videos keep theirs."""
        self.style = self.style[song_source]
        self.shared = self.shared[song_source]
        if self.music is not None:
            self.music = self.music[song_source]

    def near_copy(self, copies: np.ndarray, sources: np.ndarray, scale: float,
                  deltas: np.ndarray) -> None:
        """Pairs `copies` become sources' latents plus scale x deltas ([3, k, d])."""
        self.style[copies] = self.style[sources]
        self.shared[copies] = self.shared[sources] + scale * deltas[0]
        if self.video is not None and self.music is not None:
            self.video[copies] = self.video[sources] + scale * deltas[1]
            self.music[copies] = self.music[sources] + scale * deltas[2]

    def contents(self, centres: np.ndarray, tau: float, share: float
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(video contents, music contents) [n, d]; one array for both at share 1."""
        base = centres[self.style]
        if self.video is None or self.music is None:
            content = base + tau * self.shared
            return content, content
        a, b = np.sqrt(share), np.sqrt(1.0 - share)
        return (base + tau * (a * self.shared + b * self.video),
                base + tau * (a * self.shared + b * self.music))


def kept_pairs(split: np.ndarray, train_pairs: int) -> np.ndarray:
    """bool [n]: every val/test pair and the first `train_pairs` training pairs (0: all)."""
    kept = np.ones(len(split), dtype=bool)
    if train_pairs > 0:
        train = np.flatnonzero(split == "train")
        kept[train[train_pairs:]] = False
    return kept


def share_within(rng: np.random.Generator, members: np.ndarray, fraction: float,
                 source: np.ndarray) -> None:
    """`fraction` of `members` take the song of a member that keeps its own (in place)."""
    k = min(int(round(fraction * len(members))), len(members) - 1)
    if k < 1:
        return
    sharers = rng.choice(members, k, replace=False)
    owners = np.setdiff1d(members, sharers)
    source[sharers] = rng.choice(owners, k)  # a song may serve several videos


def redraw_train_songs(seed: int, split: np.ndarray, fraction: float,
                       source: np.ndarray) -> np.ndarray:
    """`source` for val/test as given; the songs of the pairs still in "train" drawn again
    among themselves (dropped pairs keep their own)."""
    out = np.where(np.isin(split, ("val", "test")), source, np.arange(len(split)))
    rng = np.random.default_rng([seed, STREAMS["train_songs"]])
    share_within(rng, np.flatnonzero(split == "train"), fraction, out)
    return out


def draw_near_duplicates(seed: int, split: np.ndarray, song_source: np.ndarray,
                         fraction: float, dim: int
                         ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per split: (copies, their sources, deltas [3, k, dim]); see the module docstring."""
    idx = np.arange(len(split))
    sharers = song_source != idx
    in_song = sharers | np.isin(idx, song_source[sharers])  # sharers and owners of shared songs
    out = []
    for name, code in _SPLIT_CODE.items():
        rng = np.random.default_rng([seed, STREAMS["near_duplicates"], code])
        members = np.flatnonzero(split == name)
        candidates = members[~in_song[members]]
        k = min(int(round(fraction * len(members))), len(candidates), len(members) - 1)
        if k < 1:
            continue
        copies = rng.choice(candidates, k, replace=False)
        originals = np.setdiff1d(members, copies)
        sources = rng.choice(originals, k)
        out.append((copies, sources, rng.normal(0.0, 1.0, (3, k, dim))))
    return out


def groups(song_source: np.ndarray, near_source: np.ndarray) -> np.ndarray:
    """int [n]: the first pair of each pair's group (shared songs and near copies joined)."""
    parent = np.arange(len(song_source))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for edges in (song_source, near_source):
        for i, j in enumerate(edges):
            a, b = find(i), find(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(len(parent))], dtype=np.int64)


def check_conditions(available: int, share: float, train_pairs: int, near_duplicates: float,
                     scale: float) -> None:
    """One-line ValueErrors for bad condition settings (`available` training pairs)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share={share} must be in [0, 1] (1: both modalities show it all)")
    if not 0 <= train_pairs <= available:
        raise ValueError(f"train_pairs={train_pairs} must be in [0, {available}] "
                         "(pairs - val - test; 0: all of them)")
    if not 0.0 <= near_duplicates < 1.0:
        raise ValueError(f"near_duplicates={near_duplicates} must be in [0, 1)")
    if scale < 0:
        raise ValueError(f"near_duplicate_scale={scale} must be >= 0")


def plant_conditions(spec: Any, split: np.ndarray, song_source: np.ndarray,
                     shared_songs: float, latents: PairLatents
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the training subset, shared songs and near duplicates to `latents` (and mark
    dropped pairs "unused" in `split`, in place); returns (kept, song_source, near_source)."""
    kept = kept_pairs(split, spec.train_pairs)
    if not kept.all():
        split[~kept] = "unused"
        if shared_songs > 0:
            song_source = redraw_train_songs(spec.seed, split, shared_songs, song_source)
    latents.take_songs(song_source)
    near_source = np.arange(len(split))
    if spec.near_duplicates > 0:
        for copies, sources, deltas in draw_near_duplicates(
                spec.seed, split, song_source, spec.near_duplicates, spec.content_dim):
            near_source[copies] = sources
            latents.near_copy(copies, sources, spec.near_duplicate_scale, deltas)
    return kept, song_source, near_source
