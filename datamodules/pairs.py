"""A torch Dataset of (video, music) pairs over one split of the feature store.

It implements `__getitems__`, so the DataLoader asks for a whole batch at once and the
frames are gathered with one fancy index per modality instead of a Python loop per item.

Store modalities other than video and music that hold exactly one frame per item (such as
"text_emb", precomputed text embeddings) come back as batch[name], float32 [B, D]
(dequantised if the store says so). Names the dataset sets itself are never overwritten.

`use_memory(device)` (data.cache=device|host) holds the split in memory on a torch device
(datamodules.device_store) and batches there: the same tensors, on that device, and no
strings in the batch (the ids stay in `ids` / `music_ids`, found by the batch's `index`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.device_store import DeviceSplit
from datamodules.feature_store import StoreSplit

MODALITIES = ("video", "music")
# Batch keys PairDataset / SparseFrameDataset set themselves.
RESERVED = frozenset({*MODALITIES, "video_mask", "music_mask", "index", "video_key", "music_key",
                      "video_id", "music_id", "text", "salient"})


def identity_collate(batch: Any) -> Any:
    """`__getitems__` already returns a collated batch."""
    return batch


class PairDataset(Dataset):
    def __init__(self, split: StoreSplit):
        self.split = split
        self.ids = [r["id"] for r in split.rows]
        self.music_ids = [r["music_id"] for r in split.rows]
        # Integer keys let evaluation de-duplicate galleries (a song used by several videos)
        # and gather ids across processes as tensors.
        self.video_keys = torch.from_numpy(
            np.unique(self.ids, return_inverse=True)[1].astype(np.int64)
        )
        self.music_keys = torch.from_numpy(
            np.unique(self.music_ids, return_inverse=True)[1].astype(np.int64)
        )
        # Per-item vectors (e.g. text_emb): one frame per item, returned as [B, D].
        self.vectors = [m for m in split.modalities
                        if m not in RESERVED and bool((split.lengths[m] == 1).all())]
        self.cache: DeviceSplit | None = None
        self.device_keys: tuple[torch.Tensor, torch.Tensor] | None = None

    def use_memory(self, device: torch.device | str) -> None:
        """Batch from the split held in memory on `device` (see the module docstring)."""
        self.cache = DeviceSplit(self.split, device, salient=getattr(self, "salient", None))
        self.device_keys = (self.video_keys.to(device), self.music_keys.to(device))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.__getitems__([i])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        batch: dict[str, Any] = {}
        for m in MODALITIES:
            frames, mask = self._frames(m, idx)
            batch[m], batch[f"{m}_mask"] = frames, mask
        if self.cache is not None:
            t = self.cache.index(idx)
            batch["index"] = t
            batch["video_key"], batch["music_key"] = (k[t] for k in self.device_keys)
        else:
            t = torch.from_numpy(idx)
            batch["index"] = t
            batch["video_key"] = self.video_keys[t]
            batch["music_key"] = self.music_keys[t]
            batch["video_id"] = [self.ids[i] for i in idx]
            batch["music_id"] = [self.music_ids[i] for i in idx]
        for m in self.vectors:
            batch[m] = self._vectors(m, idx)
        return batch

    def _vectors(self, modality: str, idx: np.ndarray) -> torch.Tensor:
        """The single frame of each item in `idx`: float32 [B, D]."""
        if self.cache is not None:
            return self.cache.vectors(modality, self.cache.index(idx))
        spec = self.split.modalities[modality]
        rows = self.split.offsets[modality][idx]
        x = np.array(self.split.arrays[modality][rows], dtype=np.float32)
        if spec.dequantize is not None:
            scale, offset = spec.dequantize
            x = x * np.float32(scale) + np.float32(offset)
        return torch.from_numpy(x.reshape(len(idx), spec.dim))

    def _frames(self, modality: str, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            return self.cache.padded(modality, idx)
        spec = self.split.modalities[modality]
        arr = self.split.arrays[modality]
        offsets, lengths = self.split.offsets[modality][idx], self.split.lengths[modality][idx]
        longest = int(lengths.max())
        if (lengths == longest).all():
            # Equal lengths (always for vector datasets): one gather of all frames.
            rows = (offsets[:, None] + np.arange(longest)[None, :]).reshape(-1)
            x = np.asarray(arr[rows]).reshape(len(idx), longest, -1)
            mask = np.ones((len(idx), longest), dtype=bool)
        else:
            x = np.zeros((len(idx), longest, spec.dim), dtype=arr.dtype)
            mask = np.zeros((len(idx), longest), dtype=bool)
            for row, (off, n) in enumerate(zip(offsets, lengths)):
                x[row, :n] = arr[off : off + n]
                mask[row, :n] = True
        x = x.astype(np.float32, copy=False)
        if spec.dequantize is not None:
            scale, offset = spec.dequantize
            x = x * np.float32(scale) + np.float32(offset)
            x[~mask] = 0.0  # padding stays zero, not the dequantised code 0
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(mask)
