"""The unpaired pool: videos and songs beside the paired benchmark, in no split.

Back retrieval (by analogy with back translation) mines training pairs from unpaired data,
so the benchmark plants a pool to mine: `videos` unpaired videos and `music` unpaired songs,
drawn exactly like paired items (a style's centre plus `tau` spread, the same feature maps,
salient spans, filler and video lengths) from streams of their own, so adding a pool
changes nothing of the paired data.

Some of the pool is compatible by construction: K = round(linked x min(videos, music)) HIDDEN
PAIRS, a pool video and a pool song that share one content (a pair whose link was removed);
every other pool item is a single whose content no other item has. Which videos and songs
are linked, and to whom, is random (list order reveals nothing); the truth file records it.
"""

from __future__ import annotations

import numpy as np

from datamodules.synthetic.filler import draw_filler
from datamodules.synthetic.maps import draw_lengths, draw_spans, item_noise, span_hidden
from datamodules.synthetic.planted import _STREAM, PlantedBenchmark


def check_pool_counts(videos: int, music: int, linked: float) -> None:
    """ValueError (one line) unless the counts are integers >= 0 and `linked` is in [0, 1]."""
    for name, value in (("unpaired_videos", videos), ("unpaired_music", music)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name}={value!r} must be an integer >= 0")
    if not 0.0 <= linked <= 1.0:
        raise ValueError(f"unpaired_linked={linked!r} must be in [0, 1]")


class UnpairedPool:
    """The pool's latent structure; features are rendered on demand like the benchmark's."""

    def __init__(self, bench: PlantedBenchmark, videos: int, music: int, linked: float = 0.5):
        check_pool_counts(videos, music, linked)
        self.bench = bench
        s = bench.spec
        rng = bench._rng("pool")
        self.video_ids = bench._make_ids(rng, videos, frozenset(bench.ids))
        self.music_ids = bench._make_ids(rng, music, frozenset(bench.ids + self.video_ids))
        centres = bench.style_centres
        self.video_style = rng.integers(0, s.styles, videos)
        self.video_content = centres[self.video_style] + s.tau * rng.normal(
            0.0, 1.0, (videos, s.content_dim))
        self.music_style = rng.integers(0, s.styles, music)
        self.music_content = centres[self.music_style] + s.tau * rng.normal(
            0.0, 1.0, (music, s.content_dim))
        # Hidden pairs: song music_partner[v] holds video v's content (-1: a single).
        k = int(round(linked * min(videos, music)))
        linked_videos = rng.choice(videos, k, replace=False)
        linked_music = rng.choice(music, k, replace=False)
        self.music_content[linked_music] = self.video_content[linked_videos]
        self.music_style[linked_music] = self.video_style[linked_videos]
        self.video_partner = np.full(videos, -1, dtype=np.int64)
        self.music_partner = np.full(music, -1, dtype=np.int64)
        self.video_partner[linked_videos] = linked_music
        self.music_partner[linked_music] = linked_videos
        self.video_length = draw_lengths(bench._rng("pool_lengths"), videos, s.min_frames,
                                         s.video_frames)
        self.span_start, self.span_length = draw_spans(bench._rng("pool_spans"), s.span,
                                                       self.video_length)
        self.filler = draw_filler(s.filler, bench._rng("pool_filler"), videos, centres,
                                  bench.background, s.tau)

    @property
    def hidden_pairs(self) -> int:
        return int((self.video_partner >= 0).sum())

    def video_frames(self, idx: np.ndarray) -> np.ndarray:
        """Pool videos [len(idx), video_frames, Dv] (keep the first `video_length[i]`)."""
        s, vmap = self.bench.spec, self.bench.video_map
        hidden = span_hidden(vmap, self.video_content[idx], self.filler[idx],
                             self.span_start[idx], self.span_length[idx], s.video_frames)
        noise = item_noise(s.seed, _STREAM["pool_video_noise"], idx,
                           (s.video_frames, s.video_dim), s.feature_noise)
        return (vmap.output(hidden) + noise * vmap.scale).astype(np.float32)

    def music_frames(self, idx: np.ndarray) -> np.ndarray:
        """Pool songs [len(idx), music_frames, Dm]."""
        s, mmap = self.bench.spec, self.bench.music_map
        clean = mmap.output(mmap.hidden(self.music_content[idx]))[:, None, :]
        noise = item_noise(s.seed, _STREAM["pool_music_noise"], idx,
                           (s.music_frames, s.music_dim), s.feature_noise)
        return (clean + noise * mmap.scale).astype(np.float32)

    def truth_rows(self) -> list[dict]:
        """One row per pool item: side, style, hidden partner ("" for singles), video span."""
        rows = []
        for i, vid in enumerate(self.video_ids):
            p = self.video_partner[i]
            rows.append({"id": vid, "side": "video", "style": int(self.video_style[i]),
                         "partner_id": self.music_ids[p] if p >= 0 else "",
                         "span_start": int(self.span_start[i]),
                         "span_length": int(self.span_length[i])})
        for j, mid in enumerate(self.music_ids):
            p = self.music_partner[j]
            rows.append({"id": mid, "side": "music", "style": int(self.music_style[j]),
                         "partner_id": self.video_ids[p] if p >= 0 else "",
                         "span_start": "", "span_length": ""})
        return rows
