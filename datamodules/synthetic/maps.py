"""Rendering latent contents into features: the fixed random maps and per-item noise.

Shared by the paired benchmark (`planted.PlantedBenchmark`) and the unpaired pool
(`pool.UnpairedPool`), so an unpaired video is drawn exactly like a paired one.
"""

from __future__ import annotations

import numpy as np


class FeatureMap:
    """A fixed random map from latent content to feature space: x = tanh(z A + c) W + b.

    The last layer is linear, so the mean of mapped frames equals the map of the mean hidden
    activation: pooled (vector) datasets get exactly the mean of what sequence datasets see.
    """

    def __init__(self, rng: np.random.Generator, in_dim: int, hidden: int, out_dim: int):
        self.A = rng.normal(0.0, 1.0 / np.sqrt(in_dim), (in_dim, hidden)) * 1.5
        self.c = rng.normal(0.0, 0.3, hidden)
        self.W = rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, out_dim))
        # Real features have very different scales and offsets per dimension.
        self.scale = np.exp(rng.normal(0.0, 0.4, out_dim))
        self.b = rng.normal(0.0, 0.5, out_dim)

    def hidden(self, z: np.ndarray) -> np.ndarray:
        return np.tanh(z @ self.A + self.c)

    def output(self, h: np.ndarray) -> np.ndarray:
        return (h @ self.W + self.b) * self.scale


def span_hidden(video_map: FeatureMap, content: np.ndarray, filler: np.ndarray,
                start: np.ndarray, length: np.ndarray, frames: int) -> np.ndarray:
    """[n, frames, H]: the salient content inside [start, start + length), the filler outside."""
    t = np.arange(frames)
    inside = (t >= start[:, None]) & (t < (start + length)[:, None])
    salient = video_map.hidden(content)[:, None, :]
    other = video_map.hidden(filler)[:, None, :]
    return np.where(inside[..., None], salient, other)


def item_noise(seed: int, stream: int, idx: np.ndarray, shape: tuple[int, ...],
               sd: float) -> np.ndarray:
    """Gaussian noise [len(idx), *shape], one stream per item: independent of the chunking."""
    out = np.empty((len(idx), *shape))
    for row, i in enumerate(idx):
        out[row] = np.random.default_rng([seed, stream, int(i)]).normal(0.0, sd, shape)
    return out


def draw_spans(rng: np.random.Generator, span: float, lengths: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each video's salient span, inside its `lengths` frames.

    The span length varies in [0.5, 1.5] x `span` x the video's length (at least one frame).
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    span_len = np.clip(np.rint(rng.uniform(0.5, 1.5, n) * (span * lengths)), 1, lengths)
    span_len = span_len.astype(np.int64)
    start = (rng.uniform(0.0, 1.0, n) * (lengths - span_len + 1)).astype(np.int64)
    return start, span_len


def draw_lengths(rng: np.random.Generator, n: int, min_frames: int, frames: int) -> np.ndarray:
    """Per-video frame counts: all `frames` when min_frames is 0 (nothing drawn), else uniform
    integers in [min_frames, frames]."""
    if min_frames == 0:
        return np.full(n, frames, dtype=np.int64)
    return rng.integers(min_frames, frames + 1, n).astype(np.int64)
