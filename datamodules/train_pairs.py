"""Training-pair overrides: which video goes with which music, and with what weight.

Self-training (SSVMR) re-pairs or down-weights noisy training pairs, and back retrieval adds
pairs. Both are expressed as a `TrainPairs` list over the rows of the train split: pair p
takes the VIDEO of row `video_rows[p]`, the MUSIC of row `music_rows[p]` and the loss weight
`weights[p]`. `PairOverrideDataset` serves such a list in the usual batch format, so the
models and losses see ordinary batches (plus `weight`).

A pair may also take its video or its music from the dataset's unpaired pool
(datamodules.unpaired): where `video_unpaired[p]` (`music_unpaired[p]`) is True, the row is a
position in the pool's video (music) list instead of a train row. Back retrieval over the
pool adds such pairs; `StoreDataModule.pairs_from_ids` builds them from ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.errors import DataError
from datamodules.pairs import PairDataset
from datamodules.unpaired import scatter_rows


@dataclass
class TrainPairs:
    """Pair p = (video of train row video_rows[p], music of train row music_rows[p])."""

    video_rows: np.ndarray  # int64 [P]
    music_rows: np.ndarray  # int64 [P]
    weights: np.ndarray  # float32 [P], finite, >= 0
    # bool [P]: the row is a position in the unpaired pool's list (None: all False).
    video_unpaired: np.ndarray | None = None
    music_unpaired: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.video_rows = _rows(self.video_rows, "video_rows")
        self.music_rows = _rows(self.music_rows, "music_rows")
        self.video_unpaired = _flags(self.video_unpaired, len(self.video_rows), "video_unpaired")
        self.music_unpaired = _flags(self.music_unpaired, len(self.music_rows), "music_unpaired")
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
            np.concatenate([p.video_unpaired for p in parts]).astype(bool),
            np.concatenate([p.music_unpaired for p in parts]).astype(bool),
        )

    def __len__(self) -> int:
        return len(self.video_rows)

    @property
    def uses_pool(self) -> bool:
        """True when some pair takes its video or music from the unpaired pool."""
        return bool(self.video_unpaired.any() or self.music_unpaired.any())

    def check_rows(self, n: int, what: str = "train pairs",
                   pool: dict[str, int] | None = None) -> None:
        """DataError unless every train row is in [0, n) (the size of the train split) and
        every pool row is in [0, pool[side]) (the pool list sizes; no pool: 0 items)."""
        pool = pool or {}
        for name, rows, flags in (("video", self.video_rows, self.video_unpaired),
                                  ("music", self.music_rows, self.music_unpaired)):
            bad = ~flags & (rows >= n)
            if bad.any():
                p = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{what}: pair {p} names {name} row {rows[p]}, but the train split has "
                    f"{n} rows"
                )
            size = pool.get(name, 0)
            bad = flags & (rows >= size)
            if bad.any():
                p = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{what}: pair {p} names unpaired {name} {rows[p]}, but the dataset's "
                    f"unpaired {name} list has {size} items"
                )


def _rows(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise DataError(f"train pairs: {name} must be a 1-D integer array, got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.size and a.min() < 0:
        raise DataError(f"train pairs: {name} has a negative row ({a.min()})")
    return a


def _flags(x: Any, n: int, name: str) -> np.ndarray:
    if x is None:
        return np.zeros(n, dtype=bool)
    a = np.asarray(x)
    if a.shape != (n,) or a.dtype != bool:
        raise DataError(f"train pairs: {name} must be a bool array of {n} entries, got "
                        f"{a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


class PairOverrideDataset(Dataset):
    """`base` (a PairDataset or subclass) re-paired by `pairs`; one item per pair.

    A batch is what `base` gives for the video rows (video frames, text, text_emb and any
    other per-row key follow the VIDEO row) with the music side replaced by the music rows'
    frames (through `base._frames`, so a subclass's frame sampling applies), keys and ids;
    `index` is the position in the pair list and `weight` the pairs' weights [B].

    Pool rows (pairs.video_unpaired / music_unpaired) come from `pool[side]`, a
    datamodules.unpaired.UnpairedDataset sampling like `base`; their keys follow base's keys
    (its key_offset), so keys stay distinct within a batch. Datasets whose videos carry text
    or other per-video vectors cannot take pool videos (the pool has none).
    """

    def __init__(self, base: PairDataset, pairs: TrainPairs, pool: dict[str, Any] | None = None):
        self.pool = dict(pool or {})
        pairs.check_rows(len(base), pool={side: len(d) for side, d in self.pool.items()})
        if pairs.video_unpaired.any() and (getattr(base, "texts", None) is not None
                                           or base.vectors):
            raise DataError("train pairs: unpaired videos cannot join a train split whose "
                            "videos carry text or per-video vectors")
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
        from_pool = self.pairs.video_unpaired[pos]
        base = self.base
        # The music frames base computes for the video rows are replaced below: one extra
        # gather of the music side, but every key a (sub)class adds stays correct.
        if from_pool.any():
            batch = self._scatter("video", video_rows, from_pool,
                                  base.__getitems__, VIDEO_KEYS)
        else:
            batch = base.__getitems__(video_rows.tolist())
        batch.update(self._scatter("music", music_rows, self.pairs.music_unpaired[pos],
                                   self._music_part, MUSIC_KEYS))
        t = torch.from_numpy(pos)
        if base.cache is not None:  # in memory on a device: tensors there, no ids
            t = base.cache.index(pos)
            self._weights = self._weights.to(t.device)
        batch["index"] = t
        batch["weight"] = self._weights[t]
        return batch

    def _music_part(self, rows: list[int]) -> dict[str, Any]:
        base, idx = self.base, np.asarray(rows, dtype=np.int64)
        music, mask = base._frames("music", idx)
        if base.cache is not None:
            key = base.device_keys[1][base.cache.index(idx)]
            return {"music": music, "music_mask": mask, "music_key": key}
        return {"music": music, "music_mask": mask,
                "music_key": base.music_keys[torch.from_numpy(idx)],
                "music_id": [base.music_ids[i] for i in idx]}

    def _scatter(self, side: str, rows: np.ndarray, from_pool: np.ndarray, train_part: Any,
                 keys: tuple[str, ...]) -> dict[str, Any]:
        """Batch keys of one side for `rows`, train rows from `train_part`, pool rows from
        the pool, in pair order."""
        if not from_pool.any():
            return {k: v for k, v in train_part(rows.tolist()).items() if k in keys}
        parts = [(np.flatnonzero(~from_pool), train_part(rows[~from_pool].tolist()))
                 if (~from_pool).any() else (np.zeros(0, dtype=np.int64), {})]
        parts.append((np.flatnonzero(from_pool),
                      self.pool[side].__getitems__(rows[from_pool].tolist())))
        return scatter_rows(len(rows), parts, keys)


VIDEO_KEYS = ("video", "video_mask", "video_key", "video_id", "salient")
MUSIC_KEYS = ("music", "music_mask", "music_key", "music_id")
