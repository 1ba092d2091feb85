"""The DataModule side of the unpaired pool: listing, embedding loaders, pairs by id.

Every StoreDataModule answers: a dataset without a pool (or whose class builds no pool
dataset, `make_unpaired_dataset` returning None) has no unpaired ids and no loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DataError
from datamodules.feature_store import StoreSplit, read_meta
from datamodules.pairs import identity_collate
from datamodules.train_pairs import TrainPairs
from datamodules.unpaired import SIDES, UNPAIRED_SPLITS


class UnpairedPoolMixin:
    """Methods StoreDataModule gets for the pool (store splits `unpaired_video/_music`)."""

    store_path: Any
    datasets: dict[str, Any]
    num_workers: int
    _unpaired_cache: dict[tuple[str, bool], Any]

    def make_unpaired_dataset(self, split: StoreSplit, side: str, train: bool,
                              key_offset: int) -> Dataset | None:
        """The pool dataset for one side (None: this dataset class has no pool support).

        `train`: random frame sampling for training pairs, else evaluation (centre) sampling;
        `key_offset` is added to the id keys (datamodules.unpaired.UnpairedDataset).
        """
        return None

    def _unpaired(self, side: str, train: bool = False) -> Any:
        if side not in SIDES:
            raise DataError(f"unpaired side {side!r} must be one of {', '.join(SIDES)}")
        key = (side, train)
        if key not in self._unpaired_cache:
            meta = read_meta(self.store_path)
            name = UNPAIRED_SPLITS[side]
            dataset = None
            if name in meta["splits"]:
                # Training batches mix pool rows with train rows: keys follow the train keys.
                offset = 0
                if train:
                    keys = getattr(self.datasets["train"], f"{side}_keys")
                    offset = int(keys.max()) + 1 if len(keys) else 0
                split = StoreSplit(self.store_path, name, meta)
                dataset = self.make_unpaired_dataset(split, side, train, offset)
            self._unpaired_cache[key] = dataset
        return self._unpaired_cache[key]

    def unpaired_ids(self, side: str) -> list[str]:
        """Ids of the pool's videos or songs ("video"/"music"), in list order ([]: no pool)."""
        dataset = self._unpaired(side)
        return list(dataset.item_ids) if dataset is not None else []

    def unpaired_dataloader(self, side: str, batch_size: int) -> DataLoader | None:
        """Evaluation-style batches of the pool's `side` ("video" or "music"), in list order.

        Each batch has that side's frames and mask (centred Global-Sparse sampling, as in the
        test loader), `index` (position in `unpaired_ids(side)`), `<side>_key` and `<side>_id`,
        so `model.encode_video(batch)` / `model.encode_music(batch)` take it as it is; videos
        with planted spans also carry `salient`. Every process gets the whole list (no
        distributed sampler). None when the dataset has no such list.
        """
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"unpaired_dataloader: batch_size={batch_size!r} must be >= 1")
        dataset = self._unpaired(side)
        if dataset is None:
            return None
        return DataLoader(dataset, batch_size=int(batch_size), shuffle=False,
                          num_workers=self.num_workers, collate_fn=identity_collate)

    def _pool_sizes(self) -> dict[str, int]:
        return {side: len(self.unpaired_ids(side)) for side in SIDES}

    def _training_pool(self) -> dict[str, Any]:
        return {side: d for side in SIDES if (d := self._unpaired(side, train=True)) is not None}

    def pairs_from_ids(self, video_ids: Sequence[str], music_ids: Sequence[str],
                       weights: Sequence[float] | np.ndarray) -> TrainPairs:
        """TrainPairs for (video id, music id, weight) triples, ids from the train split or
        the unpaired pool.

        A video id resolves to the pool when it is in `unpaired_ids("video")`, otherwise to
        its first train row; a music id likewise (pool first, then the first train row that
        names it). Pool and split ids are disjoint (the layout checks it). An id in neither is
        a DataError naming it. Pass the result (alone, or `TrainPairs.concat`-ed with in-split
        extras) to `set_extra_pairs`: pool videos and songs then reach the training loader with
        their weights, frames sampled like the train split's. Call after `setup()`.
        """
        if "train" not in self.datasets:
            raise DataError("pairs_from_ids: call setup() first (the train split is not loaded)")
        if not len(video_ids) == len(music_ids) == len(weights):
            raise DataError(f"pairs_from_ids: {len(video_ids)} video ids, {len(music_ids)} "
                            f"music ids and {len(weights)} weights differ in length")
        train = self.datasets["train"]
        resolved = {}
        for side, ids, train_ids in (("video", video_ids, train.ids),
                                     ("music", music_ids, train.music_ids)):
            pool = {key: i for i, key in enumerate(self.unpaired_ids(side))}
            first: dict[str, int] = {}
            for i, key in enumerate(train_ids):
                first.setdefault(key, i)
            rows, flags = [], []
            for key in ids:
                if key in pool:
                    rows.append(pool[key])
                    flags.append(True)
                elif key in first:
                    rows.append(first[key])
                    flags.append(False)
                else:
                    raise DataError(f"pairs_from_ids: {side} id {key!r} is neither in the train "
                                    "split nor in the unpaired pool")
            resolved[side] = (np.array(rows, dtype=np.int64), np.array(flags, dtype=bool))
        (v_rows, v_pool), (m_rows, m_pool) = resolved["video"], resolved["music"]
        return TrainPairs(v_rows, m_rows, np.asarray(weights, dtype=np.float32), v_pool, m_pool)
