"""YouTube-8M music videos: the synthetic writer, `prepare_youtube8m`, GS sampling, DataModule."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.errors import DataError
from datamodules.feature_store import StoreSplit, read_meta
from datamodules.sampling import SparseFrameDataset, global_sparse_batch, global_sparse_indices
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.youtube8m import MUSIC_VIDEO_LABEL, VOCAB_HEADER, write_youtube8m
from datamodules.tfrecord import (
    dequantize,
    encode_sequence_example,
    iter_records,
    read_frame_level,
    write_records,
)
from datamodules.youtube8m import YouTube8MDataModule, prepare_youtube8m, store_is_current

SPEC = PlantedSpec(pairs=120, val=20, test=20, music_frames=10, video_frames=10, seed=1,
                   music_dim=128, video_dim=1024, text=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A small synthetic YouTube-8M folder with text (read-only for the tests)."""
    return write_youtube8m(SPEC, tmp_path_factory.mktemp("y8m") / "src", shards=2, text=True,
                           progress=False)


def copy_source(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store, meta.json without its creation time."""
    out = {}
    for p in sorted(store.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "meta.json":
                meta = json.loads(data)
                meta.pop("created")
                data = json.dumps(meta, sort_keys=True).encode()
            out[str(p.relative_to(store))] = data
    return out


def split_ids(store: Path) -> dict[str, list[str]]:
    return {s: [r["id"] for r in StoreSplit(store, s).rows] for s in ("train", "val", "test")}


def all_records(root: Path) -> list:
    return [r for f in sorted((root / "frame").glob("*.tfrecord")) for r in read_frame_level(f)]


# ------------------------------------------------------------------------------------- writer


def test_writer_is_deterministic_and_in_youtube8m_format(source, tmp_path):
    again = write_youtube8m(SPEC, tmp_path / "again", shards=2, text=True, progress=False)
    names = sorted(p.name for p in (source / "frame").iterdir())
    assert names == [f"{p}{k:04d}.tfrecord" for p in ("test", "train", "validate")
                     for k in range(2)]
    for name in names:
        assert (source / "frame" / name).read_bytes() == (again / "frame" / name).read_bytes()
    with open(source / "vocabulary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert ",".join(rows[0]) == VOCAB_HEADER
    assert {r["Name"]: int(r["Index"]) for r in rows}["Music video"] == MUSIC_VIDEO_LABEL
    n_records = sum(1 for f in (source / "frame").iterdir() for _ in iter_records(f))  # CRCs
    records = all_records(source)
    assert len(records) == n_records
    music = [r for r in records if MUSIC_VIDEO_LABEL in r.labels]
    other = [r for r in records if MUSIC_VIDEO_LABEL not in r.labels]
    bench = PlantedBenchmark(SPEC)
    assert sorted(r.id for r in music) == sorted(bench.ids)
    assert len(other) >= 10 and all(len(r.labels) >= 1 for r in other)
    assert all(2 <= len(r.labels) <= 4 for r in music)
    lengths = Counter(len(r.rgb) for r in music)
    assert lengths[10] > 60 and sum(n for t, n in lengths.items() if t < 10) >= 5
    assert all(r.text == bench.text[bench.ids.index(r.id)] for r in music)
    # Each split's records sit in files with that split's prefix.
    val_ids = {r.id for f in (source / "frame").glob("validate*") for r in read_frame_level(f)}
    assert {i for i, s in zip(bench.ids, bench.split) if s == "val"} <= val_ids
    truth = (source / "truth.tsv").read_text().splitlines()
    assert len(truth) == SPEC.pairs + 1


def test_writer_quantises_standardised_features(source):
    bench = PlantedBenchmark(SPEC)
    by_id = {r.id: r for r in all_records(source)}
    i = next(k for k in range(SPEC.pairs) if len(by_id[bench.ids[k]].rgb) == 10)
    x = dequantize(by_id[bench.ids[i]].rgb)
    # Codes spread over the range (standardised, not clipped to the ends) ...
    assert 0.3 < x.std() < 0.7 and (np.abs(x) < 1.99).mean() > 0.99
    # ... and still carry the planted features (per-dimension correlation).
    raw = bench.video_frames(np.array([i]))[0]
    corr = [np.corrcoef(raw[:, d], x[:, d])[0, 1] for d in range(64)]
    assert np.nanmean(corr) > 0.95


# ------------------------------------------------------------------------------------ prepare


def test_prepare_by_name_and_by_id_agree(source, tmp_path):
    a = prepare_youtube8m(source, tmp_path / "a", ["Music video"], workers=1, progress=False)
    b = prepare_youtube8m(source, tmp_path / "b", [MUSIC_VIDEO_LABEL], workers=1,
                          progress=False)
    c = prepare_youtube8m(source, tmp_path / "c", ["music VIDEO"], workers=1, progress=False)
    assert store_bytes(a) == store_bytes(b) == store_bytes(c)
    bench = PlantedBenchmark(SPEC)
    ids = split_ids(a)
    assert sorted(sum(ids.values(), [])) == sorted(bench.ids)
    meta = read_meta(a)
    assert meta["source"]["labels"] == [MUSIC_VIDEO_LABEL]
    assert meta["modalities"]["video"] == {"dim": 1024, "dtype": "uint8",
                                           "dequantize": [4 / 255, 4 / 512 - 2]}
    row = StoreSplit(a, "train").rows[0]
    assert MUSIC_VIDEO_LABEL in row["labels"] and row["music_id"] == row["id"]
    assert row["text"] == bench.text[bench.ids.index(row["id"])]


def test_unknown_label_name_is_one_line_error(source, tmp_path):
    with pytest.raises(DataError) as e:
        prepare_youtube8m(source, tmp_path / "s", ["Music vidoe"], workers=1, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{source / 'vocabulary.csv'}: no label named 'Music vidoe' "
                          "(close matches: 'Music video'")
    assert not (tmp_path / "s").exists()
    bare = copy_source(source, tmp_path / "bare")
    (bare / "vocabulary.csv").unlink()
    with pytest.raises(DataError, match="vocabulary.csv: not found"):
        prepare_youtube8m(bare, tmp_path / "s", ["Music video"], workers=1, progress=False)
    prepare_youtube8m(bare, tmp_path / "s", [MUSIC_VIDEO_LABEL], workers=1, progress=False)


def test_skips_are_counted_and_logged_once(source, tmp_path, caplog):
    src = copy_source(source, tmp_path / "src")
    rgb = np.full((3, 1024), 7, np.uint8)
    write_records(src / "frame" / "train9999.tfrecord", [
        encode_sequence_example({"id": "empty", "labels": [MUSIC_VIDEO_LABEL]},
                                {"rgb": [], "audio": []}),
        encode_sequence_example({"id": "noaudio", "labels": [MUSIC_VIDEO_LABEL]},
                                {"rgb": [r.tobytes() for r in rgb]}),
    ])
    n_other = sum(MUSIC_VIDEO_LABEL not in r.labels for r in all_records(source))
    with caplog.at_level(logging.INFO, logger="vmr"):
        store = prepare_youtube8m(src, tmp_path / "store", workers=1, progress=False)
    summaries = [r for r in caplog.records if r.name == "vmr" and "skipped" in r.getMessage()]
    assert len(summaries) == 1
    msg = summaries[0].getMessage()
    assert summaries[0].levelno == logging.WARNING
    assert f"kept {SPEC.pairs} of {SPEC.pairs + n_other + 2} records from 7 files" in msg
    assert (f"skipped: {n_other} no selected label, 1 'rgb' has 0 frames, "
            "1 no 'audio' feature list") in msg
    assert read_meta(store)["source"]["skipped"] == {
        "'rgb' has 0 frames": 1, "no 'audio' feature list": 1, "no selected label": n_other}


def test_damaged_file_is_fatal(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    path = src / "frame" / "train0001.tfrecord"
    offsets = [off for off, _ in iter_records(path)]
    blob = bytearray(path.read_bytes())
    blob[offsets[3] + 200] ^= 0xFF
    path.write_bytes(bytes(blob))
    for workers in (1, 2):
        with pytest.raises(DataError) as e:
            prepare_youtube8m(src, tmp_path / "store", workers=workers, progress=False)
        assert str(e.value) == f"{path}: bad data CRC in record at byte offset {offsets[3]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no store, no spill


def test_official_partitions(source, tmp_path):
    bench = PlantedBenchmark(SPEC)
    store = prepare_youtube8m(source, tmp_path / "s", workers=1, progress=False)
    ids = split_ids(store)
    for split in ("train", "val", "test"):
        assert set(ids[split]) == {i for i, s in zip(bench.ids, bench.split) if s == split}
    assert read_meta(store)["source"]["splits"] == "official partitions"
    # Without test files (the official test partition has no labels) validate is split.
    src = copy_source(source, tmp_path / "src")
    for p in (src / "frame").glob("test*"):
        p.unlink()
    a = prepare_youtube8m(src, tmp_path / "a", workers=1, progress=False,
                          val_fraction=0.1, test_fraction=0.3)
    b = prepare_youtube8m(src, tmp_path / "b", workers=1, progress=False,
                          val_fraction=0.1, test_fraction=0.3)
    assert store_bytes(a) == store_bytes(b)
    got = split_ids(a)
    assert set(got["train"]) == set(ids["train"])
    assert set(got["val"]) | set(got["test"]) == set(ids["val"])
    for vid in ids["val"]:
        expected = "test" if _unit(vid) < 0.75 else "val"
        assert vid in got[expected]


def _unit(vid: str) -> float:
    return int(hashlib.sha1(vid.encode()).hexdigest()[:16], 16) / 2**64


def test_hash_split_without_partition_names(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    for k, p in enumerate(sorted((src / "frame").glob("*.tfrecord"))):
        p.rename(p.with_name(f"part-{k:03d}.tfrecord"))
    a = prepare_youtube8m(src, tmp_path / "a", workers=1, progress=False,
                          val_fraction=0.2, test_fraction=0.25)
    b = prepare_youtube8m(src, tmp_path / "b", workers=1, progress=False,
                          val_fraction=0.2, test_fraction=0.25)
    assert store_bytes(a) == store_bytes(b)
    got = split_ids(a)
    for split, members in got.items():
        for vid in members:
            u = _unit(vid)
            assert split == ("test" if u < 0.25 else "val" if u < 0.45 else "train")
    assert min(len(v) for v in got.values()) >= 10


def test_duplicate_id_is_an_error(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    shutil.copy(src / "frame" / "test0000.tfrecord", src / "frame" / "test0007.tfrecord")
    first = next(r for r in read_frame_level(src / "frame" / "test0000.tfrecord")
                 if MUSIC_VIDEO_LABEL in r.labels)
    with pytest.raises(DataError) as e:
        prepare_youtube8m(src, tmp_path / "s", workers=1, progress=False)
    assert str(e.value) == (
        f"{src / 'frame' / 'test0007.tfrecord'} byte offset {first.offset}: id {first.id} "
        f"already seen at {src / 'frame' / 'test0000.tfrecord'} byte offset {first.offset}")


def test_workers_give_the_same_store(source, tmp_path):
    one = prepare_youtube8m(source, tmp_path / "one", workers=1, progress=False)
    two = prepare_youtube8m(source, tmp_path / "two", workers=2, progress=False)
    assert store_bytes(one) == store_bytes(two)


def test_store_dequantises_source_codes(source, tmp_path):
    store = prepare_youtube8m(source, tmp_path / "s", workers=1, progress=False)
    by_id = {r.id: r for r in all_records(source)}
    split = StoreSplit(store, "val")
    ds = SparseFrameDataset(split, frames=12, train=False)  # more slots than frames
    picks = [0, 5, len(split) - 1]
    batch = ds.__getitems__(picks)
    for row, i in enumerate(picks):
        rec = by_id[split.rows[i]["id"]]
        np.testing.assert_array_equal(split.frames("video", i), rec.rgb)
        np.testing.assert_array_equal(split.frames("music", i), rec.audio)
        t = len(rec.rgb)
        assert batch["video_mask"][row].tolist() == [True] * t + [False] * (12 - t)
        np.testing.assert_allclose(batch["video"][row, :t].numpy(), dequantize(rec.rgb),
                                   rtol=0, atol=1e-6)
        np.testing.assert_allclose(batch["music"][row, : len(rec.audio)].numpy(),
                                   dequantize(rec.audio), rtol=0, atol=1e-6)
        assert not batch["video"][row, t:].any()
        assert batch["text"][row] == rec.text


def test_staleness(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    store = prepare_youtube8m(src, tmp_path / "s", workers=1, progress=False)
    assert store_is_current(src, store, ["Music video"], 0.1, 0.1)
    assert store_is_current(src, store, [MUSIC_VIDEO_LABEL], 0.1, 0.1)
    assert not store_is_current(src, store, ["Music video", "Concert"], 0.1, 0.1)
    assert not store_is_current(src, store, ["Music video"], 0.2, 0.1)
    f = src / "frame" / "train0000.tfrecord"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not store_is_current(src, store, ["Music video"], 0.1, 0.1)


# ----------------------------------------------------------------------------------- sampling


def _segments(length: int, n: int) -> list[range]:
    return [range(k * length // n, (k + 1) * length // n) for k in range(n)]


@pytest.mark.parametrize("n", [1, 3, 8])
def test_global_sparse_indices_against_brute_force(n):
    rng = np.random.default_rng(0)
    for length in range(0, 41):
        idx, mask = global_sparse_indices(length, n, train=False)
        assert idx.dtype == np.int64 and mask.dtype == bool and idx.shape == mask.shape == (n,)
        if length < n:
            assert idx.tolist() == list(range(length)) + [0] * (n - length)
            assert mask.tolist() == [True] * length + [False] * (n - length)
            tidx, tmask = global_sparse_indices(length, n, train=True, rng=rng)
            assert tidx.tolist() == idx.tolist() and tmask.tolist() == mask.tolist()
            continue
        segs = _segments(length, n)
        assert mask.all()
        assert idx.tolist() == [s.start + len(s) // 2 for s in segs]
        seen = [set() for _ in range(n)]
        for _ in range(30):
            tidx, tmask = global_sparse_indices(length, n, train=True, rng=rng)
            assert tmask.all()
            for k, s in enumerate(segs):
                assert tidx[k] in s
                seen[k].add(int(tidx[k]))
        # Random in training: segments of several frames are not always sampled alike.
        for k, s in enumerate(segs):
            if len(s) >= 3:
                assert len(seen[k]) >= 2


def test_global_sparse_batch_matches_single():
    lengths = np.array([0, 1, 5, 32, 33, 100])
    idx, mask = global_sparse_batch(lengths, 8, train=False)
    for row, length in enumerate(lengths):
        single = global_sparse_indices(int(length), 8, train=False)
        assert idx[row].tolist() == single[0].tolist()
        assert mask[row].tolist() == single[1].tolist()


# --------------------------------------------------------------------------------- DataModule


def test_datamodule_end_to_end_with_synthetic_generation(tmp_path):
    root = tmp_path / "y8m"
    synthetic = {"pairs": 90, "val": 15, "test": 15, "music_frames": 9, "video_frames": 9,
                 "text": True, "shards": 2, "seed": 4}
    dm = YouTube8MDataModule(root, batch_size=16, eval_batch_size=15, frames=6, workers=1,
                             synthetic=synthetic)
    dm.prepare_data()
    assert (root / "synth.json").exists() and (root / "store" / "meta.json").exists()
    mtime = (root / "store" / "meta.json").stat().st_mtime_ns
    dm.prepare_data()  # current: not rebuilt
    assert (root / "store" / "meta.json").stat().st_mtime_ns == mtime
    dm.setup("fit")
    assert dm.dims == {"video": 1024, "music": 128}
    batch = next(iter(dm.train_dataloader()))
    keys = {"video", "video_mask", "music", "music_mask", "index", "video_key", "music_key",
            "video_id", "music_id", "text"}
    assert set(batch) == keys
    assert batch["video"].shape == (16, 6, 1024) and batch["music"].shape == (16, 6, 128)
    assert batch["video"].dtype == torch.float32
    assert batch["video_mask"].shape == batch["music_mask"].shape == (16, 6)
    assert batch["video_mask"].dtype == torch.bool
    assert all(isinstance(t, str) and t.startswith("w") for t in batch["text"])
    assert (batch["video"][~batch["video_mask"]] == 0).all()
    assert (batch["video"][batch["video_mask"]].abs() <= 2.01).all()
    # Evaluation is deterministic; training draws repeat under the same torch seed.
    val = [next(iter(dm.val_dataloader()))["video"] for _ in range(2)]
    assert torch.equal(val[0], val[1])
    ds = dm.datasets["train"]
    draws = []
    for _ in range(2):
        torch.manual_seed(123)
        ds._rng = None
        draws.append([ds.__getitems__(list(range(16)))["video"] for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[1]))
    assert not torch.equal(draws[0][0], draws[0][1])  # a new draw per batch
    # Changing the settings rebuilds the store.
    dm2 = YouTube8MDataModule(root, batch_size=16, frames=6, workers=1, synthetic=synthetic,
                              val_fraction=0.2)
    dm2.prepare_data()
    assert (root / "store" / "meta.json").stat().st_mtime_ns != mtime
    assert read_meta(root / "store")["source"]["splits"] == "official partitions"


def test_datamodule_refuses_missing_root_without_synthetic(tmp_path):
    dm = YouTube8MDataModule(tmp_path / "nope")
    with pytest.raises(DataError, match="YouTube-8M folder not found"):
        dm.prepare_data()
