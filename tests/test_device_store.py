"""Batches from splits held in memory (data.cache=host|device) equal the memory-mapped path's.

Same seed, same tensors bit for bit, for every dataset kind (HIMV-200K vectors, YouTube-8M
uint8 codes with text and text embeddings, MVD variable-length videos with planted spans and
an unpaired pool), training and evaluation, re-paired training sets included; the in-memory
batches carry no strings, and the ids stay reachable through `index`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from datamodules.base import StoreDataModule
from datamodules.cache_place import choose_cache
from datamodules.device_store import global_sparse_torch
from datamodules.himv200k import HIMV200KDataModule
from datamodules.mvd import MVDDataModule
from datamodules.sampling import global_sparse_batch
from datamodules.synthetic.mvd import mvd_settings, write_mvd
from datamodules.synthetic.planted import PlantedSpec
from datamodules.synthetic.youtube8m import write_youtube8m
from datamodules.train_pairs import TrainPairs
from datamodules.youtube8m import YouTube8MDataModule
from models.text import bucket_tokens, hash_tokens, token_hashes

STRINGS = {"video_id", "music_id", "text"}
MVD_SPEC = PlantedSpec(**mvd_settings({"pairs": 90, "val": 20, "test": 20, "video_frames": 10,
                                       "music_frames": 8, "min_frames": 2, "seed": 3}))


def _himv(root: Path, cache: str) -> StoreDataModule:
    return HIMV200KDataModule(root, batch_size=32, eval_batch_size=40, val_size=50, test_size=50)


def _yt8m(root: Path, cache: str) -> StoreDataModule:
    return YouTube8MDataModule(root, batch_size=16, eval_batch_size=24, frames=6, workers=1)


def _mvd(root: Path, cache: str) -> StoreDataModule:
    return MVDDataModule(root, batch_size=16, eval_batch_size=24, frames=6)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    base = tmp_path_factory.mktemp("cache")
    from datamodules.synthetic.himv200k import write_himv200k

    himv = write_himv200k(PlantedSpec(pairs=200, val=50, test=50, seed=0), base / "himv",
                          progress=False)
    yt_spec = PlantedSpec(pairs=90, val=20, test=20, music_dim=128, video_dim=1024,
                          music_frames=9, video_frames=11, text=True, seed=1)
    yt = write_youtube8m(yt_spec, base / "yt8m", shards=2, text=True, text_emb_dim=8,
                         progress=False)
    mvd = write_mvd(dataclasses.replace(MVD_SPEC, music_dim=16, video_dim=24), base / "mvd",
                    progress=False, unpaired_videos=7, unpaired_music=5)
    return {"himv200k": (himv, _himv), "youtube8m": (yt, _yt8m), "mvd": (mvd, _mvd)}


def _pair(roots, kind: str) -> tuple[StoreDataModule, StoreDataModule]:
    root, make = roots[kind]
    out = []
    for cache in ("none", "host"):
        dm = make(root, cache)
        dm.configure_cache(cache)
        dm.prepare_data()
        dm.setup()
        out.append(dm)
    return out[0], out[1]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _assert_same(ref: dict[str, Any], got: dict[str, Any], what: str) -> None:
    assert set(got) == set(ref) - STRINGS | ({"text_tokens"} if "text" in ref else set()), what
    for key, value in got.items():
        if key == "text_tokens":
            t = hash_tokens(list(ref["text"]), 97, 5)
            for a, b in zip(bucket_tokens(value, 97, 5), t):
                assert torch.equal(a, b), what
            continue
        assert isinstance(value, torch.Tensor), (what, key)
        assert value.dtype == ref[key].dtype and value.shape == ref[key].shape, (what, key)
        assert torch.equal(_bits(value), _bits(ref[key])), (what, key)


def _compare_loaders(ref_loader, got_loader, what: str) -> int:
    torch.manual_seed(11)
    ref = list(ref_loader)
    torch.manual_seed(11)
    got = list(got_loader)
    assert len(ref) == len(got) > 0
    for k, (a, b) in enumerate(zip(ref, got)):
        _assert_same(a, b, f"{what} batch {k}")
    return len(ref)


@pytest.mark.parametrize("kind", ["himv200k", "youtube8m", "mvd"])
def test_in_memory_batches_equal_memory_mapped(roots, kind):
    plain, held = _pair(roots, kind)
    assert held.cache_device == torch.device("cpu") and plain.cache_device is None
    assert held.num_workers == 0
    for split in ("train", "val", "test"):
        assert held.datasets[split].cache is not None
    _compare_loaders(plain.train_dataloader(), held.train_dataloader(), f"{kind} train")
    _compare_loaders(plain.val_dataloader(), held.val_dataloader(), f"{kind} val")
    _compare_loaders(plain.test_dataloader(), held.test_dataloader(), f"{kind} test")
    # A second epoch: training draws continue from the global RNG in both.
    torch.manual_seed(5)
    a = next(iter(plain.train_dataloader()))
    torch.manual_seed(5)
    b = next(iter(held.train_dataloader()))
    _assert_same(a, b, f"{kind} reseeded")
    assert held.train_video_ids(b["index"]) == a["video_id"]


def test_repaired_training_set_with_pool_rows_equal(roots):
    plain, held = _pair(roots, "mvd")
    n = len(plain.datasets["train"])
    rng = np.random.default_rng(0)
    video = plain.unpaired_ids("video")[:3] + [plain.datasets["train"].ids[i] for i in (0, 4)]
    music = [plain.datasets["train"].music_ids[i] for i in (1, 2, 3)] + \
        plain.unpaired_ids("music")[:2]
    for dm in (plain, held):
        dm.set_train_pairs(TrainPairs(rng.permutation(n), np.arange(n),
                                      np.linspace(0.5, 1.0, n)))
        dm.set_extra_pairs(dm.pairs_from_ids(video, music, [0.3] * 5))
        rng = np.random.default_rng(0)
    batches = _compare_loaders(plain.train_dataloader(), held.train_dataloader(), "re-paired")
    assert batches >= 2
    torch.manual_seed(2)
    every = list(plain.train_dataloader())
    torch.manual_seed(2)
    for ref, got in zip(every, held.train_dataloader()):
        assert held.train_video_ids(got["index"]) == ref["video_id"]
    for side in ("video", "music"):
        ref = list(plain.unpaired_dataloader(side, 4))
        got = list(held.unpaired_dataloader(side, 4))
        for a, b in zip(ref, got, strict=True):
            _assert_same(a, b, f"pool {side}")


def test_global_sparse_torch_equals_numpy():
    rng = np.random.default_rng(4)
    lengths = np.array([0, 1, 3, 5, 6, 7, 31, 32, 33, 100, 257])
    for n in (1, 5, 6, 32):
        for train in (False, True):
            u = rng.random((len(lengths), n)) if train else None
            ref_idx, ref_mask = global_sparse_batch(lengths, n, train,
                                                    np.random.default_rng(9) if train else None)
            if train:
                u = np.random.default_rng(9).random((len(lengths), n))
            idx, mask = global_sparse_torch(torch.from_numpy(lengths), n,
                                            None if u is None else torch.from_numpy(u))
            assert np.array_equal(idx.numpy(), ref_idx) and np.array_equal(mask.numpy(), ref_mask)


def test_token_hashes_bucket_like_hash_tokens():
    texts = ["Live at the Arena 2019", "", "a b c d e f g h", "MIXED case Words words"]
    for buckets, max_tokens in ((2, 1), (97, 3), (1024, 64)):
        for rows in (slice(None), slice(1, 2), slice(0, 1)):
            ids, mask = bucket_tokens(token_hashes(texts)[rows], buckets, max_tokens)
            ref_ids, ref_mask = hash_tokens(texts[rows], buckets, max_tokens)
            assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)


def test_choose_cache():
    cpu = torch.device("cpu")
    assert choose_cache("none", 0.5, 1, cpu) == "none"
    assert choose_cache("device", 0.5, 1, cpu) == "host"  # a CPU device's memory is the host's
    assert choose_cache("host", 0.5, 1 << 60, cpu) == "host"  # asked for: no size check
    assert choose_cache("auto", 0.5, 1, cpu) == "host"
    assert choose_cache("auto", 0.5, 1 << 60, cpu) == "none"  # larger than any RAM
    with pytest.raises(ValueError, match="data.cache='gpu' must be one of"):
        choose_cache("gpu", 0.5, 1, cpu)
