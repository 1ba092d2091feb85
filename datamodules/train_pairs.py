"""Training-pair overrides: which video goes with which music, and with what weight.

Self-training (SSVMR) re-pairs or down-weights noisy training pairs, and back retrieval adds
pairs. Both are expressed as a `TrainPairs` list over the rows of the train split: pair p
takes the VIDEO of row `video_rows[p]`, the MUSIC of row `music_rows[p]` and the loss weight
`weights[p]`. `PairOverrideDataset` serves such a list in the usual batch format, so the
models and losses see ordinary batches (plus `weight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.errors import DataError
from datamodules.pairs import PairDataset


@dataclass
class TrainPairs:
    """Pair p = (video of train row video_rows[p], music of train row music_rows[p])."""

    video_rows: np.ndarray  # int64 [P]
    music_rows: np.ndarray  # int64 [P]
    weights: np.ndarray  # float32 [P], finite, >= 0

    def __post_init__(self) -> None:
        self.video_rows = _rows(self.video_rows, "video_rows")
        self.music_rows = _rows(self.music_rows, "music_rows")
        w = np.asarray(self.weights)
        if w.ndim != 1 or not (np.issubdtype(w.dtype, np.number) or w.dtype == bool):
            raise DataError(f"train pairs: weights must be a 1-D numeric array, got {w.shape}")
        self.weights = np.ascontiguousarray(w, dtype=np.float32)
        lengths = {len(self.video_rows), len(self.music_rows), len(self.weights)}
        if len(lengths) != 1:
            raise DataError(
                f"train pairs: video_rows ({len(self.video_rows)}), music_rows "
                f"({len(self.music_rows)}) and weights ({len(self.weights)}) differ in length"
            )
        bad = ~np.isfinite(self.weights) | (self.weights < 0)
        if bad.any():
            p = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"train pairs: weight {self.weights[p]} of pair {p} must be finite and >= 0"
            )

    @classmethod
    def identity(cls, n: int) -> TrainPairs:
        """The dataset's own pairing: row i with row i, weight 1."""
        rows = np.arange(n, dtype=np.int64)
        return cls(rows, rows.copy(), np.ones(n, dtype=np.float32))

    @classmethod
    def concat(cls, *parts: TrainPairs) -> TrainPairs:
        return cls(
            np.concatenate([p.video_rows for p in parts]).astype(np.int64),
            np.concatenate([p.music_rows for p in parts]).astype(np.int64),
            np.concatenate([p.weights for p in parts]).astype(np.float32),
        )

    def __len__(self) -> int:
        return len(self.video_rows)

    def check_rows(self, n: int, what: str = "train pairs") -> None:
        """DataError unless every row is in [0, n) (the size of the train split)."""
        for name, rows in (("video", self.video_rows), ("music", self.music_rows)):
            bad = rows >= n
            if bad.any():
                p = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{what}: pair {p} names {name} row {rows[p]}, but the train split has "
                    f"{n} rows"
                )


def _rows(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise DataError(f"train pairs: {name} must be a 1-D integer array, got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.size and a.min() < 0:
        raise DataError(f"train pairs: {name} has a negative row ({a.min()})")
    return a


class PairOverrideDataset(Dataset):
    """`base` (a PairDataset or subclass) re-paired by `pairs`; one item per pair.

    A batch is what `base` gives for the video rows (video frames, text, text_emb and any
    other per-row key follow the VIDEO row) with the music side replaced by the music rows'
    frames (through `base._frames`, so a subclass's frame sampling applies), keys and ids;
    `index` is the position in the pair list and `weight` the pairs' weights [B].
    """

    def __init__(self, base: PairDataset, pairs: TrainPairs):
        pairs.check_rows(len(base))
        self.base = base
        self.pairs = pairs
        self._weights = torch.from_numpy(pairs.weights)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.__getitems__([i])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        pos = np.asarray(indices, dtype=np.int64)
        video_rows = self.pairs.video_rows[pos]
        music_rows = self.pairs.music_rows[pos]
        base = self.base
        # The music frames base computes for the video rows are replaced below: one extra
        # gather of the music side, but every key a (sub)class adds stays correct.
        batch = base.__getitems__(video_rows.tolist())
        batch["music"], batch["music_mask"] = base._frames("music", music_rows)
        t = torch.from_numpy(pos)
        batch["index"] = t
        batch["music_key"] = base.music_keys[torch.from_numpy(music_rows)]
        batch["music_id"] = [base.music_ids[i] for i in music_rows]
        batch["weight"] = self._weights[t]
        return batch
