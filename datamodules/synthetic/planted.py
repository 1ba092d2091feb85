"""The planted video-music benchmark: a generative model with known structure.

Each pair i belongs to a style cluster g(i) and has latent content z_i = s_g + tau * eps_i.
Small `tau` makes many unpaired items compatible (false negatives, the II-CLVM setting).
Music frames show f_m(z_i) + noise at every frame. Video frames show f_v(z_i) + noise only
inside a salient span; elsewhere they show a per-video filler content b_i (the SSVMR saliency
setting): with `filler="same"` a distractor drawn like any pair's content, with
`filler="background"` a content from a background distribution no song uses (see
`filler`). f_m and f_v are fixed random two-layer maps (tanh, then linear) into the dataset's
feature dimensions (`maps`). With `min_frames` > 0 each video has its own length, uniform in
[min_frames, video_frames], and its span lies inside it (`video_length`); video_frames()
still returns `video_frames` frames per video, and writers keep the first `video_length`.
A fraction `noise` of *training* pairs is paired with another pair's music (label noise);
the truth is returned separately so writers can put it where loaders never look. Optional
per-video text draws tokens from the style's vocabulary. The defaults (`filler="same"`,
`min_frames=0`) draw exactly what the generator drew before these options existed.

Shared songs (all formats; MVD names the song once, HIMV-200K and YouTube-8M write it again
under each pair's id, as the same song with the sharer's own per-frame noise): with
`shared_songs` > 0, that fraction of each split's pairs takes over the song of another pair
of the same split (`song_source`), and with it that pair's content and style, so its video
really shows the song's content. The default 0 draws nothing and changes nothing.

`share`, `near_duplicates` and `train_pairs` are described in `conditions`; at their
defaults the data is exactly what it was before they existed.

Everything is deterministic in `seed`; each component has its own random stream, so e.g.
changing `pairs` does not change the feature maps. Dataset writers (HIMV-200K, YouTube-8M,
MVD) all build on `PlantedBenchmark` and only differ in how they lay the arrays on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.synthetic.conditions import (
    PairLatents,
    check_conditions,
    groups,
    plant_conditions,
)
from datamodules.synthetic.filler import FILLERS, background_centres, draw_filler
from datamodules.synthetic.maps import FeatureMap, draw_lengths, draw_spans, item_noise, span_hidden

__all__ = ["FeatureMap", "PlantedBenchmark", "PlantedSpec"]

_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


@dataclass(frozen=True)
class PlantedSpec:
    pairs: int = 6000
    val: int = 1000
    test: int = 1000
    styles: int = 16
    tau: float = 0.6
    content_dim: int = 16
    hidden_dim: int = 64
    music_dim: int = 1140
    video_dim: int = 1024
    music_frames: int = 12
    video_frames: int = 12
    # Mean fraction of video frames inside the salient span (spans vary around it).
    span: float = 0.5
    feature_noise: float = 0.5
    # Label noise: fraction of training pairs whose music is another pair's.
    noise: float = 0.0
    text: bool = False
    text_vocab: int = 512
    text_style_tokens: int = 24
    text_length: int = 8
    seed: int = 0
    # What non-salient video frames show: "same" (another content of the song distribution)
    # or "background" (a content no song uses); see datamodules.synthetic.filler.
    filler: str = "same"
    # 0: every video has `video_frames` frames; else lengths uniform in [min_frames, video_frames].
    min_frames: int = 0
    # Conditions (see `conditions`): pair-specific content shared by video and music (1: all,
    # 0: only the style), training pairs kept (0: all), near copies of other pairs.
    share: float = 1.0
    train_pairs: int = 0
    near_duplicates: float = 0.0
    near_duplicate_scale: float = 0.1

    def __post_init__(self) -> None:
        if min(self.val, self.test) < 1:
            raise ValueError(f"val={self.val} and test={self.test} must both be >= 1")
        if self.val + self.test >= self.pairs:
            raise ValueError(
                f"pairs={self.pairs} leaves no training pairs after val={self.val} "
                f"and test={self.test}"
            )
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise={self.noise} must be in [0, 1)")
        if not 0.0 < self.span <= 1.0:
            raise ValueError(f"span={self.span} must be in (0, 1]")
        if min(self.styles, self.music_frames, self.video_frames) < 1:
            raise ValueError("styles and frame counts must be >= 1")
        if self.tau < 0 or self.feature_noise < 0:
            raise ValueError(
                f"tau={self.tau} and feature_noise={self.feature_noise} must be >= 0"
            )
        dims = (self.content_dim, self.hidden_dim, self.music_dim, self.video_dim)
        if min(dims) < 1:
            raise ValueError("content_dim, hidden_dim, music_dim and video_dim must be >= 1")
        if self.text and min(self.text_vocab, self.text_style_tokens, self.text_length) < 1:
            raise ValueError("text_vocab, text_style_tokens and text_length must be >= 1")
        if self.filler not in FILLERS:
            raise ValueError(f"filler={self.filler!r} must be one of {', '.join(FILLERS)}")
        check_conditions(self.pairs - self.val - self.test, self.share, self.train_pairs,
                         self.near_duplicates, self.near_duplicate_scale)
        if not 0 <= self.min_frames <= self.video_frames:
            raise ValueError(f"min_frames={self.min_frames} must be in [0, video_frames="
                             f"{self.video_frames}] (0: every video has video_frames frames)")


# Stream ids keep the components independent of each other.
_STREAM = {"styles": 1, "content": 2, "fm": 3, "fv": 4, "ids": 5, "spans": 6, "distract": 7,
           "noise": 8, "text": 9, "music_noise": 10, "video_noise": 11, "shared": 12,
           "background": 13, "lengths": 14,
           # The unpaired pool (datamodules.synthetic.pool) draws from its own streams.
           "pool": 15, "pool_lengths": 16, "pool_spans": 17, "pool_filler": 18,
           "pool_video_noise": 19, "pool_music_noise": 20}


class PlantedBenchmark:
    """Draws the latent structure once; feature arrays are generated on demand, in chunks."""

    def __init__(self, spec: PlantedSpec, shared_songs: float = 0.0):
        if not 0.0 <= shared_songs < 1.0:
            raise ValueError(f"shared_songs={shared_songs} must be in [0, 1)")
        self.spec = spec
        n, s = spec.pairs, spec
        rng = self._rng
        self.style_centres = rng("styles").normal(0.0, 1.0, (s.styles, s.content_dim))
        crng = rng("content")
        latents = PairLatents.draw(s.seed, s.share, crng.integers(0, s.styles, n),
                                   crng.normal(0.0, 1.0, (n, s.content_dim)))
        self.music_map = FeatureMap(rng("fm"), s.content_dim, s.hidden_dim, s.music_dim)
        self.video_map = FeatureMap(rng("fv"), s.content_dim, s.hidden_dim, s.video_dim)
        self.ids = self._make_ids(rng("ids"), n)
        self.split = np.array(["train"] * n, dtype=object)
        self.split[n - s.test - s.val : n - s.test] = "val"
        self.split[n - s.test :] = "test"
        self.video_length = draw_lengths(rng("lengths"), n, s.min_frames, s.video_frames)
        self.span_start, self.span_length = draw_spans(rng("spans"), s.span, self.video_length)
        # song_source[i]: the pair whose song pair i truly goes with (i unless shared).
        self.song_source = np.arange(n)
        if shared_songs > 0:
            self.song_source = self._make_shared_songs(rng("shared"), shared_songs)
        # Training subset (split "unused": drawn, never written), near duplicates
        # (near_source[i]: the pair that pair i nearly copies, i if none); see `conditions`.
        self.kept, self.song_source, self.near_source = plant_conditions(
            s, self.split, self.song_source, shared_songs, latents)
        self.style = latents.style
        # What videos show inside their span / what the music shows (one array at share 1).
        self.content, self.music_content = latents.contents(self.style_centres, s.tau, s.share)
        # The filler each video shows outside its span (the name predates `filler`).
        self.background = background_centres(s.seed, _STREAM["background"], s.styles,
                                             s.content_dim)
        self.distractor = draw_filler(s.filler, rng("distract"), n, self.style_centres,
                                      self.background, s.tau)
        self.music_source = self._make_label_noise(rng("noise"))
        self.style_vocab: np.ndarray | None = None  # [styles, text_style_tokens] token ids
        self.text = self._make_text(rng("text")) if s.text else None

    def _rng(self, component: str) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, _STREAM[component]])

    @staticmethod
    def _make_ids(rng: np.random.Generator, n: int, taken: frozenset[str] = frozenset()
                  ) -> list[str]:
        """`n` distinct YouTube-like ids, none of them in `taken`."""
        ids: list[str] = []
        seen: set[str] = set(taken)
        while len(ids) < n:
            for row in rng.integers(0, len(_ID_ALPHABET), (n - len(ids), 11)):
                vid = "".join(_ID_ALPHABET[row])
                if vid not in seen:
                    seen.add(vid)
                    ids.append(vid)
        return ids

    def _make_label_noise(self, rng: np.random.Generator) -> np.ndarray:
        """music_source[i] = the pair whose music is written for pair i (i unless noisy)."""
        source = np.arange(self.spec.pairs)
        train = np.flatnonzero(self.split == "train")
        n_noisy = int(round(self.spec.noise * len(train)))
        if n_noisy >= 2:
            noisy = rng.choice(train, n_noisy, replace=False)
            # A cyclic shift of a random order is a derangement: nobody keeps their own music.
            source[noisy] = np.roll(noisy, 1)
        elif n_noisy == 1 and len(train) >= 2:
            # One pair cannot swap with itself: it gets the music of another training pair.
            i, j = rng.choice(train, 2, replace=False)
            source[i] = j
        return source

    def _make_shared_songs(self, rng: np.random.Generator, fraction: float) -> np.ndarray:
        """Per split, `fraction` of the pairs take the song of a pair that keeps its own."""
        source = np.arange(self.spec.pairs)
        for split in ("train", "val", "test"):
            members = np.flatnonzero(self.split == split)
            k = min(int(round(fraction * len(members))), len(members) - 1)
            if k < 1:
                continue
            sharers = rng.choice(members, k, replace=False)
            owners = np.setdiff1d(members, sharers)
            source[sharers] = rng.choice(owners, k)  # a song may serve several videos
        return source

    @property
    def noisy(self) -> np.ndarray:
        """Pairs whose written music is not their true song."""
        return self.song_source[self.music_source] != self.song_source

    def _make_text(self, rng: np.random.Generator) -> list[str]:
        s = self.spec
        style_vocab = rng.integers(0, s.text_vocab, (s.styles, s.text_style_tokens))
        self.style_vocab = style_vocab
        n_style = (s.text_length + 1) // 2
        texts = []
        for g in self.style:
            tokens = np.concatenate([
                rng.choice(style_vocab[g], n_style),
                rng.integers(0, s.text_vocab, s.text_length - n_style),
            ])
            rng.shuffle(tokens)
            texts.append(" ".join(f"w{t}" for t in tokens))
        return texts

    # ----- features -------------------------------------------------------------------------

    def _video_hidden_frames(self, idx: np.ndarray) -> np.ndarray:
        """[len(idx), T, H]: salient content inside the span, the filler outside."""
        return span_hidden(self.video_map, self.content[idx], self.distractor[idx],
                           self.span_start[idx], self.span_length[idx], self.spec.video_frames)

    def _noise(self, stream: str, idx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        # One stream per item, so an item's features do not depend on the chunking.
        return item_noise(self.spec.seed, _STREAM[stream], idx, shape, self.spec.feature_noise)

    def music_frames(self, idx: np.ndarray) -> np.ndarray:
        """Written music features [len(idx), Tm, Dm] (label noise applied)."""
        src = self.music_source[idx]
        clean = self.music_map.output(self.music_map.hidden(self.music_content[src]))[:, None, :]
        noise = self._noise("music_noise", idx, (self.spec.music_frames, self.spec.music_dim))
        return (clean + noise * self.music_map.scale).astype(np.float32)

    def song_frames(self, idx: np.ndarray) -> np.ndarray:
        """The true song of each pair in `idx` (no label noise): [len(idx), Tm, Dm]."""
        clean = self.music_map.output(self.music_map.hidden(self.music_content[idx]))[:, None, :]
        noise = self._noise("music_noise", idx, (self.spec.music_frames, self.spec.music_dim))
        return (clean + noise * self.music_map.scale).astype(np.float32)

    def video_frames(self, idx: np.ndarray) -> np.ndarray:
        """Video features [len(idx), Tv, Dv]."""
        clean = self.video_map.output(self._video_hidden_frames(idx))
        noise = self._noise("video_noise", idx, (self.spec.video_frames, self.spec.video_dim))
        return (clean + noise * self.video_map.scale).astype(np.float32)

    def music_vectors(self, idx: np.ndarray) -> np.ndarray:
        """Mean over frames of `music_frames`, drawn directly: [len(idx), Dm]."""
        src = self.music_source[idx]
        clean = self.music_map.output(self.music_map.hidden(self.music_content[src]))
        noise = self._noise("music_noise", idx, (self.spec.music_dim,))
        noise /= np.sqrt(self.spec.music_frames)
        return (clean + noise * self.music_map.scale).astype(np.float32)

    def video_vectors(self, idx: np.ndarray) -> np.ndarray:
        """Mean over each video's `video_length` frames, drawn directly: [len(idx), Dv]."""
        length = self.video_length[idx]
        valid = np.arange(self.spec.video_frames) < length[:, None]
        hidden = (self._video_hidden_frames(idx) * valid[..., None]).sum(axis=1)
        clean = self.video_map.output(hidden / length[:, None])
        noise = self._noise("video_noise", idx, (self.spec.video_dim,))
        noise /= np.sqrt(length)[:, None]
        return (clean + noise * self.video_map.scale).astype(np.float32)

    def truth_rows(self) -> list[dict]:
        """One row per written pair: what loaders must never see (style, true pairing, span,
        near copies, multi-positive group)."""
        near, group = self.near_source, groups(self.song_source, self.near_source)
        return [
            {
                "id": self.ids[i],
                "split": self.split[i],
                "style": int(self.style[i]),
                "true_music_id": self.ids[self.song_source[i]],
                "written_music_id": self.ids[self.song_source[self.music_source[i]]],
                "noisy": bool(self.noisy[i]),
                "span_start": int(self.span_start[i]),
                "span_length": int(self.span_length[i]),
                "near_duplicate_of": self.ids[near[i]] if near[i] != i else "",
                "group": self.ids[group[i]],
            }
            for i in np.flatnonzero(self.kept)
        ]
