"""Batches from a split in host memory (data.cache=host) live in recycled arrays: the ones a
caller keeps (whole, as a view, as NumPy) stay as they were, the dropped ones are refilled.

Every array is pooled here (no size floor), so this tiny store exercises what 30 MB batches
do; the reference is the memory-mapped loader (data.cache=none) with the same seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import batch_buffers
from datamodules.synthetic.planted import PlantedSpec
from datamodules.synthetic.youtube8m import write_youtube8m
from datamodules.youtube8m import YouTube8MDataModule


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    spec = PlantedSpec(pairs=120, val=10, test=10, music_dim=128, video_dim=1024,
                       music_frames=9, video_frames=11, seed=2)
    return write_youtube8m(spec, tmp_path_factory.mktemp("buffers") / "yt8m", shards=1,
                           progress=False)


def _module(root, cache: str) -> YouTube8MDataModule:
    dm = YouTube8MDataModule(root, batch_size=8, eval_batch_size=8, frames=6, workers=1)
    dm.configure_cache(cache)
    dm.prepare_data()
    dm.setup()
    return dm


def test_kept_batches_survive_and_dropped_ones_are_reused(root, monkeypatch):
    monkeypatch.setattr(batch_buffers, "MIN_POOLED_BYTES", 0)
    plain, held = _module(root, "none"), _module(root, "host")
    torch.manual_seed(3)
    ref = list(plain.train_dataloader())
    torch.manual_seed(3)
    kept: dict[int, object] = {}
    pointers = []
    for k, batch in enumerate(held.train_dataloader()):
        pointers.append(batch["video"].data_ptr())
        if k % 4 == 0:
            kept[k] = batch["video"]  # the whole batch
        elif k % 4 == 1:
            kept[k] = batch["video"][0]  # a view of one item
        elif k % 4 == 2:
            kept[k] = batch["music"].numpy()  # NumPy over the tensor
        del batch  # the rest is dropped
    assert len(pointers) == len(ref) >= 12
    for k, value in kept.items():
        if k % 4 == 0:
            assert torch.equal(value.view(torch.int32), ref[k]["video"].view(torch.int32)), k
        elif k % 4 == 1:
            assert torch.equal(value, ref[k]["video"][0]), k
        else:
            assert np.array_equal(value.view(np.int32), ref[k]["music"].numpy().view(np.int32))
    pool = held.datasets["train"].cache._buffers
    assert len(pool.arrays) <= pool.capacity
    # A kept video array is never handed out again; a dropped one is, for a later batch.
    for k in range(len(pointers)):
        later = pointers[k + 1:]
        if k % 4 in (0, 1):
            assert pointers[k] not in later, k
    assert any(pointers[k] in pointers[k + 1:] for k in range(len(pointers)) if k % 4 == 3)


def test_held_epoch_equals_memory_mapped_with_pooling(root, monkeypatch):
    """A whole epoch kept in a list (as Lightning's prefetching keeps a couple): no batch
    overwritten by a later one, training and evaluation."""
    monkeypatch.setattr(batch_buffers, "MIN_POOLED_BYTES", 0)
    plain, held = _module(root, "none"), _module(root, "host")
    for name in ("train_dataloader", "val_dataloader"):
        torch.manual_seed(4)
        ref = list(getattr(plain, name)())
        torch.manual_seed(4)
        got = list(getattr(held, name)())
        assert len(ref) == len(got) > 0
        for a, b in zip(ref, got):
            for key in ("video", "music", "video_mask", "music_mask"):
                assert torch.equal(a[key], b[key]), (name, key)
