"""What every dataset shares: a store prepared once, per-split datasets, per-device loaders."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from datamodules.errors import DataError
from datamodules.feature_store import SPLITS, StoreSplit, read_meta
from datamodules.pairs import PairDataset, identity_collate


class StoreDataModule(pl.LightningDataModule, abc.ABC):
    """Subclasses turn their native files into a feature store (`ensure_store`)."""

    def __init__(
        self,
        root: str | Path,
        store: str | Path | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
    ):
        super().__init__()
        self.root = Path(root)
        self.store_path = Path(store) if store else self.root / "store"
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, PairDataset] = {}

    @abc.abstractmethod
    def ensure_store(self) -> Path:
        """Make sure an up-to-date store exists at `self.store_path` (build it if not)."""

    def prepare_data(self) -> None:
        self.ensure_store()

    @property
    def dims(self) -> dict[str, int]:
        meta = read_meta(self.store_path)
        return {m: v["dim"] for m, v in meta["modalities"].items()}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        meta = read_meta(self.store_path)
        for split in SPLITS:
            if split not in meta["splits"]:
                raise DataError(f"{self.store_path}: store has no '{split}' split")
            self.datasets[split] = PairDataset(StoreSplit(self.store_path, split, meta))

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def per_device(self, global_batch: int, key: str) -> int:
        """The configured batch size is global: split it over all processes."""
        world = self._world_size()
        if global_batch % world:
            raise DataError(
                f"config: {key}={global_batch} is not divisible by the {world} processes "
                "(devices x nodes); the batch size is global"
            )
        return global_batch // world

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs = {"persistent_workers": True, "prefetch_factor": 4}
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # A ragged last batch would give the in-batch losses too few negatives.
            drop_last=train and len(dataset) > batch_size,
            num_workers=self.num_workers,
            collate_fn=identity_collate,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.per_device(self.batch_size, "data.batch_size"), True)

    def val_dataloader(self) -> DataLoader:
        bs = self.per_device(self.eval_batch_size, "data.eval_batch_size")
        return self._loader("val", bs, False)

    def test_dataloader(self) -> DataLoader:
        bs = self.per_device(self.eval_batch_size, "data.eval_batch_size")
        return self._loader("test", bs, False)
