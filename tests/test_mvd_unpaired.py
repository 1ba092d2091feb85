"""MVD's unpaired pool in the store and the DataModule: loaders, extra pairs, `salient`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.feature_store import read_meta
from datamodules.mvd import MVDDataModule
from datamodules.sampling import global_sparse_batch
from datamodules.synthetic.mvd import mvd_settings, write_mvd
from datamodules.synthetic.planted import PlantedSpec
from datamodules.synthetic.truth import PoolTruth, read_truth
from models.ssvmr import SSVMR, default_model_config

SPEC = PlantedSpec(**mvd_settings({"pairs": 120, "val": 20, "test": 20, "video_frames": 10,
                                   "music_frames": 8, "min_frames": 3, "noise": 0.2,
                                   "filler": "background", "seed": 5}))
POOL = {"unpaired_videos": 12, "unpaired_music": 10}
FRAMES = 6


def _datamodule(root: Path) -> MVDDataModule:
    dm = MVDDataModule(root, batch_size=16, eval_batch_size=32, frames=FRAMES)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mvd(SPEC, tmp_path_factory.mktemp("pool") / "mvd", progress=False, **POOL)


@pytest.fixture(scope="module")
def dm(root: Path) -> MVDDataModule:
    return _datamodule(root)


def _listed(root: Path, side: str) -> list[str]:
    name = "unpaired_videos.csv" if side == "video" else "unpaired_music.csv"
    with open(root / "splits" / name) as f:
        return [r[f"{side}_id"] for r in csv.DictReader(f)]


def _spans(root: Path) -> dict[str, tuple[int, int]]:
    rows = read_truth(root) + [r for r in PoolTruth.load(root).rows.values()
                               if r["side"] == "video"]
    return {r["id"]: (int(r["span_start"]), int(r["span_length"])) for r in rows}


def _stored_index(frames: torch.Tensor, mask: torch.Tensor, stored: np.ndarray) -> np.ndarray:
    """For each valid slot, the index of the stored frame it equals (-1 on masked slots)."""
    out = np.full(mask.shape, -1)
    for k in np.flatnonzero(mask.numpy()):
        hit = np.flatnonzero((stored == frames[k].numpy()).all(axis=1))
        assert len(hit) == 1
        out[k] = hit[0]
    return out


# ----------------------------------------------------------------------------- store + lists


def test_store_holds_the_pool_apart_from_every_split(root: Path, dm: MVDDataModule):
    meta = read_meta(dm.store_path)
    assert meta["splits"]["unpaired_video"]["count"] == 12
    assert meta["splits"]["unpaired_music"]["count"] == 10
    assert meta["source"]["unpaired"] == {"video": 12, "music": 10}
    assert dm.unpaired_ids("video") == _listed(root, "video")
    assert dm.unpaired_ids("music") == _listed(root, "music")
    split_ids = {i for s in ("train", "val", "test") for d in [dm.datasets[s]]
                 for i in d.ids + d.music_ids}
    assert not split_ids & set(dm.unpaired_ids("video") + dm.unpaired_ids("music"))


def test_the_pool_never_reaches_evaluation(root: Path, dm: MVDDataModule, tmp_path: Path):
    plain = _datamodule(write_mvd(SPEC, tmp_path / "plain", progress=False))
    assert plain.unpaired_dataloader("video", 4) is None and plain.unpaired_ids("music") == []
    pool = set(dm.unpaired_ids("video") + dm.unpaired_ids("music"))
    for stage in ("val", "test"):
        loader = getattr(dm, f"{stage}_dataloader")()
        batches = list(loader)
        other = list(getattr(plain, f"{stage}_dataloader")())
        ids = [i for b in batches for i in b["video_id"] + b["music_id"]]
        assert ids and not pool & set(ids)
        assert ids == [i for b in other for i in b["video_id"] + b["music_id"]]
        # The Recall@K galleries (distinct keys) and their inputs are exactly those without a pool.
        for key in ("video_key", "music_key"):
            mine = torch.cat([b[key] for b in batches])
            assert torch.equal(mine, torch.cat([b[key] for b in other]))
        assert torch.equal(torch.cat([b["video"] for b in batches]),
                           torch.cat([b["video"] for b in other]))
    assert dm.store_fingerprint != plain.store_fingerprint


# ----------------------------------------------------------------------------- pool loaders


def test_unpaired_loader_gives_centred_frames_keys_and_salient(root: Path, dm: MVDDataModule):
    spans = _spans(root)
    ids = dm.unpaired_ids("video")
    batches = list(dm.unpaired_dataloader("video", 5))
    assert [len(b["video_id"]) for b in batches] == [5, 5, 2]
    assert [i for b in batches for i in b["video_id"]] == ids
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(12))
    ranks = {key: r for r, key in enumerate(sorted(ids))}  # np.unique codes, as pair batches
    assert torch.cat([b["video_key"] for b in batches]).tolist() == [ranks[i] for i in ids]
    for b in batches:
        assert set(b) == {"video", "video_mask", "index", "video_key", "video_id", "salient"}
        for row, vid in enumerate(b["video_id"]):
            stored = np.load(root / "features" / "video" / f"{vid}.npy")
            rel, mask = global_sparse_batch(np.array([len(stored)]), FRAMES, train=False)
            assert torch.equal(b["video_mask"][row], torch.from_numpy(mask[0]))
            np.testing.assert_array_equal(b["video"][row].numpy()[mask[0]], stored[rel[0]][mask[0]])
            start, length = spans[vid]
            want = mask[0] & (rel[0] >= start) & (rel[0] < start + length)
            assert torch.equal(b["salient"][row], torch.from_numpy(want))
    again = next(iter(dm.unpaired_dataloader("video", 5)))
    assert torch.equal(again["video"], batches[0]["video"])
    music = next(iter(dm.unpaired_dataloader("music", 10)))
    assert set(music) == {"music", "music_mask", "index", "music_key", "music_id"}
    assert music["music"].shape == (10, FRAMES, 128) and bool(music["music_mask"].all())


def test_unpaired_batches_encode_with_ssvmr(dm: MVDDataModule):
    cfg = default_model_config()
    cfg.update(video_dim=512, music_dim=128, embed_dim=16)
    for side in ("video_encoder", "music_encoder"):
        cfg[side] = {"kind": "transformer", "d_model": 16, "layers": 1, "heads": 2, "dropout": 0.0}
    model = SSVMR(cfg, {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9,
                        "scheduler": "constant", "warmup_steps": 0}).eval()
    with torch.no_grad():
        video = torch.cat([model.encode_video(b) for b in dm.unpaired_dataloader("video", 8)])
        music = torch.cat([model.encode_music(b) for b in dm.unpaired_dataloader("music", 8)])
    assert video.shape == (12, 16) and music.shape == (10, 16)
    assert torch.isfinite(video).all() and torch.isfinite(music).all()
    torch.testing.assert_close(video.norm(dim=1), torch.ones(12))


# ----------------------------------------------------------------------------- training


def test_extra_pairs_with_pool_ids_reach_the_training_loader(root: Path, tmp_path: Path):
    dm = _datamodule(root)
    train = dm.datasets["train"]
    videos, songs = dm.unpaired_ids("video"), dm.unpaired_ids("music")
    extra = [(videos[0], songs[0], 0.5), (videos[1], train.music_ids[4], 0.25),
             (train.ids[7], songs[2], 0.75), (videos[0], songs[3], 0.125)]
    pairs = dm.pairs_from_ids(*zip(*extra))
    assert pairs.video_unpaired.tolist() == [True, True, False, True]
    assert pairs.music_unpaired.tolist() == [True, False, True, True]
    dm.set_extra_pairs(pairs)
    n = len(train) + len(extra)
    dm.batch_size = n  # one batch: every pair is in it
    (batch,) = list(dm.train_dataloader())
    assert batch["video"].shape == (n, FRAMES, 512) and batch["salient"].shape == (n, FRAMES)
    order = batch["index"].argsort()
    got = [(batch["video_id"][i], batch["music_id"][i], float(batch["weight"][i]))
           for i in order[len(train):].tolist()]
    assert got == extra
    assert (batch["weight"][order[: len(train)]] == 1).all()
    spans = _spans(root)
    for i in order[len(train):].tolist():
        vid, mid = batch["video_id"][i], batch["music_id"][i]
        stored = np.load(root / "features" / "video" / f"{vid}.npy")
        at = _stored_index(batch["video"][i], batch["video_mask"][i], stored)
        valid = at >= 0
        assert (np.diff(at[valid]) > 0).all()  # Global Sparse: one frame per segment, in order
        start, length = spans[vid]
        want = valid & (at >= start) & (at < start + length)
        assert batch["salient"][i].tolist() == want.tolist()
        song = np.load(root / "features" / "music" / f"{mid}.npy")
        assert (_stored_index(batch["music"][i], batch["music_mask"][i], song) >= 0).any()
    # Pool keys follow the train split's keys, so they never collide within a batch.
    pool_rows = order[len(train):][pairs.video_unpaired]
    assert (batch["video_key"][pool_rows] > train.video_keys.max()).all()
    dm.set_extra_pairs(None)
    assert len(dm.train_dataset()) == len(train)


def test_salient_matches_the_truth_for_randomly_sampled_training_frames(root: Path,
                                                                        dm: MVDDataModule):
    spans = _spans(root)
    batch = next(iter(dm.train_dataloader()))
    checked = 0
    for i, vid in enumerate(batch["video_id"]):
        stored = np.load(root / "features" / "video" / f"{vid}.npy")
        at = _stored_index(batch["video"][i], batch["video_mask"][i], stored)
        start, length = spans[vid]
        want = (at >= 0) & (at >= start) & (at < start + length)
        assert batch["salient"][i].tolist() == want.tolist()
        checked += int(want.sum())
    assert checked > 0
    assert not (batch["salient"] & ~batch["video_mask"]).any()
