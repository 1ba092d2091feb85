"""YouTube-8M music videos: the DataModule (frame-level TFRecords -> store -> GS sampling).

Expected layout (as downloaded, or as `vmr synth --dataset youtube8m` writes it):

    <root>/frame/*.tfrecord   frame-level SequenceExamples (or the files directly in <root>);
                              *.tfrecords and gzip / zlib compressed files (*.gz, *.zlib, or
                              any name: the content decides) are read too
    <root>/vocabulary.csv     label names (needed when labels are selected by name)

The pieces: youtube8m_files (finding files, partitions), youtube8m_labels (vocabulary),
youtube8m_records (decoding), youtube8m_scan (reading in parallel), youtube8m_splits (which
split each record goes to), youtube8m_skips (skip counts, empty splits) and youtube8m_prepare
(packing the store). The names other code used from here are re-exported.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from datamodules.base import StoreDataModule
from datamodules.errors import DataError
from datamodules.feature_store import StoreSplit
from datamodules.sampling import SparseFrameDataset
from datamodules.youtube8m_files import PARTITIONS, fingerprint, partition_of, source_files
from datamodules.youtube8m_labels import VOCABULARY, read_vocabulary, resolve_labels
from datamodules.youtube8m_prepare import (
    MODALITIES,
    prepare_youtube8m,
    recorded_settings,
    store_is_current,
)
from datamodules.youtube8m_splits import SplitSettings, hash_unit

log = logging.getLogger("vmr")

__all__ = [
    "MODALITIES", "PARTITIONS", "VOCABULARY", "SplitSettings", "YouTube8MDataModule",
    "fingerprint", "hash_unit", "partition_of", "prepare_youtube8m", "read_vocabulary",
    "resolve_labels", "source_files", "store_is_current",
]


class YouTube8MDataModule(StoreDataModule):
    """YouTube-8M music videos, `frames` GS-sampled frames per modality; optionally synthetic."""

    def __init__(
        self,
        root: str | Path,
        store: str | Path | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        frames: int = 32,
        labels: Sequence[str | int] = ("Music video",),
        workers: int = 2,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        synthetic: dict | None = None,
        split_seed: int | None = None,
    ):
        super().__init__(root, store, batch_size, eval_batch_size, num_workers)
        if frames < 1:
            raise DataError(f"frames={frames} must be >= 1")
        self.frames = frames
        self.labels = [labels] if isinstance(labels, (str, int)) else list(labels)
        self.workers = workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.synthetic = synthetic

    def ensure_store(self) -> Path:
        if self.synthetic is not None:
            self._ensure_synthetic()
        source_files(self.root)  # a clear error before any "preparing" message
        current = store_is_current(self.root, self.store_path, self.labels,
                                   self.val_fraction, self.test_fraction, self.split_seed)
        if not current:
            # Unset split settings: those of the store being replaced (`vmr prepare
            # --val-fraction` on a train-only folder stays in force), else the defaults.
            old = recorded_settings(self.store_path) or SplitSettings()
            val = old.val_fraction if self.val_fraction is None else self.val_fraction
            test = old.test_fraction if self.test_fraction is None else self.test_fraction
            seed = old.seed if self.split_seed is None else self.split_seed
            log.info("youtube8m: preparing %s into %s", self.root, self.store_path)
            prepare_youtube8m(self.root, self.store_path, self.labels, self.workers, val, test,
                              split_seed=seed)
        return self.store_path

    def make_dataset(self, split: StoreSplit) -> SparseFrameDataset:
        # Global Sparse sampling: random frames in training, segment centres otherwise.
        return SparseFrameDataset(split, self.frames, train=split.split == "train")

    def _ensure_synthetic(self) -> None:
        from datamodules.synthetic.ensure import ensure_synthetic, planted_spec
        from datamodules.synthetic.youtube8m import write_youtube8m

        settings = dict(self.synthetic or {})
        extra = {"shards": int(settings.pop("shards", 4)),
                 "non_music": float(settings.pop("non_music", 0.25)),
                 "missing": float(settings.pop("missing", 0.0)),
                 "shared_songs": float(settings.pop("shared_songs", 0.0)),
                 # Text embeddings only when asked for (the registry asks when the model reads
                 # precomputed text), so existing synthetic roots and stores stay as they are.
                 "text_emb_dim": int(settings.pop("text_emb_dim", 0))}
        settings.update(music_dim=128, video_dim=1024)
        if not 0.0 <= extra["shared_songs"] < 1.0:
            raise DataError(f"data.synthetic.shared_songs={extra['shared_songs']} must be in "
                            "[0, 1)")
        spec = planted_spec(settings)
        wanted = {"dataset": "youtube8m", **extra, **dataclasses.asdict(spec)}
        if not (spec.text and extra["text_emb_dim"] > 0):
            del wanted["text_emb_dim"]  # synth.json has it only when text_emb was written
        ensure_synthetic(self.root, wanted, lambda: write_youtube8m(spec, self.root, **extra),
                         "youtube8m")
