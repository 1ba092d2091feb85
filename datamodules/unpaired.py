"""The unpaired pool in the store: videos and songs that belong to no split.

A dataset may list videos and songs that have no partner (MVD: splits/unpaired_videos.csv,
splits/unpaired_music.csv). The store holds them as two extra splits, `unpaired_video` and
`unpaired_music`, one row per item with that side's frames (the other side has zero
frames). They are in no training row and never evaluated; back retrieval may embed them
(`UnpairedDataset`) and train on pairs it mines among them (datamodules.train_pairs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.feature_store import StoreSplit
from datamodules.sampling import SparseFrameDataset

SIDES = ("video", "music")
UNPAIRED_SPLITS = {"video": "unpaired_video", "music": "unpaired_music"}


class UnpairedDataset(SparseFrameDataset):
    """One side of the pool, batched like that side of a pair batch.

    A batch (`__getitems__`) has `<side>` [B, frames, D], `<side>_mask` [B, frames], `index`
    (position in the pool list), `<side>_key` (int codes of the ids, as pair batches have them,
    plus `key_offset`), `<side>_id` (list[str]) and, for videos with planted spans, `salient`.
    Frames are Global-Sparse sampled: random when `train`, segment centres otherwise.
    """

    def __init__(self, split: StoreSplit, side: str, frames: int, train: bool = False,
                 salient: np.ndarray | None = None, key_offset: int = 0):
        if side not in SIDES:
            raise ValueError(f"side={side!r} must be one of {', '.join(SIDES)}")
        super().__init__(split, frames, train=train, salient=salient if side == "video" else None)
        self.side = side
        self.item_ids = self.ids if side == "video" else self.music_ids
        keys = self.video_keys if side == "video" else self.music_keys
        self.keys = keys + int(key_offset)

    def use_memory(self, device: torch.device | str) -> None:
        super().use_memory(device)
        self.keys = self.keys.to(device)  # batches carry no ids then (list: item_ids)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        if self.train:
            self._reseed()
        idx = np.asarray(indices, dtype=np.int64)
        side = self.side
        batch: dict[str, Any] = {}
        batch[side], batch[f"{side}_mask"] = self._frames(side, idx)
        t = torch.from_numpy(idx) if self.cache is None else self.cache.index(idx)
        batch["index"] = t
        batch[f"{side}_key"] = self.keys[t]
        if self.cache is None:
            batch[f"{side}_id"] = [self.item_ids[i] for i in idx]
        if self.salient is not None:
            batch["salient"] = self.last_video_salient
        return batch


def scatter_rows(n: int, parts: list[tuple[np.ndarray, dict[str, Any]]],
                 keys: tuple[str, ...]) -> dict[str, Any]:
    """One batch of `n` rows from parts (positions, batch): row positions[k] = part row k.

    Tensors of different lengths along dim 1 (frames) are zero/False-padded to the longest;
    a key some part lacks is left out of the result.
    """
    out: dict[str, Any] = {}
    for key in keys:
        values = [(pos, b[key]) for pos, b in parts if len(pos) and key in b]
        if not values or len(values) < sum(1 for pos, _ in parts if len(pos)):
            continue
        first = values[0][1]
        if isinstance(first, list):
            merged: list[Any] = [None] * n
            for pos, v in values:
                for p, item in zip(pos.tolist(), v):
                    merged[p] = item
            out[key] = merged
            continue
        shape = list(first.shape[1:])
        if len(shape) >= 1 and first.dim() >= 2:
            shape[0] = max(v.shape[1] for _, v in values)
        merged_t = first.new_zeros((n, *shape))
        for pos, v in values:
            index = torch.from_numpy(pos)
            if v.dim() >= 2 and v.shape[1] < shape[0]:
                merged_t[index, : v.shape[1]] = v
            else:
                merged_t[index] = v
        out[key] = merged_t
    return out
