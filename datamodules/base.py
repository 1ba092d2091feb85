"""What every dataset shares: a store prepared once, per-split datasets, per-device loaders."""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from datamodules.cache_place import choose_cache, split_nbytes
from datamodules.errors import DataError
from datamodules.feature_store import SPLITS, StoreSplit, read_meta
from datamodules.pairs import PairDataset, identity_collate
from datamodules.sampling import SparseFrameDataset
from datamodules.store_prepare import prepare_store
from datamodules.train_pairs import PairOverrideDataset, TrainPairs
from datamodules.unpaired import UnpairedDataset
from datamodules.unpaired_access import UnpairedPoolMixin

TRUTH_FILE = "truth.tsv"  # datamodules.synthetic.truth.TRUTH_FILE
# Dataset classes that can batch from memory (`use_memory`); others stay memory-mapped.
_IN_MEMORY = (PairDataset, SparseFrameDataset, UnpairedDataset)
log = logging.getLogger("vmr")


def shuffle_seed() -> int:
    """The run's seed as `seed_everything` recorded it (Lightning's DistributedSampler uses it)."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, ...)."""
    words = [v % 2**63 for v in values]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) % 2**63


class EpochSampler(RandomSampler):
    """A training order that depends only on (seed, epoch).

    A run resumed at epoch e shuffles exactly as the uninterrupted run did, whatever else
    drew random numbers before. Lightning calls `set_epoch` before every training epoch
    (as for DistributedSampler, which replaces this sampler under DDP with the same seed).
    """

    def __init__(self, data_source: Sized, seed: int = 0, epoch: int = 0):
        super().__init__(data_source)
        self.seed, self.epoch = int(seed), int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class StoreDataModule(UnpairedPoolMixin, pl.LightningDataModule, abc.ABC):
    """Subclasses turn their native files into a feature store (`ensure_store`).

    The unpaired pool (`unpaired_ids`, `unpaired_dataloader`, `pairs_from_ids`) comes from
    datamodules.unpaired_access; a subclass enables it with `make_unpaired_dataset`.
    """

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
        # Training-pair overrides (datamodules.train_pairs): a replacement of the dataset's
        # own pairing (self-training pseudo-labels) and pairs added to it (back retrieval).
        self._train_pairs: TrainPairs | None = None
        self._extra_pairs: TrainPairs | None = None
        self._unpaired_cache: dict[tuple[str, bool], Any] = {}
        # data.cache / data.cache_fraction (datamodules.cache_place.choose_cache); the
        # chosen place ("device", "host" or "none") once set up.
        self.cache, self.cache_fraction = "none", 0.5
        self.cache_device: torch.device | None = None

    def configure_cache(self, mode: str, fraction: float = 0.5) -> None:
        """Where the splits live for batching: auto | device | host | none (before setup)."""
        choose_cache(mode, fraction, 0, torch.device("cpu"))  # checks the mode
        self.cache, self.cache_fraction = mode, float(fraction)

    @abc.abstractmethod
    def ensure_store(self) -> Path:
        """Make sure an up-to-date store exists at `self.store_path` (build it if not)."""

    def prepare_data(self) -> None:
        # Under the store's lock; a damaged store is rebuilt from the source or is a one-line
        # error, before any run folder exists (datamodules.store_prepare).
        prepare_store(self.store_path, self.ensure_store, self.root)

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
            self.datasets[split] = self.make_dataset(StoreSplit(self.store_path, split, meta))
        self._hold_in_memory()

    def _hold_in_memory(self) -> None:
        """Put the splits in device or host memory as data.cache says (one log line)."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        nbytes = sum(split_nbytes(d.split) for d in self.datasets.values())
        place = choose_cache(self.cache, self.cache_fraction, nbytes, device)
        if place == "none":
            return
        self.cache_device = device if place == "device" else torch.device("cpu")
        held = [s for s, d in self.datasets.items() if type(d) in _IN_MEMORY]
        for split in held:
            self.datasets[split].use_memory(self.cache_device)
        self.num_workers = 0  # batches are built where the data lives: no worker processes
        log.info("data.cache=%s: %s (%.1f MB as stored) batched in %s memory (%s)", self.cache,
                 ", ".join(held) or "no split", nbytes / 2**20, place, self.cache_device)

    def make_dataset(self, split: StoreSplit) -> PairDataset:
        """The dataset over one split; sequence datasets sample frames here."""
        return PairDataset(split)

    @property
    def store_fingerprint(self) -> str:
        """Identifies the store's content: source fingerprint and split counts, hashed."""
        meta = read_meta(self.store_path)
        source = dict(meta.get("source", {}))
        source.pop("root", None)  # the same data moved elsewhere is the same store
        basis = {
            "source": source.get("fingerprint", source),
            "counts": {s: v.get("count") for s, v in sorted(meta["splits"].items())},
        }
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def truth_path(self) -> Path | None:
        """The hidden truth of a synthetic dataset (for measuring only; never trained on)."""
        path = self.root / TRUTH_FILE
        return path if path.is_file() else None

    def _unpaired(self, side: str, train: bool = False) -> Any:
        dataset = super()._unpaired(side, train)
        if (self.cache_device is not None and type(dataset) in _IN_MEMORY
                and dataset.cache is None):
            dataset.use_memory(self.cache_device)
        return dataset

    def train_video_ids(self, index: torch.Tensor) -> list[str]:
        """The video ids of a training batch's rows, from its `index` (batches in memory carry
        no strings): positions in the training pairs when they are overridden, else rows."""
        pos = index.cpu().numpy()
        train_ids = self.datasets["train"].ids
        if self._train_pairs is None and self._extra_pairs is None:
            return [train_ids[i] for i in pos]
        pairs = self.train_pairs
        rows, pooled = pairs.video_rows[pos], pairs.video_unpaired[pos]
        pool_ids = self.unpaired_ids("video") if pooled.any() else []
        return [pool_ids[r] if p else train_ids[r] for r, p in zip(rows, pooled)]

    # ----- training-pair overrides -------------------------------------------------------

    def set_train_pairs(self, pairs: TrainPairs | None) -> None:
        """Replace the train split's own pairing (None: back to the dataset's pairs)."""
        self._check_pairs(pairs, "train pairs")
        self._train_pairs = pairs

    def set_extra_pairs(self, pairs: TrainPairs | None) -> None:
        """Pairs trained on in addition to the (possibly replaced) pairing (None: none).

        They may take videos or songs from the unpaired pool (`pairs_from_ids`).
        """
        self._check_pairs(pairs, "extra pairs")
        self._extra_pairs = pairs

    def _check_pairs(self, pairs: TrainPairs | None, what: str) -> None:
        if pairs is not None and "train" in self.datasets:
            pool = self._pool_sizes() if pairs.uses_pool else None
            pairs.check_rows(len(self.datasets["train"]), what, pool=pool)

    @property
    def train_pairs(self) -> TrainPairs:
        """The pairs trained on now: the pairing (identity unless set) plus any extras."""
        base = self._train_pairs
        if base is None:
            if "train" not in self.datasets:
                raise DataError("train pairs: call setup() first (the train split is not loaded)")
            base = TrainPairs.identity(len(self.datasets["train"]))
        return base if self._extra_pairs is None else TrainPairs.concat(base, self._extra_pairs)

    def train_dataset(self) -> Dataset:
        """The train split as trained on: the dataset itself, or its re-paired view."""
        if self._train_pairs is None and self._extra_pairs is None:
            return self.datasets["train"]
        pairs = self.train_pairs
        pool = self._training_pool() if pairs.uses_pool else None
        return PairOverrideDataset(self.datasets["train"], pairs, pool=pool)

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

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        dataset = self.train_dataset() if split == "train" else self.datasets[split]
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs = {"persistent_workers": True, "prefetch_factor": 4}
        if train:
            # No `shuffle` argument: Lightning would copy it onto the DistributedSampler it
            # substitutes under DDP; it reads shuffling off the RandomSampler instead.
            seed, epoch = shuffle_seed(), self._epoch()
            kwargs["sampler"] = EpochSampler(dataset, seed=seed, epoch=epoch)
            # Creating an iterator draws the workers' base seed from this generator, not
            # from the global RNG, so reloading loaders does not shift dropout's stream.
            kwargs["generator"] = torch.Generator().manual_seed(mix_seed(seed, epoch, 1))
        else:
            kwargs["shuffle"] = False
        return DataLoader(
            dataset,
            batch_size=batch_size,
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
