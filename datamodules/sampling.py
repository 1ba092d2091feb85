"""Global Sparse (GS) sampling of frame sequences (II-CLVM; TSN-style).

A sequence of `length` frames is cut into `n` equal segments, segment k being the integer
frames [floor(k L / n), floor((k+1) L / n)); one frame is taken per segment: uniformly at
random in training, the centre frame start + (end - start) // 2 in evaluation. Sequences
shorter than `n` give all their frames in order, and the remaining slots are masked out
(index 0, mask False): a batch of videos of different lengths is [B, n, D] plus a [B, n]
mask whose True entries come first (models pool and attend over the masked frames only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.feature_store import StoreSplit
from datamodules.pairs import PairDataset
from models.text import token_hashes


def global_sparse_batch(
    lengths: np.ndarray, n: int, train: bool, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices [B, n] int64 (relative to each sequence) and validity mask [B, n]."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if (lengths < 0).any():
        raise ValueError("sequence lengths must be >= 0")
    k = np.arange(n, dtype=np.int64)[None, :]
    L = lengths[:, None]
    start = (k * L) // n
    end = ((k + 1) * L) // n
    if train:
        if rng is None:
            raise ValueError("training sampling needs a random generator")
        u = rng.random((len(lengths), n))
        sparse = start + np.minimum((u * (end - start)).astype(np.int64), end - start - 1)
    else:
        sparse = start + (end - start) // 2
    short = L < n
    dense = np.broadcast_to(k, sparse.shape)
    idx = np.where(short, dense, sparse)
    mask = np.where(short, dense < L, True)
    idx = np.where(mask, idx, 0)
    return idx.astype(np.int64), mask.astype(bool)


def global_sparse_indices(
    length: int, n: int, train: bool, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices [n] int64 and mask [n] bool for one sequence of `length` frames."""
    idx, mask = global_sparse_batch(np.array([length]), n, train, rng)
    return idx[0], mask[0]


class SparseFrameDataset(PairDataset):
    """PairDataset that feeds `frames` GS-sampled frames per modality ([B, frames, D] + mask).

    Training draws are random but reproducible, including across a resume: each batch seeds
    its generator with one draw from torch's RNG, which is the process's global RNG without
    workers (saved and restored with checkpoints) and the worker's own torch RNG with
    workers (seeded from the DataLoader's epoch-seeded generator). Evaluation takes segment
    centres. Adds `text` (list[str], "" when
    a row has none) when any row of the split carries text. One-frame-per-item modalities
    (e.g. "text_emb") are not sampled: PairDataset returns them as batch[name] [B, D].

    `salient` (bool per stored video frame of the split, datamodules.salient) adds
    batch["salient"], bool [B, frames]: whether each sampled video frame lies in a planted
    salient span (False on masked slots). It is for metrics only; no loss may read it.
    """

    def __init__(self, split: StoreSplit, frames: int = 32, train: bool = False,
                 salient: np.ndarray | None = None):
        super().__init__(split)
        if frames < 1:
            raise ValueError(f"frames={frames} must be >= 1")
        self.frames = frames
        self.train = train
        self.salient = salient
        # The salient mask of the last video frames gathered (`_frames`), for __getitems__.
        self.last_video_salient: torch.Tensor | None = None
        has_text = any("text" in r for r in split.rows)
        self.texts = [str(r.get("text") or "") for r in split.rows] if has_text else None
        self._rng: np.random.Generator | None = None
        self.text_tokens: torch.Tensor | None = None

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            self._reseed()
        return self._rng

    def _reseed(self) -> None:
        # A stream that is a function of torch's RNG state, which checkpoints restore.
        self._rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))

    def use_memory(self, device: torch.device | str) -> None:
        """As PairDataset's; the text goes into the batch as `text_tokens` (CRC-32 of each
        token, models.text.token_hashes), not as strings."""
        super().use_memory(device)
        if self.texts is not None:
            self.text_tokens = token_hashes(self.texts).to(device)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        if self.train:
            self._reseed()
        batch = super().__getitems__(indices)
        if self.texts is not None and self.cache is not None:
            batch["text_tokens"] = self.text_tokens[batch["index"]]
        elif self.texts is not None:
            batch["text"] = [self.texts[i] for i in batch["index"].tolist()]
        if self.salient is not None:
            batch["salient"] = self.last_video_salient
        return batch

    def _frames(self, modality: str, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            # The same uniform draws as below, so both paths sample the same frames.
            uniform = self._generator().random((len(idx), self.frames)) if self.train else None
            x, mask, rows = self.cache.sparse(modality, self.cache.index(idx), self.frames,
                                              uniform)
            if modality == "video" and self.salient is not None:
                self.last_video_salient = self.cache.salient_at(rows, mask)
            return x, mask
        spec = self.split.modalities[modality]
        arr = self.split.arrays[modality]
        offsets = self.split.offsets[modality][idx]
        lengths = self.split.lengths[modality][idx]
        rng = self._generator() if self.train else None
        rel, mask = global_sparse_batch(lengths, self.frames, self.train, rng)
        x = np.zeros((len(idx), self.frames, spec.dim), dtype=np.float32)
        rows = offsets[:, None] + rel
        if mask.any():
            x[mask] = arr[rows[mask]]
        if modality == "video" and self.salient is not None:
            salient = np.zeros(mask.shape, dtype=bool)
            salient[mask] = self.salient[rows[mask]]
            self.last_video_salient = torch.from_numpy(salient)
        if spec.dequantize is not None:
            scale, offset = spec.dequantize
            x[mask] = x[mask] * np.float32(scale) + np.float32(offset)
        return torch.from_numpy(x), torch.from_numpy(mask)
